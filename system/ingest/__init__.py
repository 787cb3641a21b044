"""The way in: webhook routes, payload parsing, ingest, the batch store and its processor."""
