"""Issue 11, finding 7: a clinic administrator cannot link another clinic's account to their clinic.

Before, `POST /api/v1/memberships` with the email of a person who had an account at another clinic created an
active membership at once: the person's one password then worked at the new clinic, whose administrator got a
lockout budget of their own to guess it with. Now every addition is an invitation (ADR 0013): no membership
exists, and the password does nothing at the new clinic, until the invited person accepts with the
single-use token mailed to them and, for an existing account, their own password (and TOTP code).
"""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import timedelta

import pyotp
import pytest
from django.conf import settings
from django.utils import timezone

from tenancy import events
from tenancy.models import Invitation, Membership, User
from tests.conftest import PASSWORD, in_context
from tests.tenancy.test_auth import WRONG, assert_error, login, token

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "Chosen-At-Acceptance-2026"
TOKEN_RE = re.compile(r"tmi_[A-Za-z0-9_-]{40,}")


@pytest.fixture
def recorded():
    """Every sign-in and administration event tenancy publishes (the audit app writes each to its outbox)."""
    seen: list[tuple[str, dict]] = []

    def on_auth(event: events.Authentication) -> None:
        seen.append(("auth", asdict(event)))

    def on_admin(event: events.Administration) -> None:
        seen.append(("admin", asdict(event)))

    events.subscribe(events.Authentication, on_auth)
    events.subscribe(events.Administration, on_admin)
    yield seen
    events.unsubscribe(events.Authentication, on_auth)
    events.unsubscribe(events.Administration, on_admin)


@pytest.fixture
def alpha_admin(api, alpha):
    client = api(alpha.host)
    client.sign_in_token(alpha.email("org_admin"))
    return client


def invite(admin, email: str, role: str = "staff", display_name: str = ""):
    return admin.post("/api/v1/memberships", {"email": email, "role": role, "display_name": display_name})


def mailed_token(mailoutbox, email: str) -> str:
    """The token from the last invitation mailed to `email`: only the invited address ever receives it."""
    mails = [m for m in mailoutbox if m.to == [email]]
    assert mails, f"no invitation mailed to {email}"
    found = TOKEN_RE.findall(mails[-1].body)
    assert len(found) == 1, mails[-1].body
    return found[0]


def accept(client, raw_token: str, password: str = PASSWORD, **extra):
    return client.post("/api/v1/invitations/accept", {"token": raw_token, "password": password, **extra})


def alpha_membership_of(alpha, user) -> Membership | None:
    with in_context(alpha.org):
        return Membership.objects.filter(user_id=user.pk).first()


# -- the attack --------------------------------------------------------------------------------------------


def test_adding_another_clinics_user_does_not_make_their_password_work_here(api, alpha, beta, alpha_admin):
    """Before: 201, an active membership, and beta's practitioner's password signed in at alpha."""
    victim = beta.email("practitioner")
    response = invite(alpha_admin, victim, role="org_admin")
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "pending"

    assert alpha_membership_of(alpha, beta.user("practitioner")) is None
    assert_error(token(api(alpha.host), victim), 401, "invalid_credentials")
    assert_error(login(api(alpha.host), victim), 401, "invalid_credentials")
    # alpha gets no guessing budget: the right and the wrong password answer exactly alike, nothing is counted.
    right, wrong = token(api(alpha.host), victim), token(api(alpha.host), victim, WRONG)
    assert right.content == wrong.content
    listing = alpha_admin.get("/api/v1/memberships").json()["results"]
    assert victim not in {row["email"] for row in listing}
    # ... and beta's own membership is untouched.
    assert token(api(beta.host), victim).status_code == 201


def test_the_administrator_never_sees_the_token_only_the_invited_address_gets_it(
    alpha_admin, beta, mailoutbox
):
    victim = beta.email("practitioner")
    response = invite(alpha_admin, victim)
    raw = mailed_token(mailoutbox, victim)
    assert raw not in response.content.decode()
    assert raw not in alpha_admin.get("/api/v1/invitations").content.decode()
    assert all(m.to == [victim] for m in mailoutbox)
    with in_context(beta.org):  # another clinic sees none of alpha's invitations
        assert not Invitation.objects.exists()


def test_an_invitation_cannot_be_accepted_without_the_mailed_token(api, alpha, beta, alpha_admin):
    invite(alpha_admin, beta.email("practitioner"))
    for guess in ("tmi_" + "A" * 43, "", "x" * 100, "tmi_\u00e9\u00e9"):
        response = accept(api(alpha.host), guess)
        assert response.status_code in (400, 404), response.content
        assert_error(response, response.status_code)
    assert alpha_membership_of(alpha, beta.user("practitioner")) is None


