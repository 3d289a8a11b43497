"""modelgate's manager: admin REST API, placement, leader-elected reconcile loop, blob store.

Build it with :func:`manager_api.app.create_app` (settings and a started
:class:`registry.Registry` are passed in; nothing is read at import time) or run
``python -m manager_api``. The ``modelgate`` CLI lives in :mod:`manager_api.cli`.
"""
