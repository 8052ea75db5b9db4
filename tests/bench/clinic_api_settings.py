"""The project's settings with the benchmark's URLconf (tests/bench/clinic_api_urls.py): the real API under
/api/v1 and the plain-Django baseline under /plain/v1, for the uvicorn worker the HTTP pass of
tests/bench/test_clinic_api.py starts (DJANGO_SETTINGS_MODULE=tests.bench.clinic_api_settings). Nothing else
differs from config.settings."""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "tests.bench.clinic_api_urls"
