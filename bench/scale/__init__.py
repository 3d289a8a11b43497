"""The scale benchmark (``make bench-scale``): the control plane of a large fleet, measured.

A real ZooKeeper, the real manager, the real gateway (each data plane) and simulated workers:
real :class:`~worker_agent.agent.WorkerAgent` instances whose model server is
:class:`~bench.scale.backend.InstantBackend`. See :mod:`bench.scale.run` and
docs/benchmarks.md.
"""
