"""Audit log entries as FHIR R4 AuditEvent resources shaped after IHE BALP, and as CSV rows for people.

Pure functions of one log entry (the dict of audit/FORMAT.md), no Django: the exporter writes
auditevents.ndjson and events.csv with them and the offline verifier can recompute both (`--check-derived`).

Mapping (the tables below are the single place to extend when new actions appear):

- `action` (C/R/U/D/E) from the entry's action verb, its last word (`read`, `patient.read` -> read,
  `member_add` -> add, `role_change` -> change): read/view/get -> R; create/add -> C;
  update/amend/edit/patch/change -> U; delete/remove -> D;
  search/query/list/report and everything else (login, logout, break-glass, key operations, video,
  export) -> E, as BALP does for queries.
- `type` / `subtype`: CRUD and search -> `rest` (audit-event-type) with the FHIR restful-interaction
  (read, create, update, delete, search-type), as BALP's Read/Create/Update/Delete/Query profiles;
  sign-in -> DICOM 110114 User Authentication with 110122 Login / 110123 Logout;
  break-glass -> DICOM 110113 Security Alert with 110127 Emergency Override Started / 110138 Stopped;
  membership and role changes -> 110113 with 110137 User Security Attributes Changed / 110136 Security
  Roles Changed; key operations -> 110113 with 110132 Use of Restricted Function (unwrap) or 110129 Security
  Configuration (rotate, create, shred); audit log reads and exports -> DICOM 110101 Audit Log Used (an export
  also carries 110106 Export); anything else (video joins, leaves, interruptions) -> DICOM 110100
  Application Activity. Every event also carries the raw action as a subtype in `urn:telemed:audit-action`.
- `outcome`: success (and words like challenge, enrollment_started, removed) -> "0"; denied, forbidden,
  locked, not found, invalid (the request was refused) -> "4"; error or failure -> "8", except a failed
  sign-in, which is "4" as in DICOM user authentication; fatal -> "12". `outcomeDesc` is the entry's
  outcome word plus `detail.reason` or `detail.error` when present.
- `purposeOfEvent` (v3-ActReason): treatment -> TREAT, emergency -> ETREAT, operations -> HOPERAT,
  analytics -> HQUALIMP (health quality improvement: consent-aware analytics and reporting, kept apart
  from operations), research -> HRESCH, audit -> HCOMPL (health compliance); break-glass events add BTG.
- `agent`: the requestor (the user, `Practitioner/<user id>` for workforce roles, an identifier only for
  patients since a user id is not a Patient id), with the role, the source IP as network address (type 2)
  and the session as `policy`; no user -> the application itself (DICOM 110150). A second agent is the
  server (DICOM 110152 Destination Role ID), as in BALP.
- `source`: observer = the deployment (`observer` argument), type 4 Application Server.
- `entity`: the patient (`Patient/<id>`, type 1 Person, role 1 Patient); the resource (type 2 System
  Object, role 4 Domain Resource; a FHIR reference when its type maps to a FHIR resource, else an
  identifier) with the before/after state hashes and the entry's detail as entity details; the request id
  as BALP's XrequestId entity; a search's query (base64) as role 24 Query.
- An extension `urn:telemed:audit-log-seq` carries the entry's position in the signed log.
"""

from __future__ import annotations

import base64
import json
import re

__all__ = ["CSV_HEADER", "csv_row", "to_audit_event"]

LOCAL = "urn:telemed"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
BALP_PROFILE = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"

CSV_HEADER = [
    "seq",
    "time",
    "action",
    "outcome",
    "user",
    "role",
    "purpose",
    "patient",
    "resource type",
    "resource id",
    "request id",
]

_VERB_ACTION = {
    "read": "R",
    "view": "R",
    "vread": "R",
    "get": "R",
    "open_record": "R",
    "create": "C",
    "add": "C",
    "insert": "C",
    "update": "U",
    "amend": "U",
    "edit": "U",
    "patch": "U",
    "delete": "D",
    "change": "U",
    "remove": "D",
}
_SEARCH_VERBS = {"search", "query", "list", "report", "history"}
_REST_SUBTYPE = {"R": "read", "C": "create", "U": "update", "D": "delete"}

