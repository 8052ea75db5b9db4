"""The clinic tests' shared world (patients, care teams, an encounter with notes): see test_access.py."""

from tests.clinic.test_access import world  # noqa: F401  (a fixture, re-exported for every clinic test)
