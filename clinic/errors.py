"""The clinic's own error codes (tenancy.errors.ErrorCode); the general ones (not_found, not_permitted,
invalid_request, ...) are tenancy's TenancyCode, which the clinic answers with too."""

from __future__ import annotations

from tenancy.errors import ErrorCode


class ClinicCode(ErrorCode):
    """Patients, encounters, notes, care teams, consent and break-glass access."""

    # 400
    REASON_REQUIRED = (
        "reason_required",
        400,
        "Breaking the glass needs the emergency stated in a reason of at least 10 characters.",
    )
    INVALID_DURATION = (
        "invalid_duration",
        400,
        "A break-glass access lasts between 1 minute and the maximum error.fields gives: choose a duration in it.",
    )
    INVALID_PERIOD = ("invalid_period", 400, "The end of the period must be later than now.")
    NOT_A_PRACTITIONER = (
        "not_a_practitioner",
        400,
        "The member named in error.fields is not a practitioner: choose a practitioner.",
    )
    # 403
    FIELD_NOT_PERMITTED = (
        "field_not_permitted",
        403,
        "Your role may not change the fields error.fields names: leave them out.",
    )
    # 404
    UNKNOWN_ACTION = (
        "unknown_action",
        404,
        "No such encounter action: arrive, admit, start, end or cancel.",
    )
    # 409
    DUPLICATE_PATIENT = (
        "duplicate_patient",
        409,
        "A patient with this health card number is already registered: look them up instead.",
    )
    OUTSIDE_VISIT_WINDOW = (
        "outside_visit_window",
        409,
        "A visit is checked in or started only near its scheduled time (the message gives the window): try "
        "then, or reschedule.",
    )
    INVALID_TRANSITION = (
        "invalid_transition",
        409,
        "The encounter's status does not allow this action: error.fields lists the statuses it is allowed from.",
    )
    INVALID_STATE = (
        "invalid_state",
        409,
        "The encounter's status does not allow this (no note on a cancelled encounter, for one): reload it.",
    )
    NOTE_SIGNED = ("note_signed", 409, "A signed note is not edited: amend it instead.")
    ALREADY_SIGNED = ("already_signed", 409, "This note is already signed: nothing to do.")
    NOT_SIGNED = ("not_signed", 409, "Only a signed note is amended: edit the draft instead.")
    ALREADY_AMENDED = (
        "already_amended",
        409,
        "This version of the note has already been amended: amend the newest version.",
    )
    ALREADY_ON_CARE_TEAM = (
        "already_on_care_team",
        409,
        "This practitioner is already on the patient's care team: nothing to do.",
    )
    ALREADY_ENDED = ("already_ended", 409, "This care team assignment has already ended: nothing to do.")
    ALREADY_ACTIVE = ("already_active", 409, "This consent is already active: nothing to do.")
    NOT_ACTIVE = ("not_active", 409, "Only an active consent is withdrawn, and this one is not active.")
    ALREADY_CLOSED = ("already_closed", 409, "This break-glass access is already closed: nothing to do.")
