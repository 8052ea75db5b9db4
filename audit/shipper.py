"""Moves audit events from the outbox to the signed log in the audit database, off the request path.

For each organization with pending events, under a per-organization advisory lock in the audit database
(several shippers may run; one sequences an organization at a time):

1. read outbox rows whose writing transaction is below the oldest one still running
   (`created_xid < pg_snapshot_xmin(pg_current_snapshot())`), so a row that commits late is read late,
   never skipped; oldest first by `created_at`, the order of the outbox's index, so a batch costs the same
   whatever the backlog;
2. drop the ones already in the log (event id), number the rest after the log's head, hash them into the
   Merkle frontier, and write entries and index (COPY) and the new head in one audit transaction;
3. only after that commit, delete the shipped rows from the outbox. A crash in between ships nothing twice:
   the next pass finds their event ids in the log and only deletes them.

Checkpoints (C2SP signed notes over the tree head) are signed at most every AUDIT_CHECKPOINT_INTERVAL_SECONDS
while events arrive, and re-signed as a heartbeat every AUDIT_HEARTBEAT_SECONDS when idle.
"""

from __future__ import annotations

import datetime
import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import connection

from tenancy.context import tenant_context

from . import store, tlog
from .signer import CheckpointSigner

logger = logging.getLogger(__name__)


def origin(org_id: uuid.UUID | str) -> str:
    return f"{settings.AUDIT_LOG_ORIGIN_PREFIX}/{org_id}"


@dataclass
class Head:
    size: int
    frontier: tlog.Frontier


def read_head(reader, org_id) -> Head:
    row = reader.execute(
        "SELECT size, frontier FROM audit_log_state WHERE org_id = %s ORDER BY size DESC LIMIT 1", [org_id]
    ).fetchone()
    if row is None:
        return Head(0, tlog.Frontier())
    return Head(row[0], tlog.Frontier.from_json(row[1]))


def pending_orgs() -> list[uuid.UUID]:
    with tenant_context(org_id=None, role="shipper"), connection.cursor() as cursor:
        cursor.execute("SELECT public.audit_pending_orgs()")
        return [row[0] for row in cursor.fetchall()]


def oldest_unshipped_age() -> float | None:
    """Seconds since the oldest event still in the outbox was written (None when it is empty)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT extract(epoch FROM clock_timestamp() - public.audit_outbox_oldest())")
        value = cursor.fetchone()[0]
    return None if value is None else float(value)


# Per organization with shipped entries (found by a skip scan of audit_log_state's primary key, not a scan of
# its rows): the log's size, the newest checkpoint's size, and when the first entry past it was recorded.
UNSIGNED_TAIL_SQL = """
WITH RECURSIVE orgs AS (
    (SELECT org_id FROM audit_log_state ORDER BY org_id LIMIT 1)
    UNION ALL
    SELECT (SELECT s.org_id FROM audit_log_state s WHERE s.org_id > orgs.org_id ORDER BY s.org_id LIMIT 1)
      FROM orgs WHERE orgs.org_id IS NOT NULL
)
SELECT h.size - coalesce(c.size, 0), extract(epoch FROM clock_timestamp() - e.recorded_at)
  FROM orgs o
  CROSS JOIN LATERAL (SELECT size FROM audit_log_state WHERE org_id = o.org_id ORDER BY size DESC LIMIT 1) h
  LEFT JOIN LATERAL (SELECT size FROM audit_checkpoint WHERE org_id = o.org_id ORDER BY size DESC LIMIT 1) c
         ON true
  LEFT JOIN LATERAL (SELECT recorded_at FROM audit_entry
                      WHERE org_id = o.org_id AND seq = coalesce(c.size, 0) LIMIT 1) e ON true
 WHERE o.org_id IS NOT NULL AND h.size > coalesce(c.size, 0)
