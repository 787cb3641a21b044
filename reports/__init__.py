"""Reports about the system: benchmarks and the figures they produce (nothing here is imported by `system`)."""