PURPOSES = {
    "treatment": ("TREAT", "treatment"),
    "emergency": ("ETREAT", "Emergency Treatment"),
    "operations": ("HOPERAT", "healthcare operations"),
    "analytics": ("HQUALIMP", "health quality improvement"),
    "research": ("HRESCH", "healthcare research"),
    "audit": ("HCOMPL", "health compliance"),
}

OUTCOMES = {
    "success": "0",
    "succeeded": "0",
    "ok": "0",
    "allowed": "0",
    "denied": "4",
    "locked": "4",
    "forbidden": "4",
    "refused": "4",
    "unauthorized": "4",
    "not_found": "4",
    "invalid": "4",
    "minor_failure": "4",
    "failure": "8",
    "failed": "8",
    "error": "8",
    "serious_failure": "8",
    "fatal": "12",
    "major_failure": "12",
}

# FHIR resource types for the application's resource types (others become identifiers, not references)
RESOURCE_TYPES = {
    "patient": "Patient",
    "encounter": "Encounter",
    "note": "DocumentReference",
    "clinicalnote": "DocumentReference",
    "clinical_note": "DocumentReference",
    "consent": "Consent",
    "careteam": "CareTeam",
    "care_team": "CareTeam",
    "membership": "PractitionerRole",
    "organization": "Organization",
    "auditevent": "AuditEvent",
    "audit_event": "AuditEvent",
}

WORKFORCE_ROLES = {"practitioner", "staff", "org_admin", "auditor"}


def _object(entry: dict, key: str) -> dict:
    value = entry.get(key)
    return value if isinstance(value, dict) else {}


def _coding(system: str, code: str, display: str | None = None) -> dict:
    c = {"system": system, "code": code}
    if display:
        c["display"] = display
    return c


def _norm(text: object) -> str:
    return re.sub(r"[\s\-]+", "_", str(text or "").strip().lower())


def _words(action: str) -> list[str]:
    return [w for w in re.split(r"[._:/]+", action) if w]


def _verb(action: str) -> str:
    """The last word of a normalised action: `read`, `patient.read` -> read; `data_key_unwrap` -> unwrap."""
    words = _words(action)
    return words[-1] if words else ""


def _action_code(action: str) -> str:
    verb = _verb(action)
    if verb in _VERB_ACTION:
        return _VERB_ACTION[verb]
    return "E"


def _classify(action: str) -> tuple[dict, list[dict]]:
    """(type, standard subtypes) for an action, by keyword (see the module docstring)."""
    verb = _verb(action)
    words = set(_words(action))
    if "logout" in words or "signout" in words or "sign_out" in action or "log_out" in action:
        return _coding(DCM, "110114", "User Authentication"), [_coding(DCM, "110123", "Logout")]
    if (
        words & {"login", "signin", "authenticate", "authentication", "mfa", "otp", "lockout"}
        or "sign_in" in action
    ):
        return _coding(DCM, "110114", "User Authentication"), [_coding(DCM, "110122", "Login")]
    if "break_glass" in action or "breakglass" in action or "emergency_access" in action:
        stop = verb in {"close", "closed", "end", "ended", "stop", "stopped", "expire", "expired", "revoke"}
        sub = _coding(DCM, "110138", "Emergency Override Stopped") if stop else None
        sub = sub or _coding(DCM, "110127", "Emergency Override Started")
        return _coding(DCM, "110113", "Security Alert"), [sub]
    if words & {"key", "keys", "dek", "kek", "datakey", "data_key"} or action.startswith(("key", "crypto")):
        if verb in {"unwrap", "decrypt", "use"}:
            return _coding(DCM, "110113", "Security Alert"), [
                _coding(DCM, "110132", "Use of Restricted Function")
            ]
        return _coding(DCM, "110113", "Security Alert"), [_coding(DCM, "110129", "Security Configuration")]
    if words & {"role", "roles"}:
        return _coding(DCM, "110113", "Security Alert"), [_coding(DCM, "110136", "Security Roles Changed")]
    if words & {"membership", "member", "memberships"}:
        return _coding(DCM, "110113", "Security Alert"), [
            _coding(DCM, "110137", "User Security Attributes Changed")
        ]
    if words & {"audit", "auditevent", "audit_event", "checkpoint"} or action.startswith("audit"):
        subs = [_coding(DCM, "110106", "Export")] if verb == "export" else []
        return _coding(DCM, "110101", "Audit Log Used"), subs
    code = _action_code(action)
    if code in _REST_SUBTYPE:
        return _coding(EVENT_TYPE, "rest", "RESTful Operation"), [_coding(RESTFUL, _REST_SUBTYPE[code])]
    if verb in _SEARCH_VERBS:
        return _coding(EVENT_TYPE, "rest", "RESTful Operation"), [_coding(RESTFUL, "search-type")]
    if verb == "export":
        return _coding(DCM, "110106", "Export"), []
    return _coding(DCM, "110100", "Application Activity"), []