"""


@dataclass(frozen=True)
class UnsignedTail:
    entries: int  # shipped entries no signed checkpoint covers yet, all organizations together
    oldest_age: float | None  # seconds since the oldest of them was recorded; None when every entry is signed


def unsigned_tail() -> UnsignedTail:
    """What the audit database holds beyond the newest signed checkpoint of each organization (read as the
    audit reader). Shipping goes on while Vault cannot sign, so a growing tail is how a signing outage shows:
    entries an auditor cannot yet verify against a signature."""
    # /readyz reads this: an unreachable or stuck audit database must cost it seconds, not hang the probe.
    with store.reader(connect_timeout=2) as reader, reader.transaction():
        reader.execute("SET LOCAL statement_timeout = 2000")
        rows = reader.execute(UNSIGNED_TAIL_SQL).fetchall()
    ages = [float(age) for _, age in rows if age is not None]
    return UnsignedTail(sum(int(n) for n, _ in rows), max(ages) if ages else None)


def _take(org_id, batch: int) -> list[tuple[str, str | dict]]:
    """Up to `batch` (event id as text, payload) of rows below the xmin horizon, oldest first.

    Oldest by `created_at` (then transaction id and event id, for ties), the order of the outbox's
    (org_id, created_at) index, so the scan stops after `batch` rows and a call costs the same whatever the
    backlog. (Ordering by created_xid first, which no index has, sorted every pending row, payloads and all,
    on every call.) Which rows are eligible is decided by the xmin filter alone: the order never makes a row
    skipped. The row-security quals make the planner expect a few hundred rows, and it would rather sort
    them all than walk the index; `enable_sort = off` for this transaction only tips it back to the index
    (where there is no index to walk, it still sorts).
    """
    with tenant_context(org_id=org_id, role="shipper"), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute(
            "SELECT o.id::text, o.payload FROM audit_outboxevent o WHERE o.org_id = %s "
            "AND o.created_xid < pg_snapshot_xmin(pg_current_snapshot()) "
            "ORDER BY o.created_at, o.created_xid, o.id LIMIT %s",
            [org_id, batch],
        )
        return cursor.fetchall()


def _uuid_array(ids: list[str]) -> str:
    """A uuid[] literal: one short string to send instead of thousands of adapted values."""
    return "{" + ",".join(ids) + "}"


def _forget(org_id, ids: list[str]) -> None:
    with tenant_context(org_id=org_id, role="shipper"), connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM audit_outboxevent WHERE org_id = %s AND id = ANY(%s::uuid[])",
            [org_id, _uuid_array(ids)],
        )


def _load(payload) -> dict:
    # Django hands jsonb over as text (its psycopg adapters load it with a TextLoader); a raw psycopg
    # connection would give a dict already.
    return payload if isinstance(payload, dict) else json.loads(payload)


# Events per ship_org call: the per-call costs (two audit connections, the advisory lock, the outbox scan,
# the head read, three commits) are spread over this many events.
DEFAULT_BATCH = 10_000

INDEX_COPY = "COPY audit_event_index (event_id, org_id, seq) FROM STDIN"
ENTRY_COPY = (
    "COPY audit_entry (org_id, seq, recorded_at, event_id, patient_id, actor_user, action, entry, leaf) "
    "FROM STDIN"
)


def ship_org(org_id: uuid.UUID, batch: int = DEFAULT_BATCH) -> int:
    """Ship one batch of one organization's events. Returns how many entered the log.

    Entries and index rows go to the audit database with COPY (the writer's INSERT privilege is all COPY FROM
    needs, and it is one stream instead of a statement per row); the entries are streamed while they are
    built, so the audit database indexes them while the next ones are hashed. A duplicate event id still
    fails the whole audit transaction (the index's primary key), and nothing is deleted from the outbox
    unless that transaction committed.
    """
    with store.writer() as writer, store.reader() as reader:
        locked = writer.execute(
            "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))", [f"audit-log:{org_id}"]
        ).fetchone()
        if not (locked and locked[0]):
            writer.rollback()
            return 0  # another shipper is sequencing this organization
        rows = _take(org_id, batch)
        if not rows:
            writer.rollback()
            return 0
        ids = [row[0] for row in rows]
        known = {
            str(r[0])
            for r in reader.execute(
                "SELECT event_id FROM audit_event_index WHERE event_id = ANY(%s::uuid[])", [_uuid_array(ids)]
            ).fetchall()
        }
        head = read_head(reader, org_id)
        now = datetime.datetime.now(datetime.UTC)
        org = str(org_id)
        index_rows: list[tuple] = []
        leaves: list[bytes] = []
        seq = head.size
        canonical, leaf_hash = tlog.canonical_entry, tlog.leaf_hash
        with writer.cursor() as cursor:
            with cursor.copy(ENTRY_COPY) as copy:
                for event_id, payload in rows:
                    if event_id in known:
                        continue  # already in the log (shipped before a crash): only the outbox row is left
                    event = _load(payload)
                    event.update({"v": 1, "seq": seq, "org": org, "event_id": event_id})
                    entry = canonical(event)
                    leaf = leaf_hash(entry)
                    leaves.append(leaf)
                    actor_user = (event.get("actor") or {}).get("user")
                    index_rows.append((event_id, org_id, seq))
                    copy.write_row(
                        (
                            org_id,
                            seq,
                            now,
                            event_id,
                            event.get("patient") or None,
                            actor_user or None,
                            str(event.get("action", "")),
                            entry.decode(),
                            leaf,
                        )
                    )
                    seq += 1
            if index_rows:
                with cursor.copy(INDEX_COPY) as copy:
                    for row in index_rows:
                        copy.write_row(row)
                head.frontier.extend_packed(b"".join(leaves))
                cursor.execute(
                    "INSERT INTO audit_log_state (org_id, size, frontier) VALUES (%s, %s, %s)",
                    [org_id, seq, psycopg_json(head.frontier.to_json())],
                )
        writer.commit()
    # A crash here leaves rows that are in the log and still in the outbox: the next pass finds their event
    # ids in the index above and only deletes them.
    _forget(org_id, ids)
    return len(index_rows)


def psycopg_json(value):
    from psycopg.types.json import Jsonb

    return Jsonb(value)


def ship_once(batch: int = DEFAULT_BATCH) -> dict[uuid.UUID, int]:
    shipped: dict[uuid.UUID, int] = {}
    for org_id in pending_orgs():
        total = 0
        while True:
            n = ship_org(org_id, batch)
            total += n
            if n < batch:
                break
        shipped[org_id] = total
    return shipped


# -- checkpoints --------------------------------------------------------------------------------------


def latest_checkpoint(reader, org_id):
    return reader.execute(
        "SELECT size, root, note, signed_at FROM audit_checkpoint WHERE org_id = %s "
        "ORDER BY size DESC, signed_at DESC LIMIT 1",
        [org_id],
    ).fetchone()


def checkpoint(org_id: uuid.UUID, signer: CheckpointSigner | None = None, force: bool = False) -> str | None:
    """Sign a checkpoint of the organization's log if one is due (or `force`). Returns the note if signed."""
    signer = signer or CheckpointSigner()
    with store.writer() as writer, store.reader() as reader:
        writer.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"audit-log:{org_id}"])
        head = read_head(reader, org_id)
        last = latest_checkpoint(reader, org_id)
        now = datetime.datetime.now(datetime.UTC)
        age = (now - last[3]).total_seconds() if last else 0.0  # (unused without a last checkpoint)
        if last is None or (
            head.size > last[0] and (force or age >= settings.AUDIT_CHECKPOINT_INTERVAL_SECONDS)
        ):
            kind = "checkpoint"
        elif head.size == last[0] and (force or age >= settings.AUDIT_HEARTBEAT_SECONDS):
            kind = "heartbeat"
        else:
            writer.rollback()
            return None
        root = head.frontier.root()
        _check_against_published(org_id, head.size, root, reader)
        existing = reader.execute(
            "SELECT root FROM audit_tree_head WHERE org_id = %s AND size = %s", [org_id, head.size]
        ).fetchone()
        if existing is not None and bytes(existing[0]) != root:
            # Never sign two different trees of one size: stop loudly instead.
            raise RuntimeError(f"audit log {org_id}: size {head.size} already has a different root")
        note = signer.sign(tlog.checkpoint_body(origin(org_id), head.size, root))
        with writer.cursor() as cursor:
            if existing is None:
                cursor.execute(
                    "INSERT INTO audit_tree_head (org_id, size, root) VALUES (%s, %s, %s)",
                    [org_id, head.size, root],
                )
            cursor.execute(
                "INSERT INTO audit_checkpoint (org_id, size, root, note, kind) VALUES (%s, %s, %s, %s, %s)",
                [org_id, head.size, root, note, kind],
            )
            for vkey in signer.vkeys():
                name, key_id, _ = tlog.parse_vkey(vkey)
                cursor.execute(
                    "INSERT INTO audit_public_key (name, key_id, vkey) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    [name, key_id.hex(), vkey],
                )
        writer.commit()
    publish_checkpoint(org_id, note)
    return note


