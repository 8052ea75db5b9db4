"""The offline verifier (audit.verify) against exports built by hand with audit.tlog, and the attacks on them.

No database and no Django: the export directory is written here the way FORMAT.md describes it, then
tampered with the way an attacker with write access to the audit database or the export would.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import itertools
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audit import fhir
from audit.tlog import (
    Tree,
    VerificationError,
    canonical_entry,
    checkpoint_body,
    key_id,
    leaf_hash,
    sign_line,
    signed_note,
    vkey,
)
from audit.verify import UsageError, main, verify_export

ROOT = Path(__file__).resolve().parents[2]
ORG = "5a0c6a8e-3f6b-4c1e-9d57-2b1f0e6d9a11"
ORIGIN = f"telemed.audit/{ORG}"
KEY_NAME = "telemed-audit"
PATIENTS = ["0f6c1d2e-1111-4aaa-8bbb-000000000001", "0f6c1d2e-2222-4aaa-8bbb-000000000002"]
T0 = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)


@dataclass
class Signer:
    private: Ed25519PrivateKey
    name: str = KEY_NAME

    @property
    def public(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def vkey(self) -> str:
        return vkey(self.name, self.public)

    def line(self, body: bytes) -> str:
        return sign_line(self.name, key_id(self.name, self.public), self.private.sign(body))


def new_signer(name=KEY_NAME) -> Signer:
    return Signer(Ed25519PrivateKey.generate(), name)


def make_entry(seq: int, *, time=None, patient=None, org=ORG, action="patient.read") -> dict:
    return {
        "v": 1,
        "seq": seq,
        "event_id": str(uuid.UUID(int=seq + 1)),
        "org": org,
        "time": (time or T0 + dt.timedelta(seconds=seq)).isoformat().replace("+00:00", "Z"),
        "action": action,
        "outcome": "success",
        "actor": {
            "user": str(uuid.UUID(int=1000 + seq % 3)),
            "role": "practitioner",
            "session": "s1",
            "ip": "10.0.0.7",
        },
        "purpose": "treatment",
        "patient": patient if patient is not None else PATIENTS[seq % 2],
        "resource": {"type": "patient", "id": patient or PATIENTS[seq % 2]},
        "request_id": f"req-{seq}",
        "before": "",
        "after": "",
        "detail": {"note": "café"},
    }


def make_log(n: int) -> list[bytes]:
    return [canonical_entry(make_entry(i)) for i in range(n)]


def note(signers: list[Signer], size: int, root: bytes, origin: str = ORIGIN) -> str:
    body = checkpoint_body(origin, size, root)
    return signed_note(body, [s.line(body) for s in signers])


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rewrite_manifest(out: Path, **changes) -> None:
    """What an attacker does after tampering: recompute every file hash (they are not keyed)."""
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(changes)
    files = sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"
    )
    manifest["files"] = {name: sha256_file(out / name) for name in files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def build_export(
    out: Path,
    log: list[bytes],
    checkpoints: dict[int, list[Signer]],
    *,
    first: int | None = None,
    last: int | None = None,
    patient: str | None = None,
    since: str | None = None,
    until: str | None = None,
    exported_at: dt.datetime | None = None,
) -> Path:
    """An export directory as audit_export writes it (FORMAT.md), from a full log and signed sizes."""
    out.mkdir(parents=True, exist_ok=True)
    sizes = sorted(checkpoints)
    tree_size = sizes[-1]
    leaves = [leaf_hash(e) for e in log[:tree_size]]
    tree = Tree(leaves)
    # entries
    lo = 0 if first is None else first
    hi = tree_size - 1 if last is None else last
    seqs = list(range(lo, hi + 1))
    if patient is not None:
        seqs = [s for s in seqs if json.loads(log[s])["patient"] == patient]
    (out / "entries.ndjson").write_bytes(b"".join(log[s] + b"\n" for s in seqs))
    (out / "leaves.bin").write_bytes(b"".join(leaves))
    # checkpoints, proofs and keys
    (out / "checkpoints").mkdir(exist_ok=True)
    (out / "keys").mkdir(exist_ok=True)
    (out / "proofs").mkdir(exist_ok=True)
    for size in sizes:
        (out / "checkpoints" / f"{size:012d}.txt").write_text(note(checkpoints[size], size, tree.root(size)))
        for s in checkpoints[size]:
            (out / "keys" / f"{s.name}-{key_id(s.name, s.public).hex()}.vkey").write_text(s.vkey + "\n")
    consistency = [
        {"from": a, "to": b, "proof": [h.hex() for h in tree.consistency_proof(a, b)]}
        for a, b in itertools.pairwise(sizes)
    ]
    (out / "proofs" / "consistency.json").write_text(json.dumps(consistency))
    if patient is not None:
        inclusion = {
            str(s): {"tree_size": tree_size, "proof": [h.hex() for h in tree.inclusion_proof(s)]}
            for s in seqs
        }
        (out / "proofs" / "inclusion.json").write_text(json.dumps(inclusion))
    # derived views for people
    with (out / "auditevents.ndjson").open("w", encoding="utf-8") as f:
        for s in seqs:
            f.write(json.dumps(fhir.to_audit_event(json.loads(log[s])), ensure_ascii=False) + "\n")
    with (out / "events.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(fhir.CSV_HEADER)
        for s in seqs:
            w.writerow(fhir.csv_row(json.loads(log[s])))
    manifest = {
        "format": "telemed-audit-export/1",
        "org": ORG,
        "origin": ORIGIN,
        "since": since,
        "until": until,
        "patient": patient,
        "entries": {
            "first_seq": seqs[0] if seqs else None,
            "last_seq": seqs[-1] if seqs else None,
            "count": len(seqs),
        },
        "tree_size": tree_size,
        "exported_at": (exported_at or dt.datetime.now(dt.UTC)).isoformat(),
        "files": {},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    rewrite_manifest(out)
    return out


@pytest.fixture(scope="module")
def signer():
    return new_signer()


@pytest.fixture
def log():
    return make_log(50)


@pytest.fixture
def export(tmp_path, log, signer):
    return build_export(tmp_path / "export", log, {10: [signer], 30: [signer], 50: [signer]})


def pinned(signer):
    return [signer.vkey]


def fails(path, match, **kwargs):
    with pytest.raises(VerificationError, match=match) as info:
        verify_export(path, **kwargs)
    return str(info.value)


def lines_of(out: Path) -> list[bytes]:
    return (out / "entries.ndjson").read_bytes().splitlines()


def write_lines(out: Path, lines: list[bytes]) -> None:
    (out / "entries.ndjson").write_bytes(b"".join(line + b"\n" for line in lines))


def set_leaf(out: Path, seq: int, h: bytes) -> None:
    data = bytearray((out / "leaves.bin").read_bytes())
    data[seq * 32 : seq * 32 + 32] = h
    (out / "leaves.bin").write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------------------
# A good export


def test_good_export_verifies(export, signer):
    report = verify_export(export, extra_keys=pinned(signer), check_derived=True)
    assert report.entries == 50 and (report.first_seq, report.last_seq) == (0, 49)
    assert report.tree_size == 50
    assert report.checkpoints == 3 and report.checkpoint_sizes == [10, 30, 50]
    assert report.consistency_proofs == 2
    assert report.keys == [f"{KEY_NAME}+{key_id(KEY_NAME, signer.public).hex()}"]
    assert report.keys_pinned and not report.warnings
    assert report.root == Tree([leaf_hash(e) for e in make_log(50)]).root()
    text = report.summary()
    assert ORG in text and "50" in text and "3 verified" in text and "pinned with --key" in text


def test_unpinned_keys_are_used_but_flagged(export):
    report = verify_export(export)
    assert not report.keys_pinned
    assert any("pin them with --key" in w for w in report.warnings)
    assert "NOT pinned" in report.summary()


def test_key_from_a_file(export, signer, tmp_path):
    keyfile = tmp_path / "audit.vkey"
    keyfile.write_text(signer.vkey + "\n")
    assert verify_export(export, extra_keys=[keyfile]).keys_pinned
    assert verify_export(export, extra_keys=[str(keyfile)]).keys_pinned
    with pytest.raises(UsageError):
        verify_export(export, extra_keys=[tmp_path / "missing.vkey"])


def test_time_window_export_need_not_start_at_zero(tmp_path, log, signer):
    out = build_export(
        tmp_path / "w",
        log,
        {10: [signer], 30: [signer], 50: [signer]},
        first=12,
        last=40,
        since="x",
        until="y",
    )
    report = verify_export(out, extra_keys=pinned(signer), check_derived=True)
    assert (report.first_seq, report.last_seq, report.entries) == (12, 40, 29)


def test_clock_set_back_is_reported_but_order_is_by_seq(tmp_path, signer):
    entries = [make_entry(i) for i in range(20)]
    for e in entries[10:]:
        e["time"] = (
            (T0 - dt.timedelta(hours=1) + dt.timedelta(seconds=e["seq"])).isoformat().replace("+00:00", "Z")
        )
    log = [canonical_entry(e) for e in entries]
    out = build_export(tmp_path / "clock", log, {20: [signer]})
    report = verify_export(out, extra_keys=pinned(signer))
    assert any("seq 10" in w and "clock set back" in w for w in report.warnings)


# ---------------------------------------------------------------------------------------------------------
# Attacks on entries


def test_flipped_byte_in_an_entry(export, signer):
    lines = lines_of(export)
    tampered = bytearray(lines[17])
    pos = tampered.index(b"req-17") + 4
    tampered[pos] ^= 0x01  # "req-17" -> "req-07"... a one-bit edit that stays valid JSON
    lines[17] = bytes(tampered)
    write_lines(export, lines)
    fails(export, r"manifest: hash of entries.ndjson does not match", extra_keys=pinned(signer))
    rewrite_manifest(export)  # the attacker fixes the unkeyed manifest too
    fails(
        export,
        r"^entry seq 17 does not match leaf 17 \(entries.ndjson line 18; edited\?\)$",
        extra_keys=pinned(signer),
    )


def test_edited_entry_with_recomputed_leaf(export, signer):
    lines = lines_of(export)
    entry = json.loads(lines[17])
    entry["actor"]["user"] = str(uuid.UUID(int=999))  # blame someone else
    lines[17] = canonical_entry(entry)
    write_lines(export, lines)
    set_leaf(export, 17, leaf_hash(lines[17]))
    rewrite_manifest(export)
    msg = fails(export, r"^checkpoint 000000000030: root mismatch", extra_keys=pinned(signer))
    assert "edited, removed or reordered" in msg


def test_entry_deleted_in_the_middle(export, signer):
    lines = lines_of(export)
    del lines[25]
    write_lines(export, lines)
    rewrite_manifest(export)
    fails(export, r"^gap: seq 26 follows 24 \(seq 25 missing: deleted\?\)$", extra_keys=pinned(signer))


def test_entry_and_leaf_deleted_in_the_middle(export, signer, log):
    # the attacker also removes the leaf and renumbers nothing (entries are signed by the tree, not re-signable)
    lines = lines_of(export)
    del lines[25]
    write_lines(export, lines)
    leaves = (export / "leaves.bin").read_bytes()
    (export / "leaves.bin").write_bytes(leaves[: 25 * 32] + leaves[26 * 32 :])
    rewrite_manifest(export, entries={"first_seq": 0, "last_seq": 49, "count": 49})
    fails(
        export, r"^leaves.bin holds 49 leaves, checkpoint says 50 \(truncated\?\)$", extra_keys=pinned(signer)
    )


def test_tail_dropped_from_entries_after_a_checkpoint(export, signer):
    write_lines(export, lines_of(export)[:31])
    rewrite_manifest(export)
    fails(export, r"entries.ndjson holds 31 entries, the manifest says 50", extra_keys=pinned(signer))
    rewrite_manifest(export, entries={"first_seq": 0, "last_seq": 30, "count": 31})
    fails(
        export,
        r"^entries.ndjson ends at seq 30 but the signed tree holds 50 entries \(tail dropped\?\)$",
        extra_keys=pinned(signer),
    )


def test_tail_dropped_with_leaves_but_checkpoint_kept(export, signer):
    write_lines(export, lines_of(export)[:30])
    (export / "leaves.bin").write_bytes((export / "leaves.bin").read_bytes()[: 30 * 32])
    rewrite_manifest(export, entries={"first_seq": 0, "last_seq": 29, "count": 30}, tree_size=30)
    fails(
        export, r"^leaves.bin holds 30 leaves, checkpoint says 50 \(truncated\?\)$", extra_keys=pinned(signer)
    )


def test_tail_and_last_checkpoint_dropped_is_caught_by_the_trusted_checkpoint(export, signer, tmp_path):
    trusted = tmp_path / "trusted-50.txt"
    trusted.write_bytes((export / "checkpoints" / "000000000050.txt").read_bytes())
    # the attacker rolls everything back to the checkpoint of size 30: a self-consistent export...
    write_lines(export, lines_of(export)[:30])
    (export / "leaves.bin").write_bytes((export / "leaves.bin").read_bytes()[: 30 * 32])
    (export / "checkpoints" / "000000000050.txt").unlink()
    consistency = json.loads((export / "proofs" / "consistency.json").read_text())
    (export / "proofs" / "consistency.json").write_text(json.dumps([c for c in consistency if c["to"] <= 30]))
    for name in ("auditevents.ndjson", "events.csv"):
        (export / name).unlink()
    rewrite_manifest(export, entries={"first_seq": 0, "last_seq": 29, "count": 30}, tree_size=30)
    assert verify_export(export, extra_keys=pinned(signer)).tree_size == 30
    # ...but not for an auditor who kept the checkpoint of the previous export
    fails(
        export,
        r"^trusted checkpoint size 50 is larger than the export's tree \(size 30; rolled back\?\)$",
        extra_keys=pinned(signer),
        trusted_checkpoint=trusted,
    )


def test_swapped_entries(export, signer):
    lines = lines_of(export)
    lines[20], lines[21] = lines[21], lines[20]
    write_lines(export, lines)
    rewrite_manifest(export)
    fails(
        export,
        r"^entries out of order: seq 21 comes before seq 20 at entries.ndjson line 21 \(swapped\?\)$",
        extra_keys=pinned(signer),
    )
    # swapped content with renumbered seqs and recomputed leaves: the signed root no longer matches
    lines = lines_of(export)
    a, b = json.loads(lines[20]), json.loads(lines[21])  # now seq 21 then seq 20
    a["seq"], b["seq"] = 20, 21
    lines[20], lines[21] = canonical_entry(a), canonical_entry(b)
    write_lines(export, lines)
    set_leaf(export, 20, leaf_hash(lines[20]))
    set_leaf(export, 21, leaf_hash(lines[21]))
    rewrite_manifest(export)
    fails(export, r"^checkpoint 000000000030: root mismatch", extra_keys=pinned(signer))


def test_entry_from_another_org_or_format_errors(export, signer):
    lines = lines_of(export)
    lines[3] = b"not json"
    write_lines(export, lines)
    rewrite_manifest(export)
    fails(export, r"entries.ndjson line 4 is not a log entry", extra_keys=pinned(signer))


# ---------------------------------------------------------------------------------------------------------
# Attacks on checkpoints and proofs


def test_two_checkpoints_of_the_same_size_with_different_roots(export, signer, log, tmp_path):
    forked = list(log)
    forked[12] = canonical_entry(make_entry(12, action="patient.update"))
    fork_root = Tree([leaf_hash(e) for e in forked]).root(30)
    (export / "checkpoints" / "000000000030-fork.txt").write_text(note([signer], 30, fork_root))
    rewrite_manifest(export)
    fails(export, r"two checkpoints of size 30 with different roots", extra_keys=pinned(signer))
    # the same fork held by the auditor as a trusted checkpoint
    (export / "checkpoints" / "000000000030-fork.txt").unlink()
    rewrite_manifest(export)
    trusted = tmp_path / "fork-30.txt"
    trusted.write_text(note([signer], 30, fork_root))
    fails(
        export,
        r"two checkpoints of size 30 with different roots \(trusted checkpoint fork-30.txt",
        extra_keys=pinned(signer),
        trusted_checkpoint=trusted,
    )


def test_checkpoint_signed_by_an_unknown_key_only(export, signer, log):
    stranger = new_signer()
    r = Tree([leaf_hash(e) for e in log]).root(30)
    (export / "checkpoints" / "000000000030.txt").write_text(note([stranger], 30, r))
    rewrite_manifest(export)
    fails(export, r"^checkpoint 000000000030: .*no signature by a known key", extra_keys=pinned(signer))
    # the forger adds their key to keys/: pinned keys still refuse it
    (export / "keys" / f"{KEY_NAME}-{key_id(KEY_NAME, stranger.public).hex()}.vkey").write_text(stranger.vkey)
    rewrite_manifest(export)
    fails(export, r"^checkpoint 000000000030: .*no signature by a known key", extra_keys=pinned(signer))


def test_checkpoint_with_a_bad_signature_by_the_known_key(export, signer):
    path = export / "checkpoints" / "000000000030.txt"
    path.write_text(path.read_text().replace("\n30\n", "\n31\n", 1))
    rewrite_manifest(export)
    fails(export, r"^checkpoint 000000000030: .*invalid signature by known key", extra_keys=pinned(signer))


def test_checkpoint_renamed_or_for_another_log(export, signer, log):
    cp = export / "checkpoints"
    (cp / "000000000030.txt").rename(cp / "000000000031.txt")
    rewrite_manifest(export)
    fails(export, r"000000000031.txt holds a checkpoint of size 30", extra_keys=pinned(signer))
    (cp / "000000000031.txt").rename(cp / "000000000030.txt")
    other = f"telemed.audit/{uuid.UUID(int=7)}"
    (cp / "000000000030.txt").write_text(
        note([signer], 30, Tree([leaf_hash(e) for e in log]).root(30), other)
    )
    rewrite_manifest(export)
    fails(export, r"origin .* is not this export's log", extra_keys=pinned(signer))


def test_tampered_consistency_proof(export, signer):
    path = export / "proofs" / "consistency.json"
    proofs = json.loads(path.read_text())
    proofs[1]["proof"][0] = "00" * 32
    path.write_text(json.dumps(proofs))
    rewrite_manifest(export)
    fails(
        export,
        r"consistency proof from checkpoint 000000000030 to checkpoint 000000000050 does not verify",
        extra_keys=pinned(signer),
    )
    path.write_text(json.dumps(proofs[:1]))
    rewrite_manifest(export)
    fails(
        export,
        r"consistency proof from checkpoint 000000000030 to checkpoint 000000000050 is missing",
        extra_keys=pinned(signer),
    )


def test_no_checkpoint_no_verification(export, signer):
    for p in (export / "checkpoints").iterdir():
        p.unlink()
    rewrite_manifest(export)
    fails(export, r"no checkpoints in the export", extra_keys=pinned(signer))


# ---------------------------------------------------------------------------------------------------------
# Empty log, patient filter, key rotation, trusted checkpoints, freshness, manifest


def test_empty_log_with_a_signed_size_zero_checkpoint(tmp_path, signer):
    out = build_export(tmp_path / "empty", [], {0: [signer]})
    assert (out / "leaves.bin").read_bytes() == b""
    assert (out / "checkpoints" / "000000000000.txt").is_file()
    report = verify_export(out, extra_keys=pinned(signer), check_derived=True)
    assert report.entries == 0 and report.tree_size == 0 and report.checkpoints == 1
    assert report.root == hashlib.sha256(b"").digest()
    assert "entries       0" in report.summary()


def test_patient_filtered_export_with_inclusion_proofs(tmp_path, log, signer):
    out = build_export(tmp_path / "p", log, {10: [signer], 30: [signer], 50: [signer]}, patient=PATIENTS[1])
    report = verify_export(out, extra_keys=pinned(signer), check_derived=True)
    assert report.entries == 25 and report.inclusion_proofs == 25
    assert (report.first_seq, report.last_seq) == (1, 49)
    # a tampered inclusion proof
    path = out / "proofs" / "inclusion.json"
    proofs = json.loads(path.read_text())
    proofs["7"]["proof"][2] = "ab" * 32
    path.write_text(json.dumps(proofs))
    rewrite_manifest(out)
    fails(
        out,
        r"^inclusion proof of entry seq 7 does not verify against checkpoint 000000000050$",
        extra_keys=pinned(signer),
    )
    # a missing one
    del proofs["7"]
    path.write_text(json.dumps(proofs))
    rewrite_manifest(out)
    fails(out, r"^entry seq 7 has no inclusion proof$", extra_keys=pinned(signer))


def test_patient_filtered_export_holds_only_that_patient(tmp_path, log, signer):
    out = build_export(tmp_path / "p", log, {50: [signer]}, patient=PATIENTS[1])
    lines = lines_of(out)
    lines.insert(1, log[2])  # another patient's entry (authentic, so its leaf matches)
    write_lines(out, lines)
    rewrite_manifest(out, entries={"first_seq": 1, "last_seq": 49, "count": 26})
    fails(out, r"^entry seq 2 is not about patient", extra_keys=pinned(signer))


def test_key_rotation(tmp_path, log):
    old, new = new_signer(), new_signer()
    out = build_export(tmp_path / "rot", log, {10: [old], 30: [old, new], 50: [new]})
    report = verify_export(out, extra_keys=[old.vkey, new.vkey])
    assert len(report.keys) == 2 and report.checkpoints == 3
    assert len(list((out / "keys").iterdir())) == 2
    fails(out, r"^checkpoint 000000000010: .*no signature by a known key", extra_keys=[new.vkey])
    # the old key alone still verifies what it signed, and nothing after
    fails(out, r"^checkpoint 000000000050: .*no signature by a known key", extra_keys=[old.vkey])


def test_trusted_checkpoint_from_an_earlier_export(tmp_path, log, signer):
    earlier = build_export(tmp_path / "earlier", log[:30], {10: [signer], 30: [signer]})
    kept = tmp_path / "kept.txt"
    kept.write_bytes((earlier / "checkpoints" / "000000000030.txt").read_bytes())
    later_log = make_log(80)
    later = build_export(tmp_path / "later", later_log, {30: [signer], 64: [signer], 80: [signer]})
    report = verify_export(later, extra_keys=pinned(signer), trusted_checkpoint=kept)
    assert report.trusted is not None and report.trusted.size == 30
    assert "is a prefix of this log" in report.summary()
    # a trusted checkpoint whose size is not one of the export's checkpoints is checked against leaves.bin
    mid = tmp_path / "mid.txt"
    mid.write_text(note([signer], 42, Tree([leaf_hash(e) for e in later_log]).root(42)))
    assert verify_export(later, extra_keys=pinned(signer), trusted_checkpoint=mid).trusted.size == 42


def test_restore_from_a_backup_older_than_the_trusted_checkpoint(tmp_path, log, signer):
    kept = tmp_path / "kept-50.txt"
    kept.write_text(note([signer], 50, Tree([leaf_hash(e) for e in log]).root(50)))
    # the database was restored to size 40 and the log grew again to 60 with different entries
    rewritten = log[:40] + [canonical_entry(make_entry(i, action="patient.search")) for i in range(40, 60)]
    out = build_export(tmp_path / "restored", rewritten, {40: [signer], 60: [signer]})
    assert verify_export(out, extra_keys=pinned(signer)).tree_size == 60  # consistent on its own
    fails(
        out,
        r"^trusted checkpoint kept-50.txt \(size 50\) does not match this export's log at that size",
        extra_keys=pinned(signer),
        trusted_checkpoint=kept,
    )


def test_trusted_checkpoint_must_itself_verify(export, signer, tmp_path, log):
    bad = tmp_path / "bad.txt"
    bad.write_text(note([new_signer()], 30, Tree([leaf_hash(e) for e in log]).root(30)))
    fails(
        export,
        r"^trusted checkpoint bad.txt: .*no signature by a known key",
        extra_keys=pinned(signer),
        trusted_checkpoint=bad,
    )
    with pytest.raises(UsageError):
        verify_export(export, trusted_checkpoint=tmp_path / "missing.txt")


def test_max_age(tmp_path, log, signer):
    old = build_export(
        tmp_path / "old", log, {50: [signer]}, exported_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    )
    fails(
        old,
        r"^checkpoint 000000000050 \(as of .*\) is \d+ s old, more than --max-age 3600$",
        extra_keys=pinned(signer),
        max_age=3600,
    )
    report = verify_export(old, extra_keys=pinned(signer), max_age=3 * 86400)
    assert 86400 < report.checkpoint_age < 3 * 86400


def test_manifest_hash_mismatch_and_unlisted_files(export, signer):
    with (export / "events.csv").open("a") as f:
        f.write("49,2026-03-01T09:00:49Z,patient.read,success,x,y,z,p,patient,p,req\n")
    fails(
        export,
        r"^manifest: hash of events.csv does not match \(changed after export\?\)$",
        extra_keys=pinned(signer),
    )
    rewrite_manifest(export)
    # with the manifest fixed too, only the derived-view check sees the edit
    verify_export(export, extra_keys=pinned(signer))
    fails(
        export, r"auditevents.ndjson or events.csv holds more", extra_keys=pinned(signer), check_derived=True
    )
    (export / "checkpoints" / "extra.txt").write_text("x")
    fails(
        export, r"checkpoints/extra.txt is in the export but not in the manifest", extra_keys=pinned(signer)
    )
    (export / "checkpoints" / "extra.txt").unlink()
    (export / "leaves.bin").unlink()
    fails(export, r"manifest: leaves.bin is listed but missing", extra_keys=pinned(signer))


def test_derived_views_must_match_the_entries(export, signer):
    lines = (export / "auditevents.ndjson").read_text().splitlines()
    event = json.loads(lines[5])
    event["agent"][0]["who"]["reference"] = "Practitioner/someone-else"
    lines[5] = json.dumps(event)
    (export / "auditevents.ndjson").write_text("\n".join(lines) + "\n")
    rewrite_manifest(export)
    verify_export(export, extra_keys=pinned(signer))  # unsigned views are not checked by default
    fails(
        export,
        r"the AuditEvent for entry seq 5 does not match",
        extra_keys=pinned(signer),
        check_derived=True,
    )


# ---------------------------------------------------------------------------------------------------------
# FHIR mapping


def test_audit_event_shape():
    entry = make_entry(3, patient=PATIENTS[0])
    entry["resource"] = {"type": "note", "id": "n-1"}
    entry["action"] = "note.update"
    entry["before"], entry["after"] = "aa" * 32, "bb" * 32
    ev = fhir.to_audit_event(entry, observer="clinic.example")
    assert ev["resourceType"] == "AuditEvent" and ev["id"] == entry["event_id"]
    assert ev["action"] == "U" and ev["outcome"] == "0" and ev["recorded"] == entry["time"]
    assert ev["type"]["code"] == "rest" and {"system": fhir.RESTFUL, "code": "update"} in ev["subtype"]
    assert ev["meta"]["profile"] == [fhir.BALP_PROFILE + "PatientUpdate"]
    assert ev["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
    user = ev["agent"][0]
    assert user["requestor"] is True and user["who"]["reference"] == f"Practitioner/{entry['actor']['user']}"
    assert user["network"] == {"address": "10.0.0.7", "type": "2"}
    assert ev["source"]["observer"]["display"] == "clinic.example"
    roles = {e["role"]["code"]: e for e in ev["entity"] if "role" in e}
    assert roles["1"]["what"]["reference"] == f"Patient/{PATIENTS[0]}"
    assert roles["4"]["what"]["reference"] == "DocumentReference/n-1"
    assert {"type": "before-sha256", "valueString": "aa" * 32} in roles["4"]["detail"]
    assert any(e["type"]["code"] == "XrequestId" for e in ev["entity"])
    json.dumps(ev)  # serialisable


@pytest.mark.parametrize(
    ("action", "outcome", "purpose", "expect_action", "expect_type", "expect_outcome", "expect_purpose"),
    [
        ("patient.read", "success", "treatment", "R", "rest", "0", "TREAT"),
        ("patient.search", "success", "operations", "E", "rest", "0", "HOPERAT"),
        ("consent.create", "success", "operations", "C", "rest", "0", "HOPERAT"),
        ("encounter.delete", "error", "operations", "D", "rest", "8", "HOPERAT"),
        ("report.analytics", "success", "analytics", "E", "110100", "0", "HQUALIMP"),
        ("login", "denied", None, "E", "110114", "4", None),
        ("auth.logout", "success", None, "E", "110114", "0", None),
        ("break_glass.open", "success", "emergency", "E", "110113", "0", "ETREAT"),
        ("key.unwrap", "success", "operations", "E", "110113", "0", "HOPERAT"),
        ("membership.role_change", "success", "operations", "U", "110113", "0", "HOPERAT"),
        ("audit.export", "success", "audit", "E", "110101", "0", "HCOMPL"),
        ("video.join", "success", "treatment", "E", "110100", "0", "TREAT"),
        # the action names the application emits today (clinic.services, tenancy.services, tenancy.crypto)
        ("read", "success", "treatment", "R", "rest", "0", "TREAT"),
        ("create", "success", "treatment", "C", "rest", "0", "TREAT"),
        ("update", "denied", "treatment", "U", "rest", "4", "TREAT"),
        ("report", "success", "analytics", "E", "rest", "0", "HQUALIMP"),
        ("break_glass_open", "success", "emergency", "E", "110113", "0", "ETREAT"),
        ("break_glass_close", "success", "emergency", "E", "110113", "0", "ETREAT"),
        ("login", "failure", "operations", "E", "110114", "4", "HOPERAT"),
        ("lockout", "locked", "operations", "E", "110114", "4", "HOPERAT"),
        ("mfa", "challenge", "operations", "E", "110114", "0", "HOPERAT"),
        ("logout", "success", "operations", "E", "110114", "0", "HOPERAT"),
        ("data_key_unwrap", "success", "operations", "E", "110113", "0", "HOPERAT"),
        ("key_rotate", "success", "operations", "E", "110113", "0", "HOPERAT"),
        ("key_shred", "success", "operations", "E", "110113", "0", "HOPERAT"),
        ("member_add", "success", "operations", "C", "110113", "0", "HOPERAT"),
        ("role_change", "success", "operations", "U", "110113", "0", "HOPERAT"),
        ("audit_export", "success", "audit", "E", "110101", "0", "HCOMPL"),
        ("video_interrupted", "success", "treatment", "E", "110100", "0", "TREAT"),
        ("read", "error", "treatment", "R", "rest", "8", "TREAT"),
    ],
)
def test_audit_event_codes(
    action, outcome, purpose, expect_action, expect_type, expect_outcome, expect_purpose
):
    entry = make_entry(1)
    entry.update(action=action, outcome=outcome, purpose=purpose)
    ev = fhir.to_audit_event(entry)
    assert ev["action"] == expect_action
    assert ev["type"]["code"] == expect_type
    assert ev["outcome"] == expect_outcome
    codes = [c["code"] for p in ev.get("purposeOfEvent", []) for c in p.get("coding", [])]
    assert (codes[0] if codes else None) == expect_purpose
    assert {"system": "urn:telemed:audit-action", "code": action} in ev["subtype"]
    if action.startswith("break_glass"):
        assert "BTG" in codes
        stopped = {s["code"] for s in ev["subtype"]} & {"110127", "110138"}
        assert stopped == ({"110138"} if action.endswith("close") else {"110127"})
    if action == "data_key_unwrap":
        assert {"system": fhir.DCM, "code": "110132", "display": "Use of Restricted Function"} in ev[
            "subtype"
        ]
    if action == "audit_export":
        assert any(s["code"] == "110106" for s in ev["subtype"])


def test_system_event_without_user_and_csv_row():
    entry = make_entry(4)
    entry.update(actor={"user": None, "role": None, "session": None, "ip": None}, patient=None, resource={})
    entry["request_id"] = '=HYPERLINK("http://evil")'
    ev = fhir.to_audit_event(entry)
    assert ev["agent"][0]["type"]["coding"][0]["code"] == "110150"
    row = fhir.csv_row(entry)
    assert len(row) == len(fhir.CSV_HEADER)
    assert row[0] == "4" and row[4] == "" and row[7] == ""
    assert row[10].startswith("'=")  # no formulas for the people reading the CSV


# ---------------------------------------------------------------------------------------------------------
# The command line, with Django made unimportable


RUN_WITHOUT_DJANGO = (
    "import runpy, sys; sys.modules['django'] = None; sys.argv = ['audit.verify', *sys.argv[1:]]; "
    "runpy.run_module('audit.verify', run_name='__main__', alter_sys=True)"
)


def run_cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_DJANGO, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )


def test_cli_exit_codes_without_django(export, signer, tmp_path):
    keyfile = tmp_path / "k.vkey"
    keyfile.write_text(signer.vkey)
    ok = run_cli(export, "--key", keyfile, "--max-age", "600")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("OK: audit export") and ORG in ok.stdout

    lines = lines_of(export)
    del lines[25]
    write_lines(export, lines)
    rewrite_manifest(export)
    bad = run_cli(export, "--key", keyfile)
    assert bad.returncode == 1
    assert bad.stdout.strip().startswith("FAILED: gap: seq 26 follows 24")

    assert run_cli().returncode == 2
    assert run_cli(tmp_path / "nope").returncode == 2
    assert run_cli(export, "--key", tmp_path / "missing.vkey").returncode == 2
    assert run_cli(export, "--max-age", "soon").returncode == 2
    usage = run_cli(export, "--trusted-checkpoint", tmp_path / "missing.txt")
    assert usage.returncode == 2 and "cannot read trusted checkpoint" in usage.stderr


def test_main_in_process(export, signer, capsys):
    assert main([str(export), "--key", signer.vkey, "--check-derived"]) == 0
    assert "3 verified" in capsys.readouterr().out
