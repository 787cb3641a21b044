"""`python -m loadtests.run`: one load profile end to end (fakes, system, Locust), for the report chain.

Every module here starts with "_" so that `locust -f loadtests/` does not import it as a locustfile.
"""
