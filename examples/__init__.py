"""Example models, plugins and clients used by the demo, the docs and the tests."""
