"""Video's rules, synchronous and database-facing: who may join an encounter's call, and what joining,
admitting, dropping and ending do to the encounter. Video reaches clinic data only through clinic.services."""

from __future__ import annotations

import datetime
import json
import re
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qs

from django.conf import settings

from clinic import services as clinic
from tenancy.context import tenant_context
from tenancy.errors import ApiError
from tenancy.models import Membership, Organization, PurposeOfUse, Role
from tenancy.services import get_organization
from tenancy.sockets import SocketCredential, credential_in_force, socket_sign_in

from .errors import SignallingCode


@dataclass(frozen=True)
class Participant:
    """A person in a video call, as the socket authenticated them: the signed-in member of the organization
    the Host names (organization, user, membership and the membership's role).

    Video has one word for that person. What they are in one encounter's call is their `Participation`;
    their live connection in the session store is `video.session.ParticipantState`.
    """

    org_id: uuid.UUID
    user_id: uuid.UUID
    membership_id: uuid.UUID
    role: str  # the membership's role
    # What the socket's handshake was signed in with (bearer token or portal session), confirmed again with the
    # participation (confirm_seat); None only for a participant not from a handshake (a test's).
    credential: SocketCredential | None = None


@dataclass(frozen=True)
class Participation:
    """A participant's part in one encounter's call, as the database says at the moment it was checked:
    which side they are on (practitioner or patient), whether the patient has been admitted, and the
    encounter's status. Checked on joining and again on every message (`participation`)."""

    encounter_id: str
    patient_id: str
    practitioner_user_id: str
    role: str  # practitioner | patient
    admitted: bool
    status: str


class NotFound(Exception):
    """Not this participant's encounter (or no such encounter): answered `not_found`, never more."""


class SignedOut(NotFound):
    """The bearer token or portal session the socket was opened with no longer holds (revoked, expired, signed
    out, a lockout, the membership or user deactivated): answered `not_authenticated`."""


