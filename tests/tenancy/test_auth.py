"""Sign-in over HTTP: sessions with CSRF, bearer tokens, Argon2, lockout, MFA, idle sign-out, purpose of use,
and the operators' commands that create organizations and users.
"""

from __future__ import annotations

import time
from datetime import timedelta
from importlib import import_module

import pyotp
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from tenancy.authentication import SESSION_LAST_SEEN
from tenancy.context import platform_context, tenant_context
from tenancy.middleware import host_cache
from tenancy.models import ApiToken, Membership, Organization, User
from tests.conftest import PASSWORD, in_context

pytestmark = pytest.mark.django_db

WRONG = PASSWORD + "-wrong"


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.content)
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "fields"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def csrf(client) -> dict:
    """The header a portal page sends: the current csrftoken cookie (Django rotates it at sign-in)."""
    return {"X-CSRFToken": client.client.cookies["csrftoken"].value}


def login(client, email: str, password: str = PASSWORD, **extra):
    return client.post("/api/v1/auth/login", {"email": email, "password": password, **extra})


def token(client, email: str, password: str = PASSWORD, **extra):
    return client.post("/api/v1/auth/tokens", {"email": email, "password": password, **extra})


def reload(obj):
    if isinstance(obj, Membership):
        with tenant_context(org_id=obj.org_id, role="org_admin"):
            return Membership.objects.get(pk=obj.pk)
    return User.objects.get(pk=obj.pk)


# -- sessions and CSRF ---------------------------------------------------------------------------------------


def test_portal_sign_in_needs_the_csrf_token(api, alpha):
    portal = api(alpha.host, enforce_csrf_checks=True)
    assert_error(login(portal, alpha.email("staff")), 403, "csrf_failed")

    response = portal.get("/api/v1/auth/csrf")
    assert response.status_code == 200 and response.json()["csrf_token"]
    assert "csrftoken" in response.cookies
    assert_error(login(portal, alpha.email("staff"), **{}), 403, "csrf_failed")  # cookie alone is not enough
    wrong = portal.post(
        "/api/v1/auth/login",
        {"email": alpha.email("staff"), "password": PASSWORD},
        **{"X-CSRFToken": "x" * 64},
    )
    assert_error(wrong, 403, "csrf_failed")

    response = portal.post(
        "/api/v1/auth/login", {"email": alpha.email("staff"), "password": PASSWORD}, **csrf(portal)
    )
    assert response.status_code == 200, response.content
    assert response.json()["role"] == "staff" and response.json()["organization"] == "alpha"
    assert "sessionid" in response.cookies
    me = portal.get("/api/v1/auth/me")
    assert me.status_code == 200 and me.json()["user"]["email"] == alpha.email("staff")


def test_a_signed_in_session_needs_csrf_for_every_unsafe_request(api, alpha):
    portal = api(alpha.host, enforce_csrf_checks=True)
    portal.get("/api/v1/auth/csrf")
    assert login(portal, alpha.email("org_admin"), **{}).status_code == 403
    response = portal.post(
        "/api/v1/auth/login", {"email": alpha.email("org_admin"), "password": PASSWORD}, **csrf(portal)
    )
    assert response.status_code == 200
    assert_error(portal.patch("/api/v1/organization", {"display_name": "Forged"}), 403, "csrf_failed")
    assert_error(portal.post("/api/v1/auth/logout"), 403, "csrf_failed")
    assert portal.get("/api/v1/auth/me").status_code == 200  # safe methods need no token

    assert portal.post("/api/v1/auth/logout", **csrf(portal)).status_code == 204
    assert_error(portal.get("/api/v1/auth/me"), 401, "not_authenticated")


def test_a_wrong_password_on_the_portal_is_401_and_sets_no_session(api, alpha):
    response = login(api(alpha.host), alpha.email("staff"), WRONG)
    assert_error(response, 401, "invalid_credentials")
    assert "sessionid" not in response.cookies


# -- bearer tokens -------------------------------------------------------------------------------------------


