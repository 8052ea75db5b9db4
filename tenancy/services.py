"""Tenancy's rules: host resolution, sign-in, tokens, MFA, organizations and memberships.

Views and commands call these functions and translate their results; none of the rules live in a view.
Every function that touches tenant tables expects to run inside a tenant context.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import secrets
import smtplib
import time
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta

import pyotp
from django.conf import settings
from django.contrib.auth.hashers import check_password, make_password
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from . import events
from .context import platform_context, require_context
from .errors import ApiError, RecordedFailure, ServiceUnavailable, TenancyCode
from .models import (
    ApiToken,
    Domain,
    Invitation,
    Membership,
    Organization,
    PurposeOfUse,
    Role,
    User,
    email_lookup_hash,
)

logger = logging.getLogger("tenancy.auth")
auth_events_logger = logging.getLogger("audit.auth")

# Checked against when the account is unknown, so a miss costs the same Argon2 work as a hit.
_DUMMY_HASH: str | None = None


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = make_password(secrets.token_urlsafe(16))
    return _DUMMY_HASH


# -- organizations and hosts ---------------------------------------------------------------------------


def find_org_id_for_host(hostname: str) -> uuid.UUID | None:
    """Which organization serves this hostname (hostnames are public routing data, like DNS)."""
    if not hostname or len(hostname) > 253:
        return None
    with platform_context():
        return Domain.objects.filter(hostname=hostname).values_list("org_id", flat=True).first()


_org_cache: dict[uuid.UUID, tuple[Organization, float]] = {}
ORG_CACHE_SECONDS = 10.0


def get_organization(org_id: uuid.UUID) -> Organization:
    """The request's organization (settings and branding), kept in process for a few seconds: it is read on
    every request and changes rarely; a settings change reaches other workers within ORG_CACHE_SECONDS."""
    require_context(Organization)
    cached = _org_cache.get(org_id)
    if cached is not None and cached[1] > time.monotonic():
        return cached[0]
    org = Organization.objects.get(id=org_id)
    _org_cache[org_id] = (org, time.monotonic() + ORG_CACHE_SECONDS)
    return org


def forget_organization(org_id: uuid.UUID | None = None) -> None:
    if org_id is None:
        _org_cache.clear()
    else:
        _org_cache.pop(org_id, None)


def create_organization(
    *, slug: str, name: str, domains: list[str], require_mfa: bool = True, **branding
) -> tuple[Organization, bool]:
    """Create an organization with its portal domains; returns (org, created). Idempotent by slug."""
    with platform_context():
        org = Organization.objects.filter(slug=slug).first()
        created = org is None
        if org is None:
            org = Organization.objects.create(slug=slug, name=name, require_mfa=require_mfa, **branding)
    from .crypto.operations import provision_org_key

    provision_org_key(org.id)  # the organization's own Transit key, before any of its data exists
    with platform_context():
        for i, hostname in enumerate(domains):
            hostname = hostname.lower().rstrip(".")
            existing = Domain.objects.filter(hostname=hostname).first()
            if existing is None:
                Domain(org=org, hostname=hostname, is_primary=(i == 0)).save()
            elif existing.org_id != org.id:
                raise ValueError(f"domain {hostname} already belongs to another organization")
    return org, created


def ensure_member(
    *, org: Organization, email: str, role: str, password: str | None, full_name: str = ""
) -> tuple[User, Membership, bool]:
    """Create the user if needed and give them `role` in `org`. Idempotent; returns (user, membership, created).

    An existing user's password is left alone: the operator adding them to a second clinic does not reset it.
    """
    require_context(Membership)
    if role not in Role.values:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(Role.values)}")
    email = email.strip().lower()
    user = User.objects.get_by_email(email)
    if user is None:
        user = User.objects.create_user(email=email, password=password)
    membership = Membership.objects.filter(user=user).first()
    created = membership is None
    if membership is None:
        # What this organization was told, encrypted under its key; nothing is copied from another clinic.
        membership = Membership(org_id=org.id, user=user, role=role, email=email, display_name=full_name)
        membership.save()
    elif membership.role != role:
        membership.role = role
        membership.save(update_fields=["role"])
    return user, membership, created


def check_not_already_member(email: str) -> None:
    """409 if the address (or the account it signs in to) already has a membership in this organization."""
    require_context(Membership)
    if (
        Membership.objects.filter(email=email).exists()  # blind index, row-level security: this org only
        or Membership.objects.filter(user__email_hash=email_lookup_hash(email)).exists()
    ):
        raise ApiError(
            TenancyCode.ALREADY_MEMBER,
            "This person is already a member; change their role instead.",
            fields={"email": ["Already a member of this organization."]},
        )


# -- administration events ------------------------------------------------------------------------------


def _record_administration(
    *, org_id: uuid.UUID, action: str, resource_type: str, resource_id: uuid.UUID, detail: dict
) -> None:
    """Membership, invitation and role changes go to the audit log (tenancy.events.Administration)."""
    events.publish(
        events.Administration(
            org_id=str(org_id),
            actor=events.Actor.from_context(),
            request_id=events.context_request_id(),
            action=action,
            resource_type=resource_type,
            resource_id=str(resource_id),
            detail=detail,
        )
    )


# -- invitations ---------------------------------------------------------------------------------------

INVITATION_TOKEN_PREFIX = "tmi_"


def invitation_ttl() -> timedelta:
    return timedelta(hours=getattr(settings, "INVITATION_TTL_HOURS", 72))


def _send_invitation(*, org: Organization, email: str, raw_token: str, accept_url: str) -> None:
    """Deliver the token to the invited address, and nowhere else (not to the administrator, not to a log).

    Sent before the transaction commits: a mail service that refuses is a 503 and leaves no invitation behind.
    """
    name = org.display_name or org.name
    hours = int(invitation_ttl().total_seconds() // 3600)
    body = (
        f"{name} has invited you to its portal.\n\n"
        f"To accept, within {hours} hours, send this invitation code to {accept_url}\n"
        "together with your password if you already have an account on this service, or with the password you\n"
        "choose if you do not:\n\n"
        f"    {raw_token}\n\n"
        "The code works once. If you did not expect this invitation, ignore this message: nothing changes until\n"
        "you accept it.\n"
    )
    try:
        send_mail(f"Invitation to {name}", body, None, [email], fail_silently=False)
    except (OSError, smtplib.SMTPException) as exc:
        logger.warning("invitation mail not sent org=%s error=%s", org.id, type(exc).__name__)
        raise ServiceUnavailable(
            "mail", "The invitation could not be sent: the mail service is unavailable. Nothing was saved."
        ) from exc


def invite_member(
    *,
    org: Organization,
    email: str,
    role: str,
    display_name: str,
    invited_by: User,
    accept_url: str,
) -> Invitation:
    """An administrator invites a person; nobody becomes a member until the person accepts (ADR 0013).

    The same for an address with an account elsewhere and for a new one: the answer, the stored row and the
    mail are identical, so this reveals nothing about other clinics. An open invitation to the same address
    is replaced (its token stops working). The token goes only to the address.
    """
    require_context(Invitation)
    if role not in Role.values:
        raise ApiError(
            TenancyCode.INVALID_ROLE,
            "Unknown role.",
            fields={"role": [f"Choose one of {', '.join(Role.values)}."]},
        )
    email = email.strip().lower()
    check_not_already_member(email)
    now = timezone.now()
    replaced = list(
        Invitation.objects.filter(email=email, accepted_at__isnull=True, revoked_at__isnull=True).values_list(
            "id", flat=True
        )
    )
    if replaced:
        Invitation.objects.filter(pk__in=replaced).update(revoked_at=now)
    raw = INVITATION_TOKEN_PREFIX + secrets.token_urlsafe(32)
    invitation = Invitation(
        org_id=org.id,
        email=email,
        display_name=display_name,
        role=role,
        account_hash=email_lookup_hash(email),
        token_hash=hash_token(raw),
        invited_by=invited_by,
        created_at=now,
        expires_at=now + invitation_ttl(),
    )
    invitation.save()
    _record_administration(
        org_id=org.id,
        action="member_invite",
        resource_type="Invitation",
        resource_id=invitation.pk,
        detail={"role": role, "replaced": [str(pk) for pk in replaced]},
    )
    _send_invitation(org=org, email=email, raw_token=raw, accept_url=accept_url)
    return invitation


def revoke_invitation(*, invitation: Invitation) -> None:
    require_context(Invitation)
    if invitation.status != "pending":
        raise ApiError(TenancyCode.INVITATION_NOT_PENDING, f"This invitation is already {invitation.status}.")
    Invitation.objects.filter(pk=invitation.pk).update(revoked_at=timezone.now())
    _record_administration(
        org_id=invitation.org_id,
        action="member_invite_revoke",
        resource_type="Invitation",
        resource_id=invitation.pk,
        detail={"role": invitation.role},
    )


def accept_invitation(
    *, org: Organization, token: str, password: str, totp_code: str, request_id: str, source_ip: str | None
) -> Membership:
    """The invited person accepts with the token they received, proving who they are (ADR 0013).

    For an existing account: its password, and its TOTP code when it has one. A wrong one is audited and
    counted against the invitation, which is void after LOGIN_MAX_FAILURES. For an address with no account
    (or one whose account never had a password) the password given becomes the account's. Then, and only then,
    the membership exists. Every outcome is an audit event of kind "invitation".
    """
    require_context(Invitation)

    def event(outcome: str, reason: str = "", user_id: uuid.UUID | None = None) -> None:
        record_auth_event(
            kind="invitation",
            outcome=outcome,
            org_id=org.id,
            user_id=user_id,
            request_id=request_id,
            source_ip=source_ip,
            reason=reason,
        )

    invitation = None
    if token.startswith(INVITATION_TOKEN_PREFIX) and len(token) <= 100:
        invitation = Invitation.objects.select_for_update().filter(token_hash=hash_token(token)).first()
    if invitation is None or invitation.status != "pending":
        event("failure", "unknown_token" if invitation is None else invitation.status)
        raise RecordedFailure(
            TenancyCode.INVITATION_INVALID,
            "This invitation is not valid: it was used, replaced or revoked, or it expired. Ask to be invited again.",
        )

    def refuse(reason: str) -> RecordedFailure:
        # No user id in the event: this clinic must not learn which account the address has elsewhere.
        attempts = invitation.failed_attempts + 1  # the row is locked (select_for_update)
        voided = attempts >= settings.LOGIN_MAX_FAILURES
        Invitation.objects.filter(pk=invitation.pk).update(
            failed_attempts=attempts, revoked_at=timezone.now() if voided else None
        )
        event("failure", reason + ("; invitation void" if voided else ""))
        return RecordedFailure(
            TenancyCode.INVALID_CREDENTIALS,
            "The password or code is not correct, or the invitation is no longer valid.",
        )

    user = User.objects.filter(email_hash=invitation.account_hash).first()
    if user is not None and not user.is_active:
        check_password(password, _dummy_hash())
        raise refuse("inactive_account")
    if user is None or not user.has_usable_password():
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise ApiError(
                TenancyCode.INVALID_REQUEST,
                "Choose a stronger password.",
                fields={"password": list(exc.messages)},
            ) from None
        if user is None:
            user = User(email_hash=invitation.account_hash)
        user.set_password(password)
        user.save()
    else:
        if not user.check_password(password):
            raise refuse("bad_password")
        if user.totp_confirmed:
            if not totp_code:
                event("challenge", "mfa_required")
                raise RecordedFailure(
                    TenancyCode.MFA_REQUIRED,
                    "Enter the code from your authenticator app.",
                    fields={"totp": ["Required."]},
                )
            if not verify_totp(user, totp_code):
                raise refuse("bad_totp")

    now = timezone.now()
    if Membership.objects.filter(user=user).exists():
        Invitation.objects.filter(pk=invitation.pk).update(revoked_at=now)
        event("failure", "already_member", user.pk)
        raise RecordedFailure(TenancyCode.ALREADY_MEMBER, "You are already a member of this organization.")
    membership = Membership(
        org_id=org.id,
        user=user,
        role=invitation.role,
        email=invitation.email,
        display_name=invitation.display_name,
    )
    membership.save()
    Invitation.objects.filter(pk=invitation.pk).update(accepted_at=now, membership=membership)
    event("accepted", user_id=user.pk)
    _record_administration(
        org_id=org.id,
        action="member_add",
        resource_type="Membership",
        resource_id=membership.pk,
        detail={"role": invitation.role, "invitation": str(invitation.pk)},
    )
    return membership


# -- sign-in events ------------------------------------------------------------------------------------


def record_auth_event(
    *,
    kind: str,
    outcome: str,
    org_id: uuid.UUID | None,
    request_id: str,
    source_ip: str | None,
    user_id: uuid.UUID | None = None,
    email: str | None = None,
    reason: str = "",
) -> None:
    """The one place every sign-in success, failure, lockout, MFA event and sign-out goes through.

    Published to the audit log (tenancy.events.Authentication) and logged. The email is hashed: a failure for
    an unknown address must not put that address in a log.
    """
    email_hash = hashlib.sha256(email.encode()).hexdigest()[:16] if email else ""
    actor = events.Actor.from_context()
    if user_id:
        # The person signing in, who is not yet (or no longer) the context's user; the context's address
        # stands when the caller could not tell one.
        actor = replace(actor, user=str(user_id), ip=source_ip or actor.ip)
    events.publish(
        events.Authentication(
            org_id=str(org_id) if org_id else "",
            actor=actor,
            request_id=request_id or events.context_request_id(),
            kind=kind,
            outcome=outcome,
            reason=reason,
            email_hash=email_hash,
        )
    )
    auth_events_logger.info(
        "auth_event kind=%s outcome=%s org=%s user=%s email_sha256=%s reason=%s request_id=%s ip=%s",
        kind,
        outcome,
        org_id,
        user_id,
        email_hash,
        reason,
        request_id,
        source_ip,
    )


# -- sign-in -------------------------------------------------------------------------------------------


@dataclass
class SignIn:
    ok: bool
    user: User | None = None
    membership: Membership | None = None
    error: str = ""  # invalid_credentials | mfa_required
    mfa_enrollment_required: bool = False


INVALID = SignIn(ok=False, error="invalid_credentials")


def _register_failure(membership: Membership, request_id: str, source_ip: str | None) -> bool:
    """Count a failure against this membership only (a clinic cannot lock a person out of another).

    Wrong passwords and wrong TOTP codes (at sign-in, and when removing the authenticator) all count. Reaching
    the limit locks the membership and ends what it already holds here: its API tokens are revoked and its
    portal sessions void (`sessions_revoked_at`), so a credential obtained before the lockout stops working.
    Returns whether this failure locked the membership.
    """
    Membership.objects.filter(pk=membership.pk).update(failed_logins=F("failed_logins") + 1)
    failures = Membership.objects.filter(pk=membership.pk).values_list("failed_logins", flat=True).get()
    if failures < settings.LOGIN_MAX_FAILURES:
        return False
    now = timezone.now()
    until = now + timedelta(minutes=settings.LOGIN_LOCKOUT_MINUTES)
    Membership.objects.filter(pk=membership.pk).update(
        locked_until=until, failed_logins=0, sessions_revoked_at=now
    )
    revoked = ApiToken.objects.filter(membership_id=membership.pk, revoked_at__isnull=True).update(
        revoked_at=now
    )
    record_auth_event(
        kind="lockout",
        outcome="locked",
        org_id=membership.org_id,
        user_id=membership.user_id,
        request_id=request_id,
        source_ip=source_ip,
        reason=f"{settings.LOGIN_MAX_FAILURES} failures; {revoked} tokens revoked, sessions ended",
    )
    return True


def check_totp_code_format(code: object) -> bool:
    """Six ASCII digits. str.isdigit() and `\\d` also take fullwidth, Arabic-Indic or superscript digits,
    which secrets.compare_digest refuses with a TypeError (issue 11: a 500 after a correct password)."""
    return isinstance(code, str) and len(code) == 6 and code.isascii() and code.isdigit()


def verify_totp(user: User, code: str) -> bool:
    """A TOTP code for this user, accepted once (a replayed code within its window is refused).

    Anything that is not six ASCII digits is simply a wrong code: the caller counts and audits it like one.
    """
    if not user.totp_secret or not check_totp_code_format(code):
        return False
    totp = pyotp.TOTP(user.totp_secret)
    now = timezone.now().timestamp()
    for drift in (0, -1, 1):
        counter = int(now // totp.interval) + drift
        if counter > user.totp_last_counter and secrets.compare_digest(
            totp.at(counter * totp.interval).encode("ascii"), code.encode("ascii")
        ):
            updated = User.objects.filter(pk=user.pk, totp_last_counter__lt=counter).update(
                totp_last_counter=counter
            )
            return updated == 1
    return False


def sign_in(
    *, org: Organization, email: str, password: str, totp_code: str, request_id: str, source_ip: str | None
) -> SignIn:
    """Check a sign-in attempt against this organization only.

    Unknown email, a user who is not a member here, a locked account and a wrong password all give the same
    answer, with the same Argon2 cost, so nothing reveals whether the account exists in another clinic.
    """
    require_context(Membership)
    email = (email or "").strip().lower()
    user = User.objects.get_by_email(email) if email else None
    if user is not None and not user.is_active:
        user = None
    membership = (
        Membership.objects.filter(user=user, is_active=True).defer("email", "display_name").first()
        if user is not None
        else None
    )

    def fail(reason: str) -> SignIn:
        record_auth_event(
            kind="login",
            outcome="failure",
            org_id=org.id,
            user_id=user.pk if membership and user is not None else None,
            email=email,
            request_id=request_id,
            source_ip=source_ip,
            reason=reason,
        )
        return INVALID

    if user is None or membership is None:
        check_password(password, _dummy_hash())
        return fail("unknown_account")
    if membership.is_locked:
        check_password(password, _dummy_hash())
        return fail("locked")
    if not user.check_password(password):
        _register_failure(membership, request_id, source_ip)
        return fail("bad_password")

    if user.totp_confirmed:
        if not totp_code:
            record_auth_event(
                kind="mfa",
                outcome="challenge",
                org_id=org.id,
                user_id=user.pk,
                request_id=request_id,
                source_ip=source_ip,
            )
            return SignIn(ok=False, error="mfa_required")
        if not verify_totp(user, totp_code):
            _register_failure(membership, request_id, source_ip)
            record_auth_event(
                kind="mfa",
                outcome="failure",
                org_id=org.id,
                user_id=user.pk,
                request_id=request_id,
                source_ip=source_ip,
            )
            return fail("bad_totp")
    Membership.objects.filter(pk=membership.pk).update(failed_logins=0, locked_until=None)
    User.objects.filter(pk=user.pk).update(last_login=timezone.now())
    needs_enrollment = org.require_mfa and not user.totp_confirmed
    record_auth_event(
        kind="login",
        outcome="success",
        org_id=org.id,
        user_id=user.pk,
        request_id=request_id,
        source_ip=source_ip,
        reason="mfa_enrollment_required" if needs_enrollment else "",
    )
    return SignIn(ok=True, user=user, membership=membership, mfa_enrollment_required=needs_enrollment)


# -- bearer tokens -------------------------------------------------------------------------------------

TOKEN_PREFIX = "tmk_"


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def issue_api_token(*, membership: Membership) -> tuple[str, ApiToken]:
    require_context(ApiToken)
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = timezone.now()
    token = ApiToken(
        org_id=membership.org_id,
        user_id=membership.user_id,
        membership=membership,
        key_hash=hash_token(raw),
        prefix=raw[:10],
        expires_at=now + timedelta(minutes=settings.API_TOKEN_TTL_MINUTES),
        last_used_at=now,
    )
    token.save()
    return raw, token


def find_live_token(raw: str, org: Organization) -> ApiToken | None:
    """The token, if it is this organization's, unrevoked, unexpired and not idle past the org's timeout."""
    require_context(ApiToken)
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > 100:
        return None
    token = ApiToken.objects.select_related("user", "membership").filter(key_hash=hash_token(raw)).first()
    now = timezone.now()
    if token is None or token.revoked_at is not None or token.expires_at <= now:
        return None
    if token.last_used_at + timedelta(minutes=org.idle_timeout_minutes) <= now:
        return None
    if (now - token.last_used_at).total_seconds() > idle_touch_seconds(org.idle_timeout_minutes):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def idle_touch_seconds(idle_timeout_minutes: int) -> float:
    """How stale the last-seen time of a token or session may get before a request writes it again: once a
    minute at most (a write per request cost more than the read it guards), and never more than a quarter of
    the idle timeout, so a client active more often than that is never signed out for idling."""
    return min(60.0, idle_timeout_minutes * 15.0)


def revoke_token(token: ApiToken) -> None:
    require_context(ApiToken)
    forget_token(token.key_hash)
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


# Bearer tokens this worker found in force, by hash: (token with its membership and user, organization id,
# monotonic time until which no idle touch is due). A request with a known token skips the lookup; the
# database still checks the token on that request, in the same statement as the request's context
# (`token_in_force_check`), so a known token is never trusted for anything the database has not confirmed.
_known_tokens: dict[str, tuple[ApiToken, uuid.UUID, float]] = {}
KNOWN_TOKENS_MAX = 10_000


def known_token(raw: str, org: Organization) -> ApiToken | None:
    """A copy of the token this worker found in force for `org` less than an idle-touch interval ago, if any.
    The caller must send `token_in_force_check(token)` with the request's context."""
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > 100:
        return None
    entry = _known_tokens.get(hash_token(raw))
    if entry is None or entry[1] != org.id or entry[2] <= time.monotonic():
        return None
    token = copy.copy(entry[0])  # each request gets its own objects: views may change what they hold
    token.membership = copy.copy(entry[0].membership)
    token.user = copy.copy(entry[0].user)
    return token


