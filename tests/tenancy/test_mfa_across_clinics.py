"""Issue 11, finding 8: MFA across clinics, removal limits, and what a lockout ends.

The model (ADR 0013): the authenticator belongs to the person, so a code enrolled at one clinic is asked for at
every clinic. Removing it needs the current code, is refused while any of the person's active memberships is in
an organization that requires MFA, and a wrong code counts toward the membership's lockout. A lockout is per
membership (ADR 0006) and ends that membership's API tokens and portal sessions.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import timedelta

import pyotp
import pytest
from django.conf import settings
from django.utils import timezone

from tenancy import events
from tenancy.models import ApiToken, Membership, User
from tenancy.services import ensure_member
from tests.conftest import PASSWORD, in_context
from tests.tenancy.test_auth import WRONG, assert_error, login, reload, token

pytestmark = pytest.mark.django_db

LOCUM = "locum@example.test"


@pytest.fixture
def recorded():
    seen: list[dict] = []

    def on_auth(event: events.Authentication) -> None:
        seen.append(asdict(event))

    events.subscribe(events.Authentication, on_auth)
    yield seen
    events.unsubscribe(events.Authentication, on_auth)


def enroll(user) -> pyotp.TOTP:
    secret = pyotp.random_base32()
    User.objects.filter(pk=user.pk).update(totp_secret=secret, totp_confirmed=True, totp_last_counter=0)
    return pyotp.TOTP(secret)


def code_at(totp: pyotp.TOTP, steps: int) -> str:
    """The code `steps` intervals from now (the verifier accepts one step of drift, each counter once)."""
    return totp.at(time.time() + steps * totp.interval)


def wrong(totp: pyotp.TOTP) -> str:
    return next(c for c in ("000000", "111111", "222222") if c not in {code_at(totp, s) for s in (-1, 0, 1)})


@pytest.fixture
def locum(alpha, beta, clinics):
    """A practitioner working at alpha and beta (no MFA required) and at gamma (MFA required)."""
    memberships = {}
    for clinic in (alpha, beta, clinics.gamma):
        with in_context(clinic.org, role="platform"):
            user, membership, _ = ensure_member(
                org=clinic.org, email=LOCUM, role="practitioner", password=PASSWORD
            )
        memberships[clinic.org.slug] = membership
    return user, memberships


def portal_session(api, clinic, totp: pyotp.TOTP | None = None, email: str = LOCUM, step: int = 0):
    portal = api(clinic.host)
    extra = {"totp": code_at(totp, step)} if totp else {}
    response = login(portal, email, **extra)
    assert response.status_code == 200, response.content
    return portal


# -- the model: one authenticator per person ---------------------------------------------------------------


def test_an_authenticator_enrolled_at_one_clinic_is_asked_for_at_every_clinic(api, alpha, locum):
    """By design (ADR 0013): MFA is the person's, so a clinic that does not require it still asks for it."""
    user, _ = locum
    totp = enroll(user)
    assert_error(token(api(alpha.host), LOCUM), 401, "mfa_required")
    assert token(api(alpha.host), LOCUM, totp=totp.now()).status_code == 201


def test_removal_at_a_clinic_without_mfa_is_refused_while_another_clinic_requires_it(
    api, alpha, clinics, locum, recorded
):
    """Before: 204, and the authenticator vanished at gamma, which requires MFA, too."""
    user, _ = locum
    totp = enroll(user)
    portal = portal_session(api, alpha, totp)
    response = portal.delete("/api/v1/auth/mfa/totp", {"code": code_at(totp, 1)})
    body = assert_error(response, 409, "mfa_required_by_organization")
    assert "gamma" not in str(body).lower(), "the refusal names no other organization"
    assert reload(user).totp_confirmed is True
    assert_error(token(api(clinics.gamma.host), LOCUM), 401, "mfa_required")
    assert any(e["kind"] == "mfa" and e["outcome"] == "refused" for e in recorded)


def test_removal_is_allowed_once_no_active_membership_requires_mfa(api, alpha, clinics, locum, recorded):
    user, memberships = locum
    totp = enroll(user)
    with in_context(clinics.gamma.org):
        Membership.objects.filter(pk=memberships["gamma"].pk).update(is_active=False)
    portal = portal_session(api, alpha, totp)
    assert portal.delete("/api/v1/auth/mfa/totp", {"code": code_at(totp, 1)}).status_code == 204
    assert reload(user).totp_confirmed is False
    assert any(e["kind"] == "mfa" and e["outcome"] == "removed" for e in recorded)


# -- wrong codes on removal --------------------------------------------------------------------------------


