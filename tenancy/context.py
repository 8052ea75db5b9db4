"""The tenant context: which organization, user, role and purpose of use a transaction acts for.

The server signs the context with HMAC-SHA256 and hands it to PostgreSQL as one transaction-local setting
(`set_config('app.context', ..., true)`). Row-level security policies read it through
`app_org_id()` & co., which verify the signature with a key the runtime role cannot read; so a SQL caller
that sets the setting itself (SQL injection, a debugging session as the runtime role) gets an error, not
another organization's rows. Transaction-local means a pooled connection never carries one request's context
into the next, behind PgBouncer in transaction mode too.

Every piece of code that touches tenant tables does so inside `tenant_context(...)` (management commands,
consumers, tasks) or inside an API view of `tenancy.views.TenantAPIView`, which opens one after
authentication. Outside one, tenant querysets raise `NoTenantContext` rather than return an empty list.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from django.conf import settings
from django.db import connections, transaction

ANONYMOUS = "anonymous"  # an organization's public, signed-out requests (branding, sign-in)
PLATFORM = "platform"  # operators' commands that create organizations and resolve hostnames
CONTEXT_SETTING = "app.context"
REQUEST_ID_SETTING = "app.request_id"


class NoTenantContext(RuntimeError):
    """Tenant data was touched with no tenant context open: a programming error, never an empty result."""


@dataclass(frozen=True)
class TenantContext:
    org_id: uuid.UUID | None
    role: str
    user_id: uuid.UUID | None = None
    purpose: str = "operations"
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Carried for the audit log, not signed: the database never decides anything on them.
    source_ip: str | None = None
    session: str = ""

    def signed(self, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + settings.TENANCY_CONTEXT_TTL_SECONDS)
        body = "|".join(
            ["v1", str(self.org_id or ""), str(self.user_id or ""), self.role, self.purpose, str(expires)]
        )
        return body + "|" + sign_context_body(body)


def sign_context_body(body: str) -> str:
    return hmac.new(settings.TENANCY_CONTEXT_KEY, body.encode(), hashlib.sha256).hexdigest()


def context_key_pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC's inner and outer pads, which is what the database keeps (it has sha256 but no hmac)."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


_current: contextvars.ContextVar[TenantContext | None] = contextvars.ContextVar(
    "tenant_context", default=None
)


def current() -> TenantContext | None:
    return _current.get()


def require_context(model: object = None, using: str = "default") -> TenantContext:
    ctx = _current.get()
    name = getattr(getattr(model, "_meta", None), "label", "tenant data")
    if ctx is None:
        raise NoTenantContext(f"{name} accessed without a tenant context; open one with tenant_context()")
    if not connections[using].in_atomic_block:
        raise NoTenantContext(f"{name} accessed outside the transaction that carries the tenant context")
    return ctx


class ContextRefused(Exception):
    """A check sent with the context (a known bearer token's, `checks=` of `apply`) refused it: the database
    found the credential no longer in force, and the transaction is lost."""


REFUSED_SQLSTATE = "28000"  # invalid_authorization_specification, raised by tenancy_token_in_force()


@dataclass(frozen=True)
class _HandOff:
    pairs: list[str]
    checks: tuple[tuple[str, list], ...]


def apply(ctx: TenantContext, using: str = "default", checks: tuple[tuple[str, list], ...] = ()) -> None:
    """Hand the context to the database for the current transaction.

    It waits on the connection and goes out just before the transaction's next statement, so a context that
    another replaces first (the signed-out one, when authentication needs no query) is never sent at all;
    `deactivate` and the end of `tenant_context` drop a hand-off no statement has needed, so it never outlives
    its block. `checks` are SQL expressions (with their parameters) sent in the same statement, after the
    settings, which refuse the transaction (SQLSTATE 28000: `ContextRefused`) when the credential behind the
    context is no longer in force; `flush` sends them when no statement does.
    """
    connection = connections[using]
    if not connection.in_atomic_block:
        raise NoTenantContext("a tenant context is transaction-local: open a transaction first")
    pairs = [CONTEXT_SETTING, ctx.signed(), REQUEST_ID_SETTING, ctx.request_id]
    waiting = getattr(connection, "_tenancy_pending", None)
    if waiting is not None and waiting.checks:
        # A nested context before any statement: the checks still run, with the context they were made for.
        connection._tenancy_pending = None  # type: ignore[attr-defined]
        _send(connection, waiting, None)
    if _with_pending_context not in connection.execute_wrappers:
        # First in the list, so the outermost wrapper: Django's execute_wrapper() blocks pop the last one.
        connection.execute_wrappers.insert(0, _with_pending_context)
    connection._tenancy_pending = _HandOff(pairs, tuple(checks))  # type: ignore[attr-defined]  # ours


def pending(using: str = "default") -> bool:
    """Whether a hand-off (and its checks) still waits for a statement to carry it."""
    return getattr(connections[using], "_tenancy_pending", None) is not None


def flush(using: str = "default") -> None:
    """Send a waiting hand-off and its checks now, in one round trip (for a request that made no statement)."""
    connection = connections[using]
    hand_off = getattr(connection, "_tenancy_pending", None)
    if hand_off is not None:
        connection._tenancy_pending = None  # type: ignore[attr-defined]
        _send(connection, hand_off, None)


def _drop_pending(using: str) -> None:
    connections[using]._tenancy_pending = None  # type: ignore[attr-defined]


def _with_pending_context(execute, sql, params, many, context):
    """Django execute wrapper: a pending hand-off goes out just before this statement."""
    connection = context["connection"]
    hand_off = getattr(connection, "_tenancy_pending", None)
    if hand_off is not None:
        connection._tenancy_pending = None
        _send(connection, hand_off, None)
    return execute(sql, params, many, context)


def _send(connection, hand_off: _HandOff, statement=None):
    """The hand-off and its checks in one statement: one round trip. A refusal by a check is ContextRefused;
    any other error is Django's, as from any statement (a lost connection is an outage).

    Not psycopg's pipeline mode, which would have carried it in the next statement's round trip: measured on
    loopback, a pipeline costs more (about 40 µs and 30 µs of CPU) than the round trip it saves (ADR 0016)."""
    connection.ensure_connection()
    sql, params = _hand_off_sql(hand_off)
    try:
        with psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(sql, params)
    except psycopg.Error as exc:
        if exc.sqlstate == REFUSED_SQLSTATE:
            if connection.in_atomic_block:
                connection.needs_rollback = True  # the database aborted the transaction; Django must know
            raise ContextRefused(str(exc)) from exc
        with connection.wrap_database_errors:
            raise
    return statement() if statement is not None else None


def _hand_off_sql(hand_off: _HandOff) -> tuple[str, list]:
    """`SELECT set_config(...)`, or with checks `SELECT check, ... FROM (SELECT set_config(...) OFFSET 0)`:
    the fence (OFFSET 0) keeps the subquery, so the settings are made before the (volatile) checks read them."""
    settings_sql = _set_config_sql(hand_off.pairs)
    if not hand_off.checks:
        return settings_sql, list(hand_off.pairs)
    checks = ", ".join(expression for expression, _ in hand_off.checks)
    params = [value for _, values in hand_off.checks for value in values]
    return f"SELECT {checks} FROM ({settings_sql} OFFSET 0) AS handed_off", [*params, *hand_off.pairs]


def _set_config_sql(pairs: list[str]) -> str:
    return "SELECT " + ", ".join(["set_config(%s, %s, true)"] * (len(pairs) // 2))


def _set_config(connection, pairs: list[str]) -> None:
    """set_config with the values bound server-side: Django binds client-side by default, which would put the
    signed context in the query text that every session of the runtime role can read in pg_stat_activity."""
    connection._tenancy_pending = None  # this one replaces any hand-off still waiting for a statement
    connection.ensure_connection()
    # A raw cursor's errors are psycopg's own: wrapped, a lost connection is Django's OperationalError (an
    # outage the API answers 503 database_unavailable) and marks the connection for replacement.
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(_set_config_sql(pairs), pairs)


def activate(
    ctx: TenantContext, using: str = "default", checks: tuple[tuple[str, list], ...] = ()
) -> contextvars.Token:
    """Set the context for the rest of the current transaction (with `apply`'s checks). Pair with `deactivate`."""
    apply(ctx, using, checks)
    return _current.set(ctx)


def deactivate(token: contextvars.Token, using: str = "default", outer_blocks: int = 1) -> None:
    """Forget a context opened with `activate`.

    `outer_blocks` is how many transaction blocks belong to the caller (a request has one). If more are open,
    a longer transaction goes on after this one (a test, a nested call): give the database back the outer
    context, so nothing after this block runs with the inner one.
    """
    _current.reset(token)
    _drop_pending(using)
    _restore_outer(using, outer_blocks)


def _restore_outer(using: str, outer_blocks: int) -> None:
    """If more than `outer_blocks` transaction blocks stay open, hand the database the outer context."""
    connection = connections[using]
    if len(connection.atomic_blocks) <= outer_blocks or connection.needs_rollback:
        return
    outer = _current.get()
    _set_config(connection, [CONTEXT_SETTING, outer.signed() if outer else ""])


@contextmanager
def tenant_context(
    *,
    org_id: uuid.UUID | None,
    role: str,
    user_id: uuid.UUID | None = None,
    purpose: str = "operations",
    request_id: str | None = None,
    using: str = "default",
) -> Iterator[TenantContext]:
    """Run a block in one transaction that acts for exactly one organization (or the platform)."""
    ctx = TenantContext(
        org_id=org_id,
        role=role,
        user_id=user_id,
        purpose=purpose,
        request_id=request_id or uuid.uuid4().hex,
    )
    with transaction.atomic(using=using):
        token = activate(ctx, using)
        try:
            yield ctx
        finally:
            _current.reset(token)
            _drop_pending(using)
    # Nested in a longer transaction, the setting would outlive this block: restore the outer one.
    _restore_outer(using, outer_blocks=0)


def platform_context(using: str = "default"):
    """Operators' context: create organizations and their domains, resolve hostnames. Never for requests."""
    return tenant_context(org_id=None, role=PLATFORM, using=using)
