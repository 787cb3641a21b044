"""Performance work on the whole system: Locust load profiles, the load runner and the benchmarks.

`locust -f loadtests/` imports every `.py` file under this folder, subfolders included, whose name does not
start with "_": `locustfile.py` is the only one. The pure helpers are underscore modules (importable by the
tests without Locust, which monkey-patches the process with gevent on import); the one-command runner is
`loadtests/run/__main__.py` (`python -m loadtests.run`), the benchmarks are `loadtests/bench/` (`aiadmin bench`),
and both start and sample their processes through `loadtests/_processes.py`. See `loadtests/README.md`.
"""
