"""Tenancy's rules: host resolution, sign-in, tokens, MFA, organizations and memberships.

Views and commands call these functions and translate their results; none of the rules live in a view.
Every function that touches tenant tables expects to run inside a tenant context.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pyotp
from django.conf import settings
from django.contrib.auth.hashers import check_password, make_password
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from . import events
from .context import platform_context, require_context
from .errors import ApiError
from .models import ApiToken, Domain, Membership, Organization, PurposeOfUse, Role, User

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


def add_member(*, org: Organization, email: str, role: str, display_name: str = "") -> Membership:
    """An administrator adds a person to this organization; someone already in it is a conflict.

    Re-adding never changes a role (that is PATCH's job, which refuses an administrator demoting themself).
    Whether the address has an account in another organization changes nothing in the answer.
    """
    require_context(Membership)
    email = email.strip().lower()
    if Membership.objects.filter(email=email).exists():  # blind index, row-level security: this org only
        raise ApiError(
            "already_member",
            "This person is already a member; change their role instead.",
            409,
            {"email": ["Already a member of this organization."]},
        )
    _, membership, _ = ensure_member(org=org, email=email, role=role, password=None, full_name=display_name)
    events.publish(
        "admin",
        {
            "org_id": org.id,
            "action": "member_add",
            "resource_type": "Membership",
            "resource_id": membership.pk,
            "detail": {"role": role},
        },
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

    Published to the audit log (tenancy.events "auth") and logged. The email is hashed: a failure for an
    unknown address must not put that address in a log.
    """
    email_hash = hashlib.sha256(email.encode()).hexdigest()[:16] if email else ""
    events.publish(
        "auth",
        {
            "kind": kind,
            "outcome": outcome,
            "org_id": org_id,
            "user_id": user_id,
            "email_hash": email_hash,
            "reason": reason,
            "request_id": request_id,
            "source_ip": source_ip,
        },
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


def _register_failure(membership: Membership, request_id: str, source_ip: str | None) -> None:
    """Count a failure against this membership only (a clinic cannot lock a person out of another)."""
    Membership.objects.filter(pk=membership.pk).update(failed_logins=F("failed_logins") + 1)
    failures = Membership.objects.filter(pk=membership.pk).values_list("failed_logins", flat=True).get()
    if failures >= settings.LOGIN_MAX_FAILURES:
        until = timezone.now() + timedelta(minutes=settings.LOGIN_LOCKOUT_MINUTES)
        Membership.objects.filter(pk=membership.pk).update(locked_until=until, failed_logins=0)
        record_auth_event(
            kind="lockout",
            outcome="locked",
            org_id=membership.org_id,
            user_id=membership.user_id,
            request_id=request_id,
            source_ip=source_ip,
            reason=f"{settings.LOGIN_MAX_FAILURES} failures",
        )


def verify_totp(user: User, code: str) -> bool:
    """A TOTP code for this user, accepted once (a replayed code within its window is refused)."""
    if not user.totp_secret or not code or not code.isdigit() or len(code) != 6:
        return False
    totp = pyotp.TOTP(user.totp_secret)
    now = timezone.now().timestamp()
    for drift in (0, -1, 1):
        counter = int(now // totp.interval) + drift
        if counter > user.totp_last_counter and secrets.compare_digest(
            totp.at(counter * totp.interval), code
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
    if (now - token.last_used_at).total_seconds() > 30:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


def revoke_token(token: ApiToken) -> None:
    require_context(ApiToken)
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


# -- MFA enrollment ------------------------------------------------------------------------------------


def begin_totp_enrollment(*, user: User, org: Organization, membership: Membership) -> dict:
    if user.totp_confirmed:
        raise ApiError("mfa_already_enrolled", "An authenticator is already enrolled; remove it first.", 409)
    secret = pyotp.random_base32()
    User.objects.filter(pk=user.pk).update(totp_secret=secret, totp_last_counter=0)
    uri = pyotp.TOTP(secret).provisioning_uri(
        name=membership.email or str(user.pk), issuer_name=org.display_name or org.name
    )
    return {"secret": secret, "otpauth_uri": uri}


def confirm_totp_enrollment(*, user: User, code: str) -> None:
    user.refresh_from_db()
    if user.totp_confirmed:
        raise ApiError("mfa_already_enrolled", "An authenticator is already enrolled.", 409)
    if not user.totp_secret:
        raise ApiError("mfa_not_started", "Start enrollment first.", 409)
    if not verify_totp(user, code):
        raise ApiError("invalid_code", "The code is not valid.", 400, {"code": ["The code is not valid."]})
    User.objects.filter(pk=user.pk).update(totp_confirmed=True)


def remove_totp(*, user: User, org: Organization, code: str) -> None:
    user.refresh_from_db()
    if org.require_mfa:
        raise ApiError("mfa_required_by_organization", "This organization requires MFA.", 409)
    if not user.totp_confirmed:
        raise ApiError("mfa_not_enrolled", "No authenticator is enrolled.", 409)
    if not verify_totp(user, code):
        raise ApiError("invalid_code", "The code is not valid.", 400, {"code": ["The code is not valid."]})
    User.objects.filter(pk=user.pk).update(totp_confirmed=False, totp_secret="", totp_last_counter=0)


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
    if not requested:
        return allowed[0] if allowed else PurposeOfUse.OPERATIONS
    if requested not in PurposeOfUse.values:
        raise ApiError(
            "invalid_purpose",
            f"Unknown purpose of use {requested[:40]!r}.",
            400,
            {"X-Purpose-Of-Use": [f"Choose one of {', '.join(PurposeOfUse.values)}."]},
        )
    if requested not in allowed:
        raise ApiError("purpose_not_permitted", f"Your role may not act for the purpose {requested}.", 403)
    return requested


# -- memberships ---------------------------------------------------------------------------------------


@transaction.atomic
def change_role(*, membership: Membership, role: str, actor: User) -> Membership:
    if role not in Role.values:
        raise ApiError(
            "invalid_role", "Unknown role.", 400, {"role": [f"Choose one of {', '.join(Role.values)}."]}
        )
    if membership.user_id == actor.pk and role != Role.ORG_ADMIN:
        raise ApiError(
            "cannot_demote_self", "An administrator cannot remove their own administrator role.", 409
        )
    before = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    events.publish(
        "admin",
        {
            "org_id": membership.org_id,
            "action": "role_change",
            "resource_type": "Membership",
            "resource_id": membership.pk,
            "detail": {"from": before, "to": role},
        },
    )
    logger.info("membership role changed membership=%s role=%s by=%s", membership.pk, role, actor.pk)
    return membership
