"""The audit database: its schema, its three roles, and connections for the writer and the reader.

A separate database (AUDIT_DATABASE_URL for the writer, AUDIT_READER_DATABASE_URL for the reader,
AUDIT_OWNER_DATABASE_URL for schema changes). The writer may only INSERT, the reader may only SELECT;
triggers enabled ALWAYS refuse UPDATE, DELETE and TRUNCATE for every role, the owner included, and also under
`session_replication_role = replica`. Entries are partitioned by month so six years stay manageable.
"""

from __future__ import annotations

import datetime

import psycopg
from django.conf import settings
from psycopg import sql

TABLES = [
    "audit_event_index",
    "audit_entry",
    "audit_log_state",
    "audit_tree_head",
    "audit_checkpoint",
    "audit_public_key",
]

SCHEMA_SQL = r"""
CREATE TABLE IF NOT EXISTS audit_event_index (
    event_id uuid PRIMARY KEY,               -- an event enters the log once (insert-or-ignore)
    org_id uuid NOT NULL,
    seq bigint NOT NULL,
    UNIQUE (org_id, seq)                     -- one entry per position: the sequence has no duplicates
);
CREATE TABLE IF NOT EXISTS audit_entry (
    org_id uuid NOT NULL,
    seq bigint NOT NULL,
    recorded_at timestamptz NOT NULL,
    event_id uuid NOT NULL,
    patient_id uuid,
    actor_user uuid,
    action text NOT NULL,
    entry text NOT NULL,                     -- canonical JSON bytes, verbatim; the leaf is SHA-256(0x00 || entry)
    leaf bytea NOT NULL,
    PRIMARY KEY (org_id, seq, recorded_at)
) PARTITION BY RANGE (recorded_at);
CREATE TABLE IF NOT EXISTS audit_entry_default PARTITION OF audit_entry DEFAULT;
CREATE INDEX IF NOT EXISTS audit_entry_patient ON audit_entry (org_id, patient_id, seq);
CREATE INDEX IF NOT EXISTS audit_entry_user ON audit_entry (org_id, actor_user, seq);
CREATE INDEX IF NOT EXISTS audit_entry_seq ON audit_entry (org_id, seq);
CREATE TABLE IF NOT EXISTS audit_log_state (
    org_id uuid NOT NULL,
    size bigint NOT NULL,
    frontier jsonb NOT NULL,                 -- compact Merkle range after `size` entries (audit.tlog.Frontier)
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, size)
);
CREATE TABLE IF NOT EXISTS audit_tree_head (
    org_id uuid NOT NULL,
    size bigint NOT NULL,
    root bytea NOT NULL,
    PRIMARY KEY (org_id, size)               -- one root per size: the log never signs two different trees
);
CREATE TABLE IF NOT EXISTS audit_checkpoint (
    id bigserial PRIMARY KEY,
    org_id uuid NOT NULL,
    size bigint NOT NULL,
    root bytea NOT NULL,
    note text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('checkpoint', 'heartbeat')),
    signed_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (org_id, size) REFERENCES audit_tree_head (org_id, size)
);
CREATE INDEX IF NOT EXISTS audit_checkpoint_org ON audit_checkpoint (org_id, size, signed_at);
CREATE TABLE IF NOT EXISTS audit_public_key (
    name text NOT NULL,
    key_id text NOT NULL,
    vkey text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, key_id)
);

CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$fn$;
"""


def guard_sql(table: str, partition: bool = False) -> str:
    if partition:
        # Row triggers are cloned from the parent; TRUNCATE of a partition needs its own statement trigger.
        return f"""
ALTER TABLE {table} ENABLE ALWAYS TRIGGER audit_no_change;
DROP TRIGGER IF EXISTS audit_no_truncate ON {table};
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
ALTER TABLE {table} ENABLE ALWAYS TRIGGER audit_no_truncate;
"""
    return f"""
DROP TRIGGER IF EXISTS audit_no_change ON {table};
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
ALTER TABLE {table} ENABLE ALWAYS TRIGGER audit_no_change;
DROP TRIGGER IF EXISTS audit_no_truncate ON {table};
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
ALTER TABLE {table} ENABLE ALWAYS TRIGGER audit_no_truncate;
"""


def month_partitions(today: datetime.date, ahead: int = 13) -> list[tuple[str, str, str]]:
    """Monthly ranges from last month to `ahead` months on; the default partition catches anything else."""
    year, month = (today.year - 1, 12) if today.month == 1 else (today.year, today.month - 1)
    out = []
    for _ in range(ahead + 1):
        start = datetime.date(year, month, 1)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        out.append(
            (
                f"audit_entry_y{start:%Y}m{start:%m}",
                start.isoformat(),
                datetime.date(year, month, 1).isoformat(),
            )
        )
    return out


def _conninfo(url: str) -> str:
    return psycopg.conninfo.make_conninfo(url)


def writer() -> psycopg.Connection:
    return psycopg.connect(_conninfo(settings.AUDIT_DATABASE_URL), autocommit=False)


def reader(connect_timeout: int | None = None) -> psycopg.Connection:
    conninfo = _conninfo(settings.AUDIT_READER_DATABASE_URL)
    if connect_timeout:
        conninfo = psycopg.conninfo.make_conninfo(conninfo, connect_timeout=connect_timeout)
    return psycopg.connect(conninfo, autocommit=True)


def owner() -> psycopg.Connection:
    return psycopg.connect(_conninfo(settings.AUDIT_OWNER_DATABASE_URL), autocommit=True)


def install_schema(conn: psycopg.Connection, writer_role: str, reader_role: str) -> None:
    """Tables, partitions for the coming year, guards on every table and partition, and grants."""
    conn.execute(SCHEMA_SQL)
    for name, start, end in month_partitions(datetime.date.today()):
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF audit_entry FOR VALUES FROM ({}) TO ({})"
            ).format(sql.Identifier(name), sql.Literal(start), sql.Literal(end))
        )
    partitions = [
        row[0]
        for row in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'audit_entry'::regclass"
        )
    ]
    for table in TABLES:
        conn.execute(guard_sql(table))
    for table in partitions:
        conn.execute(guard_sql(table, partition=True))
    w, r = sql.Identifier(writer_role), sql.Identifier(reader_role)
    conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC"))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}, {}").format(w, r))
    conn.execute(sql.SQL("GRANT INSERT ON ALL TABLES IN SCHEMA public TO {}").format(w))
    conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(w))
    conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(r))
