"""Backend kinds: one module each (Triton/KServe v2, TF-Serving, third-party REST), each with
one :class:`~gateway.backends.base.Backend` object, picked per instance by
:class:`~gateway.backends.kinds.Backends`; plus the shared pool of raw-bytes gRPC channels."""
