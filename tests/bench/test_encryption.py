"""Benchmark: what per-organization envelope encryption costs a read, and how often it calls Vault.

Three benchmarks, each reporting one table (`.bench/<name>.json`), against the suite's real OpenBao:

- `encryption_decrypt`: field decrypts per second on one core with a warm key cache (goal: at least
  100,000/s, i.e. at most 10 µs per decrypt). (a) `envelope.open_sealed` on small values with the key in
  hand; (b) the model path: 50 Patient rows already fetched, timing only the attribute reads of their 7
  encrypted fields (the keyring lookup, associated data, AES-GCM and decoding). Between rounds each
  instance's `__dict__` is put back to the sealed values it was loaded with, untimed. References that are not
  goals: AES-GCM alone with one reused `AESGCM` object (the floor the library allows) and
  `open_sealed` plus the field's decode.
- `encryption_vault_calls`: Vault HTTP calls (`app_client().calls` deltas) per request, where a request is a
  tenant context that lists 50 patients and reads every encrypted field. Warm (goal 0) and cold after
  `keyring.purge()` (goal: at most one batched call per organization, for two organizations), and a cold
  request over rows sealed under three data keys of one organization (written across two
  `rotate_org_key` runs, before `reencrypt`): still one call.
- `encryption_vs_transit`: the same request against the way per-field Vault libraries work, every field
  value encrypted with Transit (`transit/encrypt/org-<uuid>`, the organization's derivation context) and
  opened with one `transit/decrypt` call per field per request. Patient has 7 encrypted fields: the
  request reads 50 x 10 values as 50 x (7 fields + 3 more text values through the same decrypt path: the
  model path re-opens given_name, family_name and phone with `EncryptedField.open`, the baseline decrypts
  their Transit ciphertexts again), and the 50 x 7 request over the real model is reported too. Variants
  alternate request by request; ratio per-field/ours of medians.

Not timed tests: they fail only when a decrypted value is wrong or a Vault-call count misses its goal.
BENCH_ROUNDS scales the rounds of the Transit comparison (default 12).
"""

from __future__ import annotations

import base64
import datetime
import gc
import os
import statistics
import time
import uuid

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clinic.models import Patient
from tenancy.crypto import envelope, operations
from tenancy.crypto.envelope import Sealed
from tenancy.crypto.fields import _sealed_slot, encrypted_field_names
from tenancy.crypto.keyring import keyring
from tenancy.crypto.vault import app_client, derivation_context, key_name
from tenancy.models import DataKey
from tenancy.services import create_organization
from tests.bench.reporting import ratio, report, summarize
from tests.conftest import in_context

pytestmark = [pytest.mark.bench, pytest.mark.django_db]

PATIENTS = 50
FIELDS = sorted(encrypted_field_names(Patient))  # the 7 encrypted Patient fields
EXTRA_FIELDS = ["given_name", "family_name", "phone"]  # the 3 text values that make 7 into 10 per row
GOAL_DECRYPTS_PER_SECOND = 100_000
BUDGET_US = 1e6 / GOAL_DECRYPTS_PER_SECOND  # 10 µs per decrypt
RAW_VALUES = 1000  # values per timed batch of open_sealed
RAW_BATCHES = 300
MODEL_ROUNDS = 400  # rounds of 50 x 7 attribute reads
WARM_REQUESTS = 200
COLD_REQUESTS = 40
TRANSIT_ROUNDS = int(os.environ.get("BENCH_ROUNDS", "12"))
WARMUP_ROUNDS = 2


# -- data ----------------------------------------------------------------------------------------------------


def patient_values(i: int, tag: str) -> dict:
    return {
        "given_name": f"Given{i:03d}{tag}",
        "family_name": f"Family-{tag}-{i:03d}",
        "birth_date": datetime.date(1950, 1, 1) + datetime.timedelta(days=397 * i),
        "email": f"patient{i:03d}@{tag}.bench.test",
        "phone": f"+1-555-{i:04d}",
        "address": {"line": f"{i} Bench Street", "city": "Benchville", "postcode": f"B{i:04d}"},
        "health_card_number": f"{9000 + i} {tag[:3].upper()} {i:03d}",
    }


def add_patients(org, tag: str, count: int = PATIENTS, start: int = 0) -> dict[uuid.UUID, dict]:
    """Create patients inside the test's transaction; returns what each row must read back as."""
    expected = {}
    with in_context(org, role="platform"):
        for i in range(start, start + count):
            values = patient_values(i, tag)
            expected[Patient.objects.create(org_id=org.id, **values).pk] = values
    return expected


