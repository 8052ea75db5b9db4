"""Offline verifier for an audit export: `python -m audit.verify DIR [--trusted-checkpoint FILE] [--key VKEY ...]`.

Needs only Python and `cryptography` (no Django, no database): it imports audit.tlog and audit.fhir, which
import nothing else of the project. It implements "What the verifier checks" of audit/FORMAT.md:

1. manifest.json's file hashes match the files (and every file of the export is listed);
2. every checkpoint parses and carries a valid signature by a pinned key: the keys given with `--key`, or,
   without `--key`, the keys in the export's keys/ directory (then the summary says they were not pinned);
3. leaves.bin holds exactly tree_size leaves, each checkpoint's root equals the root over its first `size`
   leaves, and the consistency proofs between consecutive checkpoints verify;
4. each line of entries.ndjson hashes to the leaf at its seq, seqs increase and, unless the export is
   filtered to a patient, have no gap; a patient-filtered export's inclusion proofs verify;
5. a checkpoint kept from an earlier export (`--trusted-checkpoint`) verifies, is no larger than the
   export's tree and has the root of the export's log at its size (the log was extended, not rewritten);
6. with `--max-age`, the newest checkpoint is no older than that.

Exit status: 0 verified, 1 verification failed (`FAILED: <what and where>`), 2 usage error.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from audit.tlog import (
    EMPTY_ROOT,
    HASH_SIZE,
    Checkpoint,
    Frontier,
    VerificationError,
    keys_from_vkeys,
    leaf_hash,
    parse_checkpoint,
    parse_vkey,
    verify_checkpoint,
    verify_consistency,
    verify_inclusion,
)

__all__ = ["Report", "UsageError", "VerificationError", "main", "verify_export"]

FORMAT = "telemed-audit-export/1"
CHECKPOINT_NAME = re.compile(r"(\d{12})(?:-[A-Za-z0-9_.]+)?\.txt")
KEY_NAME = re.compile(r"(.+)-([0-9a-f]{8})\.vkey")
# files and directories an export consists of: all must be listed in the manifest
KNOWN_FILES = {"entries.ndjson", "leaves.bin", "auditevents.ndjson", "events.csv"}
KNOWN_DIRS = {"checkpoints", "proofs", "keys"}
REQUIRED_FILES = ("entries.ndjson", "leaves.bin")
CHUNK = 1 << 20


class UsageError(Exception):
    """A bad argument (exit status 2), as opposed to an export that fails verification (exit status 1)."""


@dataclass
class Report:
    path: str
    org: str
    origin: str
    patient: str | None
    since: str | None
    until: str | None
    entries: int
    first_seq: int | None
    last_seq: int | None
    tree_size: int
    root: bytes
    checkpoints: int
    checkpoint_sizes: list[int]
    consistency_proofs: int
    inclusion_proofs: int
    keys: list[str]
    keys_pinned: bool
    trusted: Checkpoint | None = None
    newest_entry_time: str | None = None
    checkpoint_age: float | None = None
    derived_checked: bool = False
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        if self.entries:
            span = f"seq {self.first_seq}..{self.last_seq}"
            kind = f"only patient {self.patient}'s" if self.patient else "contiguous"
            entries = f"{self.entries} ({span}, {kind})"
        else:
            entries = "0"
        sizes = self.checkpoint_sizes
        size_text = f"size {sizes[0]}" if len(sizes) == 1 else f"sizes {sizes[0]}..{sizes[-1]}"
        lines = [
            f"OK: audit export {self.path} verified in {self.seconds:.2f} s",
            f"  organization  {self.org}  (origin {self.origin})",
            f"  period        {self.since or 'start of log'} .. {self.until or 'end of log'}",
            f"  entries       {entries}",
            f"  tree          size {self.tree_size}, root {self.root.hex()}",
            f"  checkpoints   {self.checkpoints} verified ({size_text}), "
            f"{self.consistency_proofs} consistency proofs",
        ]
        if self.patient:
            lines.append(f"  inclusion     {self.inclusion_proofs} proofs verified")
        how = "pinned with --key" if self.keys_pinned else "from the export's keys/, NOT pinned: pass --key"
        lines.append(f"  keys          {', '.join(self.keys)} ({how})")
        if self.trusted is not None:
            lines.append(
                f"  trusted       checkpoint of size {self.trusted.size} is a prefix of this log (consistent)"
            )
        else:
            lines.append(
                "  trusted       none given: keep the newest checkpoint to check the next export against"
            )
        if self.checkpoint_age is not None:
            lines.append(f"  freshness     newest checkpoint {self.checkpoint_age:.0f} s old")
        if self.newest_entry_time:
            lines.append(f"  newest entry  {self.newest_entry_time}")
        if self.derived_checked:
            lines.append("  derived       auditevents.ndjson and events.csv match the entries")
        lines.extend(f"  warning       {w}" for w in self.warnings)
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# helpers


def _fail(message: str) -> VerificationError:
    return VerificationError(message)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _parse_time(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _int_or_none(value: object, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _fail(f"manifest: {what} is not a non-negative integer")
    return value


def _load_manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not path.is_file():
        raise _fail("manifest.json is missing")
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(f"manifest.json is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise _fail("manifest.json is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise _fail(f"manifest: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    for key in ("org", "origin"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            raise _fail(f"manifest: {key} is missing")
    org, origin = manifest["org"], manifest["origin"]
    if origin != f"telemed.audit/{org}" and not origin.endswith(f"/telemed.audit/{org}"):
        raise _fail(f"manifest: origin {origin!r} is not the log of organization {org}")
    for key in ("patient", "since", "until", "exported_at"):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            raise _fail(f"manifest: {key} must be a string or null")
    entries = manifest.get("entries")
    if not isinstance(entries, dict):
        raise _fail("manifest: entries is missing")
    count = _int_or_none(entries.get("count"), "entries.count")
    if count is None:
        raise _fail("manifest: entries.count is missing")
    first = _int_or_none(entries.get("first_seq"), "entries.first_seq")
    last = _int_or_none(entries.get("last_seq"), "entries.last_seq")
    if count and (first is None or last is None or first > last):
        raise _fail("manifest: entries.first_seq and last_seq do not describe a range")
    if _int_or_none(manifest.get("tree_size"), "tree_size") is None:
        raise _fail("manifest: tree_size is missing")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v)
        for k, v in files.items()
    ):
        raise _fail("manifest: files must map relative paths to hex SHA-256 hashes")
    return manifest


def _safe_relative(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name and str(p) == name


def _export_files(root: Path) -> list[str]:
    """Relative paths of the files that make up the export (known names and everything under known dirs)."""
    found = []
    for name in sorted(KNOWN_FILES):
        if (root / name).exists():
            found.append(name)
    for d in sorted(KNOWN_DIRS):
        base = root / d
        if base.is_dir():
            for p in sorted(base.rglob("*")):
                if p.is_file() or p.is_symlink():
                    found.append(p.relative_to(root).as_posix())
    return found


def _check_manifest_listing(root: Path, manifest: dict) -> None:
    """Every listed file exists inside the export, and every file of the export is listed."""
    files: dict[str, str] = manifest["files"]
    for name in REQUIRED_FILES:
        if name not in files:
            raise _fail(f"manifest: {name} is not listed")
    resolved_root = root.resolve()
    for name in files:
        if not _safe_relative(name) or name == "manifest.json":
            raise _fail(f"manifest: file name {name!r} is not a plain relative path")
        path = root / name
        if not path.is_file():
            raise _fail(f"manifest: {name} is listed but missing (deleted?)")
        if not path.resolve().is_relative_to(resolved_root):
            raise _fail(f"manifest: {name} points outside the export")
    for name in _export_files(root):
        if name not in files:
            raise _fail(f"{name} is in the export but not in the manifest (added after export?)")


def _hash_files(root: Path, files: dict[str, str]) -> dict[str, str]:
    return {name: _sha256_file(root / name) for name in files}


def _check_hashes(actual: dict[str, str], files: dict[str, str]) -> None:
    for name, expected in files.items():
        if actual[name] != expected:
            raise _fail(f"manifest: hash of {name} does not match (changed after export?)")


def _read_key_argument(item: object) -> str:
    """A --key value: a verifier key string, or a file (path) holding one."""
    if isinstance(item, os.PathLike):
        path = Path(item)
    else:
        text = str(item).strip()
        try:
            parse_vkey(text)
            return text
        except ValueError:
            path = Path(text)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"cannot read key file {path}: {exc.strerror}") from None
    try:
        parse_vkey(text)
    except ValueError as exc:
        raise UsageError(f"{path}: not a verifier key ({exc})") from None
    return text


def _load_export_keys(root: Path) -> list[str]:
    keys: list[str] = []
    base = root / "keys"
    if not base.is_dir():
        return keys
    for path in sorted(base.iterdir()):
        rel = path.relative_to(root).as_posix()
        m = KEY_NAME.fullmatch(path.name)
        if not m or not path.is_file():
            raise _fail(f"{rel}: unexpected file in keys/ (expected <name>-<key id hex>.vkey)")
        text = path.read_text(encoding="utf-8").strip()
        try:
            name, kid, _ = parse_vkey(text)
        except ValueError as exc:
            raise _fail(f"{rel}: not a verifier key ({exc})") from None
        if (name, kid.hex()) != (m.group(1), m.group(2)):
            raise _fail(f"{rel}: file name does not match the key it holds ({name}+{kid.hex()})")
        keys.append(text)
    return keys


def _read_trusted(trusted: object) -> tuple[str, str]:
    """(label, note text) of the --trusted-checkpoint argument: a path, or the note itself."""
    if isinstance(trusted, bytes):
        return "trusted checkpoint", trusted.decode("utf-8", "replace")
    if isinstance(trusted, str) and "\n" in trusted:
        return "trusted checkpoint", trusted
    path = Path(trusted)  # type: ignore[arg-type]
    try:
        return f"trusted checkpoint {path.name}", path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read trusted checkpoint {path}: {exc}") from None


# --------------------------------------------------------------------------------------------------------
# the checks


def _load_checkpoints(root: Path, origin: str, keys: dict) -> list[tuple[str, Checkpoint, list[str]]]:
    base = root / "checkpoints"
    found = []
    if base.is_dir():
        for path in sorted(base.iterdir()):
            rel = path.relative_to(root).as_posix()
            m = CHECKPOINT_NAME.fullmatch(path.name)
            if not m or not path.is_file():
                raise _fail(f"{rel}: unexpected file in checkpoints/ (expected NNNNNNNNNNNN.txt)")
            label = f"checkpoint {path.stem}"
            try:
                note = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise _fail(f"{label}: not UTF-8 text") from None
            try:
                cp = verify_checkpoint(note, keys)
            except VerificationError as exc:
                raise _fail(f"{label}: {exc}") from None
            signers = [f"{n}+{k.hex()}" for n, k, _ in parse_checkpoint(note)[1] if (n, k) in keys]
            if cp.origin != origin:
                raise _fail(f"{label}: origin {cp.origin!r} is not this export's log ({origin!r})")
            found.append((label, cp, signers, int(m.group(1)), rel))
    if not found:
        raise _fail("no checkpoints in the export: nothing is signed")
    # the same size with two roots is a fork, whatever the files are called
    by_size: dict[int, tuple[str, Checkpoint]] = {}
    for label, cp, _, _, _ in found:
        if cp.size in by_size and by_size[cp.size][1].root != cp.root:
            other = by_size[cp.size][0]
            raise _fail(
                f"two checkpoints of size {cp.size} with different roots ({other}, {label}): the log forked"
            )
        by_size.setdefault(cp.size, (label, cp))
    for label, cp, _, named, rel in found:
        if named != cp.size:
            raise _fail(f"{label}: {rel} holds a checkpoint of size {cp.size} (renamed?)")
    return [(label, cp, signers) for label, cp, signers, _, _ in found]


def _load_consistency(root: Path) -> dict[tuple[int, int], list[bytes]] | None:
    path = root / "proofs" / "consistency.json"
    if not path.is_file():
        return None
    try:
        items = json.loads(path.read_bytes())
        proofs = {}
        for item in items:
            a, b = item["from"], item["to"]
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in (a, b)):
                raise TypeError("sizes must be integers")
            proofs[(a, b)] = [bytes.fromhex(h) for h in item["proof"]]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise _fail(f"proofs/consistency.json is malformed: {exc}") from None
    return proofs


def _load_inclusion(root: Path) -> dict[int, tuple[int, list[bytes]]]:
    path = root / "proofs" / "inclusion.json"
    if not path.is_file():
        raise _fail("proofs/inclusion.json is missing (a patient-filtered export needs inclusion proofs)")
    try:
        raw = json.loads(path.read_bytes())
        if not isinstance(raw, dict):
            raise TypeError("not an object")
        proofs = {}
        for seq, item in raw.items():
            size = item["tree_size"]
            if not isinstance(size, int) or isinstance(size, bool):
                raise TypeError("tree_size must be an integer")
            proofs[int(seq)] = (size, [bytes.fromhex(h) for h in item["proof"]])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise _fail(f"proofs/inclusion.json is malformed: {exc}") from None
    return proofs


def _check_roots(
    leaves: bytes, sizes: list[int], checkpoint_roots: dict[int, bytes], labels: dict[int, str]
) -> dict[int, bytes]:
    """Roots of leaves.bin at each size in `sizes` (ascending), failing where a checkpoint's root differs."""
    frontier = Frontier()
    computed = {}
    for size in sizes:
        frontier.extend_packed(memoryview(leaves)[frontier.size * HASH_SIZE : size * HASH_SIZE])
        computed[size] = frontier.root()
        expected = checkpoint_roots.get(size)
        if expected is not None and computed[size] != expected:
            raise _fail(
                f"{labels[size]}: root mismatch: the first {size} leaves of leaves.bin hash to "
                f"{computed[size].hex()[:16]}…, the signed checkpoint says {expected.hex()[:16]}… "
                f"(an entry was edited, removed or reordered)"
            )
    return computed