def test_bearer_token_lifecycle(api, alpha):
    client = api(alpha.host, enforce_csrf_checks=True)  # bearer calls carry no cookie, so no CSRF
    response = token(client, alpha.email("practitioner"))
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_at"]
    client.headers["Authorization"] = f"Bearer {body['token']}"

    me = client.get("/api/v1/auth/me")
    assert me.status_code == 200 and me.json()["role"] == "practitioner"
    assert client.post("/api/v1/auth/logout").status_code == 204
    assert_error(client.get("/api/v1/auth/me"), 401, "invalid_token")
    assert_error(client.post("/api/v1/auth/logout"), 401, "invalid_token")


def test_only_a_hash_of_the_token_is_stored(api, alpha):
    raw = api(alpha.host).sign_in_token(alpha.email("staff"))
    with in_context(alpha.org):
        stored = ApiToken.objects.filter(user_id=alpha.user("staff").pk).order_by("-created_at").first()
    assert raw not in (stored.key_hash, stored.prefix) and len(stored.key_hash) == 64
    assert stored.expires_at <= timezone.now() + timedelta(minutes=settings.API_TOKEN_TTL_MINUTES, seconds=5)


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Bearer tmk_",
        "Bearer tmk_" + "a" * 5000,
        "Bearer not-a-token",
        "Bearer tmk_\u00e9\u00e9",
        "Bearer tmk_x tmk_y",
        "bearer tmk_" + "A" * 43,
    ],
)
def test_bad_bearer_tokens_are_401_invalid_token(api, alpha, header):
    client = api(alpha.host)
    client.headers["Authorization"] = header
    response = client.get("/api/v1/auth/me")
    assert response.status_code == 401, response.content
    assert response.json()["error"]["code"] in ("invalid_token", "not_authenticated")
    assert response["WWW-Authenticate"] == "Bearer"


def test_an_expired_token_is_refused(api, alpha):
    client = api(alpha.host)
    client.sign_in_token(alpha.email("staff"))
    with in_context(alpha.org):
        ApiToken.objects.filter(user_id=alpha.user("staff").pk).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
    assert_error(client.get("/api/v1/auth/me"), 401, "invalid_token")


def test_a_deactivated_membership_loses_its_token_and_its_session(api, alpha):
    client = api(alpha.host)
    client.sign_in_token(alpha.email("staff"))
    portal = api(alpha.host)
    assert login(portal, alpha.email("staff")).status_code == 200
    with in_context(alpha.org):
        Membership.objects.filter(pk=alpha.membership("staff").pk).update(is_active=False)
    assert_error(client.get("/api/v1/auth/me"), 401, "invalid_token")
    assert portal.get("/api/v1/auth/me").status_code in (401, 403)


# -- passwords and lockout -----------------------------------------------------------------------------------


def test_passwords_are_stored_with_argon2(alpha):
    assert reload(alpha.user("staff")).password.startswith("argon2")


def test_lockout_after_repeated_failures_even_the_right_password_then_fails_the_same_way(api, alpha):
    client = api(alpha.host)
    email = alpha.email("staff")
    failures = [token(client, email, WRONG) for _ in range(settings.LOGIN_MAX_FAILURES)]
    assert all(r.status_code == 401 for r in failures)
    assert reload(alpha.membership("staff")).is_locked

    locked = token(client, email)
    assert locked.status_code == 401 and locked.content == failures[0].content
    assert login(client, email).content == failures[0].content
    # The lock ends by itself.
    with in_context(alpha.org):
        Membership.objects.filter(pk=alpha.membership("staff").pk).update(
            locked_until=timezone.now() - timedelta(seconds=1)
        )
    assert token(client, email).status_code == 201


def test_a_success_before_the_limit_resets_the_failure_count(api, alpha):
    client = api(alpha.host)
    email = alpha.email("staff")
    for _ in range(settings.LOGIN_MAX_FAILURES - 1):
        assert token(client, email, WRONG).status_code == 401
    assert token(client, email).status_code == 201
    for _ in range(settings.LOGIN_MAX_FAILURES - 1):
        assert token(client, email, WRONG).status_code == 401
    assert token(client, email).status_code == 201


def test_failures_at_an_org_where_the_user_is_not_a_member_do_not_lock_them(api, alpha, beta):
    """A stranger hammering beta's sign-in with alpha's staff address must not lock alpha's staff out."""
    on_beta = api(beta.host)
    for _ in range(settings.LOGIN_MAX_FAILURES * 3):
        assert token(on_beta, alpha.email("staff"), WRONG).status_code == 401
    membership = reload(alpha.membership("staff"))
    assert not membership.is_locked and membership.failed_logins == 0
    assert token(api(alpha.host), alpha.email("staff")).status_code == 201


