"""The signalling protocol over the real ASGI application (Channels, in-memory layer, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections
from django.utils import timezone

from clinic import services as clinic
from clinic.models import Encounter, Patient
from config.asgi import application
from tenancy.context import tenant_context
from tenancy.services import create_organization, ensure_member, issue_api_token
from tests.conftest import PASSWORD
from tests.video.communicator import WebsocketCommunicator
from video import session

pytestmark = pytest.mark.django_db(transaction=False)


def committed(fn, *args, **kwargs):
    def run():
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def visit():
    """A clinic, a practitioner, a patient with a portal sign-in, a planned encounter, and bearer tokens."""
    slug = f"video-{uuid.uuid4().hex[:8]}"
    org, _ = create_organization(slug=slug, name=slug, domains=[f"{slug}.localhost"], require_mfa=False)
    with tenant_context(org_id=org.id, role="platform", purpose="treatment"):
        _, doctor, _ = ensure_member(org=org, email=f"dr@{slug}.test", role="practitioner", password=PASSWORD)
        _, staff, _ = ensure_member(org=org, email=f"desk@{slug}.test", role="staff", password=PASSWORD)
        patient_user, patient_member, _ = ensure_member(
            org=org, email=f"pat@{slug}.test", role="patient", password=PASSWORD
        )
        _, other_doctor, _ = ensure_member(
            org=org, email=f"dr2@{slug}.test", role="practitioner", password=PASSWORD
        )
        patient = clinic.register_patient(
            actor=staff,
            data={"given_name": "Vi", "family_name": "Deo", "birth_date": datetime.date(1970, 1, 1)},
        )
        Patient.objects.filter(pk=patient.pk).update(user=patient_user)
        encounter = clinic.schedule_encounter(
            patient=patient,
            practitioner=doctor,
            actor=staff,
            scheduled_at=timezone.now(),
            reason="video visit",
        )
        tokens = {
            name: issue_api_token(membership=m)[0]
            for name, m in (
                ("doctor", doctor),
                ("patient", patient_member),
                ("other", other_doctor),
                ("staff", staff),
            )
        }
    return {
        "host": f"{slug}.localhost",
        "org": org,
        "encounter": str(encounter.pk),
        "tokens": tokens,
        "doctor": str(doctor.user_id),
        "patient": str(patient_user.pk),
    }


@pytest.fixture
def call(clinics):
    session.reset_store()
    return committed(visit)


def socket(call, who: str, encounter: str | None = None, query: str = "", host: str | None = None):
    host = host or call["host"]
    path = f"/ws/v1/encounters/{encounter or call['encounter']}/signal" + (f"?{query}" if query else "")
    return WebsocketCommunicator(
        application,
        path,
        headers=[
            (b"host", host.encode()),
            (b"origin", f"http://{host}".encode()),
            (b"authorization", f"Bearer {call['tokens'][who]}".encode()),
        ],
    )


async def receive_until(ws, kind: str, timeout: float = 5.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        message = await ws.receive_json_from(timeout=max(0.1, deadline - asyncio.get_running_loop().time()))
        if message["type"] == kind:
            return message


async def joined(call, who: str, **kwargs):
    ws = socket(call, who, **kwargs)
    connected, _ = await ws.connect()
    assert connected
    return ws, await receive_until(ws, "welcome")


async def test_patient_waits_practitioner_admits_and_offers_are_relayed(call):
    doctor, welcome = await joined(call, "doctor")
    assert welcome["you"]["role"] == "practitioner" and welcome["you"]["polite"] is False
    assert welcome["seq"] == 1 and welcome["resume_token"]
    patient, pwelcome = await joined(call, "patient")
    assert pwelcome["you"]["admitted"] is False and "turn" not in pwelcome
    waiting = await receive_until(doctor, "waiting")
    assert waiting["user"] == call["patient"]
    # Not admitted: the patient cannot signal yet.
    await patient.send_json_to({"type": "offer", "sdp": "v=0"})
    assert (await receive_until(patient, "error"))["code"] == "not_admitted"
    await doctor.send_json_to({"type": "admit", "user": call["patient"]})
    admitted = await receive_until(patient, "admitted")
    assert admitted["encounter"]["status"] == "in-progress"
    await doctor.send_json_to({"type": "offer", "sdp": "v=0 offer"})
    offer = await receive_until(patient, "offer")
    assert offer["sdp"] == "v=0 offer" and offer["from"] == call["doctor"]
    await patient.send_json_to({"type": "answer", "sdp": "v=0 answer"})
    assert (await receive_until(doctor, "answer"))["sdp"] == "v=0 answer"
    # Every server message is numbered in order.
    await doctor.send_json_to({"type": "candidate", "candidate": {"candidate": "x"}})
    candidate = await receive_until(patient, "candidate")
    assert candidate["seq"] > offer["seq"] > admitted["seq"]
    await doctor.disconnect()
    await patient.disconnect()


async def test_someone_elses_encounter_answers_not_found(call):
    for who in ("other", "staff"):
        ws = socket(call, who)
        await ws.connect()
        error = await receive_until(ws, "error")
        assert error["code"] == "not_found"
        await ws.disconnect()
    ws = socket(call, "doctor", encounter=str(uuid.uuid4()))
    await ws.connect()
    assert (await receive_until(ws, "error"))["code"] == "not_found"


async def test_a_token_from_another_organization_is_not_accepted(call):
    other = committed(visit)
    call = {**call, "tokens": {"doctor": other["tokens"]["doctor"]}}
    ws = socket(call, "doctor")
    await ws.connect()
    assert (await receive_until(ws, "error"))["code"] == "not_authenticated"


async def test_a_dropped_participant_resumes_and_gets_what_it_missed(call):
    doctor, _ = await joined(call, "doctor")
    patient, pwelcome = await joined(call, "patient")
    await receive_until(doctor, "waiting")
    await doctor.send_json_to({"type": "admit", "user": call["patient"]})
    admitted = await receive_until(patient, "admitted")
    await patient.disconnect()  # the phone loses its network
    await receive_until(doctor, "presence")
    await doctor.send_json_to({"type": "offer", "sdp": "sent while away"})
    await asyncio.sleep(0.2)
    back = socket(call, "patient", query=f"resume={pwelcome['resume_token']}&last_seq={admitted['seq']}")
    await back.connect()
    received = []
    while not received or received[-1]["type"] != "restart_ice":
        received.append(await back.receive_json_from())
    kinds = [m["type"] for m in received]
    assert "welcome" in kinds and "offer" in kinds
    assert [m["seq"] for m in received] == sorted(m["seq"] for m in received)  # replayed in order
    assert received[0]["seq"] == admitted["seq"] + 1  # nothing lost, nothing repeated
    welcome = next(m for m in received if m["type"] == "welcome")
    assert welcome["resumed"] is True and welcome["resume_token"] != pwelcome["resume_token"]
    assert next(m for m in received if m["type"] == "offer")["sdp"] == "sent while away"
    assert (await receive_until(doctor, "restart_ice"))["user"] == call["patient"]
    # The token was single-use.
    again = socket(call, "patient", query=f"resume={pwelcome['resume_token']}&last_seq=0")
    await again.connect()
    assert (await receive_until(again, "error"))["code"] == "resume_rejected"


async def test_a_participant_connected_longer_than_the_grace_period_resumes_after_a_drop(call, settings):
    """The grace period counts from the drop, not from the join: a patient ten minutes into a visit whose
    network goes resumes like one who joined a second ago (the token lives while its holder is connected)."""
    settings.VIDEO_GRACE_SECONDS = 1
    doctor, _ = await joined(call, "doctor")
    patient, pwelcome = await joined(call, "patient")
    await receive_until(doctor, "waiting")
    await doctor.send_json_to({"type": "admit", "user": call["patient"]})
    admitted = await receive_until(patient, "admitted")
    await asyncio.sleep(1.5)  # connected for longer than the grace period
    await patient.disconnect()
    await receive_until(doctor, "presence")
    back = socket(call, "patient", query=f"resume={pwelcome['resume_token']}&last_seq={admitted['seq']}")
    await back.connect()
    assert (await receive_until(back, "welcome"))["resumed"] is True
    assert (await receive_until(doctor, "restart_ice"))["user"] == call["patient"]


async def test_a_resume_after_the_grace_period_is_refused(call, settings):
    settings.VIDEO_GRACE_SECONDS = 0.5
    doctor, _ = await joined(call, "doctor")
    patient, pwelcome = await joined(call, "patient")
    await receive_until(doctor, "waiting")
    await patient.disconnect()
    await receive_until(doctor, "presence")
    await asyncio.sleep(1.0)
    back = socket(call, "patient", query=f"resume={pwelcome['resume_token']}&last_seq=0")
    await back.connect()
    # Refused either way: the grace period's end closed the visit (not_found), or the token is past it.
    assert (await receive_until(back, "error"))["code"] in {"not_found", "resume_rejected"}


async def test_a_resume_token_stolen_by_another_user_is_refused(call):
    _, welcome = await joined(call, "doctor")
    thief = socket(call, "patient", query=f"resume={welcome['resume_token']}&last_seq=0")
    await thief.connect()
    assert (await receive_until(thief, "error"))["code"] == "resume_rejected"


async def test_a_second_tab_is_told_already_active_and_may_take_over(call):
    first, _ = await joined(call, "doctor")
    second = socket(call, "doctor")
    await second.connect()
    assert (await receive_until(second, "error"))["code"] == "already_active"
    third, _ = await joined(call, "doctor", query="takeover=1")
    assert (await receive_until(first, "error"))["code"] == "taken_over"
    await third.send_json_to({"type": "ping"})
    assert (await receive_until(third, "pong"))["type"] == "pong"


async def test_a_denied_patient_gets_no_turn_credentials_and_is_closed(call):
    doctor, _ = await joined(call, "doctor")
    patient, _ = await joined(call, "patient")
    await receive_until(doctor, "waiting")
    await doctor.send_json_to({"type": "deny", "user": call["patient"]})
    denied = await receive_until(patient, "denied")
    assert "turn" not in denied


async def test_only_the_practitioner_ends_the_visit(call):
    doctor, _ = await joined(call, "doctor")
    patient, _ = await joined(call, "patient")
    await receive_until(doctor, "waiting")
    await doctor.send_json_to({"type": "admit", "user": call["patient"]})
    await receive_until(patient, "admitted")
    await patient.send_json_to({"type": "end"})
    assert (await receive_until(patient, "error"))["code"] == "not_permitted"
    await doctor.send_json_to({"type": "end"})
    ended = await receive_until(patient, "ended")
    assert ended["encounter"]["status"] == "finished"


async def test_a_drop_longer_than_the_grace_period_flags_the_encounter(call, settings):
    settings.VIDEO_GRACE_SECONDS = 0.5
    doctor, _ = await joined(call, "doctor")
    patient, _ = await joined(call, "patient")
    await receive_until(doctor, "waiting")
    await doctor.send_json_to({"type": "admit", "user": call["patient"]})
    await receive_until(patient, "admitted")
    await patient.disconnect()
    state = await receive_until(doctor, "state", timeout=10)
    while not state.get("documentation_required"):
        state = await receive_until(doctor, "state", timeout=10)
    org_id = call["org"].id

    def flagged():
        with tenant_context(org_id=org_id, role="platform"):
            encounter = Encounter.objects.get(pk=call["encounter"])
            return encounter.status, encounter.documentation_required

    assert committed(flagged) == ("finished", True)


@pytest.mark.parametrize(
    "origin",
    [
        "http://beta.localhost",  # another clinic's portal, an allowed host: its page must not reach this socket
        "http://evil.example",  # not an allowed host at all
        None,  # no Origin
    ],
)
async def test_a_socket_opened_from_another_origin_is_refused(call, origin):
    headers = [
        (b"host", call["host"].encode()),
        (b"authorization", f"Bearer {call['tokens']['doctor']}".encode()),
    ]
    if origin:
        headers.append((b"origin", origin.encode()))
    path = f"/ws/v1/encounters/{call['encounter']}/signal"
    ws = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await ws.connect()
    assert not connected


async def test_a_page_on_a_non_default_port_opens_its_socket_when_the_host_keeps_the_port(call):
    """The Origin keeps the page's port, so the Host must too (behind nginx: `Host $http_host`). Another port
    of the same host is another origin (tests/video/test_signalling_attacks.py)."""
    headers = [
        (b"host", f"{call['host']}:8080".encode()),
        (b"origin", f"http://{call['host']}:8080".encode()),
        (b"authorization", f"Bearer {call['tokens']['doctor']}".encode()),
    ]
    ws = WebsocketCommunicator(application, f"/ws/v1/encounters/{call['encounter']}/signal", headers=headers)
    connected, _ = await ws.connect()
    assert connected
    await ws.disconnect()


async def test_oversized_binary_and_malformed_frames_get_an_error_and_the_visit_goes_on(call):
    doctor, _ = await joined(call, "doctor")
    await doctor.send_input({"type": "websocket.receive", "text": "x" * (70 * 1024)})
    assert (await receive_until(doctor, "error"))["code"] == "message_too_large"
    await doctor.send_input({"type": "websocket.receive", "bytes": b"\x00\x01"})
    assert (await receive_until(doctor, "error"))["code"] == "invalid_message"
    await doctor.send_input({"type": "websocket.receive", "text": "{not json"})
    assert (await receive_until(doctor, "error"))["code"] == "invalid_message"
    # Still connected and answering.
    await doctor.send_json_to({"type": "ping"})
    assert (await receive_until(doctor, "pong"))["type"] == "pong"
    await doctor.disconnect()
