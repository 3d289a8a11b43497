"""Protocol buffers used by modelgate.

The Python modules here are generated (``protos/generate.py``), never committed: a wheel
build writes them into the wheel (so ``pip install modelgate`` carries them), and
``make generate`` writes them into the source tree for editable installs.

- ``protos.modelgate.v1`` -- modelgate's own ``Gateway`` service, from ``gateway.proto``.
- ``protos.tfs`` -- light stubs for the TF-Serving API, generated from the descriptors of
  ``tensorflow-serving-api`` at build time, so that importing them never imports TensorFlow
  (and no installed role needs TensorFlow at all).
"""
