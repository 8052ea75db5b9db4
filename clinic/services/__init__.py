"""The clinic's rules, one module per aggregate (like Zulip's `actions/`): patients, care team, consent,
encounters, notes, break-glass and reports, over what they share (`common`: the audit hook, state hashes).

Views, pages and consumers call these functions; every state change is validated here and refused with an
ApiError (a clear 4xx). Which rows a caller can reach at all is PostgreSQL's decision (clinic/rls.py): a loader
that finds nothing answers 404, whether the row does not exist or belongs to someone else's care.

Every read and write of health information is recorded where it happens, so that any caller (an API view, a
page, a WebSocket consumer, a command) is covered by the same call: the `get_*_for_user` loaders record a read
of the row they return (`record=False` only when the caller's own event records the access), list pages are
recorded row by row (`record_page`), and writes are made inside `recorded_write`, which records the state
hashes before and after. All of them publish through `record_phi_access` (common.py), the one place the audit
log hooks into.

Callers import this package (`from clinic import services`); the names below are its public surface.
"""

from ..models import Encounter
from .break_glass import (
    BREAK_GLASS_DEFAULT_MINUTES,
    BREAK_GLASS_MAX_MINUTES,
    close_break_glass,
    get_break_glass_for_user,
    open_break_glass,
)
from .care_team import (
    assign_care_team,
    end_care_team,
)
from .common import (
    get_member_for_user,
    record_page,
    record_phi_access,
    record_phi_reads,
    recorded_write,
    require_purpose,
    state_hash,
    visible_length,
)
from .consent import (
    consent_history,
    consents_of,
    get_consent_for_user,
    grant_consent,
    withdraw_consent,
)
from .encounters import (
    ACTORS,
    TRANSITIONS,
    S,
    add_timeline_event,
    check_visit_window,
    encounter_timeline,
    flag_documentation_required,
    get_encounter_for_user,
    schedule_encounter,
    transition_encounter,
)
from .notes import (
    amend_note,
    create_note,
    get_note_for_user,
    notes_of,
    sign_note,
    update_draft_note,
)
from .patients import (
    HEALTH_CARD_CONSTRAINT,
    PATIENT_CONTACT_FIELDS,
    PATIENT_FIELDS,
    get_patient_for_user,
    own_patient_ids,
    register_patient,
    search_patients,
    update_patient,
)
from .reports import (
    AGE_BANDS,
    ROUND_TO,
    SMALL_COUNT,
    consent_aware_summary,
)

__all__ = [
    "ACTORS",
    "AGE_BANDS",
    "BREAK_GLASS_DEFAULT_MINUTES",
    "BREAK_GLASS_MAX_MINUTES",
    "HEALTH_CARD_CONSTRAINT",
    "PATIENT_CONTACT_FIELDS",
    "PATIENT_FIELDS",
    "ROUND_TO",
    "SMALL_COUNT",
    "TRANSITIONS",
    "Encounter",
    "S",
    "add_timeline_event",
    "amend_note",
    "assign_care_team",
    "check_visit_window",
    "close_break_glass",
    "consent_aware_summary",
    "consent_history",
    "consents_of",
    "create_note",
    "encounter_timeline",
    "end_care_team",
    "flag_documentation_required",
    "get_break_glass_for_user",
    "get_consent_for_user",
    "get_encounter_for_user",
    "get_member_for_user",
    "get_note_for_user",
    "get_patient_for_user",
    "grant_consent",
    "notes_of",
    "open_break_glass",
    "own_patient_ids",
    "record_page",
    "record_phi_access",
    "record_phi_reads",
    "recorded_write",
    "register_patient",
    "require_purpose",
    "schedule_encounter",
    "search_patients",
    "sign_note",
    "state_hash",
    "transition_encounter",
    "update_draft_note",
    "update_patient",
    "visible_length",
    "withdraw_consent",
]
