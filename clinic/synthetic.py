"""Synthetic clinical data: made-up patients with a plausible history, for the demo seed and for benchmarks.

Nothing here is real. Every history is written through clinic.services, so the domain rules hold (valid
encounter transitions, consent history, signed notes final, amendments as new versions) and every write passes
the audit hook. Callers open the organization's context first, as an operator command does:

    with tenant_context(org_id=org.id, role="platform", purpose="treatment"):
        give_history(patient, plan, front_desk=desk)

`generate_patients` does that itself, in batches: it adds synthetic patients (name, contact details, care team,
consents, a few encounters and notes each) until an organization holds the number asked for. Its patients are
tagged by their health card number, a reserved `SYN<seed>-P<index>` series found through the blind index, so a
run that stopped halfway is resumed by running it again, and a second run with the same count adds nothing.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.utils import timezone

from tenancy.context import tenant_context
from tenancy.crypto.fields import index_token
from tenancy.models import Membership, Role

from . import services
from .models import CareTeamMember, ClinicalNote, Consent, Encounter, Patient

# What happens to a planned encounter (Encounter.Status values, plus one that ends unclosed and flagged).
PLANNED = Encounter.Status.PLANNED.value
ARRIVED = Encounter.Status.ARRIVED.value
IN_PROGRESS = Encounter.Status.IN_PROGRESS.value
FINISHED = Encounter.Status.FINISHED.value
CANCELLED = Encounter.Status.CANCELLED.value
DOCUMENTATION_REQUIRED = "documentation-required"  # finished without being closed: flagged until documented
OUTCOMES = (PLANNED, ARRIVED, IN_PROGRESS, FINISHED, CANCELLED, DOCUMENTATION_REQUIRED)

# Which note an encounter gets.
NO_NOTE, DRAFT, SIGNED, AMENDED = "", "draft", "signed", "amended"  # amended: signed, then a signed v2

# The analytics consent's story (treatment consent is always granted).
ACTIVE, WITHDRAWN, REGRANTED, NEVER = "active", "withdrawn", "regranted", "never"

PRIMARY = CareTeamMember.Role.PRIMARY.value
CONSULTING = CareTeamMember.Role.CONSULTING.value

PHI_LOGGER = "clinic.phi"

# -- records ------------------------------------------------------------------------------------------------

GIVEN_NAMES = (
    "Alex", "Bea", "Cal", "Dana", "Eli", "Fay", "Gus", "Hana", "Ike", "Jude", "Kira", "Leo", "Mae", "Nico",
    "Oona", "Pax", "Rae", "Sol", "Tess", "Uri", "Vera", "Wes", "Xia", "Yuri", "Zoe", "Ari", "Bo", "Cyd",
)  # fmt: skip
FAMILY_NAMES = (
    "Ashdown", "Birchell", "Cobbin", "Dunmere", "Elkwood", "Fenlow", "Garrow", "Hollins", "Ivers", "Jessop",
    "Kettley", "Larkin", "Merrow", "Nettles", "Oakes", "Pellow", "Quarry", "Rookley", "Sallow", "Thorne",
    "Upwood", "Vantle", "Wexley", "Yarrow",
)  # fmt: skip
CITIES = ("Springfield", "Riverton", "Lakeview", "Maplewood", "Fairhaven")
REASONS = (
    "Follow-up: blood pressure review",
    "Persistent cough for two weeks",
    "Medication renewal",
    "Lower back pain",
    "Annual check-up",
    "Rash on the forearm",
    "Headaches, worse in the morning",
    "Results of blood work",
    "Sleep difficulties",
    "Sore throat and fever",
)
ASSESSMENTS = (
    "Stable; continue current plan.",
    "Likely viral; supportive care.",
    "Improving; review in four weeks.",
    "Mild; lifestyle advice given.",
    "Needs further tests; requisition sent.",
)


def synthetic_record(name: str, email: str) -> dict:
    """A made-up but plausible record, derived from the name so re-seeding gives the same values."""
    digits = int(hashlib.sha256(name.encode()).hexdigest(), 16)
    given, family = name.split()
    return {
        "given_name": given,
        "family_name": family,
        "birth_date": datetime.date(1940 + digits % 70, 1 + digits % 12, 1 + digits % 28),
        "email": email,
        "phone": f"+1-555-{digits % 10000:04d}",
        "address": {"line": f"{digits % 900 + 100} Example Street", "city": "Springfield", "country": "CA"},
        "health_card_number": f"{digits % 10**10:010d}-{'ABCDEFGHJK'[digits % 10]}{'LMNPQRSTVW'[digits // 10 % 10]}",
    }


def synthetic_card(seed: int, index: int) -> str:
    """The health card number that tags generated patient `index` of series `seed` (never a real number)."""
    return f"SYN{seed}-P{index:07d}"


def generated_record(seed: int, index: int) -> dict:
    rng = random.Random(f"record:{seed}:{index}")
    given, family = rng.choice(GIVEN_NAMES), rng.choice(FAMILY_NAMES)
    record = synthetic_record(
        f"{given} {family}", f"{given}.{family}.{seed}.{index}@patients.synthetic.example".lower()
    )
    record["birth_date"] = datetime.date(1935, 1, 1) + datetime.timedelta(days=rng.randrange(85 * 365))
    record["address"]["city"] = rng.choice(CITIES)
    record["health_card_number"] = synthetic_card(seed, index)
    return record


# -- histories ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncounterPlan:
    practitioner: Membership
    outcome: str  # one of OUTCOMES
    days_ago: float  # when it is scheduled: positive in the past, negative in the future
    note: str = NO_NOTE  # NO_NOTE | DRAFT | SIGNED | AMENDED

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown encounter outcome {self.outcome!r}")
        if self.note and self.outcome in (PLANNED, CANCELLED):
            raise ValueError(f"a {self.outcome} encounter cannot have a note")
        if self.note in (SIGNED, AMENDED) and self.outcome == DOCUMENTATION_REQUIRED:
            raise ValueError("a signed note documents the encounter: it would no longer be flagged")


@dataclass
class HistoryPlan:
    care_team: list[tuple[Membership, str]] = field(
        default_factory=list
    )  # (practitioner, PRIMARY|CONSULTING)
    analytics: str = ACTIVE  # ACTIVE | WITHDRAWN | REGRANTED | NEVER
    encounters: list[EncounterPlan] = field(default_factory=list)


@dataclass
class Tally:
    """What was written: patients, care team members, consent events, encounters by outcome, notes by kind."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def merge(self, other: Tally) -> None:
        for key, n in other.counts.items():
            self.add(key, n)


