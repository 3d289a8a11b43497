"""modelgate worker agent: runs beside one model server (Triton or TF-Serving)."""
