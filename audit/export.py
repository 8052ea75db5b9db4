"""The compliance export (audit/FORMAT.md): entries verbatim, leaf hashes, checkpoints, proofs, keys, FHIR.

Reads the audit database as the SELECT-only reader, streams entries in seq order (a million events do not sit
in memory; only their 32-byte leaf hashes do), and writes the manifest last with every file's SHA-256.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import itertools
import json
import uuid
from collections.abc import Callable
from pathlib import Path

from . import fhir, store, tlog
from .shipper import origin

Progress = Callable[[str], None]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export(
    org_id: uuid.UUID,
    out: Path,
    *,
    since: datetime.datetime | None = None,
    until: datetime.datetime | None = None,
    patient: uuid.UUID | None = None,
    progress: Progress = lambda message: None,
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    (out / "proofs").mkdir(exist_ok=True)
    (out / "keys").mkdir(exist_ok=True)
    with store.reader() as reader, reader.transaction():
        # One consistent snapshot for the whole export (and server-side cursors need a transaction).
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        last = reader.execute(
            "SELECT size FROM audit_checkpoint WHERE org_id = %s ORDER BY size DESC LIMIT 1", [org_id]
        ).fetchone()
        if last is None:
            raise ValueError(
                "this organization's log has no checkpoint yet: run the shipper (audit_ship --checkpoint)"
            )
        tree_size = last[0]
        # Leaf hashes of the whole signed tree, so roots can be recomputed whatever the period.
        leaves: list[bytes] = []
        with (out / "leaves.bin").open("wb") as handle, reader.cursor(name="leaves") as cursor:
            cursor.itersize = 50_000
            cursor.execute(
                "SELECT leaf FROM audit_entry WHERE org_id = %s AND seq < %s ORDER BY seq",
                [org_id, tree_size],
            )
            for (leaf,) in cursor:
                leaf = bytes(leaf)
                leaves.append(leaf)
                handle.write(leaf)
                if len(leaves) % 200_000 == 0:
                    progress(f"leaf hashes: {len(leaves)}/{tree_size}")
        if len(leaves) != tree_size:
            raise RuntimeError(f"the log holds {len(leaves)} entries below its checkpoint of {tree_size}")

        # A period is a contiguous range of sequence numbers (order is by seq, never by clock): from the first
        # entry recorded at or after `since` to the last recorded before `until`.
        low, high = 0, tree_size
        if since:
            row = reader.execute(
                "SELECT min(seq) FROM audit_entry WHERE org_id = %s AND recorded_at >= %s", [org_id, since]
            ).fetchone()
            low = row[0] if row is not None and row[0] is not None else tree_size
        if until:
            row = reader.execute(
                "SELECT max(seq) FROM audit_entry WHERE org_id = %s AND recorded_at < %s", [org_id, until]
            ).fetchone()
            high = min(tree_size, row[0] + 1) if row is not None and row[0] is not None else 0
        conditions, params = ["org_id = %s", "seq >= %s", "seq < %s"], [org_id, low, high]
        if patient:
            conditions.append("patient_id = %s")
            params.append(patient)
        first = last_seq = None
        count = 0
        included: list[int] = []
        with (
            (out / "entries.ndjson").open("w", encoding="utf-8") as entries,
            (out / "auditevents.ndjson").open("w", encoding="utf-8") as fhir_out,
            (out / "events.csv").open("w", encoding="utf-8", newline="") as csv_out,
            reader.cursor(name="entries") as cursor,
        ):
            writer = csv.writer(csv_out)
            writer.writerow(fhir.CSV_HEADER)
            cursor.itersize = 10_000
            cursor.execute(
                f"SELECT seq, entry FROM audit_entry WHERE {' AND '.join(conditions)} ORDER BY seq", params
            )
            for seq, entry in cursor:
                entries.write(entry + "\n")
                obj = json.loads(entry)
                fhir_out.write(json.dumps(fhir.to_audit_event(obj), separators=(",", ":")) + "\n")
                writer.writerow(fhir.csv_row(obj))
                first = seq if first is None else first
                last_seq = seq
                count += 1
                if patient:
                    included.append(seq)
                if count % 100_000 == 0:
                    progress(f"entries: {count}")

        checkpoints = reader.execute(
            "SELECT DISTINCT ON (size) size, note FROM audit_checkpoint WHERE org_id = %s AND size <= %s "
            "ORDER BY size, signed_at",
            [org_id, tree_size],
        ).fetchall()
        for size, note in checkpoints:
            (out / "checkpoints" / f"{size:012d}.txt").write_text(note)
        tree = tlog.Tree(leaves)
        consistency = []
        sizes = [size for size, _ in checkpoints]
        for old, new in itertools.pairwise(sizes):
            proof = tree.consistency_proof(old, new)
            consistency.append({"from": old, "to": new, "proof": [h.hex() for h in proof]})
        (out / "proofs" / "consistency.json").write_text(json.dumps(consistency))
        if patient:
            inclusion = {
                str(seq): {
                    "tree_size": tree_size,
                    "proof": [h.hex() for h in tree.inclusion_proof(seq, tree_size)],
                }
                for seq in included
            }
            (out / "proofs" / "inclusion.json").write_text(json.dumps(inclusion))
        for name, key_id, vkey in reader.execute(
            "SELECT name, key_id, vkey FROM audit_public_key"
        ).fetchall():
            (out / "keys" / f"{name}-{key_id}.vkey").write_text(vkey + "\n")

    files = {
        str(path.relative_to(out)): _sha256(path)
        for path in sorted(out.rglob("*"))
        if path.is_file() and path.name != "manifest.json"
    }
    manifest = {
        "format": "telemed-audit-export/1",
        "org": str(org_id),
        "origin": origin(org_id),
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "patient": str(patient) if patient else None,
        "entries": {"first_seq": first, "last_seq": last_seq, "count": count},
        "tree_size": tree_size,
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    progress(f"exported {count} entries of a {tree_size}-entry log to {out}")
    return manifest
