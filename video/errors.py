"""Video's error codes: the HTTP ones of its API (VideoCode) and every code the signalling socket sends in
`{"type": "error", "code": ...}` (SignallingCode, socket-only: not HTTP responses; video/PROTOCOL.md).

The general HTTP codes (not_found, method_not_allowed, unknown_host) are tenancy's TenancyCode."""

from __future__ import annotations

from tenancy.errors import ErrorCode, SocketErrorCode


class VideoCode(ErrorCode):
    """The video API's own codes (TURN credentials)."""

    NOT_ADMITTED = (
        "not_admitted",
        403,
        "The practitioner has not admitted you from the waiting room yet: wait to be admitted.",
    )
    ENCOUNTER_CLOSED = (
        "encounter_closed",
        409,
        "The encounter is over or cancelled: there is no call to join.",
    )
    TURN_UNAVAILABLE = (
        "turn_unavailable",
        503,
        "No TURN relay is configured, so no call can connect: tell the clinic's administrators.",
    )


class SignallingCode(SocketErrorCode):
    """The signalling socket's codes, with the close code that follows where the socket closes."""

    INVALID_REQUEST = (
        "invalid_request",
        "The socket's query string is not valid (last_seq is a whole number); closed with 4400, nothing redeemed.",
    )
    NOT_AUTHENTICATED = (
        "not_authenticated",
        "Not signed in, or the sign-in the socket was opened with has ended (token revoked or expired, signed "
        "out, locked out): sign in (again). Closed with 4401.",
    )
    RESUME_REJECTED = (
        "resume_rejected",
        "The resume token is not valid for you here (used, expired or another's): join again. Closed with 4401.",
    )
    NOT_FOUND = (
        "not_found",
        "No call of yours for this encounter (closed with 4404), or no such patient in the waiting room.",
    )
    ALREADY_ACTIVE = (
        "already_active",
        "The visit is open in another window: connect with takeover=1 to move it here. Closed with 4409.",
    )
    TAKEN_OVER = (
        "taken_over",
        "The visit moved to another window (takeover=1 there); this socket is closed with 4409.",
    )
    REPLACED = (
        "replaced",
        "The visit resumed on another connection; this socket is closed with 4409.",
    )
    RESUME_EXPIRED = (
        "resume_expired",
        "Too many messages were missed to resume: join again without a resume token. Closed with 4410.",
    )
    NOT_ADMITTED = ("not_admitted", "Wait to be admitted before sending offers, answers or candidates.")
    NOT_PERMITTED = ("not_permitted", "Only the practitioner admits, denies or ends the visit.")
    INVALID_MESSAGE = (
        "invalid_message",
        "A frame that is not a JSON text object with a string type (or nests more than 64 arrays and objects): "
        "dropped.",
    )
    MESSAGE_TOO_LARGE = ("message_too_large", "A message over 64 KiB: dropped.")
    UNKNOWN_TYPE = ("unknown_type", "A message type the protocol does not have: dropped.")
    INVALID_STATE = ("invalid_state", "The visit cannot be ended in its current state.")
    SIGNALLING_UNAVAILABLE = (
        "signalling_unavailable",
        "Signalling is temporarily unavailable (closed with 4503): reconnect with backoff; the visit stays as it "
        "is.",
    )
    INTERNAL_ERROR = (
        "internal_error",
        "A server bug (closed with 4500): the participant is dropped and may resume with its token.",
    )
