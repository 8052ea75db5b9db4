"""Organizations, their portal domains, users, memberships and API tokens.

`TenantModel` is the declarative way for a model to be tenant-scoped: it gets an application-generated UUID
primary key, an `org` foreign key, a unique `(org, id)` pair that other tenant tables reference with
composite foreign keys, and a manager that refuses to run without a tenant context. Its migration must
apply `tenancy.rls.EnableTenantRLS`; tests/tenancy/test_catalog.py fails the build if it does not.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import unicodedata
import uuid
from typing import ClassVar

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from .context import current, require_context
from .crypto.fields import BlindIndexField, EncryptedTextField


class Role(models.TextChoices):
    ORG_ADMIN = "org_admin", "Organization administrator"
    PRACTITIONER = "practitioner", "Practitioner"
    STAFF = "staff", "Front-desk staff"
    AUDITOR = "auditor", "Auditor"
    PATIENT = "patient", "Patient"


class PurposeOfUse(models.TextChoices):
    TREATMENT = "treatment", "Treatment"
    OPERATIONS = "operations", "Operations"
    ANALYTICS = "analytics", "Analytics"
    AUDIT = "audit", "Audit"
    EMERGENCY = "emergency", "Emergency"


def _encrypted_names(model) -> frozenset[str]:
    return frozenset(f.name for f in model._meta.concrete_fields if getattr(f, "encrypted", False))


def _has_encrypted_fields(model) -> bool:
    return bool(_encrypted_names(model))


class TenantQuerySet(models.QuerySet):
    """A queryset that fails loudly when no tenant context is open, instead of returning nothing."""

    def _fetch_all(self) -> None:
        fetching = self._result_cache is None
        if fetching:
            require_context(self.model)
        super()._fetch_all()
        if fetching and _has_encrypted_fields(self.model):
            from .crypto.fields import prefetch_keys

            prefetch_keys(self._result_cache)

    def _reject_encrypted(self, names, operation: str) -> None:
        encrypted = _encrypted_names(self.model)
        for name in names:
            if not isinstance(name, str):
                continue
            base = name.lstrip("-?").split("__", 1)[0]
            if base in encrypted:
                from .crypto.fields import EncryptedFieldError

                raise EncryptedFieldError(
                    f"{self.model._meta.label}.{base} is encrypted: it cannot be used in {operation}"
                )

    def order_by(self, *field_names):
        self._reject_encrypted(field_names, "order_by()")
        return super().order_by(*field_names)

    def values(self, *fields, **expressions):
        self._reject_encrypted(fields or _encrypted_names(self.model), "values()")
        return super().values(*fields, **expressions)

    def values_list(self, *fields, flat=False, named=False):
        self._reject_encrypted(fields or _encrypted_names(self.model), "values_list()")
        return super().values_list(*fields, flat=flat, named=named)

    def distinct(self, *field_names):
        self._reject_encrypted(field_names, "distinct()")
        return super().distinct(*field_names)

    def iterator(self, chunk_size=None):  # type: ignore[override]
        require_context(self.model)
        return super().iterator(chunk_size=chunk_size)

    def count(self) -> int:
        require_context(self.model)
        return super().count()

    def exists(self) -> bool:
        require_context(self.model)
        return super().exists()

    def aggregate(self, *args, **kwargs):  # type: ignore[override]
        require_context(self.model)
        return super().aggregate(*args, **kwargs)

    def update(self, **kwargs) -> int:
        require_context(self.model)
        return super().update(**kwargs)

    def delete(self):  # type: ignore[override]
        require_context(self.model)
        return super().delete()

    def bulk_create(self, *args, **kwargs):  # type: ignore[override]
        require_context(self.model)
        return super().bulk_create(*args, **kwargs)

    def bulk_update(self, *args, **kwargs):  # type: ignore[override]
        require_context(self.model)
        return super().bulk_update(*args, **kwargs)

    def _insert(self, *args, **kwargs):  # type: ignore[override]
        require_context(self.model)
        return super()._insert(*args, **kwargs)  # type: ignore[misc]  # private QuerySet API the stubs omit


class TenantManager(models.Manager.from_queryset(TenantQuerySet)):  # type: ignore[misc]
    """The application's scope filter, the first of the three layers: every query built inside an
    organization's context says `org_id = <that org>` itself (which also lets the planner use the
    (org_id, ...) indexes), and row-level security checks it again underneath."""

    use_in_migrations = False

    def get_queryset(self):
        queryset = super().get_queryset()
        ctx = current()
        if ctx is not None and ctx.org_id is not None and self.model is not Organization:
            queryset = queryset.filter(org_id=ctx.org_id)
        return queryset

    def raw(self, raw_query, params=(), translations=None, using=None):  # type: ignore[override]
        require_context(self.model)
        return super().raw(raw_query, params=params, translations=translations, using=using)


class Organization(models.Model):
    """A clinical organization (tenant). Public branding; everything else it owns is scoped to it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.SlugField(max_length=63, unique=True)
    name = models.CharField(max_length=200)
    # Branding for the white-label portal.
    display_name = models.CharField(max_length=200, blank=True)
    primary_color = models.CharField(
        max_length=7, default="#0b5fff", validators=[RegexValidator(r"^#[0-9a-fA-F]{6}$")]
    )
    accent_color = models.CharField(
        max_length=7, default="#00a37a", validators=[RegexValidator(r"^#[0-9a-fA-F]{6}$")]
    )
    logo_url = models.URLField(blank=True)
    support_email = models.EmailField(blank=True)
    support_phone = models.CharField(max_length=40, blank=True)
    # Security settings.
    require_mfa = models.BooleanField(default=True)
    idle_timeout_minutes = models.PositiveIntegerField(default=15)
    created_at = models.DateTimeField(default=timezone.now)

    objects = TenantManager()

    class Meta:
        base_manager_name = "objects"

    def __str__(self) -> str:
        return self.slug

    @property
    def branding(self) -> dict:
        return {
            "organization": self.slug,
            "display_name": self.display_name or self.name,
            "primary_color": self.primary_color,
            "accent_color": self.accent_color,
            "logo_url": self.logo_url,
            "support": {"email": self.support_email, "phone": self.support_phone},
        }


