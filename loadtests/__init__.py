"""Locust load profiles of the whole system (webhook → batching → queue → worker → WhatsApp).

`locust -f loadtests/` imports every `.py` file under this folder, subfolders included, whose name does not
start with "_": `locustfile.py` is the only one. The pure helpers are underscore modules (importable by the
tests without Locust, which monkey-patches the process with gevent on import), and the one-command runner is
`loadtests/run/__main__.py` (`python -m loadtests.run`). See `loadtests/README.md`.
"""
