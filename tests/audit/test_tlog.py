"""audit.tlog: RFC 6962 trees and proofs against a naive reference, the incremental frontier, C2SP notes."""

from __future__ import annotations

import base64
import hashlib
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audit import tlog
from audit.tlog import (
    EMPTY_ROOT,
    Checkpoint,
    Frontier,
    Tree,
    VerificationError,
    canonical_entry,
    checkpoint_body,
    consistency_proof,
    inclusion_proof,
    key_id,
    leaf_hash,
    node_hash,
    parse_checkpoint,
    parse_vkey,
    root,
    sign_line,
    signed_note,
    verify_checkpoint,
    verify_consistency,
    verify_inclusion,
    vkey,
)

# ---------------------------------------------------------------------------------------------------------
# A deliberately naive reference: RFC 6962 section 2.1 transcribed literally, recursive, no shortcuts.


def ref_k(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d):
    if len(d) == 0:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]  # d holds leaf hashes already
    k = ref_k(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m, d):
    if len(d) == 1:
        return []
    k = ref_k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m, d, b):
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = ref_k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m, d):
    return ref_subproof(m, d, True)


def leaves_of(n, salt=b""):
    return [leaf_hash(salt + b"entry %d" % i) for i in range(n)]


# ---------------------------------------------------------------------------------------------------------
# Known answers


def test_empty_tree_is_sha256_of_nothing():
    assert EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root([]) == EMPTY_ROOT
    assert Frontier().root() == EMPTY_ROOT


def test_leaf_and_node_hash_prefixes():
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()


def test_single_leaf_root_is_the_leaf_hash():
    h = leaf_hash(b'{"seq":0}')
    assert root([h]) == h
    assert inclusion_proof(0, [h]) == []
    assert verify_inclusion(0, 1, h, [], h)


def test_rfc6962_test_vectors():
    # The eight-leaf tree of certificate-transparency's merkle_tree_test (RFC 6962 test data).
    inputs = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ]
    expected = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
    leaves = [leaf_hash(x) for x in inputs]
    for n in range(1, 9):
        assert root(leaves[:n]).hex() == expected[n - 1], n


# ---------------------------------------------------------------------------------------------------------
# Cross-check against the reference for every size, index and old size


N_MAX = 70


@pytest.fixture(scope="module")
def leaves():
    return leaves_of(N_MAX)


def test_root_matches_reference(leaves):
    for n in range(N_MAX + 1):
        assert root(leaves[:n]) == ref_mth(leaves[:n]), n
        assert Tree(leaves[:n]).root() == ref_mth(leaves[:n]), n


def test_inclusion_matches_reference_and_verifies(leaves):
    for n in range(1, N_MAX + 1):
        d = leaves[:n]
        r = ref_mth(d)
        tree = Tree(d)
        for m in range(n):
            proof = inclusion_proof(m, d)
            assert proof == ref_path(m, d), (m, n)
            assert tree.inclusion_proof(m) == proof
            assert verify_inclusion(m, n, d[m], proof, r), (m, n)
            # wrong index, wrong leaf, wrong size, truncated or extended proof: all rejected
            if n > 1:
                assert not verify_inclusion((m + 1) % n, n, d[m], proof, r)
                assert not verify_inclusion(m, n, d[(m + 1) % n], proof, r)
                assert not verify_inclusion(m, n, d[m], proof[:-1], r)
            assert not verify_inclusion(m, n, d[m], proof, ref_mth([*d, leaf_hash(b"next")]))
            assert not verify_inclusion(m, n, d[m], [*proof, EMPTY_ROOT], r)
            assert not verify_inclusion(m, n, d[m], proof, EMPTY_ROOT)


def test_inclusion_proof_rejects_bad_index(leaves):
    with pytest.raises(ValueError):
        inclusion_proof(5, leaves[:5])
    with pytest.raises(ValueError):
        inclusion_proof(-1, leaves[:5])
    assert not verify_inclusion(5, 5, leaves[0], [], EMPTY_ROOT)
    assert not verify_inclusion(0, 0, leaves[0], [], EMPTY_ROOT)


