"""modelgate's plugin SDK (UDL: user-defined logic around a model call).

Write a subclass of :class:`Plugin`, describe it in ``plugin.toml``, push it with
``modelgate plugins push``, and name it in a model's ``plugin`` field. See docs/plugins.md.
"""

from udl.sdk import InvalidInput, Plugin, PluginError, Request, Response

__all__ = ["InvalidInput", "Plugin", "PluginError", "Request", "Response"]
