"""Backend kinds: one module each (Triton/KServe v2, TF-Serving, third-party REST), plus
the shared pool of raw-bytes gRPC channels they use."""
