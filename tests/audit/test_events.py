"""From a published event to its outbox entry (audit/events.py): the entry's exact shape for every event
class, and that every class on the bus is recorded. No database: `entries` is the pure half of the path."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from audit import events
from tenancy import events as bus

ORG = "2b3f6c1e-0000-4000-8000-000000000001"
PATIENT = "2b3f6c1e-0000-4000-8000-000000000002"
ROW = "2b3f6c1e-0000-4000-8000-000000000003"
ACTOR = bus.Actor(
    user="2b3f6c1e-0000-4000-8000-000000000004", role="practitioner", session="token:7", ip="10.0.0.9"
)
WHO = {"org_id": ORG, "actor": ACTOR, "request_id": "req-1"}
ACTOR_JSON = {"user": ACTOR.user, "role": "practitioner", "session": "token:7", "ip": "10.0.0.9"}
# The entry's keys in the order json.dumps writes them to the outbox (the shipper re-serializes canonically).
KEYS = [
    "event_id",
    "time",
    "action",
    "outcome",
    "actor",
    "purpose",
    "patient",
    "resource",
    "request_id",
    "before",
    "after",
    "detail",
]


def payloads(event: bus.Event) -> list[dict]:
    out = []
    for entry in events.entries(event):
        payload = entry.payload()
        assert list(payload) == KEYS and entry.event_id == payload["event_id"] and entry.org_id == ORG
        assert json.loads(json.dumps(payload)) == payload
        out.append({k: v for k, v in payload.items() if k not in ("event_id", "time")})
    return out


def entry(**fields) -> dict:
    return {
        "action": "read",
        "outcome": "success",
        "actor": ACTOR_JSON,
        "purpose": "treatment",
        "patient": None,
        "resource": {"type": "", "id": ""},
        "request_id": "req-1",
        "before": "",
        "after": "",
        "detail": {},
        **fields,
    }


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            bus.PhiAccess(
                **WHO,
                purpose="treatment",
                action="update",
                resource="ClinicalNote",
                resource_id=ROW,
                patient_id=PATIENT,
                before="a" * 64,
                after="b" * 64,
                detail={"step": "sign"},
            ),
            [
                entry(
                    action="update",
                    patient=PATIENT,
                    resource={"type": "ClinicalNote", "id": ROW},
                    before="a" * 64,
                    after="b" * 64,
                    detail={"step": "sign"},
                )
            ],
        ),
        (
            bus.PhiAccess(**WHO, purpose="analytics", action="report", resource="Report"),
            [entry(action="report", purpose="analytics", resource={"type": "Report", "id": ""})],
        ),
        (
            bus.PhiPageRead(
                **WHO, purpose="treatment", resource="Encounter", rows=((ROW, PATIENT), (PATIENT, ""))
            ),
            [
                entry(patient=PATIENT, resource={"type": "Encounter", "id": ROW}, detail={"via": "list"}),
                entry(resource={"type": "Encounter", "id": PATIENT}, detail={"via": "list"}),
            ],
        ),
        (
            bus.Authentication(
                **WHO, kind="login", outcome="failure", reason="bad_password", email_hash="ab12"
            ),
            [
                entry(
                    action="login",
                    outcome="failure",
                    purpose="operations",
                    resource={"type": "Session", "id": ""},
                    detail={"reason": "bad_password", "email_sha256": "ab12"},
                )
            ],
        ),
        (
            bus.KeyOperation(
                **WHO, operation="data_key_generate", key_ids=(ROW,), detail={"purpose": "data"}
            ),
            [
                entry(
                    action="data_key_generate",
                    purpose="operations",
                    resource={"type": "Key", "id": ""},
                    detail={"key_ids": [ROW], "purpose": "data"},
                )
            ],
        ),
        (
            bus.Administration(
                **WHO,
                action="role_change",
                resource_type="Membership",
                resource_id=ROW,
                detail={"to": "staff"},
            ),
            [
                entry(
                    action="role_change",
                    purpose="operations",
                    resource={"type": "Membership", "id": ROW},
                    detail={"to": "staff"},
                )
            ],
        ),
    ],
    ids=["phi-write", "phi-report", "page", "authentication", "key", "administration"],
)
def test_each_event_becomes_the_entry_the_log_format_describes(event, expected):
    assert payloads(event) == expected


def test_a_sign_in_at_no_organization_is_not_recorded():
    assert events.entries(bus.Authentication(**{**WHO, "org_id": ""}, kind="login", outcome="failure")) == []


def test_every_event_class_on_the_bus_is_recorded():
    """A new event class that the audit log does not subscribe to would be published into the void."""
    published = {cls for cls in vars(bus).values() if isinstance(cls, type) and issubclass(cls, bus.Event)}
    assert published - {bus.Event} == set(events.RECORDED)


@dataclass(frozen=True, kw_only=True)
class Probe(bus.Event):
    pass


@dataclass(frozen=True, kw_only=True)
class LaterProbe(Probe):
    pass


def test_the_bus_dispatches_by_the_events_exact_class():
    seen: list[bus.Event] = []
    bus.subscribe(Probe, seen.append)
    try:
        bus.publish(LaterProbe(**WHO))  # a subclass is a class of its own: subscribed to separately
        assert seen == []
        probe = Probe(**WHO)
        bus.publish(probe)
        assert seen == [probe]
    finally:
        bus.unsubscribe(Probe, seen.append)
