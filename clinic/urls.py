from django.urls import path

from . import views

urlpatterns = [
    path("patients", views.PatientListView.as_view(), name="patient-list"),
    path("patients/<uuid:patient_id>", views.PatientDetailView.as_view(), name="patient-detail"),
    path("patients/<uuid:patient_id>/care-team", views.CareTeamView.as_view(), name="care-team"),
    path(
        "patients/<uuid:patient_id>/care-team/<uuid:member_id>/end",
        views.CareTeamEndView.as_view(),
        name="care-team-end",
    ),
    path("patients/<uuid:patient_id>/consents", views.ConsentListView.as_view(), name="consent-list"),
    path(
        "patients/<uuid:patient_id>/consents/<uuid:consent_id>/withdraw",
        views.ConsentWithdrawView.as_view(),
        name="consent-withdraw",
    ),
    path(
        "patients/<uuid:patient_id>/consents/<uuid:consent_id>/history",
        views.ConsentHistoryView.as_view(),
        name="consent-history",
    ),
    path("encounters", views.EncounterListView.as_view(), name="encounter-list"),
    path("encounters/<uuid:encounter_id>", views.EncounterDetailView.as_view(), name="encounter-detail"),
    path(
        "encounters/<uuid:encounter_id>/timeline",
        views.EncounterTimelineView.as_view(),
        name="encounter-timeline",
    ),
    path("encounters/<uuid:encounter_id>/notes", views.EncounterNotesView.as_view(), name="encounter-notes"),
    *[
        path(
            f"encounters/<uuid:encounter_id>/{action}",
            views.EncounterActionView.as_view(),
            {"action": action},
            name=f"encounter-{action}",
        )
        for action in ("arrive", "admit", "start", "end", "cancel")
    ],
    path("notes/<uuid:note_id>", views.NoteDetailView.as_view(), name="note-detail"),
    path("notes/<uuid:note_id>/sign", views.NoteSignView.as_view(), name="note-sign"),
    path("notes/<uuid:note_id>/amend", views.NoteAmendView.as_view(), name="note-amend"),
    path("break-glass", views.BreakGlassListView.as_view(), name="break-glass-list"),
    path("break-glass/<uuid:grant_id>/close", views.BreakGlassCloseView.as_view(), name="break-glass-close"),
    path("reports/summary", views.ReportSummaryView.as_view(), name="report-summary"),
    path("me/access-log", views.AccessLogView.as_view(), name="access-log"),
]