# -- MFA -----------------------------------------------------------------------------------------------------


def test_mfa_enrollment_then_codes_then_no_replay(api, clinics):
    gamma = clinics.gamma
    email = gamma.email("org_admin")
    portal = api(gamma.host)

    # Signed in, but only to enroll: everything else answers 403 until an authenticator is confirmed.
    response = login(portal, email)
    assert response.status_code == 200, response.content
    assert response.json()["mfa_enrollment_required"] is True
    for path in ("/api/v1/memberships", "/api/v1/organization"):
        assert_error(portal.get(path), 403, "mfa_enrollment_required")
    assert_error(portal.patch("/api/v1/organization", {"require_mfa": False}), 403, "mfa_enrollment_required")
    assert portal.get("/api/v1/auth/me").json()["mfa_enrollment_required"] is True
    # ... and a bearer token cannot be had instead.
    assert_error(token(api(gamma.host), email), 403, "mfa_enrollment_required")

    response = portal.post("/api/v1/auth/mfa/totp")
    assert response.status_code == 201, response.content
    secret = response.json()["secret"]
    assert response.json()["otpauth_uri"].startswith("otpauth://totp/")
    totp = pyotp.TOTP(secret)
    assert_error(
        portal.post(
            "/api/v1/auth/mfa/totp/confirm", {"code": "000000" if totp.now() != "000000" else "111111"}
        ),
        400,
        "invalid_code",
    )
    assert portal.post("/api/v1/auth/mfa/totp/confirm", {"code": totp.now()}).status_code == 204
    assert portal.get("/api/v1/memberships").status_code == 200
    assert_error(portal.post("/api/v1/auth/mfa/totp"), 409, "mfa_already_enrolled")

    # From now on a password alone is not enough.
    fresh = api(gamma.host)
    body = assert_error(login(fresh, email), 401, "mfa_required")
    assert "totp" in body["error"]["fields"]
    assert_error(token(fresh, email), 401, "mfa_required")
    assert_error(login(fresh, email, totp="12345a"), 400, "invalid_request")  # not six ASCII digits
    wrong_code = "000000" if totp.now() != "000000" else "111111"
    assert_error(login(fresh, email, totp=wrong_code), 401, "invalid_credentials")

    code = totp.at(time.time() + totp.interval)  # the next step: the current one was spent on confirming
    response = login(fresh, email, totp=code)
    assert response.status_code == 200, response.content
    assert response.json()["mfa_enrollment_required"] is False
    assert fresh.get("/api/v1/memberships").status_code == 200
    # The same code again, even moments later, is refused.
    assert_error(login(api(gamma.host), email, totp=code), 401, "invalid_credentials")
    assert_error(token(api(gamma.host), email, totp=code), 401, "invalid_credentials")


def test_a_wrong_password_with_mfa_is_still_just_invalid_credentials(api, clinics):
    gamma = clinics.gamma
    User.objects.filter(pk=gamma.user("staff").pk).update(
        totp_secret=pyotp.random_base32(), totp_confirmed=True
    )
    response = login(api(gamma.host), gamma.email("staff"), WRONG)
    assert_error(response, 401, "invalid_credentials")


def test_removing_the_authenticator_is_refused_where_the_org_requires_mfa(api, clinics):
    gamma = clinics.gamma
    portal = api(gamma.host)
    login(portal, gamma.email("practitioner"))
    secret = portal.post("/api/v1/auth/mfa/totp").json()["secret"]
    assert portal.post("/api/v1/auth/mfa/totp/confirm", {"code": pyotp.TOTP(secret).now()}).status_code == 204
    assert_error(
        portal.delete("/api/v1/auth/mfa/totp", {"code": "123456"}), 409, "mfa_required_by_organization"
    )


# -- idle timeout --------------------------------------------------------------------------------------------


def move_last_seen(client, seconds_ago: float) -> None:
    session = client.client.session
    session[SESSION_LAST_SEEN] = time.time() - seconds_ago
    session.save()