def _check_entry_slowly(line, lineno, h, prev, filtered, org, patient, tree_size, leaves, lines) -> dict:
    """Parse an entry that did not hash to the leaf expected next, and say exactly what is wrong with it."""
    where = f"entries.ndjson line {lineno}"
    try:
        entry = json.loads(line)
        seq = entry["seq"]
    except (ValueError, UnicodeDecodeError, TypeError, KeyError):
        raise _fail(f"{where} is not a log entry (a JSON object with a seq)") from None
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise _fail(f"{where}: seq {seq!r} is not a sequence number")
    if prev is not None and seq <= prev:
        raise _fail(f"entries out of order: seq {seq} follows seq {prev} at {where} (swapped or duplicated?)")
    if prev is not None and not filtered and seq != prev + 1:
        following = _peek_seq(lines)
        if following is not None and prev < following < seq:
            raise _fail(f"entries out of order: seq {seq} comes before seq {following} at {where} (swapped?)")
        missing = f"seq {prev + 1}" if seq == prev + 2 else f"seqs {prev + 1}..{seq - 1}"
        raise _fail(f"gap: seq {seq} follows {prev} ({missing} missing: deleted?)")
    if seq >= tree_size:
        raise _fail(f"entry seq {seq} is beyond the signed tree (size {tree_size})")
    if h != leaves[seq * HASH_SIZE : (seq + 1) * HASH_SIZE]:
        raise _fail(f"entry seq {seq} does not match leaf {seq} ({where}; edited?)")
    if entry.get("org") != org:
        raise _fail(f"entry seq {seq} belongs to organization {entry.get('org')}, not {org}")
    if filtered and entry.get("patient") != patient:
        raise _fail(f"entry seq {seq} is not about patient {patient} (in a patient-filtered export)")
    return entry


