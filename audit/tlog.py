"""Transparency-log primitives for the audit log: RFC 6962 Merkle trees and C2SP signed checkpoints.

Pure Python (standard library and `cryptography` only, never Django) so that the offline verifier
(`python -m audit.verify`) runs with nothing else installed. The format is described in audit/FORMAT.md.

Every tree function works on *leaf hashes* (`leaf_hash(entry_bytes)`, 32 bytes each), never on entry bytes.

- `root(leaves)`: RFC 6962 MTH over leaf hashes; `Frontier` keeps the same root incrementally (the
  roots of the perfect subtrees of an append-only log, one per set bit of its size), so a shipper can persist
  it per organization and keep appending without rereading the log.
- `inclusion_proof` / `verify_inclusion`, `consistency_proof` / `verify_consistency`: RFC 6962 section 2.1
  proofs, verified with the RFC 9162 section 2.1.3.2 / 2.1.4.2 algorithms. `Tree` builds the perfect-subtree
  levels once for many proofs over the same leaves.
- Checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes with Ed25519 signatures and C2SP verifier keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Checkpoint",
    "Frontier",
    "Tree",
    "VerificationError",
    "canonical_entry",
    "checkpoint_body",
    "consistency_proof",
    "inclusion_proof",
    "key_id",
    "keys_from_vkeys",
    "leaf_hash",
    "node_hash",
    "parse_checkpoint",
    "parse_vkey",
    "root",
    "sign_line",
    "signed_note",
    "verify_checkpoint",
    "verify_consistency",
    "verify_inclusion",
    "vkey",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
ALG_ED25519 = b"\x01"
EM_DASH = "\u2014"
MAX_SIGNATURES = 100  # C2SP signed-note: verifiers may reject notes with more signatures than this

_sha256 = hashlib.sha256


class VerificationError(Exception):
    """A proof, checkpoint, signature or export failed to verify (the message says what and where)."""


# --------------------------------------------------------------------------------------------------------
# Hashes


def leaf_hash(entry: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || entry)."""
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def canonical_entry(obj: dict) -> bytes:
    """The canonical bytes of a log entry: JSON, keys sorted, no whitespace, UTF-8 (not ASCII-escaped)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def _check_hash(value: bytes, what: str = "hash") -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview) or len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes")
    return bytes(value)


def _perfect_root_packed(data: bytes | memoryview) -> bytes:
    """Root of a perfect subtree whose leaf hashes are concatenated in `data` (a power of two of them)."""
    level = bytes(data)
    prefix = b"\x01"
    while len(level) > HASH_SIZE:
        level = b"".join([_sha256(prefix + level[i : i + 64]).digest() for i in range(0, len(level), 64)])
    return level


def _largest_power_of_two_below(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2): RFC 6962's k."""
    return 1 << ((n - 1).bit_length() - 1)


# --------------------------------------------------------------------------------------------------------
# Incremental tree (compact range)