def _note_body(rng: random.Random, reason: str) -> str:
    return (
        f"S: {reason}.\nO: BP {rng.randint(105, 150)}/{rng.randint(65, 95)}, HR {rng.randint(55, 100)}, "
        f"T {rng.uniform(36.2, 38.4):.1f} C.\nA: {rng.choice(ASSESSMENTS)}\nP: Synthetic note for testing."
    )


def give_history(
    patient: Patient,
    plan: HistoryPlan,
    *,
    front_desk: Membership | None,
    patient_member: Membership | None = None,
    rng: random.Random | None = None,
) -> Tally:
    """Write a patient's care team, consents, encounters and notes through the domain services.

    The front desk (staff) adds care team members, records treatment consent, schedules, checks in and cancels;
    the encounter's practitioner starts, ends and writes notes. The analytics consent is the patient's own act
    when they have a membership (portal), else recorded by the front desk. Without a front desk, the first
    practitioner involved does the front desk's part. Runs inside the caller's tenant context.
    """
    rng = rng or random.Random(str(patient.pk))
    tally = Tally()
    practitioners = [p for p, _ in plan.care_team] + [e.practitioner for e in plan.encounters]
    desk = front_desk or (practitioners[0] if practitioners else None)
    if desk is None:
        raise ValueError("a history needs a front desk member or at least one practitioner")

    for practitioner, role in plan.care_team:
        services.assign_care_team(patient=patient, practitioner=practitioner, actor=desk, role=role)
        tally.add("care team members")

    services.grant_consent(
        patient=patient,
        purpose=Consent.Purpose.TREATMENT,
        actor=desk,
        note="Consent to treatment recorded at registration.",
    )
    tally.add("consents: treatment active")
    if plan.analytics != NEVER:
        who = patient_member or desk
        consent = services.grant_consent(
            patient=patient,
            purpose=Consent.Purpose.ANALYTICS,
            actor=who,
            note="Agreed to anonymous reporting.",
        )
        if plan.analytics in (WITHDRAWN, REGRANTED):
            consent = services.withdraw_consent(
                consent=consent, actor=who, note="Withdrew consent to reporting."
            )
        if plan.analytics == REGRANTED:
            services.grant_consent(
                patient=patient,
                purpose=Consent.Purpose.ANALYTICS,
                actor=who,
                note="Agreed to reporting again.",
            )
    tally.add(f"consents: analytics {plan.analytics}")

    for encounter_plan in plan.encounters:
        _play_encounter(patient, encounter_plan, front_desk or encounter_plan.practitioner, rng, tally)
    return tally