def _peek_seq(lines) -> int | None:
    """The seq of the next line, for a clearer message when a gap is really a swap."""
    item = next(lines, None)
    try:
        seq = json.loads(item[1])["seq"] if item else None
    except (ValueError, TypeError, KeyError):
        return None
    return seq if isinstance(seq, int) else None


def verify_export(
    path: str | os.PathLike,
    trusted_checkpoint: str | os.PathLike | bytes | None = None,
    extra_keys: Iterable[str | os.PathLike] = (),
    max_age: float | None = None,
    *,
    check_derived: bool = False,
    now: dt.datetime | None = None,
) -> Report:
    """Verify an export directory; returns a Report or raises VerificationError naming the first failure.

    `trusted_checkpoint`: a checkpoint kept from an earlier export (a file path, or the note text).
    `extra_keys`: verifier keys (strings or files) to pin; when given, only these keys are trusted and the
    export's own keys/ are not. `check_derived` also recomputes auditevents.ndjson and events.csv from the
    entries (audit.fhir). Raises UsageError for unreadable arguments.
    """
    started = time.perf_counter()
    root = Path(path)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory")
    extra = [_read_key_argument(k) for k in extra_keys]
    trusted_label, trusted_note = (
        _read_trusted(trusted_checkpoint) if trusted_checkpoint is not None else ("", "")
    )

    # 1. the manifest and the file hashes (hashed in a thread while the other checks run: hashlib and file
    # reads release the GIL; a hash mismatch is still reported first, as the first failure)
    manifest = _load_manifest(root)
    _check_manifest_listing(root, manifest)
    with ThreadPoolExecutor(max_workers=1) as pool:
        hashing = pool.submit(_hash_files, root, manifest["files"])
        try:
            report = _verify_contents(
                root, manifest, extra, trusted_label, trusted_note, max_age, check_derived, now
            )
        except VerificationError:
            _check_hashes(hashing.result(), manifest["files"])
            raise
        _check_hashes(hashing.result(), manifest["files"])
    report.seconds = time.perf_counter() - started
    return report


