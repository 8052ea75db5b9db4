from django.urls import path

from . import views

urlpatterns = [
    path("portal/branding", views.BrandingView.as_view(), name="portal-branding"),
    path("auth/csrf", views.csrf_view, name="auth-csrf"),
    path("auth/login", views.LoginView.as_view(), name="auth-login"),
    path("auth/logout", views.LogoutView.as_view(), name="auth-logout"),
    path("auth/tokens", views.TokenView.as_view(), name="auth-tokens"),
    path("auth/me", views.MeView.as_view(), name="auth-me"),
    path("auth/mfa/totp", views.TotpView.as_view(), name="auth-totp"),
    path("auth/mfa/totp/confirm", views.TotpConfirmView.as_view(), name="auth-totp-confirm"),
    path("organization", views.OrganizationSettingsView.as_view(), name="organization-settings"),
    path("memberships", views.MembershipListView.as_view(), name="membership-list"),
    path("memberships/<uuid:membership_id>", views.MembershipDetailView.as_view(), name="membership-detail"),
    path("invitations", views.InvitationListView.as_view(), name="invitation-list"),
    path("invitations/accept", views.InvitationAcceptView.as_view(), name="invitation-accept"),
    path("invitations/<uuid:invitation_id>", views.InvitationDetailView.as_view(), name="invitation-detail"),
]
