"""AI Admin: the production package (webhook API, batching, queue, worker)."""

__version__ = "0.1.0"
