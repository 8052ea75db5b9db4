"""The clinic-day load test's locust users (locustfile.py); tests/drills/test_load.py runs them."""