def list_page(org) -> list[Patient]:
    """The request's query: the newest 50 patients of the context's organization."""
    return list(Patient.objects.order_by("-created_at", "id")[:PATIENTS])


def read_all(page: list[Patient]) -> list[list]:
    return [[getattr(p, name) for name in FIELDS] for p in page]


def request(org) -> tuple[list[Patient], list[list]]:
    """One request: a tenant context, list 50 patients, read every encrypted field."""
    with in_context(org, role="platform"):
        page = list_page(org)
        return page, read_all(page)


def check(page: list[Patient], values: list[list], expected: dict[uuid.UUID, dict]) -> None:
    assert len(page) == PATIENTS
    for patient, row in zip(page, values, strict=True):
        assert row == [expected[patient.pk][name] for name in FIELDS], f"patient {patient.pk} read back wrong"


def vault_calls() -> int:
    return app_client().calls


def warm_up_vault() -> None:
    """Log the application in to Vault (AppRole) before counting, so a login is never counted as a read."""
    app_client()._ensure_token()


# -- 1. decrypts per second --------------------------------------------------------------------------------


def test_field_decrypts_per_second_warm_cache(alpha):
    warm_up_vault()
    # (a) envelope.open_sealed on small values, key in hand.
    key, key_id = os.urandom(32), uuid.uuid4()
    org_id, table = alpha.org.id, Patient._meta.db_table
    plain = [f"Value-{i:04d}-ümlaut".encode() for i in range(RAW_VALUES)]
    aads = [envelope.associated_data(org_id, table, "given_name", uuid.uuid4()) for _ in range(RAW_VALUES)]
    sealed = [envelope.seal(key_id, key, p, a) for p, a in zip(plain, aads, strict=True)]
    items = list(zip(sealed, aads, strict=True))
    assert [envelope.open_sealed(s, key, a) for s, a in items] == plain
    aead = AESGCM(key)
    split = [(bytes(s[17:29]), bytes(s[29:]), a) for s, a in items]

    def per_decrypt(batches: int, body) -> list[float]:
        samples = []
        gc.collect()
        for _ in range(batches):
            t0 = time.perf_counter_ns()
            body()
            samples.append((time.perf_counter_ns() - t0) / RAW_VALUES)
        return samples

    def raw_open():
        for s, a in items:
            envelope.open_sealed(s, key, a)

    def raw_open_decode():
        for s, a in items:
            envelope.open_sealed(s, key, a).decode()

    def aead_only():
        for nonce, body, a in split:
            aead.decrypt(nonce, body, a)

    for body in (raw_open, raw_open_decode, aead_only):  # warm-up
        per_decrypt(5, body)
    figures = {}
    for _ in range(2):  # alternate, keep the second pass
        figures["open_sealed per decrypt"] = summarize(per_decrypt(RAW_BATCHES, raw_open))
        figures["ref: open_sealed + decode per decrypt"] = summarize(
            per_decrypt(RAW_BATCHES // 3, raw_open_decode)
        )
        figures["ref: AESGCM reused, decrypt only"] = summarize(per_decrypt(RAW_BATCHES // 3, aead_only))

    # (b) the model path: rows already fetched (keys prefetched), time only the attribute reads.
    expected = add_patients(alpha.org, "alpha")
    keyring.purge()
    with in_context(alpha.org, role="platform"):
        page = list_page(alpha.org)
        assert {p.pk for p in page} <= set(expected)
        sealed_state = [
            {f.attname: p.__dict__[f.attname] for f in Patient._meta.concrete_fields if f.name in FIELDS}
            for p in page
        ]
        assert all(isinstance(v, Sealed) for state in sealed_state for v in state.values())
        check(page, read_all(page), expected)
        decrypts = len(page) * len(FIELDS)
        model_samples = []
        gc.collect()
        for _ in range(WARMUP_ROUNDS + MODEL_ROUNDS):
            for patient, state in zip(page, sealed_state, strict=True):
                for attname, value in state.items():
                    patient.__dict__[attname] = value
                    patient.__dict__.pop(_sealed_slot(attname), None)
            t0 = time.perf_counter_ns()
            for patient in page:
                for name in FIELDS:
                    getattr(patient, name)
            model_samples.append((time.perf_counter_ns() - t0) / decrypts)
        check(page, read_all(page), expected)
    figures["model attribute read per decrypt"] = summarize(model_samples[WARMUP_ROUNDS:])

    per_second = {name: round(1e6 / fig["median_us"]) for name, fig in figures.items()}
    raw, model = per_second["open_sealed per decrypt"], per_second["model attribute read per decrypt"]
    report(
        "encryption_decrypt",
        description=(
            f"field decrypts/s, one core, warm key cache: open_sealed {raw:,}/s, model attribute read {model:,}/s "
            f"(goal ≥ {GOAL_DECRYPTS_PER_SECOND:,}/s; figures in µs per decrypt; ratios = µs per decrypt / "
            f"{BUDGET_US:g} µs budget)"
        ),
        figures=figures,
        ratios={
            "open_sealed µs / 10 µs budget": round(
                figures["open_sealed per decrypt"]["median_us"] / BUDGET_US, 3
            ),
            "model read µs / 10 µs budget": round(
                figures["model attribute read per decrypt"]["median_us"] / BUDGET_US, 3
            ),
        },
        goals={"open_sealed µs / 10 µs budget": 1.0, "model read µs / 10 µs budget": 1.0},
        parameters={
            "threads": 1,
            "open_sealed": (
                f"{RAW_VALUES} values of {len(plain[0])} bytes, distinct associated data, "
                f"{RAW_BATCHES} timed batches (sample = batch time / {RAW_VALUES})"
            ),
            "model": (
                f"{len(page)} Patient rows x {len(FIELDS)} encrypted fields {FIELDS}, {MODEL_ROUNDS} rounds "
                f"(sample = round time / {decrypts}); instance dicts reset to the loaded Sealed values "
                "between rounds, untimed; keys already in the keyring"
            ),
        },
        extra={"decrypts_per_second": per_second, "goal_decrypts_per_second": GOAL_DECRYPTS_PER_SECOND},
    )
    assert raw > 0 and model > 0


# -- 2. Vault calls per request ----------------------------------------------------------------------------


def test_vault_calls_per_request_warm_and_cold(alpha, beta):
    warm_up_vault()
    expected = {**add_patients(alpha.org, "alpha"), **add_patients(beta.org, "beta")}
    orgs = {"alpha": alpha.org, "beta": beta.org}
    times: dict[str, list[int]] = {"warm request": [], "cold request": []}
    calls: dict[str, list[int]] = {"warm": [], "cold": []}

    def measured(org, kind: str) -> None:
        before = vault_calls()
        t0 = time.perf_counter_ns()
        page, values = request(org)
        times[f"{kind} request"].append(time.perf_counter_ns() - t0)
        calls[kind].append(vault_calls() - before)
        check(page, values, expected)

    for org in orgs.values():
        request(org)  # fill the cache
    for i in range(WARM_REQUESTS):
        measured(orgs["alpha" if i % 2 else "beta"], "warm")
    cold_per_purge = []
    for _ in range(COLD_REQUESTS // 2):
        keyring.purge()
        before = vault_calls()
        for org in orgs.values():  # two organizations' cold requests after one purge
            measured(org, "cold")
        cold_per_purge.append(vault_calls() - before)

    # One organization whose rows were sealed under three data keys (two rotations, no reencrypt yet).
    org, _ = create_organization(
        slug="bench-rotating", name="Bench Rotating", domains=["bench-rotating.localhost"]
    )
    rotated = {}
    for part, (start, count) in enumerate(((0, 17), (17, 17), (34, 16))):
        if part:
            operations.rotate_org_key(org.id)
        rotated.update(add_patients(org, "rotating", count=count, start=start))
    with in_context(org, role="platform"):
        page = list_page(org)
        key_ids = {p.__dict__[Patient._meta.get_field(name).attname].key_id for p in page for name in FIELDS}
        assert len(key_ids) == 3, key_ids
        assert DataKey.objects.filter(purpose=DataKey.Purpose.DATA).count() == 3
    rotated_calls, rotated_times = [], []
    for _ in range(COLD_REQUESTS // 2):
        keyring.purge()
        before = vault_calls()
        t0 = time.perf_counter_ns()
        page, values = request(org)
        rotated_times.append(time.perf_counter_ns() - t0)
        rotated_calls.append(vault_calls() - before)
        check(page, values, rotated)
    times["cold request, 3 data keys"] = rotated_times

    figures = {name: summarize(samples) for name, samples in times.items()}
    ratios = {
        "vault calls, warm request (max)": float(max(calls["warm"])),
        "vault calls, cold request (max)": float(max(calls["cold"])),
        "vault calls, cold, 2 orgs / org (max)": max(cold_per_purge) / len(orgs),
        "vault calls, cold, 3 data keys (max)": float(max(rotated_calls)),
    }
    report(
        "encryption_vault_calls",
        description=(
            "Vault HTTP calls per request (tenant context, list 50 patients, read all 7 encrypted fields): warm, "
            "cold after keyring.purge(), cold over rows under 3 data keys; ratios are call counts, not times"
        ),
        figures=figures,
        ratios=ratios,
        goals={
            "vault calls, warm request (max)": 0,
            "vault calls, cold request (max)": 1,
            "vault calls, cold, 2 orgs / org (max)": 1,
            "vault calls, cold, 3 data keys (max)": 1,
        },
        parameters={
            "patients_per_request": PATIENTS,
            "encrypted_fields": FIELDS,
            "warm_requests": WARM_REQUESTS,
            "cold_requests": COLD_REQUESTS,
            "rotated_org": "50 patients written 17/17/16 around two operations.rotate_org_key runs",
            "counted": (
                "app_client().calls deltas (every HTTP request to Vault, login and renewal included); "
                "the AppRole login happens before counting"
            ),
        },
        extra={
            "calls": {
                "warm": {str(k): calls["warm"].count(k) for k in sorted(set(calls["warm"]))},
                "cold": {str(k): calls["cold"].count(k) for k in sorted(set(calls["cold"]))},
                "cold_two_orgs_after_one_purge": sorted(set(cold_per_purge)),
                "cold_three_data_keys": sorted(set(rotated_calls)),
            },
        },
    )
    assert max(calls["warm"]) == 0, "a warm request called Vault"
    assert set(calls["cold"]) == {1}, calls["cold"]
    assert set(rotated_calls) == {1}, "three data keys of one org were not unwrapped in one batched call"


# -- 3. ours vs one Transit call per field -----------------------------------------------------------------


def transit_encrypt_all(org_id: uuid.UUID, plaintexts: list[bytes]) -> list[str]:
    """Ciphertexts made once, as a per-field library would have stored them (setup, in batches of 50:
    OpenBao refuses a JSON body with too many strings)."""
    context = derivation_context(org_id)
    out: list[str] = []
    for start in range(0, len(plaintexts), 50):
        chunk = plaintexts[start : start + 50]
        body = app_client()._call(
            "POST",
            f"transit/encrypt/{key_name(org_id)}",
            {"batch_input": [{"plaintext": base64.b64encode(p).decode(), "context": context} for p in chunk]},
        )
        results = body["data"]["batch_results"]
        assert all(not r.get("error") for r in results), results[:3]
        out += [r["ciphertext"] for r in results]
    return out


def transit_decrypt(org_id: uuid.UUID, ciphertext: str, context: str) -> bytes:
    body = app_client()._call(
        "POST", f"transit/decrypt/{key_name(org_id)}", {"ciphertext": ciphertext, "context": context}
    )
    return base64.b64decode(body["data"]["plaintext"])


def test_request_vs_one_transit_call_per_field(alpha):
    warm_up_vault()
    org = alpha.org
    expected = add_patients(org, "alpha")
    fields = {name: Patient._meta.get_field(name) for name in FIELDS}
    extra = [fields[name] for name in EXTRA_FIELDS]
    with in_context(org, role="platform"):
        page = list_page(org)
        check(page, read_all(page), expected)
        ids = [p.pk for p in page]
        order = [(pk, name) for pk in ids for name in FIELDS]
        stored = transit_encrypt_all(org.id, [fields[name].encode(expected[pk][name]) for pk, name in order])
    transit = dict(zip(order, stored, strict=True))
    context = derivation_context(org.id)
    ten = FIELDS + EXTRA_FIELDS

    def ours(n_fields: int):
        with in_context(org, role="platform"):
            page = list_page(org)
            out = []
            for p in page:
                row = [getattr(p, name) for name in FIELDS]
                if n_fields == 10:
                    # Three more values through the same path the descriptor takes (a 10-field model).
                    row += [f.open(p, p.__dict__[_sealed_slot(f.attname)][0]) for f in extra]
                out.append((p.pk, row))
            return out

    def per_field(n_fields: int):
        names = ten if n_fields == 10 else FIELDS
        with in_context(org, role="platform"):
            # The same query, encrypted columns deferred: the Transit ciphertexts stand in for them.
            page = list(
                Patient.objects.only("id", "org", "created_at").order_by("-created_at", "id")[:PATIENTS]
            )
            return [
                (
                    p.pk,
                    [
                        fields[name].decode(transit_decrypt(org.id, transit[(p.pk, name)], context))
                        for name in names
                    ],
                )
                for p in page
            ]

    def ours_cold(n_fields: int):
        keyring.purge()
        return ours(n_fields)

    variants = {"ours warm": ours, "ours cold": ours_cold, "per-field transit": per_field}
    expected_rows = {
        n: [(pk, [expected[pk][name] for name in (ten if n == 10 else FIELDS)]) for pk in ids]
        for n in (7, 10)
    }
    times: dict[str, list[int]] = {}
    calls: dict[str, list[int]] = {}
    names = list(variants)
    for rnd in range(WARMUP_ROUNDS + TRANSIT_ROUNDS):
        for n_fields in (10, 7):
            shift = (rnd + n_fields) % len(names)
            for name in names[shift:] + names[:shift]:
                before = vault_calls()
                t0 = time.perf_counter_ns()
                result = variants[name](n_fields)
                elapsed = time.perf_counter_ns() - t0
                delta = vault_calls() - before
                assert result == expected_rows[n_fields], f"{name} read back wrong values"
                if rnd >= WARMUP_ROUNDS:
                    times.setdefault(f"{name}, 50x{n_fields}", []).append(elapsed)
                    calls.setdefault(f"{name}, 50x{n_fields}", []).append(delta)

    figures = {name: summarize(samples) for name, samples in times.items()}
    ratios = {
        "per-field/ours warm, 50x10": ratio(figures["per-field transit, 50x10"], figures["ours warm, 50x10"]),
        "per-field/ours cold, 50x10": ratio(figures["per-field transit, 50x10"], figures["ours cold, 50x10"]),
        "per-field/ours warm, 50x7": ratio(figures["per-field transit, 50x7"], figures["ours warm, 50x7"]),
        "per-field/ours cold, 50x7": ratio(figures["per-field transit, 50x7"], figures["ours cold, 50x7"]),
    }
    per_call_us = round(
        statistics.median(
            t / c
            for t, c in zip(times["per-field transit, 50x10"], calls["per-field transit, 50x10"], strict=True)
        )
        / 1000,
        1,
    )
    report(
        "encryption_vs_transit",
        description=(
            "request reading 50 patients x 10 (and x 7) encrypted values: envelope encryption with cached data "
            "keys (warm; cold = keyring purged first) vs one Transit decrypt call per field (per-field Vault "
            "libraries); ratios per-field/ours of medians, higher = ours faster"
        ),
        figures=figures,
        ratios=ratios,
        parameters={
            "patients": PATIENTS,
            "fields_per_patient_10": (
                "the 7 encrypted Patient fields via attribute access, plus 3 more text "
                f"values {EXTRA_FIELDS} decrypted again through EncryptedField.open (ours) "
                "or their Transit ciphertexts decrypted again (baseline): 500 decrypts"
            ),
            "fields_per_patient_7": f"the real model: {FIELDS}, 350 decrypts",
            "request": "tenant_context (one transaction), list newest 50 patients, decrypt and decode every value",
            "baseline": (
                "same query with encrypted columns deferred, then POST transit/decrypt/org-<uuid> with the "
                "org's derivation context, one call per value, ciphertexts made once by transit/encrypt "
                "(held in memory by (row, column)); values decoded like the fields do"
            ),
            "vault": "the suite's OpenBao dev server on loopback, file audit device on, app AppRole token",
            "rounds": TRANSIT_ROUNDS,
            "warmup_rounds": WARMUP_ROUNDS,
        },
        extra={
            "vault_calls_per_request": {name: sorted(set(c)) for name, c in calls.items()},
            "transit_call_median_us": per_call_us,
            "load_average": list(os.getloadavg()),
        },
    )
    assert set(calls["ours warm, 50x10"]) == {0} and set(calls["ours cold, 50x10"]) == {1}
    assert set(calls["per-field transit, 50x10"]) == {PATIENTS * 10}