def _verify_contents(
    root: Path,
    manifest: dict,
    extra: list[str],
    trusted_label: str,
    trusted_note: str,
    max_age: float | None,
    check_derived: bool,
    now: dt.datetime | None,
) -> Report:
    """Checks 2 to 6 of FORMAT.md once the manifest is known to list exactly the export's files."""
    warnings: list[str] = []
    org, origin = manifest["org"], manifest["origin"]
    patient = manifest.get("patient")
    filtered = patient is not None
    tree_size = manifest["tree_size"]
    m_entries = manifest["entries"]

    # 2. checkpoints and their signatures
    export_keys = _load_export_keys(root)
    if extra:
        vkeys, pinned = extra, True
    else:
        vkeys, pinned = export_keys, False
        if not vkeys:
            raise _fail("no verifier keys: the export has no keys/ and none were given with --key")
        warnings.append("the signing keys were taken from the export itself; pin them with --key")
    keys = keys_from_vkeys(vkeys)
    checkpoints = _load_checkpoints(root, origin, keys)
    checkpoint_roots = {cp.size: cp.root for _, cp, _ in checkpoints}
    labels = {cp.size: label for label, cp, _ in checkpoints}
    sizes = sorted(checkpoint_roots)
    used_keys = sorted({s for _, _, signers in checkpoints for s in signers})
    newest = sizes[-1]

    # 5 (parsed now, checked in its turn below)
    trusted: Checkpoint | None = None
    if trusted_note:
        try:
            trusted = verify_checkpoint(trusted_note, keys)
        except VerificationError as exc:
            raise _fail(f"{trusted_label}: {exc}") from None

    # 3. leaves, roots, consistency
    leaves_path = root / "leaves.bin"
    leaves = leaves_path.read_bytes()
    if len(leaves) % HASH_SIZE:
        raise _fail(f"leaves.bin is {len(leaves)} bytes, not a whole number of 32-byte leaf hashes")
    leaf_count = len(leaves) // HASH_SIZE
    if leaf_count != newest:
        hint = "truncated?" if leaf_count < newest else "leaves added after the newest checkpoint?"
        raise _fail(f"leaves.bin holds {leaf_count} leaves, checkpoint says {newest} ({hint})")
    if tree_size != newest:
        raise _fail(f"manifest: tree_size is {tree_size} but the newest checkpoint has size {newest}")
    root_sizes = sorted(set(sizes) | ({trusted.size} if trusted and trusted.size <= tree_size else set()))
    roots = _check_roots(leaves, root_sizes, checkpoint_roots, labels)
    consistency = _load_consistency(root)
    checked_consistency = 0
    pairs = list(itertools.pairwise(sizes))
    if consistency is None and any(a > 0 for a, _ in pairs):
        raise _fail("proofs/consistency.json is missing")
    for a, b in pairs:
        proof = (consistency or {}).get((a, b))
        if proof is None:
            if a == 0:
                continue
            raise _fail(f"consistency proof from {labels[a]} to {labels[b]} is missing")
        if not verify_consistency(a, b, checkpoint_roots[a], checkpoint_roots[b], proof):
            raise _fail(f"consistency proof from {labels[a]} to {labels[b]} does not verify")
        checked_consistency += 1
    for a, b in sorted(set(consistency or {}) - set(pairs)):
        warnings.append(
            f"proofs/consistency.json: proof from {a} to {b} is not between consecutive checkpoints"
        )

    # 4. entries. Fast path: a line that hashes to the leaf at the seq expected next is the authentic entry
    # there (the signed roots cover leaves.bin); a byte search then confirms its seq and org. Any other line
    # is parsed, to say precisely what is wrong with it.
    inclusion = _load_inclusion(root) if filtered else {}
    upcoming = iter(sorted(inclusion))
    derived = _Derived(root, origin, manifest) if check_derived else None
    org_bytes = b'"org":' + json.dumps(org, ensure_ascii=False).encode("utf-8")
    patient_bytes = b'"patient":' + json.dumps(patient, ensure_ascii=False).encode("utf-8")
    count = 0
    first_seq: int | None = None
    prev: int | None = None
    prev_time = b""
    newest_time: bytes | None = None
    clock_warnings = 0
    included = 0
    candidate: int | None = m_entries["first_seq"]
    with (root / "entries.ndjson").open("rb") as entries_file:
        lines = enumerate(entries_file, 1)
        for lineno, raw in lines:
            line = raw[:-1] if raw[-1:] == b"\n" else raw
            if prev is not None:
                if filtered:
                    candidate = next(upcoming, None)
                    while candidate is not None and candidate <= prev:
                        candidate = next(upcoming, None)
                else:
                    candidate = prev + 1
            h = leaf_hash(line)
            entry = None
            if (
                candidate is not None
                and candidate < tree_size
                and h == leaves[candidate * HASH_SIZE : (candidate + 1) * HASH_SIZE]
                and (b'"seq":%d,' % candidate in line or b'"seq":%d}' % candidate in line)
                and org_bytes in line
                and (not filtered or patient_bytes in line)
                and (prev is None or candidate > prev)
            ):
                seq = candidate
                if prev is None:
                    first_seq = seq
            else:
                entry = _check_entry_slowly(
                    line, lineno, h, prev, filtered, org, patient, tree_size, leaves, lines
                )
                seq = entry["seq"]
                if prev is None:
                    first_seq = seq
            if filtered:
                item = inclusion.get(seq)
                if item is None:
                    raise _fail(f"entry seq {seq} has no inclusion proof")
                proof_size, proof = item
                if proof_size not in checkpoint_roots:
                    raise _fail(
                        f"inclusion proof of entry seq {seq} is for tree size {proof_size}, not a checkpoint"
                    )
                if not verify_inclusion(seq, proof_size, h, proof, checkpoint_roots[proof_size]):
                    raise _fail(
                        f"inclusion proof of entry seq {seq} does not verify against {labels[proof_size]}"
                    )
                included += 1
            at = line.rfind(b'"time":"')
            if at >= 0:
                t = line[at + 8 : line.find(b'"', at + 8)]
                if t < prev_time and clock_warnings < 5:
                    before = _parse_time(prev_time.decode("utf-8", "replace"))
                    after = _parse_time(t.decode("utf-8", "replace"))
                    # Events of concurrent transactions interleave by a few milliseconds: not worth a word.
                    if before and after and (before - after).total_seconds() >= 1:
                        clock_warnings += 1
                        warnings.append(
                            f"entry seq {seq}'s time {t.decode()} is {(before - after).total_seconds():.0f} s "
                            f"before the "
                            f"previous entry's (clock set back? order is by seq, which is intact)"
                        )
                prev_time = newest_time = t
            if derived is not None:
                derived.check(seq, entry if entry is not None else json.loads(line))
            prev = seq
            count += 1

    if count != m_entries["count"]:
        raise _fail(
            f"entries.ndjson holds {count} entries, the manifest says {m_entries['count']} (dropped?)"
        )
    if count:
        if first_seq != m_entries["first_seq"]:
            raise _fail(
                f"entries.ndjson starts at seq {first_seq}, the manifest says {m_entries['first_seq']}"
            )
        if prev != m_entries["last_seq"]:
            raise _fail(
                f"entries.ndjson ends at seq {prev}, the manifest says {m_entries['last_seq']} (tail dropped?)"
            )
    if not filtered and manifest.get("since") is None and count and first_seq != 0:
        raise _fail(
            f"entries.ndjson starts at seq {first_seq} but the export has no start date (head dropped?)"
        )
    if not filtered and manifest.get("until") is None and (prev if count else -1) != tree_size - 1:
        last = f"ends at seq {prev}" if count else "is empty"
        raise _fail(f"entries.ndjson {last} but the signed tree holds {tree_size} entries (tail dropped?)")
    if derived is not None:
        derived.finish(count)

    # 5. the trusted checkpoint
    if trusted is not None:
        if trusted.origin != origin:
            raise _fail(f"{trusted_label} is for log {trusted.origin!r}, this export is for {origin!r}")
        if trusted.size > tree_size:
            raise _fail(
                f"trusted checkpoint size {trusted.size} is larger than the export's tree "
                f"(size {tree_size}; rolled back?)"
            )
        if trusted.size in checkpoint_roots and checkpoint_roots[trusted.size] != trusted.root:
            raise _fail(
                f"two checkpoints of size {trusted.size} with different roots ({trusted_label}, "
                f"{labels[trusted.size]}): the log forked or was rewritten"
            )
        if roots[trusted.size] != trusted.root:
            raise _fail(
                f"{trusted_label} (size {trusted.size}) does not match this export's log at that size "
                f"(history rewritten, or restored from an older backup?)"
            )

    # 6. freshness
    age = None
    newest_label = labels[newest]
    if max_age is not None:
        stamp = None
        times = manifest.get("checkpoint_times")
        if isinstance(times, dict):
            stamp = times.get(f"checkpoints/{newest_label.split()[-1]}.txt")
        stamp = stamp or manifest.get("exported_at")
        when = _parse_time(stamp)
        if when is None:
            raise _fail("cannot tell the newest checkpoint's age: the manifest has no valid exported_at")
        current = now or dt.datetime.now(dt.UTC)
        age = (current - when).total_seconds()
        if age > max_age:
            raise _fail(f"{newest_label} (as of {stamp}) is {age:.0f} s old, more than --max-age {max_age:g}")
        if age < -300:
            warnings.append(f"exported_at {stamp} is in the future")

    return Report(
        path=str(root),
        org=org,
        origin=origin,
        patient=patient,
        since=manifest.get("since"),
        until=manifest.get("until"),
        entries=count,
        first_seq=first_seq,
        last_seq=prev,
        tree_size=tree_size,
        root=roots.get(tree_size, EMPTY_ROOT),
        checkpoints=len(checkpoints),
        checkpoint_sizes=sizes,
        consistency_proofs=checked_consistency,
        inclusion_proofs=included,
        keys=used_keys,
        keys_pinned=pinned,
        trusted=trusted,
        newest_entry_time=newest_time.decode("utf-8", "replace") if newest_time else None,
        checkpoint_age=age,
        derived_checked=derived is not None,
        warnings=warnings,
    )


