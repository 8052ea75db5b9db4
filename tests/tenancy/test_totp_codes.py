"""Issue 11, finding 6: TOTP codes are six ASCII digits, and nothing else reaches a comparison.

Python's `str.isdigit()` and the regex `\\d` accept fullwidth, Arabic-Indic, superscript and other Unicode
digits; `secrets.compare_digest` then raised on the non-ASCII string. That was a 500 on token issue, portal
sign-in, TOTP confirm and TOTP removal, and at sign-in it came only after a correct password: a password
oracle that neither the audit log nor the lockout counter saw. Now the API refuses such a code with a 400
before any credential is checked, and the service treats one that gets past the edge as a wrong code.
"""

from __future__ import annotations

from dataclasses import asdict

import pyotp
import pytest
from django.conf import settings

from tenancy import events, services
from tenancy.models import User
from tests.conftest import PASSWORD, in_context
from tests.tenancy.test_auth import WRONG, assert_error, login, reload, token

pytestmark = pytest.mark.django_db

NON_ASCII_CODES = [
    "\uff11\uff12\uff13\uff14\uff15\uff16",  # fullwidth digits one to six
    "\u0661\u0662\u0663\u0664\u0665\u0666",  # Arabic-Indic
    "\u00b2\u00b2\u00b2\u00b2\u00b2\u00b2",  # superscript two
    "\u06f1\u06f2\u06f3\u06f4\u06f5\u06f6",  # extended Arabic-Indic
    "\u0967\u0968\u0969\u096a\u096b\u096c",  # Devanagari
    "\U0001d7cf\U0001d7d0\U0001d7d1\U0001d7d2\U0001d7d3\U0001d7d4",  # mathematical bold
    "12345\uff16",  # one fullwidth digit among ASCII ones
]


@pytest.fixture
def recorded():
    """Every sign-in event tenancy publishes (the audit app writes each one to its outbox)."""
    seen: list[dict] = []

    def on_auth(event: events.Authentication) -> None:
        seen.append(asdict(event))

    events.subscribe(events.Authentication, on_auth)
    yield seen
    events.unsubscribe(events.Authentication, on_auth)


@pytest.fixture
def enrolled(alpha) -> pyotp.TOTP:
    """alpha's staff member with a confirmed authenticator."""
    secret = pyotp.random_base32()
    User.objects.filter(pk=alpha.user("staff").pk).update(
        totp_secret=secret, totp_confirmed=True, totp_last_counter=0
    )
    return pyotp.TOTP(secret)


@pytest.mark.parametrize("code", NON_ASCII_CODES)
@pytest.mark.parametrize("sign_in", [token, login], ids=["token", "portal"])
def test_non_ascii_digits_at_sign_in_are_a_400_whatever_the_password(api, alpha, enrolled, sign_in, code):
    """Before: a correct password with these digits was a 500 (and a wrong one a 401): a password oracle."""
    right = sign_in(api(alpha.host), alpha.email("staff"), PASSWORD, totp=code)
    wrong = sign_in(api(alpha.host), alpha.email("staff"), WRONG, totp=code)
    body = assert_error(right, 400, "invalid_request")
    assert "totp" in body["error"]["fields"]
    assert right.content == wrong.content, "the answer must not depend on the password"
    assert "sessionid" not in right.cookies


@pytest.mark.parametrize("code", NON_ASCII_CODES)
def test_non_ascii_digits_on_confirm_and_removal_are_a_400(api, alpha, code):
    portal = api(alpha.host)
    assert login(portal, alpha.email("practitioner")).status_code == 200
    secret = portal.post("/api/v1/auth/mfa/totp").json()["secret"]

    body = assert_error(portal.post("/api/v1/auth/mfa/totp/confirm", {"code": code}), 400, "invalid_request")
    assert "code" in body["error"]["fields"]
    assert reload(alpha.user("practitioner")).totp_confirmed is False

    assert portal.post("/api/v1/auth/mfa/totp/confirm", {"code": pyotp.TOTP(secret).now()}).status_code == 204
    body = assert_error(portal.delete("/api/v1/auth/mfa/totp", {"code": code}), 400, "invalid_request")
    assert "code" in body["error"]["fields"]
    assert reload(alpha.user("practitioner")).totp_confirmed is True


@pytest.mark.parametrize("code", NON_ASCII_CODES)
def test_a_non_ascii_code_that_reaches_sign_in_is_a_wrong_code_counted_and_audited(
    alpha, enrolled, recorded, code
):
    """Behind the API's check (another caller, a future edge), the service must not crash either."""
    with in_context(alpha.org, role="anonymous"):
        result = services.sign_in(
            org=alpha.org,
            email=alpha.email("staff"),
            password=PASSWORD,
            totp_code=code,
            request_id="test",
            source_ip="192.0.2.1",
        )
    assert not result.ok and result.error == "invalid_credentials"
    assert reload(alpha.membership("staff")).failed_logins == 1
    assert ("mfa", "failure") in {(e["kind"], e["outcome"]) for e in recorded}
    assert any(e["kind"] == "login" and e["reason"] == "bad_totp" for e in recorded)
    assert services.verify_totp(reload(alpha.user("staff")), code) is False


def test_wrong_codes_after_a_correct_password_are_audited_and_lock_the_membership(
    api, alpha, enrolled, recorded
):
    client = api(alpha.host)
    right = enrolled.now()
    wrong_code = "000000" if right != "000000" else "111111"
    for _ in range(settings.LOGIN_MAX_FAILURES):
        assert_error(
            token(client, alpha.email("staff"), PASSWORD, totp=wrong_code), 401, "invalid_credentials"
        )
    assert reload(alpha.membership("staff")).is_locked
    assert [e["reason"] for e in recorded if e["kind"] == "login"].count(
        "bad_totp"
    ) == settings.LOGIN_MAX_FAILURES
    assert any(e["kind"] == "lockout" for e in recorded)
    # Locked: even the right password and code fail, the same way.
    assert_error(token(client, alpha.email("staff"), PASSWORD, totp=right), 401, "invalid_credentials")


@pytest.mark.parametrize("code", ["12345", "1234567", "12 3456", "abcdef", "12345\n", "-12345", "+12345"])
def test_codes_that_are_not_six_ascii_digits_are_a_400(api, alpha, enrolled, code):
    response = token(api(alpha.host), alpha.email("staff"), PASSWORD, totp=code)
    assert_error(response, 400, "invalid_request")
    assert reload(alpha.membership("staff")).failed_logins == 0


def test_a_wrong_confirmation_code_is_audited(api, alpha, recorded):
    portal = api(alpha.host)
    assert login(portal, alpha.email("practitioner")).status_code == 200
    secret = portal.post("/api/v1/auth/mfa/totp").json()["secret"]
    right = pyotp.TOTP(secret).now()
    wrong_code = "000000" if right != "000000" else "111111"
    assert_error(portal.post("/api/v1/auth/mfa/totp/confirm", {"code": wrong_code}), 400, "invalid_code")
    assert ("mfa", "failure") in {(e["kind"], e["outcome"]) for e in recorded}