class TenantModel(models.Model):
    """Base for every table that holds one organization's data."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+", editable=False)

    objects = TenantManager()

    class Meta:
        abstract = True
        base_manager_name = "objects"
        constraints: ClassVar[list] = [
            models.UniqueConstraint(fields=["org", "id"], name="%(app_label)s_%(class)s_org_id_key"),
        ]


class Domain(TenantModel):
    """A hostname that serves one organization's portal."""

    hostname = models.CharField(max_length=253, unique=True)
    is_primary = models.BooleanField(default=False)

    class Meta(TenantModel.Meta):
        indexes: ClassVar[list] = [models.Index(fields=["org", "hostname"])]

    def __str__(self) -> str:
        return self.hostname


def email_lookup_hash(email: str) -> str:
    """The only form of a sign-in email kept in the global users table: a keyed hash, for lookups.

    Keyed (USER_LOOKUP_KEY) so a dump of the table cannot be matched against a list of addresses.
    """
    normalized = unicodedata.normalize("NFKC", email or "").strip().lower()
    digest = hmac.new(settings.USER_LOOKUP_KEY, normalized.encode(), hashlib.sha256).hexdigest()
    return f"u1:{digest}"


class UserManager(BaseUserManager["User"]):
    def create_user(self, email: str, password: str | None = None, **extra) -> User:
        user = self.model(email_hash=email_lookup_hash(email), **extra)
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save(using=self._db)
        return user

    def get_by_email(self, email: str) -> User | None:
        return self.filter(email_hash=email_lookup_hash(email)).first()


