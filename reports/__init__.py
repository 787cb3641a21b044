"""The monthly test report: its generator (`reports.generator`, `aiadmin report`) and the reports (`monthly/`).

Nothing here is imported by `system`; the benchmarks it reads live with the load tests (`loadtests/bench/`).
"""