def remember_token(token: ApiToken, org: Organization) -> None:
    """Keep a token find_live_token has just found in force, until its next idle touch is due."""
    left = (
        idle_touch_seconds(org.idle_timeout_minutes) - (timezone.now() - token.last_used_at).total_seconds()
    )
    if left <= 0:
        return
    if len(_known_tokens) >= KNOWN_TOKENS_MAX:
        _known_tokens.clear()
    _known_tokens[token.key_hash] = (token, org.id, time.monotonic() + left)


def forget_token(key_hash: str | None = None) -> None:
    """Forget one known token (refused, revoked here), or all of them."""
    if key_hash is None:
        _known_tokens.clear()
    else:
        _known_tokens.pop(key_hash, None)


def token_in_force_check(token: ApiToken) -> tuple[str, list]:
    """The check (an SQL expression and its parameters, sent with the context) that refuses the request's transaction (ContextRefused) unless `token` is still in force
    for the context it travels with (tenancy.rls.TOKEN_IN_FORCE_SQL)."""
    return "public.tenancy_token_in_force(%s)", [token.key_hash]


# -- MFA enrollment ------------------------------------------------------------------------------------


def begin_totp_enrollment(*, user: User, org: Organization, membership: Membership) -> dict:
    if user.totp_confirmed:
        raise ApiError(
            TenancyCode.MFA_ALREADY_ENROLLED, "An authenticator is already enrolled; remove it first."
        )
    secret = pyotp.random_base32()
    User.objects.filter(pk=user.pk).update(totp_secret=secret, totp_last_counter=0)
    uri = pyotp.TOTP(secret).provisioning_uri(
        name=membership.email or str(user.pk), issuer_name=org.display_name or org.name
    )
    return {"secret": secret, "otpauth_uri": uri}


