"""The operator console served by the manager at ``/ui`` (Jinja2 templates and htmx).

``static/htmx.min.js`` is htmx 2.0.11 (0BSD licence), copied unchanged from the npm package
``htmx.org`` (``dist/htmx.min.js``): the one vendored file, so the console needs no CDN and
no build step.
"""
