"""The clinic-day load test: its locust users (locustfile.py) and its run (clinic_day.py), which
tests/drills/test_load.py (the drill) and tests/bench/test_load.py (make bench, briefly) call."""