def test_consistency_matches_reference_and_verifies(leaves):
    for n in range(1, N_MAX + 1):
        d = leaves[:n]
        new_root = ref_mth(d)
        tree = Tree(d)
        for m in range(0, n + 1):
            old_root = ref_mth(d[:m])
            proof = consistency_proof(m, d)
            expected = [] if m in (0, n) else ref_proof(m, d)
            assert proof == expected, (m, n)
            assert tree.consistency_proof(m) == proof
            assert verify_consistency(m, n, old_root, new_root, proof), (m, n)
            if 0 < m < n:
                # a forked old tree, a different new tree, a shortened or padded proof: all rejected
                forked = ref_mth([*d[: m - 1], leaf_hash(b"forged")])
                assert not verify_consistency(m, n, forked, new_root, proof), (m, n)
                assert not verify_consistency(m, n, old_root, EMPTY_ROOT, proof)
                assert not verify_consistency(m, n, old_root, new_root, proof[:-1])
                assert not verify_consistency(m, n, old_root, new_root, [*proof, EMPTY_ROOT])
                assert not verify_consistency(m, n, old_root, new_root, [])
                if m + 1 < n:
                    assert not verify_consistency(m + 1, n, old_root, new_root, proof)


def test_consistency_edge_cases(leaves):
    r5 = root(leaves[:5])
    assert verify_consistency(5, 5, r5, r5, [])
    assert not verify_consistency(5, 5, r5, EMPTY_ROOT, [])
    assert not verify_consistency(5, 5, r5, r5, [r5])
    assert verify_consistency(0, 5, EMPTY_ROOT, r5, [])
    assert not verify_consistency(0, 5, r5, r5, [])
    assert not verify_consistency(6, 5, r5, r5, [])
    with pytest.raises(ValueError):
        consistency_proof(6, leaves[:5])


def test_tree_prefix_proofs_equal_module_functions():
    d = leaves_of(300, b"prefix")
    tree = Tree(b"".join(d))
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 300)
        m = rng.randint(0, n)
        assert tree.root(n) == root(d[:n])
        assert tree.consistency_proof(m, n) == consistency_proof(m, d[:n])
        i = rng.randrange(n)
        assert tree.inclusion_proof(i, n) == inclusion_proof(i, d[:n])


# ---------------------------------------------------------------------------------------------------------
# Frontier


def test_frontier_equals_root_for_every_size_up_to_2000():
    d = leaves_of(2000, b"frontier")
    prefix = Tree(d)
    f = Frontier()
    assert f.root() == root([]) == EMPTY_ROOT
    for i, h in enumerate(d):
        f.append(h)
        assert f.size == i + 1
        assert f.root() == prefix.root(i + 1)
        if i < 100 or i % 97 == 0:
            assert f.root() == ref_mth(d[: i + 1]) == root(d[: i + 1])
    assert f.root() == root(d)


def test_frontier_randomized_extend_and_persist():
    d = leaves_of(2000, b"random")
    prefix_roots = Tree(d)
    rng = random.Random(2026)
    for _ in range(60):
        f = Frontier()
        target = rng.randint(0, 2000)
        while f.size < target:
            step = rng.choice([1, 2, 3, 7, 16, 64, 100, 513])
            step = min(step, target - f.size)
            chunk = d[f.size : f.size + step]
            mode = rng.randrange(3)
            if mode == 0:
                for h in chunk:
                    f.append(h)
            elif mode == 1:
                f.extend(chunk)
            else:
                f.extend_packed(b"".join(chunk))
            if rng.random() < 0.3:  # a shipper persists its state and resumes from it
                f = Frontier.from_json(f.to_json())
            assert f.root() == prefix_roots.root(f.size)
        assert f.size == target
        assert f.root() == root(d[:target])


def test_frontier_json_is_hex_and_validated():
    f = Frontier()
    f.extend(leaves_of(11))
    state = f.to_json()
    assert state["size"] == 11
    assert len(state["hashes"]) == 3  # 8 + 2 + 1
    assert all(len(h) == 64 for h in state["hashes"])
    g = Frontier.from_json(state)
    assert g == f and g.root() == f.root()
    with pytest.raises(ValueError):
        Frontier.from_json({"size": 12, "hashes": state["hashes"]})
    with pytest.raises(ValueError):
        Frontier.from_json({"size": 11})
    with pytest.raises(ValueError):
        Frontier(1, [b"short"])
    with pytest.raises(ValueError):
        f.append(b"not a hash")