def _play_encounter(
    patient: Patient, plan: EncounterPlan, desk: Membership, rng: random.Random, tally: Tally
) -> None:
    practitioner = plan.practitioner
    reason = rng.choice(REASONS)
    scheduled_at = timezone.now() - datetime.timedelta(days=plan.days_ago)
    encounter = services.schedule_encounter(
        patient=patient, practitioner=practitioner, scheduled_at=scheduled_at, reason=reason, actor=desk
    )
    tally.add(f"encounters: {plan.outcome}")
    if plan.outcome == PLANNED:
        return
    if plan.outcome == CANCELLED:
        services.transition_encounter(encounter=encounter, action="cancel", actor=desk)
        return
    encounter = services.transition_encounter(encounter=encounter, action="arrive", actor=desk)
    if plan.outcome != ARRIVED:
        encounter = services.transition_encounter(encounter=encounter, action="start", actor=practitioner)
        if plan.outcome == FINISHED:
            encounter = services.transition_encounter(encounter=encounter, action="end", actor=practitioner)
        elif plan.outcome == DOCUMENTATION_REQUIRED:
            encounter = services.flag_documentation_required(
                encounter=encounter, reason="The video visit dropped and was not resumed."
            )
    if plan.note == NO_NOTE:
        return
    note = services.create_note(encounter=encounter, body=_note_body(rng, reason), author=practitioner)
    tally.add(f"notes: {plan.note}")
    if plan.note == DRAFT:
        return
    note = services.sign_note(note=note, actor=practitioner)
    if plan.note == AMENDED:
        amendment = services.amend_note(
            note=note,
            body=_note_body(rng, reason) + "\nAddendum: corrected the blood pressure reading.",
            actor=practitioner,
        )
        services.sign_note(note=amendment, actor=practitioner)


def random_plan(rng: random.Random, practitioners: Sequence[Membership], index: int) -> HistoryPlan:
    """A typical history: a primary practitioner (round robin), sometimes a consulting one; treatment consent,
    analytics consent for most (some withdrawn, a few re-granted, some never asked); two to four encounters,
    mostly finished with a signed note, some planned or cancelled, a few open or flagged."""
    primary = practitioners[index % len(practitioners)]
    care_team = [(primary, PRIMARY)]
    others = [p for p in practitioners if p.pk != primary.pk]
    if others and rng.random() < 0.2:
        care_team.append((rng.choice(others), CONSULTING))
    analytics = rng.choices((ACTIVE, WITHDRAWN, REGRANTED, NEVER), weights=(78, 8, 4, 10))[0]
    encounters = []
    for _ in range(rng.randint(2, 4)):
        who = rng.choice(care_team)[0]
        outcome = rng.choices(
            (FINISHED, PLANNED, CANCELLED, DOCUMENTATION_REQUIRED, ARRIVED, IN_PROGRESS),
            weights=(62, 15, 12, 5, 3, 3),
        )[0]
        if outcome == PLANNED:
            days_ago = -rng.uniform(1, 60)
        elif outcome == CANCELLED:
            days_ago = rng.uniform(-30, 200)
        elif outcome in (ARRIVED, IN_PROGRESS):
            days_ago = 0.0
        else:
            days_ago = rng.uniform(1, 720)
        note = NO_NOTE
        if outcome == FINISHED:
            note = rng.choices((SIGNED, AMENDED, DRAFT, NO_NOTE), weights=(85, 5, 5, 5))[0]
        elif outcome in (IN_PROGRESS, DOCUMENTATION_REQUIRED) and rng.random() < 0.5:
            note = DRAFT
        encounters.append(EncounterPlan(who, outcome, days_ago, note))
    return HistoryPlan(care_team=care_team, analytics=analytics, encounters=encounters)


@contextmanager
def quiet_phi_log(quiet: bool = True) -> Iterator[None]:
    """Keep a bulk load's thousands of per-record `phi_access` lines off the console (the audit hook's
    listeners still receive every event; only the log line is held back)."""
    logger = logging.getLogger(PHI_LOGGER)
    previous = logger.level
    if quiet:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)


