"""Real servers and helpers for tests: ZooKeeper, Triton, models, and session tricks."""