class Frontier:
    """The right edge of an append-only Merkle tree: one perfect-subtree root per set bit of `size`.

    `hashes` lists those roots from the largest (leftmost) subtree to the smallest. Appending a leaf merges
    equal-sized subtrees like a binary counter; `root()` folds them from the right, which equals RFC 6962's
    MTH of all leaves appended so far.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        hashes = [_check_hash(h, "frontier hash") for h in hashes]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("frontier size must be a non-negative integer")
        if len(hashes) != size.bit_count():
            raise ValueError(f"a frontier of size {size} holds {size.bit_count()} hashes, not {len(hashes)}")
        self._size = size
        self._hashes = hashes

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def __repr__(self) -> str:
        return f"Frontier(size={self._size}, root={self.root().hex()})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frontier):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    def copy(self) -> Frontier:
        return Frontier(self._size, self._hashes)

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf hash."""
        self._push(_check_hash(leaf_hash, "leaf hash"), 0)

    def _push(self, subtree_root: bytes, height: int) -> None:
        """Append a perfect subtree of 2**height leaves; the size must be a multiple of 2**height."""
        n = self._size >> height
        hashes = self._hashes
        h = subtree_root
        while n & 1:
            h = _sha256(b"\x01" + hashes.pop() + h).digest()
            n >>= 1
        hashes.append(h)
        self._size += 1 << height

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append many leaf hashes (hashed a perfect subtree at a time, which is faster than append())."""
        if isinstance(leaf_hashes, bytes | bytearray | memoryview):
            raise TypeError(
                "extend() takes an iterable of 32-byte leaf hashes; use extend_packed() for bytes"
            )
        items = [_check_hash(h, "leaf hash") for h in leaf_hashes]
        self.extend_packed(b"".join(items))

    def extend_packed(self, data: bytes | bytearray | memoryview) -> None:
        """Append the leaf hashes concatenated in `data` (the layout of an export's leaves.bin)."""
        view = memoryview(data).cast("B")
        if len(view) % HASH_SIZE:
            raise ValueError(f"packed leaf hashes must be a multiple of {HASH_SIZE} bytes")
        count = len(view) // HASH_SIZE
        i = 0
        while i < count:
            remaining = count - i
            height = remaining.bit_length() - 1
            if self._size:
                height = min(height, (self._size & -self._size).bit_length() - 1)
            if height == 0:
                self._push(bytes(view[i * HASH_SIZE : (i + 1) * HASH_SIZE]), 0)
                i += 1
                continue
            step = 1 << height
            self._push(_perfect_root_packed(view[i * HASH_SIZE : (i + step) * HASH_SIZE]), height)
            i += step

    def root(self) -> bytes:
        """RFC 6962 MTH of every leaf appended so far (SHA-256("") when empty)."""
        if not self._hashes:
            return EMPTY_ROOT
        hashes = self._hashes
        r = hashes[-1]
        for h in reversed(hashes[:-1]):
            r = _sha256(b"\x01" + h + r).digest()
        return r

    def to_json(self) -> dict:
        return {"size": self._size, "hashes": [h.hex() for h in self._hashes]}

    @classmethod
    def from_json(cls, d: Mapping) -> Frontier:
        try:
            size = d["size"]
            hashes = [bytes.fromhex(h) for h in d["hashes"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a frontier: {exc}") from exc
        return cls(size, hashes)


def root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash (MTH) over a sequence of leaf hashes."""
    f = Frontier()
    f.extend(leaves)
    return f.root()


# --------------------------------------------------------------------------------------------------------
# Proofs


class Tree:
    """All perfect-subtree hashes of a list of leaf hashes, for many proofs or roots over the same leaves.

    Memory is about twice the leaves; each proof or prefix root then costs O(log n) hashes, where the
    module-level functions cost O(n) each.
    """

    def __init__(self, leaves: Sequence[bytes] | bytes) -> None:
        if isinstance(leaves, bytes | bytearray | memoryview):
            packed = bytes(leaves)
            if len(packed) % HASH_SIZE:
                raise ValueError(f"packed leaf hashes must be a multiple of {HASH_SIZE} bytes")
        else:
            packed = b"".join(_check_hash(h, "leaf hash") for h in leaves)
        self.size = len(packed) // HASH_SIZE
        # levels[h] holds the roots of the complete subtrees of 2**h leaves, concatenated
        self._levels = [packed]
        level = packed
        while len(level) >= 2 * HASH_SIZE:
            usable = len(level) - len(level) % 64
            level = b"".join([_sha256(b"\x01" + level[i : i + 64]).digest() for i in range(0, usable, 64)])
            self._levels.append(level)

    def leaf(self, index: int) -> bytes:
        return self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE]

    def _mth(self, lo: int, hi: int) -> bytes:
        """MTH of leaves [lo, hi) where lo is a multiple of the largest power of two <= hi - lo."""
        n = hi - lo
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0:
            height = n.bit_length() - 1
            i = lo >> height
            return self._levels[height][i * HASH_SIZE : (i + 1) * HASH_SIZE]
        k = _largest_power_of_two_below(n)
        return node_hash(self._mth(lo, lo + k), self._mth(lo + k, hi))

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ValueError(f"size {size} outside 0..{self.size}")
        return self._mth(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ValueError(f"size {size} outside 0..{self.size}")
        return _inclusion_path(index, size, self._mth)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        new_size = self.size if new_size is None else new_size
        if not 0 <= new_size <= self.size:
            raise ValueError(f"size {new_size} outside 0..{self.size}")
        return _consistency_path(old_size, new_size, self._mth)


def _slice_mth(leaves: Sequence[bytes]):
    def mth(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return _check_hash(leaves[lo], "leaf hash")
        f = Frontier()
        f.extend(leaves[i] for i in range(lo, hi))
        return f.root()

    return mth


def _inclusion_path(index: int, size: int, mth) -> list[bytes]:
    if not isinstance(index, int) or not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    siblings: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _largest_power_of_two_below(hi - lo)
        if index < lo + k:
            siblings.append(mth(lo + k, hi))
            hi = lo + k
        else:
            siblings.append(mth(lo, lo + k))
            lo += k
    siblings.reverse()
    return siblings


def _consistency_path(old_size: int, new_size: int, mth) -> list[bytes]:
    if not isinstance(old_size, int) or not 0 <= old_size <= new_size:
        raise ValueError(f"old size {old_size} outside 0..{new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    # RFC 6962 2.1.2 SUBPROOF(m, D[lo:hi], b), iteratively: siblings collected from the top down
    siblings: list[bytes] = []
    lo, hi, m, complete = 0, new_size, old_size, True
    while m != hi - lo:
        k = _largest_power_of_two_below(hi - lo)
        if m <= k:
            siblings.append(mth(lo + k, hi))
            hi = lo + k
        else:
            siblings.append(mth(lo, lo + k))
            lo += k
            m -= k
            complete = False
    proof = [] if complete else [mth(lo, hi)]
    proof.extend(reversed(siblings))
    return proof


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 audit path for leaf `index` in the tree of all `leaves` (leaf hashes), leaf level first."""
    return _inclusion_path(index, len(leaves), _slice_mth(leaves))


def consistency_proof(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 consistency proof from the tree of the first `old_size` leaves to the tree of all of them.

    Empty when old_size is 0 or len(leaves) (nothing to prove).
    """
    return _consistency_path(old_size, len(leaves), _slice_mth(leaves))


def _as_hash_list(proof: Iterable[bytes]) -> list[bytes] | None:
    out = []
    for p in proof:
        if not isinstance(p, bytes | bytearray) or len(p) != HASH_SIZE:
            return None
        out.append(bytes(p))
    return out


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """True when `proof` shows that leaf hash `leaf` is at `index` in the tree of `size` leaves with `root`.

    RFC 9162 section 2.1.3.2. `leaf` is the leaf hash (`leaf_hash(entry)`), not the entry bytes.
    """
    path = _as_hash_list(proof)
    if path is None or len(leaf) != HASH_SIZE or len(root) != HASH_SIZE:
        return False
    if not (isinstance(index, int) and isinstance(size, int)) or not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = bytes(leaf)
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True when `proof` shows the tree (new_size, new_root) extends the tree (old_size, old_root).

    RFC 9162 section 2.1.4.2; equal sizes need equal roots and an empty proof, and old_size 0 needs the empty
    tree's root and an empty proof.
    """
    path = _as_hash_list(proof)
    if path is None or len(old_root) != HASH_SIZE or len(new_root) != HASH_SIZE:
        return False
    if not (isinstance(old_size, int) and isinstance(new_size, int)) or not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not path and old_root == new_root
    if old_size == 0:
        return not path and old_root == EMPTY_ROOT
    if not path:
        return False
    if old_size & (old_size - 1) == 0:
        path = [bytes(old_root), *path]
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


# --------------------------------------------------------------------------------------------------------
# Checkpoints and signed notes (C2SP tlog-checkpoint, signed-note)

_KEY_NAME = re.compile(r"[^\s+\x00-\x1f\x7f]+")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()  # optional C2SP extension lines after the root (ignored here)

    def body(self) -> bytes:
        return checkpoint_body(self.origin, self.size, self.root, self.extensions)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode_strict(text: str) -> bytes:
    """Standard padded base64, rejecting anything that does not re-encode to the same text."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ValueError(f"invalid base64 {text!r}") from exc
    if base64.b64encode(data).decode("ascii") != text:
        raise ValueError(f"non-canonical base64 {text!r}")
    return data


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _KEY_NAME.fullmatch(name):
        raise ValueError(f"invalid key name {name!r} (non-empty, no spaces, no '+')")
    return name


def checkpoint_body(origin: str, size: int, root: bytes, extensions: Sequence[str] = ()) -> bytes:
    """The C2SP checkpoint body: origin, decimal size and base64 root, each line ending in a newline."""
    if not origin or "\n" in origin or origin != origin.strip():
        raise ValueError(f"invalid origin {origin!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"invalid tree size {size!r}")
    _check_hash(root, "root")
    lines = [origin, str(size), _b64(bytes(root))]
    for ext in extensions:
        if not ext or "\n" in ext:
            raise ValueError(f"invalid extension line {ext!r}")
        lines.append(ext)
    return ("\n".join(lines) + "\n").encode("utf-8")


def key_id(name: str, public_key: bytes) -> bytes:
    """C2SP signed-note key id of an Ed25519 key: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    _check_name(name)
    return _sha256(name.encode("utf-8") + b"\n" + ALG_ED25519 + bytes(public_key)).digest()[:4]


def _raw_public(public_key: bytes | Ed25519PublicKey) -> bytes:
    if isinstance(public_key, Ed25519PublicKey):
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return bytes(public_key)


def vkey(name: str, public_key: bytes | Ed25519PublicKey) -> str:
    """C2SP verifier key: `<name>+<key id hex>+<base64(0x01 || public key)>`."""
    raw = _raw_public(public_key)
    return f"{_check_name(name)}+{key_id(name, raw).hex()}+{_b64(ALG_ED25519 + raw)}"


def parse_vkey(text: str) -> tuple[str, bytes, bytes]:
    """Parse a C2SP verifier key; returns (name, key id, 32-byte Ed25519 public key). Raises ValueError."""
    text = text.strip()
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise ValueError(f"not a verifier key: {text[:80]!r}")
    name, id_hex, encoded = parts
    _check_name(name)
    if not re.fullmatch(r"[0-9a-f]{8}", id_hex):
        raise ValueError(f"verifier key {name}: key id must be 8 lowercase hex digits")
    data = _b64decode_strict(encoded)
    if len(data) != 33 or data[:1] != ALG_ED25519:
        raise ValueError(f"verifier key {name}: not an Ed25519 key (0x01 || 32 bytes)")
    public = data[1:]
    kid = bytes.fromhex(id_hex)
    if key_id(name, public) != kid:
        raise ValueError(f"verifier key {name}: key id {id_hex} does not match the key")
    return name, kid, public


def keys_from_vkeys(vkeys: Iterable[str]) -> dict[tuple[str, bytes], Ed25519PublicKey]:
    """The `keys` argument of verify_checkpoint() from verifier key strings."""
    keys = {}
    for text in vkeys:
        name, kid, public = parse_vkey(text)
        keys[(name, kid)] = Ed25519PublicKey.from_public_bytes(public)
    return keys


def sign_line(name: str, key_id: bytes, signature: bytes) -> str:
    """One signature line: `— <name> <base64(key id || signature)>` and a newline."""
    if len(key_id) != 4:
        raise ValueError("a key id is 4 bytes")
    return f"{EM_DASH} {_check_name(name)} {_b64(bytes(key_id) + bytes(signature))}\n"


def signed_note(body: bytes, lines: list[str]) -> str:
    """The signed note: the body, a blank line, then the signature lines."""
    text = body.decode("utf-8")
    if not text.endswith("\n") or "\n\n" in text:
        raise ValueError("a note body ends with a newline and holds no blank line")
    if not lines:
        raise ValueError("a signed note needs at least one signature")
    sigs = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    return text + "\n" + sigs


def _split_note(note: str | bytes) -> tuple[bytes, list[tuple[str, bytes, bytes]]]:
    if isinstance(note, bytes | bytearray):
        try:
            note = bytes(note).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise VerificationError("malformed note: not UTF-8") from exc
    if not isinstance(note, str):
        raise VerificationError("malformed note: not text")
    if any(ord(c) < 0x20 and c != "\n" for c in note) or "\x7f" in note:
        raise VerificationError("malformed note: control characters")
    cut = note.rfind("\n\n")
    if cut < 0:
        raise VerificationError("malformed note: no blank line before the signatures")
    text, sig_block = note[: cut + 1], note[cut + 2 :]
    if not sig_block.endswith("\n"):
        raise VerificationError("malformed note: signature block does not end with a newline")
    signatures = []
    for line in sig_block[:-1].split("\n"):
        if not line.startswith(EM_DASH + " "):
            raise VerificationError(f"malformed note: signature line {line[:60]!r} does not start with '— '")
        fields = line[2:].split(" ")
        if len(fields) != 2:
            raise VerificationError(f"malformed note: signature line {line[:60]!r}")
        name, encoded = fields
        try:
            _check_name(name)
            data = _b64decode_strict(encoded)
        except ValueError as exc:
            raise VerificationError(f"malformed note: {exc}") from exc
        if len(data) < 5:
            raise VerificationError(f"malformed note: signature by {name} is too short")
        signatures.append((name, data[:4], data[4:]))
    if not signatures:
        raise VerificationError("malformed note: no signatures")
    if len(signatures) > MAX_SIGNATURES:
        raise VerificationError(f"malformed note: more than {MAX_SIGNATURES} signatures")
    return text.encode("utf-8"), signatures


def _parse_body(body: bytes) -> Checkpoint:
    text = body.decode("utf-8")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise VerificationError("malformed checkpoint: fewer than three lines (origin, size, root)")
    origin, size_text, root_text, *extensions = lines
    if not origin or origin != origin.strip():
        raise VerificationError("malformed checkpoint: empty or padded origin")
    if not _DECIMAL.fullmatch(size_text):
        raise VerificationError(f"malformed checkpoint: tree size {size_text[:30]!r} is not a decimal number")
    try:
        root_hash = _b64decode_strict(root_text)
    except ValueError as exc:
        raise VerificationError(f"malformed checkpoint: root hash: {exc}") from exc
    if len(root_hash) != HASH_SIZE:
        raise VerificationError(f"malformed checkpoint: root hash is {len(root_hash)} bytes, not 32")
    if any(not ext for ext in extensions):
        raise VerificationError("malformed checkpoint: empty extension line")
    return Checkpoint(origin, int(size_text), root_hash, tuple(extensions))


def parse_checkpoint(note: str | bytes) -> tuple[Checkpoint, list[tuple[str, bytes, bytes]]]:
    """Parse a signed checkpoint without checking signatures: (checkpoint, [(name, key id, signature)]).

    Raises VerificationError for a malformed note.
    """
    body, signatures = _split_note(note)
    return _parse_body(body), signatures


def verify_checkpoint(
    note: str | bytes, keys: Mapping[tuple[str, bytes], Ed25519PublicKey | bytes]
) -> Checkpoint:
    """Parse a signed checkpoint and check it carries a valid signature by one of `keys`.

    `keys` maps (key name, 4-byte key id) to the Ed25519 public key. Signature lines by other keys are
    ignored (rotation, witnesses); a signature by a known key that does not verify is an error, as is a note
    with no signature by any known key. Raises VerificationError; returns the checkpoint.
    """
    body, signatures = _split_note(note)
    checkpoint = _parse_body(body)
    verified = []
    for name, kid, signature in signatures:
        public = keys.get((name, kid))
        if public is None:
            continue
        if not isinstance(public, Ed25519PublicKey):
            public = Ed25519PublicKey.from_public_bytes(bytes(public))
        try:
            public.verify(signature, body)
        except InvalidSignature:
            raise VerificationError(
                f"checkpoint {checkpoint.origin} size {checkpoint.size}: "
                f"invalid signature by known key {name}+{kid.hex()}"
            ) from None
        verified.append(name)
    if not verified:
        seen = ", ".join(f"{n}+{k.hex()}" for n, k, _ in signatures)
        raise VerificationError(
            f"checkpoint {checkpoint.origin} size {checkpoint.size}: no signature by a known key (signed by {seen})"
        )
    return checkpoint
