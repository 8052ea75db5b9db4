"""Reading the signed log back: an auditor's search, and who accessed given patients' records.

Queries run on the audit database as its read-only role (audit/store.py). They know patients and users only
by id: which patients a caller may ask about is the caller's app's decision (clinic's access-log view asks
for the signed-in patient's own records).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable

from . import store

PAGE = 100


def search(org_id, *, patient=None, user=None, action=None, since=None, until=None, after_seq=0, limit=PAGE):
    """Entries of the organization's log in seq order from `after_seq`, filtered; and the next page's seq."""
    conditions, params = ["org_id = %s", "seq >= %s"], [org_id, after_seq]
    for column, value in (("patient_id", patient), ("actor_user", user), ("action", action)):
        if value:
            conditions.append(f"{column} = %s")
            params.append(value)
    if since:
        conditions.append("recorded_at >= %s")
        params.append(since)
    if until:
        conditions.append("recorded_at < %s")
        params.append(until)
    with store.reader() as reader:
        rows = reader.execute(
            f"SELECT seq, entry FROM audit_entry WHERE {' AND '.join(conditions)} ORDER BY seq LIMIT %s",
            [*params, limit + 1],
        ).fetchall()
    return [json.loads(entry) for _, entry in rows[:limit]], (rows[limit][0] if len(rows) > limit else None)


def accesses_to(
    org_id: uuid.UUID, patient_ids: Iterable[uuid.UUID], *, excluding_user: uuid.UUID, limit: int = 500
) -> list[dict]:
    """Who accessed these patients' records, when, why and what (the accounting of disclosures): the first
    `limit` entries of each patient, without those of `excluding_user` (the patient's own use of the
    portal)."""
    results: list[dict] = []
    for patient_id in patient_ids:
        entries, _ = search(org_id, patient=patient_id, limit=limit)
        results += [
            {
                "time": e.get("time"),
                "action": e.get("action"),
                "role": (e.get("actor") or {}).get("role"),
                "user": (e.get("actor") or {}).get("user"),
                "purpose": e.get("purpose"),
                "resource": e.get("resource"),
            }
            for e in entries
            if (e.get("actor") or {}).get("user") != str(excluding_user)
        ]
    return results
