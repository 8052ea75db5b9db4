"""The one settings module: everything comes from environment variables.

With DEBUG off (the default) the server refuses to start on a development secret, insecure cookies or a
missing ALLOWED_HOSTS: a production deployment must say what it is, rather than inherit a demo's defaults.
The README's table lists every variable read here.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import warnings
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.proxies import parse_trusted_proxies

BASE_DIR = Path(__file__).resolve().parent.parent

DEV_SECRET_KEY = "dev-insecure-secret-key-do-not-use-in-production"


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}") from exc


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", DEV_SECRET_KEY if DEBUG else "")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ".localhost,localhost,127.0.0.1,[::1]" if DEBUG else "")

# Cookies: secure by default; only a DEBUG demo over plain http may turn this off.
COOKIES_SECURE = env_bool("DJANGO_SECURE_COOKIES", not DEBUG)
SESSION_COOKIE_SECURE = COOKIES_SECURE
CSRF_COOKIE_SECURE = COOKIES_SECURE
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Strict"
SESSION_COOKIE_AGE = env_int("SESSION_MAX_AGE_SECONDS", 12 * 3600)
SESSION_SAVE_EVERY_REQUEST = False
SESSION_ENGINE = "tenancy.sessions"  # keys stored hashed: reading the table signs no one in
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")


def _is_loopback(host: str) -> bool:
    return host in {"localhost", "127.0.0.1", "[::1]", "testserver"} or host.endswith(".localhost")


if not DEBUG:
    problems = []
    if not SECRET_KEY or SECRET_KEY == DEV_SECRET_KEY or len(SECRET_KEY) < 32:
        problems.append("DJANGO_SECRET_KEY must be set to a random value of at least 32 characters")
    if not COOKIES_SECURE and not all(_is_loopback(host) for host in ALLOWED_HOSTS):
        # Plain-http cookies are tolerated only for a demo that answers on loopback names alone.
        problems.append(
            "DJANGO_SECURE_COOKIES may not be false with DEBUG off unless every allowed host is loopback"
        )
    if not ALLOWED_HOSTS:
        problems.append("DJANGO_ALLOWED_HOSTS must list the portal hostnames")
    if "*" in ALLOWED_HOSTS:
        problems.append("DJANGO_ALLOWED_HOSTS may not contain '*'")
    if problems:
        raise ImproperlyConfigured("Refusing to start with DEBUG off: " + "; ".join(problems))

# Key the database uses to verify the tenant context the server signs (see tenancy/context.py).
# Derived from SECRET_KEY unless given, so a deployment has one secret less to manage.
_context_key_source = os.environ.get("TENANCY_CONTEXT_KEY", "")
TENANCY_CONTEXT_KEY: bytes = (
    _context_key_source.encode()
    if _context_key_source
    else hmac.new(SECRET_KEY.encode(), b"tenancy-context-v1", hashlib.sha256).digest()
)
TENANCY_CONTEXT_TTL_SECONDS = env_int("TENANCY_CONTEXT_TTL_SECONDS", 900)

# Key of the hash under which sign-in emails are looked up (tenancy.models.email_lookup_hash). Changing it
# makes every existing account unreachable by email, so a deployment sets it once and keeps it.
_lookup_key_source = os.environ.get("USER_LOOKUP_KEY", "")
USER_LOOKUP_KEY: bytes = (
    _lookup_key_source.encode()
    if _lookup_key_source
    else hmac.new(SECRET_KEY.encode(), b"user-lookup-v1", hashlib.sha256).digest()
)

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "tenancy",
    "clinic",
    "audit",
    "video",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Outside the host middleware, so the answers it gives by itself (unknown host) are frame-denied too.
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "tenancy.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "tenancy.middleware.RequestIdMiddleware",
    "tenancy.middleware.OrganizationByHostMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]


# True when DATABASE_URL points at PgBouncer (or another pooler) in transaction mode. The tenant context is
# transaction-local (tenancy/context.py), so nothing else about a request depends on its server connection.
TRANSACTION_POOLER = env_bool("DATABASE_TRANSACTION_POOLER", False)


# DATABASE_POOL_SIZE > 0: each worker process keeps a psycopg pool of up to that many connections. Under ASGI
# every request runs in a thread of its own, so Django's persistent connections (CONN_MAX_AGE) are never reused
# and each request logs in anew (a SCRAM exchange costing the worker, PgBouncer and PostgreSQL CPU). A
# connection goes back to the pool when the request ends, rolled back if a transaction were left open; the
# tenant context is transaction-local, so nothing of one request reaches the next (tests/tenancy/test_pooler.py).
DATABASE_POOL_SIZE = env_int("DATABASE_POOL_SIZE", 0)
if DATABASE_POOL_SIZE < 0:
    raise ImproperlyConfigured(f"DATABASE_POOL_SIZE must be 0 (no pool) or more, not {DATABASE_POOL_SIZE}")


def _database(url: str, pool_size: int = 0) -> dj_database_url.DBConfig:
    config = dj_database_url.parse(url, conn_max_age=0 if pool_size else env_int("DATABASE_CONN_MAX_AGE", 60))
    config["ATOMIC_REQUESTS"] = True
    config["CONN_HEALTH_CHECKS"] = True
    config.setdefault("OPTIONS", {})
    config["OPTIONS"].setdefault("connect_timeout", 5)
    if pool_size:
        # A connection is checked (one round trip) when it is taken, so one a PostgreSQL or PgBouncer restart
        # broke is replaced rather than failing a request. A request that waits 10 s for one (as long as
        # PgBouncer's query_wait_timeout in make cluster) gets 503 database_unavailable.
        config["OPTIONS"]["pool"] = {"min_size": 1, "max_size": pool_size, "timeout": 10, "max_idle": 300}
    if TRANSACTION_POOLER:
        # PgBouncer in transaction mode hands each transaction any server connection: no named prepared
        # statements (psycopg prepares after 5 runs) and no server-side cursors, which outlive a transaction.
        config["OPTIONS"]["prepare_threshold"] = None
        config["DISABLE_SERVER_SIDE_CURSORS"] = True
    return config


# DATABASE_URL: the runtime role (not the owner, no BYPASSRLS). DATABASE_OWNER_URL: the role that owns the
# tables and runs migrations. The development launcher derives both from one admin URL (README).
DATABASE_URL = os.environ.get("DATABASE_URL", "")
DATABASE_OWNER_URL = os.environ.get("DATABASE_OWNER_URL", "")
DATABASES: dict[str, dj_database_url.DBConfig] = {
    "default": (
        _database(DATABASE_URL, DATABASE_POOL_SIZE)
        if DATABASE_URL
        else {"ENGINE": "django.db.backends.dummy"}
    ),
}
if DATABASE_URL:
    # Without DATABASE_OWNER_URL, "owner" is the runtime role, which cannot migrate: that fails loudly.
    DATABASES["owner"] = _database(DATABASE_OWNER_URL or DATABASE_URL)
    DATABASES["owner"]["ATOMIC_REQUESTS"] = False
    DATABASES["owner"]["TEST"] = {"MIRROR": None}
DATABASE_ROUTERS = ["tenancy.routers.OwnerOnlyMigrates"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "tenancy.User"
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Sign-in policy.
LOGIN_MAX_FAILURES = env_int("LOGIN_MAX_FAILURES", 5)
LOGIN_LOCKOUT_MINUTES = env_int("LOGIN_LOCKOUT_MINUTES", 15)
API_TOKEN_TTL_MINUTES = env_int("API_TOKEN_TTL_MINUTES", 60)

# Channels: Redis when REDIS_URL is set (several workers), else in-memory for one process.
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    from video.session import reconnect_once

    # Each consumer waits for its messages with a blocking BZPOPMIN of 5 s (channels_redis' brpop_timeout);
    # redis-py's default read timeout is also 5 s since 8.0, so an idle signalling socket lost that race and
    # its consumer died with a TimeoutError. The read timeout must outlast the blocking pop. The retry
    # replaces the pool's dead connections after a Redis restart (video/session.py).
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": 15,
                        "socket_connect_timeout": 2,
                        "retry": reconnect_once(),
                        # redis-py's pool raises MaxConnectionsError past its default 100 instead of waiting: a
                        # burst of group sends from more sockets than that closed them with signalling_unavailable
                        # (tests/bench/test_video.py, the Redis variant).
                        "max_connections": 1000,
                    }
                ]
            },
        }
    }
else:
    # Channels' in-memory layer with its expiry cleanup amortized (at most once a second over every channel and
    # group, not on every send and receive: video/layers.py).
    CHANNEL_LAYERS = {"default": {"BACKEND": "video.layers.AmortizedInMemoryChannelLayer"}}

VAULT_ADDR = os.environ.get("VAULT_ADDR", "")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
# Production runs collectstatic into STATIC_ROOT; development and tests serve from the apps (finders).
warnings.filterwarnings("ignore", message="No directory at", module="whitenoise.base")
STATIC_ROOT = BASE_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# Security headers. HSTS is sent on HTTPS responses; the CSP comes from tenancy.middleware.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = False
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_SSL_REDIRECT = env_bool("DJANGO_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
# The proxies in front (config/proxies.py): uvicorn believes X-Forwarded-For/-Proto from these peers only, and
# the launchers pass it `--forwarded-allow-ips` from this same variable. The client address audited and the
# scheme (HSTS, SSL redirect) come from uvicorn's connection scope; SECURE_PROXY_SSL_HEADER stays unset, since
# Django would take X-Forwarded-Proto from any peer.
TRUSTED_PROXIES = parse_trusted_proxies(os.environ.get("TRUSTED_PROXIES", ""))
if env_bool("DJANGO_BEHIND_TLS_PROXY", False):
    raise ImproperlyConfigured(
        "DJANGO_BEHIND_TLS_PROXY is no longer read: set TRUSTED_PROXIES to the proxy's addresses, and start "
        "uvicorn with --proxy-headers --forwarded-allow-ips=<the same list> (README, Environment variables)"
    )
# Mail (invitations; never health information): the clinic's SMTP relay. `make run` starts a local one on
# loopback and keeps the messages under .data/mail/ (devstack/mail.py).
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "no-reply@localhost")

# Limit what a client can make us parse.
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FIELDS = 200

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenancy.authentication.BearerTokenAuthentication",
        "tenancy.authentication.OrgSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["tenancy.permissions.IsOrganizationMember"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["tenancy.serializers.StrictJSONParser"],
    # Error responses, the purpose header, strict request bodies and security schemes: tenancy/schema.py.
    "DEFAULT_SCHEMA_CLASS": "tenancy.schema.TenantAutoSchema",
    "EXCEPTION_HANDLER": "tenancy.errors.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.CursorPagination",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Telemedicine platform API",
    "DESCRIPTION": (
        "Multi-tenant clinic API. The organization is the one owning the request's Host. "
        'Every 4xx answers {"error": {"code", "message", "fields"}}.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "django.security.DisallowedHost": {"level": "WARNING"},
    },
}
CSRF_FAILURE_VIEW = "tenancy.errors.csrf_failure"

# Vault / OpenBao (keys for health information). The launcher starts a dev OpenBao when VAULT_ADDR is unset.
VAULT_TOKEN = os.environ.get("VAULT_TOKEN", "")
VAULT_ROLE_ID = os.environ.get("VAULT_ROLE_ID", "")
VAULT_SECRET_ID = os.environ.get("VAULT_SECRET_ID", "")
VAULT_OPS_TOKEN = os.environ.get("VAULT_OPS_TOKEN", "")
VAULT_TRANSIT_MOUNT = os.environ.get("VAULT_TRANSIT_MOUNT", "transit")
VAULT_TIMEOUT_SECONDS = float(os.environ.get("VAULT_TIMEOUT_SECONDS", "2"))
VAULT_KEY_ROTATION_PERIOD = os.environ.get("VAULT_KEY_ROTATION_PERIOD", "2160h")
DATA_KEY_CACHE_TTL_SECONDS = env_int("DATA_KEY_CACHE_TTL_SECONDS", 300)

# The audit database (audit/store.py): the shipper writes as an INSERT-only role, auditors read as a
# SELECT-only one, schema changes run as its owner. The launcher derives all three for development.
AUDIT_DATABASE_URL = os.environ.get("AUDIT_DATABASE_URL", "")
AUDIT_READER_DATABASE_URL = os.environ.get("AUDIT_READER_DATABASE_URL", "")
AUDIT_OWNER_DATABASE_URL = os.environ.get("AUDIT_OWNER_DATABASE_URL", "")
AUDIT_CHECKPOINT_INTERVAL_SECONDS = env_int("AUDIT_CHECKPOINT_INTERVAL_SECONDS", 30)
AUDIT_HEARTBEAT_SECONDS = env_int("AUDIT_HEARTBEAT_SECONDS", 300)
AUDIT_CHECKPOINT_DIR = os.environ.get("AUDIT_CHECKPOINT_DIR", "")
AUDIT_LOG_ORIGIN_PREFIX = os.environ.get("AUDIT_LOG_ORIGIN_PREFIX", "telemed.audit")
AUDIT_SIGNING_KEY = os.environ.get("AUDIT_SIGNING_KEY", "audit-signer")
AUDIT_KEY_NAME = os.environ.get("AUDIT_KEY_NAME", "telemed-audit")
AUDIT_MAX_LAG_SECONDS = env_int("AUDIT_MAX_LAG_SECONDS", 120)

# Video: how long a dropped participant is held before the visit is flagged for documentation.
VIDEO_GRACE_SECONDS = float(os.environ.get("VIDEO_GRACE_SECONDS", "120"))
# Every worker heartbeats the signalling sockets it holds this often; a participant without a heartbeat for
# three intervals (its worker died) is swept as a drop by whichever worker sweeps next (video/liveness.py).
VIDEO_HEARTBEAT_SECONDS = float(os.environ.get("VIDEO_HEARTBEAT_SECONDS", "10"))
VIDEO_SWEEP_SECONDS = float(os.environ.get("VIDEO_SWEEP_SECONDS", "5"))
VIDEO_CATCH_UP_SECONDS = float(os.environ.get("VIDEO_CATCH_UP_SECONDS", "1"))

# TURN (video/turn.py, deploy/coturn/): short-lived REST-API credentials for coturn's use-auth-secret.
# The first secret signs; coturn accepts every secret it lists, so a rotation adds the new one there first.
TURN_SHARED_SECRETS = env_list("TURN_SHARED_SECRETS")
# turn:/turns: URLs handed to clients, in order of preference (aiortc uses only the first).
TURN_URLS = env_list("TURN_URLS")
TURN_CREDENTIAL_TTL_SECONDS = env_int("TURN_CREDENTIAL_TTL_SECONDS", 600)
