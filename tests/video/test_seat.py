"""A participant whose participation is revoked is refused within the stated bound (video/seat.py, PROTOCOL.md
"Participation"): the relay trusts the database's confirmation for at most VIDEO_SEAT_CHECK_SECONDS, and the
server's own changes to the visit invalidate it at once. Real Channels application and PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import pytest

from clinic import services as clinic
from clinic.models import Patient
from tenancy.context import tenant_context
from tenancy.models import Membership
from tests.video import test_signalling as signalling
from tests.video.test_signalling import committed, joined, receive_until
from video import services
from video.seat import Seat

pytestmark = pytest.mark.django_db(transaction=False)

call = signalling.call  # the fixture: a clinic, a practitioner, a patient and a planned encounter

BOUND = 1.0  # VIDEO_SEAT_CHECK_SECONDS in these tests
SLACK = 1.0  # a check's own time under a loaded CI machine


def end_outside_the_call(call) -> None:
    """The practitioner ends the visit through the clinic (the portal or the API), not on the socket."""
    with tenant_context(org_id=call["org"].id, role="platform", purpose="treatment"):
        doctor = Membership.objects.get(org_id=call["org"].id, user_id=call["doctor"])
        encounter = clinic.Encounter.objects.get(pk=call["encounter"])
        clinic.transition_encounter(encounter=encounter, action="end", actor=doctor)


def disown(call) -> None:
    """The patient record is no longer the signed-in patient's (a mistaken link corrected by the front desk)."""
    with tenant_context(org_id=call["org"].id, role="platform", purpose="treatment"):
        Patient.objects.filter(org_id=call["org"].id, user_id=call["patient"]).update(user=None)


def deactivate(call, who: str) -> None:
    with tenant_context(org_id=call["org"].id, role="platform", purpose="treatment"):
        Membership.objects.filter(org_id=call["org"].id, user_id=call[who]).update(is_active=False)


async def in_call(call):
    doctor, _ = await joined(call, "doctor")
    patient, _ = await joined(call, "patient")
    await receive_until(doctor, "waiting")
    await doctor.send_json_to({"type": "admit", "user": call["patient"]})
    await receive_until(patient, "admitted")
    return doctor, patient


async def refused_after(ws, peer, limit: float) -> float:
    """Seconds until an offer from `ws` is refused with not_found; offers every 50 ms meanwhile, each relayed
    to `peer` until then. Fails if none is refused within `limit`."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        await ws.send_json_to({"type": "offer", "sdp": "v=0 after the revocation"})
        if await ws.receive_nothing(timeout=0.05):  # (a receive that times out would cancel the application)
            continue
        while not await ws.receive_nothing(timeout=0.01):
            message = await ws.receive_json_from()
            if message["type"] == "error":
                assert message["code"] == "not_found", message
                assert await ws.receive_close() == 4404
                return time.monotonic() - began
    pytest.fail(f"still relayed {limit:.1f} s after the participation was revoked")
    raise AssertionError  # unreachable (for the type checker)


@pytest.mark.parametrize(
    "revoke, who",
    [
        (end_outside_the_call, "patient"),  # encounter ended outside the call: no push reaches the sockets
        (disown, "patient"),  # the patient record no longer the patient's
        (lambda call: deactivate(call, "patient"), "patient"),  # the patient's membership deactivated
        (lambda call: deactivate(call, "doctor"), "doctor"),  # the practitioner's membership deactivated
    ],
    ids=[
        "encounter_ended_elsewhere",
        "patient_record_disowned",
        "patient_membership_deactivated",
        "practitioner_membership_deactivated",
    ],
)
async def test_a_revoked_participant_is_refused_within_the_bound(call, settings, revoke, who):
    settings.VIDEO_SEAT_CHECK_SECONDS = BOUND
    doctor, patient = await in_call(call)
    ws, peer = (patient, doctor) if who == "patient" else (doctor, patient)
    await ws.send_json_to({"type": "offer", "sdp": "v=0 before"})
    assert (await receive_until(peer, "offer"))["sdp"] == "v=0 before"
    committed(revoke, call)
    # Without a re-check the offers would go on being relayed and this would fail after 3 bounds.
    assert await refused_after(ws, peer, limit=3 * BOUND) <= BOUND + SLACK


async def test_ending_the_visit_on_the_socket_refuses_the_other_side_at_once(call, settings):
    settings.VIDEO_SEAT_CHECK_SECONDS = 60  # the bound alone would let the patient go on for a minute
    doctor, patient = await in_call(call)
    await patient.send_json_to({"type": "offer", "sdp": "v=0 before"})
    await receive_until(doctor, "offer")
    await doctor.send_json_to({"type": "end"})
    await receive_until(patient, "ended")
    assert await refused_after(patient, doctor, limit=2.0) < 1.0


async def test_relayed_messages_do_not_each_ask_the_database(call, settings, monkeypatch):
    settings.VIDEO_SEAT_CHECK_SECONDS = 60
    doctor, patient = await in_call(call)
    checks = []
    participation = services.participation

    def counted(*args, **kwargs):
        checks.append(1)
        return participation(*args, **kwargs)

    monkeypatch.setattr(services, "participation", counted)
    for i in range(20):
        await doctor.send_json_to({"type": "candidate", "candidate": {"candidate": str(i)}})
    for i in range(20):
        assert (await receive_until(patient, "candidate"))["candidate"] == {"candidate": str(i)}
    assert checks == []
    # A step that changes the visit is checked against the database every time.
    await doctor.send_json_to({"type": "end"})
    await receive_until(patient, "ended")
    assert checks
    await doctor.disconnect()
    await patient.disconnect()


def patient_participant(call) -> services.Participant:
    with tenant_context(org_id=call["org"].id, role="platform", purpose="treatment"):
        m = Membership.objects.get(org_id=call["org"].id, user_id=call["patient"])
    return services.Participant(m.org_id, m.user_id, m.pk, m.role)


async def test_a_check_begun_before_an_invalidation_confirms_nothing(call, settings):
    """The push lands while a renewal is reading the database: what that renewal read may predate the change,
    so the next message still waits for a fresh check."""
    settings.VIDEO_SEAT_CHECK_SECONDS = 60
    participant = committed(patient_participant, call)
    participation = committed(services.participation, participant, call["encounter"])

    async def on_revoked() -> None:
        raise AssertionError("not revoked")

    seat = Seat(participant, call["encounter"], participation, float("-inf"), on_revoked)
    renewing = asyncio.ensure_future(seat._check(stale_after=0))
    await asyncio.sleep(0)  # the renewal has begun its read
    seat.invalidate()
    await renewing
    assert not seat.revoked and seat.age() == float("inf")
    assert await seat.confirm() == participation  # and the next one is fresh
    assert seat.age() < 60