def _balp_profile(type_: dict, subtypes: list[dict], has_patient: bool) -> str | None:
    if type_.get("code") != "rest":
        return None
    names = {
        "read": "Read",
        "create": "Create",
        "update": "Update",
        "delete": "Delete",
        "search-type": "Query",
    }
    for s in subtypes:
        if s["system"] == RESTFUL and s["code"] in names:
            return BALP_PROFILE + ("Patient" if has_patient else "") + names[s["code"]]
    return None


def _outcome(entry: dict, authentication: bool) -> tuple[str, str]:
    raw = entry.get("outcome")
    word = _norm(raw)
    code = OUTCOMES.get(word)
    if code is None:
        if "fail" in word or "error" in word:
            code = "8"
        elif any(w in word for w in ("deni", "forbid", "refus", "reject", "lock", "invalid", "unauthori")):
            code = "4"
        else:  # challenge, enrollment_started, removed, ...: the operation itself went through
            code = "0"
    if authentication and code == "8":
        code = (
            "4"  # a failed sign-in is a minor failure (wrong password), as in DICOM/ATNA user authentication
        )
    detail = _object(entry, "detail")
    desc = str(raw or "success")
    for key in ("reason", "error"):
        if detail.get(key):
            desc += f": {detail[key]}"
            break
    return code, desc


def _reference_or_identifier(kind: str, value: str) -> dict:
    fhir_type = RESOURCE_TYPES.get(_norm(kind).replace("_", "")) or RESOURCE_TYPES.get(_norm(kind))
    if fhir_type:
        return {"reference": f"{fhir_type}/{value}"}
    return {
        "identifier": {"system": f"{LOCAL}:resource:{_norm(kind)}", "value": value},
        "display": f"{kind}/{value}",
    }