def test_guessing_the_password_at_acceptance_is_limited_and_audited(
    api, alpha, beta, alpha_admin, mailoutbox, recorded
):
    """Even someone holding the mailed token gets LOGIN_MAX_FAILURES guesses, then the invitation is void."""
    victim = beta.email("practitioner")
    invite(alpha_admin, victim)
    raw = mailed_token(mailoutbox, victim)
    client = api(alpha.host)
    for _ in range(settings.LOGIN_MAX_FAILURES):
        assert_error(accept(client, raw, WRONG), 401, "invalid_credentials")
    assert_error(accept(client, raw, PASSWORD), 404, "invitation_invalid")
    assert alpha_membership_of(alpha, beta.user("practitioner")) is None
    failures = [e for kind, e in recorded if kind == "auth" and e["kind"] == "invitation"]
    assert [e["outcome"] for e in failures] == ["failure"] * (settings.LOGIN_MAX_FAILURES + 1)
    assert failures[settings.LOGIN_MAX_FAILURES - 1]["reason"] == "bad_password; invitation void"
    # The failures name no user: alpha's log must not learn which account the address has elsewhere.
    assert all(e["actor"]["user"] is None for e in failures)
    # The failures at alpha cost beta nothing.
    assert token(api(beta.host), victim).status_code == 201


# -- accepting ---------------------------------------------------------------------------------------------


def test_the_invited_person_accepts_with_the_token_and_their_password(
    api, alpha, beta, alpha_admin, mailoutbox, recorded
):
    victim = beta.email("practitioner")
    invitation_id = invite(alpha_admin, victim, role="practitioner", display_name="Dr Visiting").json()["id"]
    raw = mailed_token(mailoutbox, victim)

    response = accept(api(alpha.host), raw)
    assert response.status_code == 200, response.content
    assert response.json() == {"organization": "alpha", "role": "practitioner"}
    membership = alpha_membership_of(alpha, beta.user("practitioner"))
    assert membership is not None and membership.is_active and membership.role == "practitioner"
    with in_context(alpha.org):
        assert Membership.objects.get(pk=membership.pk).display_name == "Dr Visiting"
    client = api(alpha.host)
    client.sign_in_token(victim)
    assert client.get("/api/v1/auth/me").json()["role"] == "practitioner"
    # Single use.
    assert_error(accept(api(alpha.host), raw), 404, "invitation_invalid")
    statuses = {row["id"]: row["status"] for row in alpha_admin.get("/api/v1/invitations").json()["results"]}
    assert statuses[invitation_id] == "accepted"
    # Each step is in the audit trail: the invitation, the acceptance, the membership it created.
    admin_actions = [e["action"] for kind, e in recorded if kind == "admin"]
    assert admin_actions[:1] == ["member_invite"] and "member_add" in admin_actions
    accepted = [e for kind, e in recorded if kind == "auth" and e["kind"] == "invitation"]
    assert accepted[0]["outcome"] == "accepted"
    assert accepted[0]["actor"]["user"] == str(beta.user("practitioner").pk)


def test_an_existing_account_with_mfa_accepts_only_with_its_code(api, alpha, beta, alpha_admin, mailoutbox):
    victim = beta.email("staff")
    secret = pyotp.random_base32()
    User.objects.filter(pk=beta.user("staff").pk).update(
        totp_secret=secret, totp_confirmed=True, totp_last_counter=0
    )
    invite(alpha_admin, victim)
    raw = mailed_token(mailoutbox, victim)
    client = api(alpha.host)
    assert_error(accept(client, raw), 401, "mfa_required")
    right = pyotp.TOTP(secret).now()
    assert_error(
        accept(client, raw, totp="000000" if right != "000000" else "111111"), 401, "invalid_credentials"
    )
    assert alpha_membership_of(alpha, beta.user("staff")) is None
    assert accept(client, raw, totp=right).status_code == 200


def test_a_new_person_chooses_their_password_when_accepting(api, alpha, alpha_admin, mailoutbox):
    email = "new.person@example.test"
    response = invite(alpha_admin, email, display_name="New Person")
    assert response.status_code == 202
    assert User.objects.get_by_email(email) is None, "no account exists before acceptance"
    raw = mailed_token(mailoutbox, email)

    body = assert_error(accept(api(alpha.host), raw, "short"), 400, "invalid_request")
    assert "password" in body["error"]["fields"]
    assert accept(api(alpha.host), raw, NEW_PASSWORD).status_code == 200
    assert User.objects.get_by_email(email).password.startswith("argon2")
    assert token(api(alpha.host), email, NEW_PASSWORD).status_code == 201