class _Derived:
    """Recomputes auditevents.ndjson and events.csv from the entries as they stream by (--check-derived)."""

    def __init__(self, root: Path, origin: str, manifest: dict) -> None:
        from audit.fhir import CSV_HEADER, csv_row, to_audit_event

        self.to_audit_event, self.csv_row = to_audit_event, csv_row
        self.observer = manifest.get("observer") or "telemed"
        self.events = (
            (root / "auditevents.ndjson").open("rb") if (root / "auditevents.ndjson").is_file() else None
        )
        self.csv_file = (
            (root / "events.csv").open(encoding="utf-8", newline="")
            if (root / "events.csv").is_file()
            else None
        )
        self.rows = csv.reader(self.csv_file) if self.csv_file else None
        if self.events is None or self.rows is None:
            raise _fail("--check-derived: auditevents.ndjson or events.csv is missing")
        header = next(self.rows, None)
        if header != CSV_HEADER:
            raise _fail(f"events.csv: header {header} is not {CSV_HEADER}")

    def check(self, seq: int, entry: dict) -> None:
        assert self.events is not None and self.rows is not None
        line = self.events.readline()
        try:
            event = json.loads(line)
        except ValueError:
            raise _fail(f"auditevents.ndjson: no AuditEvent for entry seq {seq}") from None
        if event != self.to_audit_event(entry, observer=self.observer):
            raise _fail(f"auditevents.ndjson: the AuditEvent for entry seq {seq} does not match the entry")
        row = next(self.rows, None)
        if row != self.csv_row(entry):
            raise _fail(f"events.csv: the row for entry seq {seq} does not match the entry")

    def finish(self, count: int) -> None:
        assert self.events is not None and self.rows is not None and self.csv_file is not None
        extra_event, extra_row = self.events.readline(), next(self.rows, None)
        self.events.close()
        self.csv_file.close()
        if extra_event.strip() or extra_row is not None:
            raise _fail(f"auditevents.ndjson or events.csv holds more than the {count} entries")