# ---------------------------------------------------------------------------------------------------------
# Entries


def test_canonical_entry():
    entry = {"seq": 3, "actor": {"user": "u", "role": "practitioner"}, "detail": {"note": "café ✓"}, "v": 1}
    data = canonical_entry(entry)
    assert (
        data
        == '{"actor":{"role":"practitioner","user":"u"},"detail":{"note":"café ✓"},"seq":3,"v":1}'.encode()
    )
    with pytest.raises(ValueError):
        canonical_entry({"x": float("nan")})


# ---------------------------------------------------------------------------------------------------------
# Checkpoints and signed notes


def raw_public(private):
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.fixture(scope="module")
def signer():
    private = Ed25519PrivateKey.generate()
    return private, raw_public(private)


def make_note(private, name, origin="telemed.audit/0b8e7a4e-0000-4000-8000-000000000001", size=3, r=None):
    public = raw_public(private)
    body = checkpoint_body(origin, size, r if r is not None else root(leaves_of(size)))
    return signed_note(body, [sign_line(name, key_id(name, public), private.sign(body))])


def test_key_id_follows_c2sp(signer):
    _, public = signer
    assert key_id("telemed-audit", public) == hashlib.sha256(b"telemed-audit\n\x01" + public).digest()[:4]
    text = vkey("telemed-audit", public)
    name, kid, pub = parse_vkey(text)
    assert (name, kid, pub) == ("telemed-audit", key_id("telemed-audit", public), public)
    encoded = base64.b64encode(b"\x01" + public).decode()
    assert text == f"telemed-audit+{kid.hex()}+{encoded}"


def test_parse_vkey_rejects_bad_keys(signer):
    _, public = signer
    good = vkey("telemed-audit", public)
    name, kid, enc = good.split("+", 2)
    wrong_alg = base64.b64encode(b"\x02" + public).decode()
    short = base64.b64encode(b"\x01" + public[:31]).decode()
    for bad in [
        "telemed-audit",
        f"other+{kid}+{enc}",  # key id computed over another name
        f"{name}+00000000+{enc}",
        f"{name}+{kid}+{wrong_alg}",
        f"{name}+{kid}+{short}",
        f"{name}+{kid}+!!!!",
    ]:
        with pytest.raises(ValueError):
            parse_vkey(bad)


def test_checkpoint_body_format():
    r = root(leaves_of(5))
    body = checkpoint_body("telemed.audit/abc", 5, r)
    assert body == b"telemed.audit/abc\n5\n" + base64.b64encode(r) + b"\n"
    for bad in [("", 5, r), ("a\nb", 5, r), ("o", -1, r), ("o", 5, r[:31])]:
        with pytest.raises(ValueError):
            checkpoint_body(*bad)


def test_signed_note_round_trip(signer):
    private, public = signer
    r = root(leaves_of(42))
    body = checkpoint_body("telemed.audit/org", 42, r)
    kid = key_id("telemed-audit", public)
    sig = private.sign(body)
    note = signed_note(body, [sign_line("telemed-audit", kid, sig)])
    assert note == body.decode() + "\n\u2014 telemed-audit " + base64.b64encode(kid + sig).decode() + "\n"
    cp, sigs = parse_checkpoint(note)
    assert cp == Checkpoint("telemed.audit/org", 42, r)
    assert sigs == [("telemed-audit", kid, sig)]
    keys = tlog.keys_from_vkeys([vkey("telemed-audit", public)])
    assert verify_checkpoint(note, keys) == cp
    assert verify_checkpoint(note.encode(), {("telemed-audit", kid): public}) == cp  # raw key bytes work too