def test_an_invitation_is_bound_to_its_clinic_expires_and_can_be_revoked(
    api, alpha, beta, alpha_admin, mailoutbox
):
    victim = beta.email("auditor")
    invitation_id = invite(alpha_admin, victim).json()["id"]
    raw = mailed_token(mailoutbox, victim)
    # At another clinic's host the token means nothing.
    assert_error(accept(api(beta.host), raw), 404, "invitation_invalid")
    # Expired.
    with in_context(alpha.org):
        Invitation.objects.filter(pk=invitation_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert_error(accept(api(alpha.host), raw), 404, "invitation_invalid")

    # Inviting again replaces the open invitation: a new token, the old one dead. Revoked: dead too.
    email = beta.email("staff")
    invite(alpha_admin, email)
    first = mailed_token(mailoutbox, email)
    second_id = invite(alpha_admin, email).json()["id"]
    second = mailed_token(mailoutbox, email)
    assert first != second
    assert_error(accept(api(alpha.host), first), 404, "invitation_invalid")
    assert alpha_admin.delete(f"/api/v1/invitations/{second_id}").status_code == 204
    assert_error(accept(api(alpha.host), second), 404, "invitation_invalid")
    assert_error(alpha_admin.delete(f"/api/v1/invitations/{second_id}"), 409, "invitation_not_pending")
    assert alpha_membership_of(alpha, beta.user("staff")) is None


def test_only_administrators_invite_and_see_invitations(api, alpha, beta):
    staff = api(alpha.host)
    staff.sign_in_token(alpha.email("staff"))
    assert (
        staff.post("/api/v1/memberships", {"email": beta.email("staff"), "role": "staff"}).status_code == 403
    )
    assert staff.get("/api/v1/invitations").status_code == 403


def test_inviting_a_current_member_is_a_conflict(alpha_admin, alpha):
    assert_error(invite(alpha_admin, alpha.email("staff").upper()), 409, "already_member")


def test_the_runtime_role_cannot_create_invitations_outside_an_administrators_context(alpha):
    """Row-level security: only an administrator's (or the platform's) context inserts an invitation."""
    from django.db import DatabaseError, transaction

    with (
        in_context(alpha.org, role="staff"),
        pytest.raises(DatabaseError, match="row-level security"),
        transaction.atomic(),
    ):
        Invitation(
            org_id=alpha.org.id,
            email="x@example.test",
            display_name="",
            role="org_admin",
            account_hash="u1:x",
            token_hash="0" * 64,
            expires_at=timezone.now() + timedelta(hours=1),
        ).save()


def test_an_invitation_that_cannot_be_mailed_is_a_503_and_leaves_nothing_behind(alpha, alpha_admin, settings):
    """A real SMTP connection to a port where nothing listens: the failure is loud and nothing is saved."""
    import socket

    with socket.socket() as probe:  # a free port, closed again: connecting to it is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 5
    response = invite(alpha_admin, "unmailable@example.test")
    assert_error(response, 503, "service_unavailable")
    with in_context(alpha.org):
        assert not Invitation.objects.filter(email="unmailable@example.test").exists()


def test_an_invitation_travels_by_real_smtp_to_the_demos_mailbox_and_carries_no_health_information(
    alpha, alpha_admin, settings, tmp_path, api
):
    """Through the local SMTP server `make run` starts (devstack/mail.py): the mail is on disk, it carries the
    token and the clinic's host, and the token from the file is the one that works."""
    import email
    import socket

    from devstack.mail import LocalMail

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mailbox = LocalMail(tmp_path / "mail", port)
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 5
    mailbox.start()
    try:
        assert invite(alpha_admin, "by.smtp@example.test").status_code == 202
    finally:
        mailbox.stop()
    [path] = mailbox.messages()
    message = email.message_from_bytes(path.read_bytes())
    assert message["To"] == "by.smtp@example.test"
    body = message.get_payload(decode=True).decode()
    [raw_token] = TOKEN_RE.findall(body)
    assert alpha.host in body
    for phi in ("birth", "health card", "diagnos"):
        assert phi not in body.lower()
    accepted = accept(api(alpha.host), raw_token, password=NEW_PASSWORD)
    assert accepted.status_code == 200, accepted.content