class User(AbstractBaseUser):
    """A sign-in identity, holding no personal information at all.

    One person may work for several clinics, so this table is global and outside row-level security; it
    therefore keeps only a keyed hash of the sign-in email, the password hash and the authenticator. Names and
    addresses live in Membership, encrypted under each organization's own key; which organizations the user
    may act in is decided by Membership too.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    email_hash = models.CharField(max_length=70, unique=True)
    is_active = models.BooleanField(default=True)
    totp_secret = models.CharField(max_length=64, blank=True)
    totp_confirmed = models.BooleanField(default=False)
    totp_last_counter = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    USERNAME_FIELD = "email_hash"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    objects = UserManager()

    def __str__(self) -> str:
        return f"user {self.pk}"


class Membership(TenantModel):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices)
    # What this organization knows about the person, encrypted under its key; never shown to another clinic.
    email = EncryptedTextField(blind_index="email_index", normalizer="email")
    email_index = BlindIndexField(source="email")
    display_name = EncryptedTextField()
    is_active = models.BooleanField(default=True)
    # Lockout is per membership: failures at one clinic cannot lock the person out of another.
    failed_logins = models.PositiveIntegerField(default=0)
    locked_until = models.DateTimeField(null=True, blank=True)
    # Set when this membership is locked out: portal sessions signed in and API tokens issued before it are void.
    sessions_revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta(TenantModel.Meta):
        constraints: ClassVar[list] = [
            *TenantModel.Meta.constraints,
            models.UniqueConstraint(fields=["org", "user"], name="tenancy_membership_one_per_org"),
        ]
        indexes: ClassVar[list] = [
            models.Index(fields=["org", "created_at"]),
            models.Index(fields=["org", "email_index"]),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}@{self.org_id}:{self.role}"

    @property
    def is_locked(self) -> bool:
        return self.locked_until is not None and self.locked_until > timezone.now()

    def revoked_since(self, issued_at: datetime.datetime | float) -> bool:
        """Whether a lockout after `issued_at` (a token's creation, a session's sign-in as a timestamp) ended
        what was issued then: the one rule for HTTP tokens, portal sessions and socket handshakes alike."""
        if self.sessions_revoked_at is None:
            return False
        if isinstance(issued_at, datetime.datetime):
            return issued_at <= self.sessions_revoked_at
        return issued_at <= self.sessions_revoked_at.timestamp()


class Invitation(TenantModel):
    """An administrator's offer of a role in this organization, which the invited person must accept.

    No membership exists until then, so the person's password (if they already have an account elsewhere) does
    not work here and gives this organization nothing to guess against. The single-use token goes only to the
    invited address; the table keeps its SHA-256. `account_hash` is the sign-in lookup hash of the address
    (`User.email_hash`), so acceptance finds the account, or creates it, without anyone reading another clinic's
    data. ADR 0013.
    """

    email = EncryptedTextField(blind_index="email_index", normalizer="email")
    email_index = BlindIndexField(source="email")
    display_name = EncryptedTextField()
    role = models.CharField(max_length=20, choices=Role.choices)
    account_hash = models.CharField(max_length=70)
    token_hash = models.CharField(max_length=64)
    invited_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    failed_attempts = models.PositiveIntegerField(default=0)
    accepted_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    membership = models.ForeignKey(
        Membership, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta(TenantModel.Meta):
        constraints: ClassVar[list] = [
            *TenantModel.Meta.constraints,
            models.UniqueConstraint(fields=["org", "token_hash"], name="tenancy_invitation_token"),
            # At most one open invitation per address: inviting again replaces it (tenancy.services).
            models.UniqueConstraint(
                fields=["org", "email_index"],
                condition=models.Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="tenancy_invitation_one_open_per_email",
            ),
        ]
        indexes: ClassVar[list] = [models.Index(fields=["org", "created_at"])]

    def __str__(self) -> str:
        return f"invitation {self.pk} ({self.status})"

    @property
    def status(self) -> str:
        if self.accepted_at is not None:
            return "accepted"
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "pending"


class ApiToken(TenantModel):
    """A short-lived, revocable bearer token for API clients. Only its SHA-256 is stored."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    membership = models.ForeignKey(Membership, on_delete=models.CASCADE, related_name="+")
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta(TenantModel.Meta):
        indexes: ClassVar[list] = [models.Index(fields=["org", "user"])]

    def __str__(self) -> str:
        return f"token {self.prefix}…"


class DataKey(TenantModel):
    """A data key generated by Vault Transit, stored only wrapped under the organization's Transit key.

    The wrapped form (`vault:v<N>:...`) is bound to the organization by the Transit derivation context;
    the unwrapped key exists only in process memory (tenancy.crypto.keyring). `retired_at` marks keys kept
    for reading old values after a rotation; `reencrypt` moves rows off them.
    """

    class Purpose(models.TextChoices):
        DATA = "data", "Data encryption"
        INDEX = "index", "Blind index"

    purpose = models.CharField(max_length=8, choices=Purpose.choices)
    wrapped = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta(TenantModel.Meta):
        indexes: ClassVar[list] = [models.Index(fields=["org", "purpose", "created_at"])]

    def __str__(self) -> str:
        return f"{self.purpose} key {self.pk} ({self.wrapped[:9]})"


from .sessions import PortalSession  # noqa: E402,F401  (model registration)