def test_unknown_signatures_are_ignored_when_a_known_one_verifies(signer):
    private, public = signer
    other = Ed25519PrivateKey.generate()
    body = checkpoint_body("telemed.audit/org", 3, root(leaves_of(3)))
    lines = [
        sign_line("witness.example", key_id("witness.example", raw_public(other)), other.sign(body)),
        sign_line("telemed-audit", key_id("telemed-audit", public), private.sign(body)),
    ]
    note = signed_note(body, lines)
    keys = tlog.keys_from_vkeys([vkey("telemed-audit", public)])
    assert verify_checkpoint(note, keys).size == 3


def test_flipped_bit_in_body_is_rejected(signer):
    private, public = signer
    keys = tlog.keys_from_vkeys([vkey("telemed-audit", public)])
    note = make_note(private, "telemed-audit", size=7)
    body, rest = note.split("\n\n", 1)
    raw = bytearray(body.encode())
    for pos in [0, len(raw) - 5]:
        tampered = bytearray(raw)
        tampered[pos] ^= 0x01
        with pytest.raises(VerificationError, match="invalid signature"):
            verify_checkpoint(bytes(tampered).decode() + "\n\n" + rest, keys)
    bigger = note.replace("\n7\n", "\n8\n", 1)
    with pytest.raises(VerificationError, match="invalid signature"):
        verify_checkpoint(bigger, keys)


def test_wrong_key_is_rejected(signer):
    _, public = signer
    impostor = Ed25519PrivateKey.generate()
    keys = tlog.keys_from_vkeys([vkey("telemed-audit", public)])
    # same name, different key: a different key id, so the signature is by an unknown key
    note = make_note(impostor, "telemed-audit")
    with pytest.raises(VerificationError, match="no signature by a known key"):
        verify_checkpoint(note, keys)
    # a signature line claiming our key id but made with another key
    body = checkpoint_body("telemed.audit/org", 1, root(leaves_of(1)))
    forged = signed_note(
        body, [sign_line("telemed-audit", key_id("telemed-audit", public), impostor.sign(body))]
    )
    with pytest.raises(VerificationError, match="invalid signature by known key"):
        verify_checkpoint(forged, keys)


def test_unknown_key_only_is_rejected(signer):
    _, public = signer
    stranger = Ed25519PrivateKey.generate()
    note = make_note(stranger, "someone-else")
    with pytest.raises(VerificationError, match="no signature by a known key"):
        verify_checkpoint(note, tlog.keys_from_vkeys([vkey("telemed-audit", public)]))
    with pytest.raises(VerificationError):
        verify_checkpoint(note, {})


@pytest.mark.parametrize(
    "mutate",
    [
        lambda n: n.replace("\n\n", "\n", 1),  # no blank line
        lambda n: n.rstrip("\n"),  # signature block without final newline
        lambda n: n.replace("\u2014 ", "- ", 1),  # not an em dash
        lambda n: n.split("\n\n")[0] + "\n\n",  # no signatures
        lambda n: n.replace("\n3\n", "\n03\n", 1),  # leading zero
        lambda n: n.replace("\n3\n", "\nthree\n", 1),
        lambda n: n.split("\n", 1)[1],  # origin missing: only two body lines
        lambda n: n.replace("=\n\n", "\n\n", 1),  # root not padded base64
        lambda n: n.replace("telemed-audit ", "telemed-audit  ", 1),  # extra space in signature line
        lambda n: n[:-6] + "!!!!=\n",  # signature not base64
        lambda n: n.replace("telemed.audit", "telemed\x01audit", 1),  # control character
        lambda n: n.replace("\n3\n", "\n3\n\n", 1),  # blank line inside the body
    ],
)
def test_malformed_notes_are_rejected(signer, mutate):
    private, public = signer
    note = make_note(private, "telemed-audit", size=3)
    keys = tlog.keys_from_vkeys([vkey("telemed-audit", public)])
    assert verify_checkpoint(note, keys).size == 3
    bad = mutate(note)
    assert bad != note
    with pytest.raises(VerificationError):
        verify_checkpoint(bad, keys)


def test_malformed_note_bytes():
    with pytest.raises(VerificationError, match="malformed"):
        parse_checkpoint(b"\xff\xfe")
    with pytest.raises(VerificationError, match="malformed"):
        parse_checkpoint("")


def test_tlog_does_not_import_django():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['django'] = None; import audit.tlog, audit.fhir, audit.verify; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