# -- the generator ------------------------------------------------------------------------------------------


def operator_context(org_id: uuid.UUID):
    """The context the seed and the generator write in: the platform, for treatment."""
    return tenant_context(org_id=org_id, role="platform", purpose="treatment")


def clinic_cast(
    practitioner_ids: Sequence[uuid.UUID] | None = None,
) -> tuple[list[Membership], Membership | None]:
    """The organization's active practitioners (or the ones named) and its first front-desk member."""
    members = Membership.objects.filter(is_active=True).defer("email", "display_name").order_by("created_at")
    practitioners = list(members.filter(role=Role.PRACTITIONER))
    if practitioner_ids is not None:
        wanted = set(practitioner_ids)
        practitioners = [p for p in practitioners if p.pk in wanted]
    return practitioners, members.filter(role=Role.STAFF).first()


def tagged_indexes(org_id: uuid.UUID, seed: int, count: int, chunk: int = 5000) -> set[int]:
    """Which of generated patients 0..count-1 of this series exist already (one query per `chunk`)."""
    card_field = Patient._meta.get_field("health_card_number")
    found: set[int] = set()
    for start in range(0, count, chunk):
        tokens = {
            index_token(org_id, card_field, synthetic_card(seed, i)): i
            for i in range(start, min(count, start + chunk))
        }
        hits = Patient.objects.filter(health_card_index__in=list(tokens)).values_list(
            "health_card_index", flat=True
        )
        found.update(tokens[token] for token in hits)
    return found


@dataclass
class GenerateResult:
    requested: int
    existing: int
    created: int
    seconds: float
    tally: Tally


def generate_patients(
    *,
    org_id: uuid.UUID,
    count: int,
    seed: int = 0,
    batch_size: int = 50,
    practitioner_ids: Sequence[uuid.UUID] | None = None,
    progress: Callable[[str], None] | None = None,
) -> GenerateResult:
    """Make sure the organization holds `count` generated patients of series `seed`, each with a history.

    Each batch is one transaction (patients with their whole history, or nothing), so an interrupted run is
    completed by running it again. Care teams use the organization's practitioners (or `practitioner_ids`),
    round robin; the front desk is its first staff member (or the practitioner, if it has none).
    """
    if count < 0 or seed < 0 or batch_size < 1:
        raise ValueError("count and seed must be >= 0 and batch_size >= 1")
    started = time.monotonic()
    with operator_context(org_id):
        practitioners, front_desk = clinic_cast(practitioner_ids)
        if not practitioners:
            raise ValueError("the organization has no active practitioner to put on care teams")
        existing = tagged_indexes(org_id, seed, count)
    missing = [i for i in range(count) if i not in existing]
    say = progress or (lambda message: None)
    say(f"{len(existing)} of {count} generated patients (series {seed}) exist; creating {len(missing)}.")
    tally = Tally()
    done = 0
    for start in range(0, len(missing), batch_size):
        indexes = missing[start : start + batch_size]
        batch_tally = Tally()
        with operator_context(org_id):
            for i in indexes:
                rng = random.Random(f"history:{seed}:{i}")
                patient = services.register_patient(
                    actor=front_desk or practitioners[0], data=generated_record(seed, i)
                )
                batch_tally.add("patients")
                batch_tally.merge(
                    give_history(
                        patient,
                        random_plan(rng, practitioners, i),
                        front_desk=front_desk,
                        rng=rng,
                    )
                )
        tally.merge(batch_tally)  # counted once the batch has committed
        done += len(indexes)
        elapsed = time.monotonic() - started
        say(
            f"  {done}/{len(missing)} created ({len(existing) + done}/{count} in the organization), "
            f"{done / elapsed:.0f} patients/s"
        )
    return GenerateResult(
        requested=count,
        existing=len(existing),
        created=done,
        seconds=round(time.monotonic() - started, 1),
        tally=tally,
    )


def note_kinds() -> dict[str, int]:
    """Counts of signed, draft and amended notes in the context's organization (for summaries and tests)."""
    notes = ClinicalNote.objects.all()
    return {
        "signed": notes.filter(status=ClinicalNote.Status.SIGNED).count(),
        "draft": notes.filter(status=ClinicalNote.Status.DRAFT).count(),
        "amendments": notes.filter(amends__isnull=False).count(),
    }