def to_audit_event(entry: dict, observer: str = "telemed") -> dict:
    """A FHIR R4 AuditEvent (IHE BALP shape) for one log entry; `observer` names the deployment."""
    action = str(entry.get("action") or "")
    action_norm = _norm(action)
    type_, subtypes = _classify(action_norm)
    subtypes = [*subtypes, _coding(f"{LOCAL}:audit-action", action)]
    patient = entry.get("patient")
    actor = _object(entry, "actor")
    resource = _object(entry, "resource")
    detail = _object(entry, "detail")
    outcome, outcome_desc = _outcome(entry, authentication=type_.get("code") == "110114")

    event: dict = {"resourceType": "AuditEvent"}
    if entry.get("event_id"):
        event["id"] = str(entry["event_id"])
    profile = _balp_profile(type_, subtypes, bool(patient))
    if profile:
        event["meta"] = {"profile": [profile]}
    if entry.get("seq") is not None:
        event["extension"] = [{"url": f"{LOCAL}:audit-log-seq", "valueInteger": entry["seq"]}]
    event.update(
        {
            "type": type_,
            "subtype": subtypes,
            "action": _action_code(action_norm),
            "recorded": entry.get("time"),
            "outcome": outcome,
            "outcomeDesc": outcome_desc,
        }
    )

    purpose = entry.get("purpose")
    purposes = []
    if purpose:
        coded = PURPOSES.get(_norm(purpose))
        concept: dict = {"text": str(purpose)}
        if coded:
            concept["coding"] = [_coding(ACT_REASON, *coded)]
        purposes.append(concept)
    if "110127" in {s["code"] for s in subtypes} or "110138" in {s["code"] for s in subtypes}:
        purposes.append({"coding": [_coding(ACT_REASON, "BTG", "break the glass")], "text": "break-glass"})
    if purposes:
        event["purposeOfEvent"] = purposes

    # agents: the requestor (user or, without one, the application) and the server
    user, role = actor.get("user"), actor.get("role")
    requestor: dict
    if user:
        who: dict = {"identifier": {"system": f"{LOCAL}:user", "value": str(user)}}
        if role in WORKFORCE_ROLES:
            who = {"reference": f"Practitioner/{user}", **who}
        kind = "IRCP" if event["action"] in {"R", "E"} else "AUT"
        display = "information recipient" if kind == "IRCP" else "author (originator)"
        requestor = {
            "type": {"coding": [_coding(PARTICIPATION, kind, display)]},
            "who": who,
            "requestor": True,
        }
    else:
        requestor = {
            "type": {"coding": [_coding(DCM, "110150", "Application")]},
            "who": {"display": observer},
            "requestor": True,
        }
    if role:
        requestor["role"] = [{"coding": [_coding(f"{LOCAL}:role", str(role))], "text": str(role)}]
    if actor.get("session"):
        requestor["policy"] = [str(actor["session"])]
    if actor.get("ip"):
        requestor["network"] = {"address": str(actor["ip"]), "type": "2"}
    server = {
        "type": {"coding": [_coding(DCM, "110152", "Destination Role ID")]},
        "who": {"display": observer},
        "requestor": False,
    }
    event["agent"] = [requestor, server]
    event["source"] = {
        "site": observer,
        "observer": {"display": observer},
        "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
    }

    entities: list[dict] = []
    if patient:
        entities.append(
            {
                "what": {"reference": f"Patient/{patient}"},
                "type": _coding(ENTITY_TYPE, "1", "Person"),
                "role": _coding(OBJECT_ROLE, "1", "Patient"),
            }
        )
    res_type, res_id = resource.get("type"), resource.get("id")
    details: list[dict] = []
    for key in ("before", "after"):
        if entry.get(key):
            details.append({"type": f"{key}-sha256", "valueString": str(entry[key])})
    if detail:
        details.append(
            {
                "type": "detail",
                "valueString": json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
            }
        )
    same_as_patient = _norm(res_type) == "patient" and res_id is not None and str(res_id) == str(patient)
    if res_type and not same_as_patient:
        what = _reference_or_identifier(str(res_type), str(res_id)) if res_id else {"display": str(res_type)}
        ent: dict = {
            "what": what,
            "type": _coding(ENTITY_TYPE, "2", "System Object"),
            "role": _coding(OBJECT_ROLE, "4", "Domain Resource"),
        }
        if details:
            ent["detail"] = details
        entities.append(ent)
    elif details:
        target = entities[0] if entities else None
        if target is None:
            target = {"type": _coding(ENTITY_TYPE, "2", "System Object"), "what": {"display": action}}
            entities.append(target)
        target["detail"] = details
    query = detail.get("query")
    if isinstance(query, str) and query:
        entities.append(
            {
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "24", "Query"),
                "query": base64.b64encode(query.encode("utf-8")).decode("ascii"),
            }
        )
    if entry.get("request_id"):
        entities.append(
            {
                "what": {"identifier": {"value": str(entry["request_id"])}},
                "type": _coding(BALP_ENTITY_TYPE, "XrequestId"),
            }
        )
    if entities:
        event["entity"] = entities
    return event


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> str:
    """A CSV cell for people: None is empty; a leading formula character is neutralised with a quote."""
    if value is None:
        return ""
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value)
        if isinstance(value, dict | list)
        else str(value)
    )
    if text.startswith(_FORMULA_START):
        return "'" + text
    return text


def csv_row(entry: dict) -> list[str]:
    """One events.csv row (columns CSV_HEADER) for a log entry."""
    actor = _object(entry, "actor")
    resource = _object(entry, "resource")
    return [
        _cell(entry.get("seq")),
        _cell(entry.get("time")),
        _cell(entry.get("action")),
        _cell(entry.get("outcome")),
        _cell(actor.get("user")),
        _cell(actor.get("role")),
        _cell(entry.get("purpose")),
        _cell(entry.get("patient")),
        _cell(resource.get("type")),
        _cell(resource.get("id")),
        _cell(entry.get("request_id")),
    ]