class ForkedLogError(RuntimeError):
    """The audit database no longer extends the checkpoint published outside it (a restore from an older
    backup, or tampering). Signing now would put two different trees under one origin: stop instead."""


def _check_against_published(org_id, size: int, root: bytes, reader) -> None:
    """Compare the log about to be signed with the last checkpoint in the file drop, which lives outside the
    audit database and survives its restore (deploy/RUNBOOK.md: backup and point-in-time restore)."""
    if not settings.AUDIT_CHECKPOINT_DIR:
        return
    published = Path(settings.AUDIT_CHECKPOINT_DIR) / f"{org_id}.checkpoint"
    if not published.exists():
        return
    checkpoint, _ = tlog.parse_checkpoint(published.read_text())
    if checkpoint.size > size:
        raise ForkedLogError(
            f"audit log {org_id}: the published checkpoint covers {checkpoint.size} entries but the audit "
            f"database holds {size}. It was restored from an older backup or entries were removed; "
            "refusing to sign. See deploy/RUNBOOK.md (restoring the audit database)."
        )
    known: bytes | None = root
    if checkpoint.size != size:
        row = reader.execute(
            "SELECT root FROM audit_tree_head WHERE org_id = %s AND size = %s", [org_id, checkpoint.size]
        ).fetchone()
        if row is not None:
            known = bytes(row[0])
        else:
            # No head of that size in the database (it was signed after the backup this database was restored
            # from, and the backlog has since carried the log past it): recompute it from the leaves.
            leaves = [
                bytes(leaf)
                for (leaf,) in reader.execute(
                    "SELECT leaf FROM audit_entry WHERE org_id = %s AND seq < %s ORDER BY seq",
                    [org_id, checkpoint.size],
                )
            ]
            known = tlog.root(leaves)
    if known is not None and known != checkpoint.root:
        raise ForkedLogError(
            f"audit log {org_id}: at size {checkpoint.size} the audit database's tree differs from the "
            "published checkpoint; refusing to sign. See deploy/RUNBOOK.md (restoring the audit database)."
        )


def publish_checkpoint(org_id, note: str) -> None:
    """The file drop: the latest checkpoint of each organization, for auditors and witnesses to collect."""
    if not settings.AUDIT_CHECKPOINT_DIR:
        return
    directory = Path(settings.AUDIT_CHECKPOINT_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{org_id}.checkpoint"
    temporary = target.with_suffix(".tmp")
    temporary.write_text(note)
    temporary.replace(target)


def logged_orgs() -> list[uuid.UUID]:
    with store.reader() as reader:
        return [row[0] for row in reader.execute("SELECT DISTINCT org_id FROM audit_log_state").fetchall()]


def checkpoint_all(signer: CheckpointSigner | None = None, force: bool = False) -> int:
    signer = signer or CheckpointSigner()
    signed = 0
    for org_id in logged_orgs():
        try:
            signed += 1 if checkpoint(org_id, signer, force=force) else 0
        except ForkedLogError as exc:
            # One organization's log needs an operator (RUNBOOK); the others keep being signed.
            logger.error("%s", exc)
    return signed
