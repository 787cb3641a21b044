"""`aiadmin bench ingest|worker|stages`: the benchmarks behind the monthly report's performance section.

Every module here starts with "_" so that `locust -f loadtests/` does not import it as a locustfile.
"""
