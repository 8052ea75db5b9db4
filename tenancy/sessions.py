"""Portal sessions stored under the SHA-256 of their key.

Django's database sessions keep the cookie value itself as the primary key, so anyone who can read the table
(a SQL injection, a backup) can sign in as every user. Here the table holds only `h1:` + SHA-256 of the key;
the cookie is the only place the key exists.
"""

from __future__ import annotations

import hashlib
import re

from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.contrib.sessions.base_session import AbstractBaseSession
from django.db import models

PREFIX = "h1:"
_KEY = re.compile(r"[a-z0-9]{32}")


class HashedSessionKeyField(models.CharField):
    """Hashes the session key on its way to the database; lookups by the raw key hash the same way."""

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value is None or value.startswith(PREFIX):
            return value
        return PREFIX + hashlib.sha256(value.encode()).hexdigest()


class PortalSession(AbstractBaseSession):
    session_key = HashedSessionKeyField("session key", max_length=67, primary_key=True)

    class Meta(AbstractBaseSession.Meta):  # type: ignore[name-defined]  # the stubs omit abstract models' Meta
        db_table = "tenancy_portal_session"

    @classmethod
    def get_session_store_class(cls):
        return SessionStore


class SessionStore(DatabaseSessionStore):
    @classmethod
    def get_model_class(cls):
        return PortalSession

    def _validate_session_key(self, key):
        # Only keys this store issues (32 lowercase letters and digits); a stored "h1:..." hash is not a key.
        return bool(key) and _KEY.fullmatch(key) is not None