def _mfa_required_by_any_membership(user: User) -> bool:
    """Whether any of the signed-in user's active memberships, in any organization, requires MFA.

    Row-level security hides other organizations' memberships, so this asks the database helper
    `tenancy_my_mfa_required()` (owned by the policy role, ADR 0009), which answers one boolean and only for the
    user of the signed context: it names no organization and cannot be asked about anyone else.
    """
    ctx = require_context(Membership)
    if ctx.user_id != user.pk:
        raise RuntimeError("the MFA requirement is asked for the signed-in user only")
    with connection.cursor() as cursor:
        cursor.execute("SELECT public.tenancy_my_mfa_required()")
        row = cursor.fetchone()
    return bool(row and row[0])


def _mfa_event(
    outcome: str, *, org: Organization, user: User, request_id: str, source_ip: str | None, reason: str = ""
) -> None:
    record_auth_event(
        kind="mfa",
        outcome=outcome,
        org_id=org.id,
        user_id=user.pk,
        request_id=request_id,
        source_ip=source_ip,
        reason=reason,
    )


def _invalid_code() -> RecordedFailure:
    return RecordedFailure(
        TenancyCode.INVALID_CODE, "The code is not valid.", fields={"code": ["The code is not valid."]}
    )


def confirm_totp_enrollment(
    *, user: User, org: Organization, code: str, request_id: str, source_ip: str | None
) -> None:
    """Confirm the authenticator begun with begin_totp_enrollment. A wrong code is audited, not counted toward
    lockout: the person was just shown the secret, so there is nothing to guess."""
    user.refresh_from_db()
    if user.totp_confirmed:
        raise ApiError(TenancyCode.MFA_ALREADY_ENROLLED, "An authenticator is already enrolled.")
    if not user.totp_secret:
        raise ApiError(TenancyCode.MFA_NOT_STARTED, "Start enrollment first.")
    if not verify_totp(user, code):
        _mfa_event(
            "failure",
            org=org,
            user=user,
            request_id=request_id,
            source_ip=source_ip,
            reason="enrollment_bad_code",
        )
        raise _invalid_code()
    User.objects.filter(pk=user.pk).update(totp_confirmed=True)
    _mfa_event("enrolled", org=org, user=user, request_id=request_id, source_ip=source_ip)


