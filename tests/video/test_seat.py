"""A participant whose participation is revoked is refused within the stated bound (video/seat.py, PROTOCOL.md
"Participation"): the relay trusts the database's confirmation for at most VIDEO_SEAT_CHECK_SECONDS, and the
server's own changes to the visit invalidate it at once. Real Channels application and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime
import time

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from clinic import services as clinic
from clinic.models import Patient
from config.asgi import application
from tenancy.context import tenant_context
from tenancy.models import ApiToken, Membership
from tenancy.services import hash_token
from tests.conftest import PASSWORD, Api
from tests.video import test_signalling as signalling
from tests.video.communicator import WebsocketCommunicator
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


async def refused_after(ws, peer, limit: float, code: str = "not_found", close: int = 4404) -> float:
    """Seconds until an offer from `ws` is refused with `code` (and closed with `close`); offers every 50 ms
    meanwhile, each relayed to `peer` until then. Fails if none is refused within `limit`."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        await ws.send_json_to({"type": "offer", "sdp": "v=0 after the revocation"})
        if await ws.receive_nothing(timeout=0.05):  # (a receive that times out would cancel the application)
            continue
        while not await ws.receive_nothing(timeout=0.01):
            message = await ws.receive_json_from()
            if message["type"] == "error":
                assert message["code"] == code, message
                assert await ws.receive_close() == close
                return time.monotonic() - began
    pytest.fail(f"still relayed {limit:.1f} s after the participation was revoked")
    raise AssertionError  # unreachable (for the type checker)


