"""The public seam for every app's WebSocket consumers: who is signed in on a socket's handshake.

The HTTP API gets this from TenantAPIView and DRF's authentication classes; a socket has neither, so this is
the same rule for an ASGI scope: the organization from the Host, the member from a bearer token looked up in
that organization or from the portal session cookie signed in to it (not another clinic's, not one still
enrolling MFA, not one idle past the organization's timeout).

A socket outlives its handshake, so `socket_sign_in` also says what the handshake was signed in with (a
`SocketCredential`: the bearer token, or the portal session as the session table stores it, and when it was
issued), and `credential_in_force` confirms later that it still holds: the token not revoked nor expired, the
session not ended (signed out, expired), the membership and the user active, and no lockout since the token
was issued or the session signed in. The idle timeout is not applied again: an open call is not idle.
"""

from __future__ import annotations

import datetime
import time
import uuid
from dataclasses import dataclass

from django.db import connection
from django.utils import timezone

from .authentication import SESSION_LAST_SEEN, SESSION_MFA_PENDING, SESSION_ORG, SESSION_SIGNED_IN_AT
from .context import ANONYMOUS, current, tenant_context
from .middleware import org_id_for_host
from .models import ApiToken, Membership, User
from .services import find_live_token, get_organization
from .sessions import HashedSessionKeyField, PortalSession

__all__ = ["SocketCredential", "credential_in_force", "member_for_socket", "socket_sign_in"]


@dataclass(frozen=True)
class SocketCredential:
    """What a socket's handshake was signed in with: a bearer token (`token_id`) or a portal session
    (`session_key` as the session table stores it, the SHA-256 of the cookie's key, never the key itself),
    for `membership_id` in `org_id`, issued at `issued_at` (the token's creation, the session's sign-in)."""

    org_id: uuid.UUID
    membership_id: uuid.UUID
    issued_at: datetime.datetime | float
    token_id: uuid.UUID | None = None
    session_key: str | None = None


def _host(scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"host":
            return value.decode("latin-1").rsplit(":", 1)[0].lower().rstrip(".")
    return ""


def _header(scope, wanted: bytes) -> str:
    for name, value in scope.get("headers", []):
        if name == wanted:
            return value.decode("latin-1")
    return ""


def member_for_socket(scope) -> Membership | None:
    """The active membership signed in on this handshake, in the organization its Host names; else None.

    Its `org_id` is that organization's. Read under the organization's signed-out context, which ends here:
    the consumer opens its own context per message.
    """
    signed_in = socket_sign_in(scope)
    return None if signed_in is None else signed_in[0]


def socket_sign_in(scope) -> tuple[Membership, SocketCredential] | None:
    """member_for_socket, with the credential the handshake was signed in with (for credential_in_force)."""
    org_id = org_id_for_host(_host(scope))
    if org_id is None:
        return None
    with tenant_context(org_id=org_id, role=ANONYMOUS):
        org = get_organization(org_id)
        scheme, _, raw = _header(scope, b"authorization").partition(" ")
        if scheme.lower() == "bearer" and raw:
            token = find_live_token(raw.strip(), org)
            if token is None or not token.membership.is_active or not token.user.is_active:
                return None
            if token.membership.revoked_since(token.created_at):
                return None  # issued before a lockout at this organization, which ended it (as over HTTP)
            credential = SocketCredential(
                org_id=org_id,
                membership_id=token.membership.pk,
                issued_at=token.created_at,
                token_id=token.pk,
            )
            return token.membership, credential
        session = scope.get("session")
        user = scope.get("user")
        if session is None or user is None or not getattr(user, "is_authenticated", False):
            return None
        if not getattr(user, "is_active", False):
            return None
        if session.get(SESSION_ORG) != str(org_id) or session.get(SESSION_MFA_PENDING):
            return None  # another clinic's session, or one that has not finished MFA enrollment
        if time.time() - float(session.get(SESSION_LAST_SEEN, 0)) > org.idle_timeout_minutes * 60:
            return None
        membership = (
            Membership.objects.filter(user_id=user.pk, is_active=True).defer("email", "display_name").first()
        )
        if membership is None:
            return None
        signed_in_at = float(session.get(SESSION_SIGNED_IN_AT, 0))
        if membership.revoked_since(signed_in_at):
            return None  # signed in before a lockout at this organization: the lockout ended this session too
        if not session.session_key:
            return None  # not a stored session: nothing could confirm it later
        credential = SocketCredential(
            org_id=org_id,
            membership_id=membership.pk,
            issued_at=signed_in_at,
            session_key=HashedSessionKeyField().get_prep_value(session.session_key),
        )
        return membership, credential


def credential_in_force(credential: SocketCredential) -> bool:
    """Whether what a socket was signed in with still holds, in one query: the bearer token unrevoked and
    unexpired, or the portal session still stored and unexpired (signing out deletes it); the membership and
    its user active; no lockout since it was issued (Membership.revoked_since). Not the idle timeout: a socket
    in use is not idle, and a visit may outlast it.

    Read in the context already open for the credential's organization (the consumer's, so that its seat check
    costs one context hand-off), else in the organization's signed-out context, as at the handshake."""
    context = current()
    if context is not None and context.org_id == credential.org_id:
        return _in_force(credential)
    with tenant_context(org_id=credential.org_id, role=ANONYMOUS):
        return _in_force(credential)


# One statement (the first of the seat check's transaction, so it also carries the context hand-off): the
# membership and its user active, the credential live, and the membership's last lockout. Raw SQL: the ORM's
# compilation of the same query cost more than the query (py-spy, tests/bench/test_video.py).
_TOKEN_IN_FORCE = """
SELECT m.sessions_revoked_at FROM {membership} m JOIN {user} u ON u.id = m.user_id
WHERE m.id = %s AND m.is_active AND u.is_active AND EXISTS (
    SELECT 1 FROM {token} t
    WHERE t.id = %s AND t.membership_id = m.id AND t.revoked_at IS NULL AND t.expires_at > %s
)
"""
_SESSION_IN_FORCE = """
SELECT m.sessions_revoked_at FROM {membership} m JOIN {user} u ON u.id = m.user_id
WHERE m.id = %s AND m.is_active AND u.is_active AND EXISTS (
    SELECT 1 FROM {session} s WHERE s.session_key = %s AND s.expire_date > %s
)
"""


def _in_force(credential: SocketCredential) -> bool:
    tables = {
        "membership": Membership._meta.db_table,
        "user": User._meta.db_table,
        "token": ApiToken._meta.db_table,
        "session": PortalSession._meta.db_table,
    }
    key: uuid.UUID | str
    if credential.token_id is not None:
        sql, key = _TOKEN_IN_FORCE, credential.token_id
    elif credential.session_key is not None:
        sql, key = _SESSION_IN_FORCE, credential.session_key
    else:
        return False
    with connection.cursor() as cursor:
        cursor.execute(sql.format(**tables), [credential.membership_id, key, timezone.now()])
        row = cursor.fetchone()
    if row is None:
        return False
    return not Membership(sessions_revoked_at=row[0]).revoked_since(credential.issued_at)