def remove_totp(
    *,
    user: User,
    org: Organization,
    membership: Membership,
    code: str,
    request_id: str,
    source_ip: str | None,
) -> None:
    """Remove the person's authenticator, which serves every organization they belong to (ADR 0013).

    Refused while any of their active memberships is in an organization that requires MFA (this one or another;
    the answer does not say which). Otherwise the current code is required, and a wrong one counts toward this
    membership's lockout like a wrong code at sign-in: removal is not a way around the guessing limit.
    """
    user.refresh_from_db()
    if org.require_mfa or _mfa_required_by_any_membership(user):
        _mfa_event(
            "refused",
            org=org,
            user=user,
            request_id=request_id,
            source_ip=source_ip,
            reason="removal_required_by_organization",
        )
        raise RecordedFailure(
            TenancyCode.MFA_REQUIRED_BY_ORGANIZATION,
            "An organization you are a member of requires MFA, so the authenticator cannot be removed.",
        )
    if not user.totp_confirmed:
        raise ApiError(TenancyCode.MFA_NOT_ENROLLED, "No authenticator is enrolled.")
    if not verify_totp(user, code):
        locked = _register_failure(membership, request_id, source_ip)
        _mfa_event(
            "failure",
            org=org,
            user=user,
            request_id=request_id,
            source_ip=source_ip,
            reason="removal_bad_code" + ("; locked" if locked else ""),
        )
        raise _invalid_code()
    User.objects.filter(pk=user.pk).update(totp_confirmed=False, totp_secret="", totp_last_counter=0)
    _mfa_event("removed", org=org, user=user, request_id=request_id, source_ip=source_ip)