# --------------------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m audit.verify",
        description="Verify an audit export offline (signatures, Merkle roots, proofs, completeness).",
    )
    parser.add_argument("directory", metavar="DIR", help="the export directory (audit_export --out)")
    parser.add_argument(
        "--trusted-checkpoint",
        metavar="FILE",
        help="a checkpoint kept from an earlier export: the log must extend it",
    )
    parser.add_argument(
        "--key",
        metavar="VKEYFILE",
        action="append",
        default=[],
        help="a verifier key (file or text) to pin; repeat for rotated keys. Default: the export's keys/",
    )
    parser.add_argument(
        "--max-age", metavar="SECONDS", type=float, help="fail when the newest checkpoint is older than this"
    )
    parser.add_argument(
        "--check-derived",
        action="store_true",
        help="also check that auditevents.ndjson and events.csv match the signed entries",
    )
    args = parser.parse_args(argv)
    if args.max_age is not None and args.max_age < 0:
        parser.error("--max-age must not be negative")
    try:
        report = verify_export(
            args.directory,
            trusted_checkpoint=args.trusted_checkpoint,
            extra_keys=args.key,
            max_age=args.max_age,
            check_derived=args.check_derived,
        )
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except VerificationError as exc:
        print(f"FAILED: {exc}", flush=True)
        return 1
    except OSError as exc:
        print(f"FAILED: cannot read the export: {exc}", flush=True)
        return 1
    print(report.summary(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