class Refused(Exception):
    """A frame or a connection request the protocol does not accept: `code` and `message` go to the client."""

    def __init__(self, code: SignallingCode, message: str) -> None:
        if not isinstance(code, SignallingCode):
            raise TypeError(f"a signalling refusal needs a SignallingCode, not {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message


# -- what a client may send (video/PROTOCOL.md) ----------------------------------------------------------------

MAX_MESSAGE_BYTES = 64 * 1024
# json parses (and encodes) nested arrays and objects recursively: a frame of ~1,000 "[" (1 KiB) raises
# RecursionError in the consumer that parses it, and one a little shallower would be re-encoded and parsed
# again by the peer's consumer. The protocol's messages hold two or three objects, so the arrays and objects
# outside strings are counted before anything parses the frame: that bounds the depth, in C-speed string
# operations only (a Python loop over a 64 KiB frame would cost the event loop ~20 ms a frame).
MAX_MESSAGE_CONTAINERS = 64
# A JSON string, to the frame's end if unterminated. Possessive: no backtracking, so it is linear in the
# frame's length whatever its quotes and backslashes. An unterminated string swallows the brackets after it,
# but the parser fails inside it without nesting any deeper.
_STRINGS = re.compile(r'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_LAST_SEQ = re.compile(r"[0-9]{1,15}")


def _containers(text: str) -> int:
    return text.count("[") + text.count("{")


def _too_nested(text: str) -> bool:
    if _containers(text) <= MAX_MESSAGE_CONTAINERS:
        return False  # every ordinary message, without a second pass
    return _containers(_STRINGS.sub("", text)) > MAX_MESSAGE_CONTAINERS


def parse_message(text: str | None) -> dict:
    """A client's frame as a message (a JSON object with a string `type`), or Refused."""
    if text is None:
        raise Refused(SignallingCode.INVALID_MESSAGE, "Signalling messages are JSON text frames.")
    if len(text) > MAX_MESSAGE_BYTES:
        raise Refused(
            SignallingCode.MESSAGE_TOO_LARGE, f"A signalling message is at most {MAX_MESSAGE_BYTES} bytes."
        )
    invalid = Refused(SignallingCode.INVALID_MESSAGE, "Each message is a JSON object with a type.")
    if _too_nested(text):
        raise invalid
    try:
        content = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: only if the count above were ever wrong
        raise invalid from None
    if not isinstance(content, dict) or not isinstance(content.get("type"), str):
        raise invalid
    return content


@dataclass(frozen=True)
class ConnectRequest:
    """The socket's query string: `resume=<token>&last_seq=<n>` and `takeover=1` (video/PROTOCOL.md)."""

    resume: str | None
    last_seq: int
    takeover: bool


def connect_request(query_string: bytes) -> ConnectRequest:
    """Checked before anything is looked up or redeemed: a malformed request costs the client no resume
    token and leaves no participant connected."""
    try:
        text = query_string.decode("ascii")  # a browser percent-encodes anything else
        query = {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True, errors="strict").items()}
    except (UnicodeDecodeError, ValueError):
        raise Refused(SignallingCode.INVALID_REQUEST, "The query string is not valid.") from None
    last_seq = query.get("last_seq", "0")
    if not _LAST_SEQ.fullmatch(last_seq):
        raise Refused(SignallingCode.INVALID_REQUEST, "last_seq is the highest seq received: a whole number.")
    return ConnectRequest(
        resume=query.get("resume") or None, last_seq=int(last_seq), takeover=query.get("takeover") == "1"
    )


def authenticate(scope) -> Participant | None:
    """The organization from the Host, the user from a bearer token or the portal session cookie
    (tenancy.sockets)."""
    signed_in = socket_sign_in(scope)
    if signed_in is None:
        return None
    m, credential = signed_in
    return Participant(m.org_id, m.user_id, m.pk, m.role, credential)


def confirm_seat(participant: Participant, encounter_id: str) -> Participation:
    """A seat's check (video/seat.py): the handshake's credential still in force (SignedOut otherwise; that
    also confirms the membership active), then the participation (NotFound otherwise), in one context."""
    if participant.credential is None:
        return participation(participant, encounter_id)
    with _context(participant):
        if not credential_in_force(participant.credential):
            raise SignedOut()
        return _participation(participant, encounter_id, membership_confirmed=True)


def _context(participant: Participant, request_id: str = ""):
    return tenant_context(
        org_id=participant.org_id,
        role=participant.role,
        user_id=participant.user_id,
        purpose=PurposeOfUse.TREATMENT,
        request_id=request_id or None,
    )


def participation(participant: Participant, encounter_id: str) -> Participation:
    """The participant's part in this encounter's call, or NotFound (also for a wrong organization)."""
    with _context(participant):
        return _participation(participant, encounter_id)


def _participation(
    participant: Participant, encounter_id: str, membership_confirmed: bool = False
) -> Participation:
    """participation(), in the participant's context; `membership_confirmed` when the caller has just
    confirmed the membership active in it (credential_in_force)."""
    try:
        encounter_uuid = uuid.UUID(encounter_id)
    except ValueError:
        raise NotFound() from None
    try:
        # Not recorded as a read: checked at the join and again on every message, and what the participant
        # does with the encounter is recorded by record() (video_join, video_leave and the rest).
        encounter = clinic.get_encounter_for_user(encounter_uuid, record=False)
    except ApiError:
        raise NotFound() from None
    if participant.role == Role.PRACTITIONER and encounter.practitioner_id == participant.membership_id:
        role = "practitioner"
    elif participant.role == Role.PATIENT and encounter.patient_id in clinic.own_patient_ids():
        role = "patient"
    else:
        raise NotFound()
    if encounter.status in ("finished", "cancelled"):
        raise NotFound()
    # A deactivated membership ends the participation on either side (row policies cover the practitioner's
    # reach, not a patient's own record).
    if (
        not membership_confirmed
        and not Membership.objects.filter(pk=participant.membership_id, is_active=True).exists()
    ):
        raise NotFound()
    if role == "practitioner":
        practitioner_user = str(participant.user_id)  # the encounter's practitioner is this membership
    else:
        practitioner_user = str(
            Membership.objects.filter(pk=encounter.practitioner_id).values_list("user_id", flat=True).first()
        )
    admitted = encounter.admitted_at is not None or encounter.status == "in-progress"
    return Participation(
        str(encounter.pk), str(encounter.patient_id), practitioner_user, role, admitted, encounter.status
    )


def record(
    participant: Participant,
    participation: Participation | None,
    kind: str,
    encounter_id: str,
    outcome: str = "success",
    **detail,
):
    """Joins, leaves, interruptions and refusals go to the audit log (and the encounter's timeline)."""
    with _context(participant):
        clinic.record_phi_access(
            action=f"video_{kind}",
            resource="Encounter",
            resource_id=encounter_id,
            patient_id=participation.patient_id if participation else None,
            outcome=outcome,
            detail=detail,
        )
        if participation is not None:
            # The step was recorded just above; the encounter is loaded for its timeline only.
            encounter = clinic.get_encounter_for_user(uuid.UUID(encounter_id), record=False)
            me = (
                Membership.objects.filter(pk=participant.membership_id).defer("email", "display_name").first()
            )
            clinic.add_timeline_event(encounter, f"video_{kind}", me, role=participation.role, **detail)


def arrive(participant: Participant, participation: Participation) -> None:
    """A patient in the waiting room checks in (planned -> arrived)."""
    with _context(participant):
        # transition_encounter records the change, with the encounter's state before and after.
        encounter = clinic.get_encounter_for_user(uuid.UUID(participation.encounter_id), record=False)
        if encounter.status == "planned":
            member = (
                Membership.objects.filter(pk=participant.membership_id).defer("email", "display_name").first()
            )
            clinic.transition_encounter(encounter=encounter, action="arrive", actor=member)


def admit(participant: Participant, participation: Participation) -> str:
    """The practitioner admits the patient: admitted, and the visit starts."""
    with _context(participant):
        # transition_encounter records the change, with the encounter's state before and after.
        encounter = clinic.get_encounter_for_user(uuid.UUID(participation.encounter_id), record=False)
        member = (
            Membership.objects.filter(pk=participant.membership_id).defer("email", "display_name").first()
        )
        if encounter.status == "planned":
            encounter = clinic.transition_encounter(encounter=encounter, action="arrive", actor=member)
        if encounter.status == "arrived":
            encounter = clinic.transition_encounter(encounter=encounter, action="admit", actor=member)
            encounter = clinic.transition_encounter(encounter=encounter, action="start", actor=member)
        return encounter.status


def end(participant: Participant, participation: Participation) -> str:
    with _context(participant):
        # transition_encounter records the change, with the encounter's state before and after.
        encounter = clinic.get_encounter_for_user(uuid.UUID(participation.encounter_id), record=False)
        member = (
            Membership.objects.filter(pk=participant.membership_id).defer("email", "display_name").first()
        )
        encounter = clinic.transition_encounter(encounter=encounter, action="end", actor=member)
        return encounter.status


def grace_expired(org_id: str, encounter_id: str, user_id: str, role: str) -> bool:
    """The dropped participant did not come back: flag the encounter, never close it silently. Checked under a
    row lock: the worker's timer and a sweeper (video/liveness.py) settling at once flag it once."""
    with tenant_context(org_id=uuid.UUID(org_id), role="platform", purpose=PurposeOfUse.TREATMENT):
        encounter = clinic.Encounter.objects.select_for_update().filter(pk=encounter_id).first()
        if encounter is None or encounter.status not in ("in-progress", "arrived"):
            return False
        clinic.flag_documentation_required(
            encounter=encounter, reason=f"{role} dropped and did not return within the grace period"
        )
        return True


def connection_lost(org_id: str, encounter_id: str, user_id: str, role: str, last_seen: float) -> None:
    """A participant whose worker stopped vouching for the socket (killed, out of memory, its node lost, or
    Redis unreachable when the socket closed), found by a sweeper (video/liveness.py): the audit event and
    timeline entry of a drop the worker saw, with a reason and the last heartbeat instead of a close code."""
    detail = {
        "reason": "connection_lost",
        "last_seen": datetime.datetime.fromtimestamp(last_seen, datetime.UTC).isoformat(),
    }
    with tenant_context(org_id=uuid.UUID(org_id), role="platform", purpose=PurposeOfUse.TREATMENT):
        encounter = clinic.Encounter.objects.filter(pk=encounter_id).first()
        if encounter is None:
            return
        clinic.record_phi_access(
            action="video_interrupted",
            resource="Encounter",
            resource_id=encounter_id,
            patient_id=encounter.patient_id,
            outcome="success",
            detail=detail,
        )
        me = (
            Membership.objects.filter(org_id=encounter.org_id, user_id=user_id)
            .defer("email", "display_name")
            .first()
        )
        clinic.add_timeline_event(encounter, "video_interrupted", me, role=role, **detail)


def grace_seconds() -> float:
    return float(getattr(settings, "VIDEO_GRACE_SECONDS", 120))


def organization(participant: Participant) -> Organization:
    with _context(participant):
        return get_organization(participant.org_id)