def set_idle_timeout(org, minutes: int) -> None:
    from tenancy.services import forget_organization

    with platform_context():
        Organization.objects.filter(pk=org.id).update(idle_timeout_minutes=minutes)
    forget_organization(org.id)  # a change made behind the API reaches workers within ORG_CACHE_SECONDS


def test_an_idle_session_is_signed_out_after_the_orgs_timeout(api, alpha):
    portal = api(alpha.host)
    assert login(portal, alpha.email("staff")).status_code == 200

    move_last_seen(portal, 2 * 60)  # two minutes idle: fine under the default 15
    assert portal.get("/api/v1/auth/me").status_code == 200

    set_idle_timeout(alpha.org, 1)
    move_last_seen(portal, 2 * 60)
    key = portal.client.cookies["sessionid"].value
    assert_error(portal.get("/api/v1/auth/me"), 401, "session_expired")
    # Signed out for good: the session is gone from the server, not merely refused once.
    assert not import_module(settings.SESSION_ENGINE).SessionStore().exists(key)
    assert_error(portal.get("/api/v1/auth/me"), 401, "not_authenticated")


def test_activity_keeps_a_session_alive(api, alpha):
    set_idle_timeout(alpha.org, 1)
    portal = api(alpha.host)
    assert login(portal, alpha.email("staff")).status_code == 200
    move_last_seen(portal, 50)
    assert portal.get("/api/v1/auth/me").status_code == 200  # refreshes last-seen
    session = portal.client.session
    assert time.time() - session[SESSION_LAST_SEEN] < 5


def test_an_idle_bearer_token_is_refused(api, alpha):
    client = api(alpha.host)
    client.sign_in_token(alpha.email("staff"))
    set_idle_timeout(alpha.org, 5)
    with in_context(alpha.org):
        ApiToken.objects.filter(user_id=alpha.user("staff").pk).update(
            last_used_at=timezone.now() - timedelta(minutes=6)
        )
    assert_error(client.get("/api/v1/auth/me"), 401, "invalid_token")


# -- purpose of use ------------------------------------------------------------------------------------------


def test_purpose_of_use_defaults_to_the_roles_usual_one(api, alpha):
    client = api(alpha.host)
    client.sign_in_token(alpha.email("practitioner"))
    assert client.get("/api/v1/auth/me").json()["purpose_of_use"] == "treatment"
    assert (
        client.get("/api/v1/auth/me", **{"X-Purpose-Of-Use": "emergency"}).json()["purpose_of_use"]
        == "emergency"
    )


@pytest.mark.parametrize(
    "value", ["bogus", "TREATMENT", "treatment ", "treatment,audit", "x" * 8000, "tr\u00e9atment"]
)
def test_an_unknown_purpose_of_use_is_400_invalid_purpose(api, alpha, value):
    client = api(alpha.host)
    client.sign_in_token(alpha.email("practitioner"))
    body = assert_error(client.get("/api/v1/auth/me", **{"X-Purpose-Of-Use": value}), 400, "invalid_purpose")
    assert "X-Purpose-Of-Use" in body["error"]["fields"]
    assert len(response_text := str(body)) < 1000, response_text


@pytest.mark.parametrize(
    "role,purpose",
    [
        ("staff", "treatment"),
        ("auditor", "treatment"),
        ("patient", "analytics"),
        ("practitioner", "audit"),
        ("org_admin", "emergency"),
    ],
)
def test_a_purpose_the_role_may_not_use_is_403(api, alpha, role, purpose):
    client = api(alpha.host)
    client.sign_in_token(alpha.email(role))
    assert_error(client.get("/api/v1/auth/me", **{"X-Purpose-Of-Use": purpose}), 403, "purpose_not_permitted")


# -- operators' commands -------------------------------------------------------------------------------------


@pytest.fixture
def fresh_host_cache():
    host_cache.clear()
    yield
    host_cache.clear()  # these organizations vanish with the test's transaction


def org_by_slug(slug: str) -> Organization | None:
    with platform_context():
        return Organization.objects.filter(slug=slug).first()


