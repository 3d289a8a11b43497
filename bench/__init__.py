"""Gateway vs direct-to-Triton benchmark (``python -m bench``)."""