# -- purpose of use ------------------------------------------------------------------------------------

ALLOWED_PURPOSES: dict[str, tuple[str, ...]] = {
    Role.PRACTITIONER: (PurposeOfUse.TREATMENT, PurposeOfUse.OPERATIONS, PurposeOfUse.EMERGENCY),
    Role.STAFF: (PurposeOfUse.OPERATIONS,),
    Role.ORG_ADMIN: (PurposeOfUse.OPERATIONS, PurposeOfUse.ANALYTICS),
    Role.AUDITOR: (PurposeOfUse.AUDIT,),
    Role.PATIENT: (PurposeOfUse.TREATMENT,),
}


def check_purpose(role: str, requested: str | None) -> str:
    """The purpose of use this request acts under: the role's default, or an allowed one it asked for."""
    allowed = ALLOWED_PURPOSES.get(role, ())
    if requested is None:
        return allowed[0] if allowed else PurposeOfUse.OPERATIONS
    if not requested.strip():
        # Sent but empty: a client that meant to state a purpose and lost it, not one that left it to the role.
        raise ApiError(
            TenancyCode.INVALID_PURPOSE,
            "X-Purpose-Of-Use is empty: send one of the purposes, or leave the header out for your role's usual one.",
            fields={"X-Purpose-Of-Use": [f"Choose one of {', '.join(PurposeOfUse.values)}."]},
        )
    if requested not in PurposeOfUse.values:
        raise ApiError(
            TenancyCode.INVALID_PURPOSE,
            f"Unknown purpose of use {requested[:40]!r}.",
            fields={"X-Purpose-Of-Use": [f"Choose one of {', '.join(PurposeOfUse.values)}."]},
        )
    if requested not in allowed:
        raise ApiError(
            TenancyCode.PURPOSE_NOT_PERMITTED, f"Your role may not act for the purpose {requested}."
        )
    return requested


# -- memberships ---------------------------------------------------------------------------------------


@transaction.atomic
def change_role(*, membership: Membership, role: str, actor: User) -> Membership:
    if role not in Role.values:
        raise ApiError(
            TenancyCode.INVALID_ROLE,
            "Unknown role.",
            fields={"role": [f"Choose one of {', '.join(Role.values)}."]},
        )
    if membership.user_id == actor.pk and role != Role.ORG_ADMIN:
        raise ApiError(
            TenancyCode.CANNOT_DEMOTE_SELF, "An administrator cannot remove their own administrator role."
        )
    before = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    _record_administration(
        org_id=membership.org_id,
        action="role_change",
        resource_type="Membership",
        resource_id=membership.pk,
        detail={"from": before, "to": role},
    )
    logger.info("membership role changed membership=%s role=%s by=%s", membership.pk, role, actor.pk)
    return membership