def test_wrong_codes_on_removal_count_toward_the_lockout_which_ends_the_session(api, alpha, recorded):
    """Before: unlimited 400s, nothing counted; an attacker holding a session could try every code."""
    user = alpha.user("practitioner")
    totp = enroll(user)
    portal = portal_session(api, alpha, totp, email=alpha.email("practitioner"))
    bad = wrong(totp)
    for _ in range(settings.LOGIN_MAX_FAILURES):
        assert_error(portal.delete("/api/v1/auth/mfa/totp", {"code": bad}), 400, "invalid_code")
    assert reload(alpha.membership("practitioner")).is_locked
    failures = [e for e in recorded if e["kind"] == "mfa" and e["outcome"] == "failure"]
    assert len(failures) == settings.LOGIN_MAX_FAILURES
    assert any(e["kind"] == "lockout" for e in recorded)
    # The lockout ended the session that was guessing: even the right code cannot be tried any more.
    assert_error(portal.delete("/api/v1/auth/mfa/totp", {"code": code_at(totp, 1)}), 401, "session_revoked")
    assert reload(user).totp_confirmed is True
    assert_error(portal.get("/api/v1/auth/me"), 401, "not_authenticated")


def test_wrong_codes_on_removal_with_a_token_revoke_the_token(api, alpha):
    user = alpha.user("staff")
    totp = enroll(user)
    client = api(alpha.host)
    response = token(client, alpha.email("staff"), totp=totp.now())
    assert response.status_code == 201
    client.headers["Authorization"] = f"Bearer {response.json()['token']}"
    for _ in range(settings.LOGIN_MAX_FAILURES):
        assert_error(client.delete("/api/v1/auth/mfa/totp", {"code": wrong(totp)}), 400, "invalid_code")
    assert_error(client.get("/api/v1/auth/me"), 401, "invalid_token")


# -- a lockout ends what the membership holds --------------------------------------------------------------


def test_a_token_and_a_session_from_before_a_lockout_stop_working(api, alpha, beta, locum):
    """Before: a token issued (or a session signed in) before the lockout kept working through it."""
    api_client = api(alpha.host)
    api_client.sign_in_token(LOCUM)
    portal = portal_session(api, alpha)
    at_beta = api(beta.host)
    at_beta.sign_in_token(LOCUM)

    for _ in range(settings.LOGIN_MAX_FAILURES):
        assert_error(token(api(alpha.host), LOCUM, WRONG), 401, "invalid_credentials")
    assert reload(locum[1]["alpha"]).is_locked

    assert_error(api_client.get("/api/v1/auth/me"), 401, "invalid_token")
    assert_error(portal.get("/api/v1/auth/me"), 401, "session_revoked")
    assert_error(portal.get("/api/v1/auth/me"), 401, "not_authenticated")  # signed out for good
    with in_context(alpha.org):
        assert not ApiToken.objects.filter(
            membership_id=locum[1]["alpha"].pk, revoked_at__isnull=True
        ).exists()
    # Lockout is per clinic (ADR 0006): beta's token is not alpha's to end.
    assert at_beta.get("/api/v1/auth/me").status_code == 200


def test_after_the_lockout_ends_a_new_sign_in_works(api, alpha):
    email = alpha.email("staff")
    for _ in range(settings.LOGIN_MAX_FAILURES):
        token(api(alpha.host), email, WRONG)
    with in_context(alpha.org):
        Membership.objects.filter(pk=alpha.membership("staff").pk).update(
            locked_until=timezone.now() - timedelta(seconds=1)
        )
    client = api(alpha.host)
    client.sign_in_token(email)
    assert client.get("/api/v1/auth/me").status_code == 200
    portal = portal_session(api, alpha, email=email)
    assert portal.get("/api/v1/auth/me").status_code == 200


def test_a_session_from_before_a_lockout_cannot_open_a_video_socket(api, alpha, locum):
    """The socket handshake (tenancy.sockets) holds to the same rule as HTTP: a lockout ends older sessions."""
    from importlib import import_module

    from django.contrib.auth import get_user_model

    from tenancy.sockets import member_for_socket

    portal = portal_session(api, alpha)
    store = import_module(settings.SESSION_ENGINE).SessionStore

    def handshake():
        key = portal.client.cookies[settings.SESSION_COOKIE_NAME].value
        session = store(session_key=key)
        user = get_user_model().objects.get(pk=session["_auth_user_id"])
        scope = {"headers": [(b"host", alpha.host.encode())], "session": session, "user": user}
        return member_for_socket(scope)

    assert handshake() is not None
    for _ in range(settings.LOGIN_MAX_FAILURES):
        assert_error(token(api(alpha.host), LOCUM, WRONG), 401, "invalid_credentials")
    assert handshake() is None