@pytest.mark.parametrize(
    "revoke, who",
    [
        (end_outside_the_call, "patient"),  # encounter ended outside the call: no push reaches the sockets
        (disown, "patient"),  # the patient record no longer the patient's
        # A deactivated membership also ends the sign-in (tenancy.sockets.credential_in_force): answered as a
        # new handshake would be, not_authenticated and 4401.
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
async def test_a_revoked_participant_is_refused_within_the_bound(call, settings, revoke, who, request):
    settings.VIDEO_SEAT_CHECK_SECONDS = BOUND
    doctor, patient = await in_call(call)
    ws, peer = (patient, doctor) if who == "patient" else (doctor, patient)
    await ws.send_json_to({"type": "offer", "sdp": "v=0 before"})
    assert (await receive_until(peer, "offer"))["sdp"] == "v=0 before"
    committed(revoke, call)
    refusal = ("not_authenticated", 4401) if request.node.callspec.id.endswith("deactivated") else ()
    # Without a re-check the offers would go on being relayed and this would fail after 3 bounds.
    assert await refused_after(ws, peer, 3 * BOUND, *refusal) <= BOUND + SLACK


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

    def counted(check):
        def counting(*args, **kwargs):
            checks.append(1)
            return check(*args, **kwargs)

        return counting

    # The seat's check (the credential, then the participation) and participation() itself.
    monkeypatch.setattr(services, "confirm_seat", counted(services.confirm_seat))
    monkeypatch.setattr(services, "participation", counted(services.participation))
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


# -- the credential the socket was opened with (tenancy.sockets.credential_in_force) -------------------------


def revoke_token(call, who: str) -> None:
    """The bearer token revoked straight in the database (as logout or an administrator would)."""
    with tenant_context(org_id=call["org"].id, role="platform", purpose="treatment"):
        ApiToken.objects.filter(key_hash=hash_token(call["tokens"][who])).update(revoked_at=timezone.now())


def lock_out(call, who: str) -> None:
    """A lockout at this organization (tenancy.services' rule: sessions_revoked_at), its tokens left as they
    are: only the lockout's own rule can end the socket."""
    with tenant_context(org_id=call["org"].id, role="platform", purpose="treatment"):
        Membership.objects.filter(org_id=call["org"].id, user_id=call[who]).update(
            sessions_revoked_at=timezone.now()
        )


async def refused_as_signed_out(ws, peer, limit: float) -> float:
    return await refused_after(ws, peer, limit, "not_authenticated", 4401)


@pytest.mark.parametrize(
    "end_sign_in, who",
    [(revoke_token, "doctor"), (revoke_token, "patient"), (lock_out, "doctor"), (lock_out, "patient")],
    ids=["doctor_token_revoked", "patient_token_revoked", "doctor_locked_out", "patient_locked_out"],
)
async def test_a_socket_whose_token_ended_is_refused_within_the_bound(call, settings, end_sign_in, who):
    settings.VIDEO_SEAT_CHECK_SECONDS = BOUND
    doctor, patient = await in_call(call)
    ws, peer = (patient, doctor) if who == "patient" else (doctor, patient)
    await ws.send_json_to({"type": "offer", "sdp": "v=0 before"})
    assert (await receive_until(peer, "offer"))["sdp"] == "v=0 before"
    committed(end_sign_in, call, who)
    # Without the credential in the seat check the offers would go on being relayed (the participation holds).
    assert await refused_as_signed_out(ws, peer, limit=3 * BOUND) <= BOUND + SLACK
    # The other side is untouched.
    await peer.send_json_to({"type": "ping"})
    assert (await receive_until(peer, "pong"))["type"] == "pong"
    await peer.disconnect()


def portal_sign_in(call, who: str) -> Api:
    """A portal session (the cookie a browser holds) for the patient or the practitioner."""
    slug = call["host"].removesuffix(".localhost")
    portal = Api(call["host"])
    email = {"patient": f"pat@{slug}.test", "doctor": f"dr@{slug}.test"}[who]
    response = portal.post("/api/v1/auth/login", {"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.content
    return portal


def session_socket(call, portal: Api) -> WebsocketCommunicator:
    cookie = portal.client.cookies[django_settings.SESSION_COOKIE_NAME].value
    host = call["host"]
    return WebsocketCommunicator(
        application,
        f"/ws/v1/encounters/{call['encounter']}/signal",
        headers=[
            (b"host", host.encode()),
            (b"origin", f"http://{host}".encode()),
            (b"cookie", f"{django_settings.SESSION_COOKIE_NAME}={cookie}".encode()),
        ],
    )


def sign_out(portal: Api) -> None:
    assert portal.post("/api/v1/auth/logout").status_code == 204


def lock_out_by_wrong_passwords(call, who: str) -> None:
    """The real lockout: LOGIN_MAX_FAILURES wrong passwords at this organization."""
    slug = call["host"].removesuffix(".localhost")
    email = {"patient": f"pat@{slug}.test", "doctor": f"dr@{slug}.test"}[who]
    for _ in range(django_settings.LOGIN_MAX_FAILURES):
        Api(call["host"]).post("/api/v1/auth/login", {"email": email, "password": "wrong password"})
    with tenant_context(org_id=call["org"].id, role="platform", purpose="treatment"):
        member = Membership.objects.get(org_id=call["org"].id, user_id=call[who])
    assert member.sessions_revoked_at is not None


@pytest.mark.parametrize("ending", ["signed_out", "locked_out"])
async def test_a_portal_session_that_ended_is_refused_within_the_bound(call, settings, ending):
    settings.VIDEO_SEAT_CHECK_SECONDS = BOUND
    portal = committed(portal_sign_in, call, "patient")
    doctor, _ = await joined(call, "doctor")
    patient = session_socket(call, portal)
    connected, _ = await patient.connect()
    assert connected
    await receive_until(patient, "welcome")
    await receive_until(doctor, "waiting")
    await doctor.send_json_to({"type": "admit", "user": call["patient"]})
    await receive_until(patient, "admitted")
    await patient.send_json_to({"type": "offer", "sdp": "v=0 before"})
    assert (await receive_until(doctor, "offer"))["sdp"] == "v=0 before"
    if ending == "signed_out":
        committed(sign_out, portal)
    else:
        committed(lock_out_by_wrong_passwords, call, "patient")
    assert await refused_as_signed_out(patient, doctor, limit=3 * BOUND) <= BOUND + SLACK
    await doctor.disconnect()


async def test_the_idle_timeout_does_not_end_an_open_call(call, settings):
    """A visit may outlast the organization's idle timeout: the seat check does not apply it."""
    settings.VIDEO_SEAT_CHECK_SECONDS = 0.2
    doctor, patient = await in_call(call)

    def idle_for_a_day(call) -> None:
        with tenant_context(org_id=call["org"].id, role="platform", purpose="treatment"):
            ApiToken.objects.filter(org_id=call["org"].id).update(
                last_used_at=timezone.now() - datetime.timedelta(days=1)
            )

    committed(idle_for_a_day, call)
    await asyncio.sleep(0.3)
    for i in range(3):
        await doctor.send_json_to({"type": "candidate", "candidate": {"candidate": str(i)}})
        assert (await receive_until(patient, "candidate"))["candidate"] == {"candidate": str(i)}
        await asyncio.sleep(0.25)
    await doctor.disconnect()
    await patient.disconnect()
