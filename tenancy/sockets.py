"""The public seam for every app's WebSocket consumers: who is signed in on a socket's handshake.

The HTTP API gets this from TenantAPIView and DRF's authentication classes; a socket has neither, so this is
the same rule for an ASGI scope: the organization from the Host, the member from a bearer token looked up in
that organization or from the portal session cookie signed in to it (not another clinic's, not one still
enrolling MFA, not one idle past the organization's timeout).
"""

from __future__ import annotations

import time

from .authentication import SESSION_LAST_SEEN, SESSION_MFA_PENDING, SESSION_ORG, SESSION_SIGNED_IN_AT
from .context import ANONYMOUS, tenant_context
from .middleware import org_id_for_host
from .models import Membership
from .services import find_live_token, get_organization

__all__ = ["member_for_socket"]


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
            return token.membership
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
        if membership.revoked_since(float(session.get(SESSION_SIGNED_IN_AT, 0))):
            return None  # signed in before a lockout at this organization: the lockout ended this session too
        return membership