def test_create_org_requires_mfa_unless_told_otherwise(fresh_host_cache, capsys):
    call_command("create_org", "--slug", "delta", "--name", "Delta Clinic", "--domain", "delta.localhost")
    assert org_by_slug("delta").require_mfa is True
    call_command(
        "create_org",
        "--slug",
        "epsilon",
        "--name",
        "Epsilon",
        "--domain",
        "epsilon.localhost",
        "--no-require-mfa",
    )
    assert org_by_slug("epsilon").require_mfa is False
    # Idempotent by slug.
    call_command("create_org", "--slug", "delta", "--name", "Delta Clinic", "--domain", "delta.localhost")
    assert "Already present" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--slug", "Bad Slug", "--name", "x", "--domain", "x.localhost"], "slug"),
        (["--slug", "zeta", "--name", "x"], "domain"),
        (["--slug", "zeta", "--name", "x", "--domain", "alpha.localhost"], "another organization"),
        (["--slug", "zeta", "--name", "x", "--domain", "z.localhost", "--idle-timeout", "0"], "idle-timeout"),
    ],
)
def test_create_org_refuses_bad_input_clearly(clinics, fresh_host_cache, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("create_org", *args)


def test_an_org_made_by_the_command_makes_its_users_enroll_mfa(api, fresh_host_cache):
    call_command("create_org", "--slug", "delta", "--name", "Delta Clinic", "--domain", "delta.localhost")
    call_command(
        "create_user",
        "--org",
        "delta",
        "--email",
        "Boss@Delta.test",
        "--role",
        "org_admin",
        "--password",
        PASSWORD,
    )
    response = login(api("delta.localhost"), "boss@delta.test")
    assert response.status_code == 200 and response.json()["mfa_enrollment_required"] is True
    assert_error(token(api("delta.localhost"), "boss@delta.test"), 403, "mfa_enrollment_required")


def test_create_user_is_idempotent_and_keeps_an_existing_password(api, alpha, beta, capsys):
    user = alpha.user("practitioner")
    before = reload(user).password
    call_command(
        "create_user", "--org", "alpha", "--email", alpha.email("practitioner"), "--role", "practitioner"
    )
    call_command(
        "create_user",
        "--org",
        "alpha",
        "--email",
        alpha.email("practitioner"),
        "--role",
        "practitioner",
        "--password",
        "Another-Long-Password-42",
    )
    assert reload(user).password == before
    assert "Already a member" in capsys.readouterr().out
    # Added to a second clinic, the same person keeps their one password.
    call_command("create_user", "--org", "beta", "--email", alpha.email("practitioner"), "--role", "staff")
    assert reload(user).password == before
    assert token(api(beta.host), alpha.email("practitioner")).status_code == 201
    with in_context(alpha.org):
        assert Membership.objects.filter(user_id=user.pk).count() == 1


def test_create_user_makes_a_new_user_who_can_sign_in(api, alpha):
    call_command(
        "create_user",
        "--org",
        "alpha",
        "--email",
        "new.person@alpha.test",
        "--role",
        "staff",
        "--password",
        "A-Sufficiently-Long-Pass-7",
    )
    assert User.objects.get_by_email("new.person@alpha.test").password.startswith("argon2")
    assert token(api(alpha.host), "new.person@alpha.test", "A-Sufficiently-Long-Pass-7").status_code == 201


@pytest.mark.parametrize(
    "args,message",
    [
        (
            [
                "--org",
                "no-such-org",
                "--email",
                "x@y.test",
                "--role",
                "staff",
                "--password",
                "Long-Enough-Pass-99",
            ],
            "no organization",
        ),
        (
            [
                "--org",
                "alpha",
                "--email",
                "x@y.test",
                "--role",
                "superuser",
                "--password",
                "Long-Enough-Pass-99",
            ],
            "invalid choice",
        ),
        (
            [
                "--org",
                "alpha",
                "--email",
                "not-an-email",
                "--role",
                "staff",
                "--password",
                "Long-Enough-Pass-99",
            ],
            "not an email",
        ),
        (["--org", "alpha", "--email", "x@y.test", "--role", "staff", "--password", "short"], "too short"),
        (["--org", "alpha", "--email", "x@y.test", "--role", "staff"], "--password is required"),
    ],
)
def test_create_user_refuses_bad_input_clearly(clinics, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("create_user", *args)
    assert User.objects.get_by_email("x@y.test") is None
