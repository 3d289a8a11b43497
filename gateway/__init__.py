"""modelgate's gateway: routes TF-Serving, KServe v2 and modelgate.v1 gRPC calls to the
backend instances that ZooKeeper lists as ready. ``python -m gateway`` runs it."""
