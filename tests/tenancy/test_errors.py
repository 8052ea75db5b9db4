"""Bad input gets a clear 4xx in one JSON shape and never a 500; the schema and docs are served safely.

The battery sends every tenancy endpoint, with every method, a set of bodies a careless or hostile client
can send, signed in as the organization's administrator (the role that reaches the most code).
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest
from django.urls import URLPattern

from tenancy import urls as tenancy_urls
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

FIELDS = (
    "email",
    "password",
    "totp",
    "code",
    "role",
    "display_name",
    "name",
    "idle_timeout_minutes",
    "require_mfa",
    "logo_url",
    "primary_color",
    "support_phone",
)


def every_field(value) -> bytes:
    return json.dumps({name: value for name in FIELDS}).encode()


JSON = "application/json"
BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("malformed", b'{"email": ', JSON),
    ("trailing garbage", b'{"email": "a@b.test"} xyz', JSON),
    ("empty", b"", JSON),
    ("whitespace", b"   \n ", JSON),
    ("null", b"null", JSON),
    ("list", b'[{"email": "a@b.test", "password": "x"}]', JSON),
    ("number", b"42", JSON),
    ("float", b"-1.5e308", JSON),
    ("huge integer", b"9" * 5000, JSON),
    ("string", b'"hello"', JSON),
    ("boolean", b"true", JSON),
    ("NaN and Infinity", b'{"idle_timeout_minutes": NaN, "role": Infinity, "code": -Infinity}', JSON),
    ("overflowing float", b'{"idle_timeout_minutes": 1e400, "require_mfa": 1e400}', JSON),
    ("deeply nested list", b"[" * 100_000 + b"]" * 100_000, JSON),
    ("deeply nested object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, JSON),
    ("moderately nested", every_field(json.loads("[" * 500 + "]" * 500)), JSON),
    ("NUL in every field", every_field("a\x00b@x.test"), JSON),
    ("NUL key", json.dumps({"\x00": "x", "email\x00": "a@b.test"}).encode(), JSON),
    ("lone surrogate", every_field("\ud800@x.test"), JSON),
    ("lone low surrogate", every_field("x\udfff"), JSON),
    (
        "unicode oddities",
        every_field("\u202eevil\u200b\u0301\ufeff\uffff\U0010ffff\U0001f600@exa\u0308mple.test"),
        JSON,
    ),
    ("BOM prefix", b"\xef\xbb\xbf{}", JSON),
    ("invalid UTF-8", b'{"email": "\xff\xfe\xc0\xaf"}', JSON),
    ("overlong strings", every_field("x" * 60_000), JSON),
    ("body over the size limit", every_field("y" * 400_000), JSON),
    (
        "wrong types",
        json.dumps(
            {
                "email": 1,
                "password": [],
                "totp": {},
                "code": 123456,
                "role": ["org_admin"],
                "display_name": 1e308,
                "name": None,
                "idle_timeout_minutes": 10**30,
                "require_mfa": "maybe",
                "logo_url": "javascript:alert(1)",
                "primary_color": "red",
                "support_phone": {"a": 1},
            }
        ).encode(),
        JSON,
    ),
    (
        "other org ids",
        json.dumps({"org": "x", "org_id": "x", "id": "x", "slug": "beta", "user": "x"}).encode(),
        JSON,
    ),
    ("form encoded", b"email=a%40b.test&password=x", "application/x-www-form-urlencoded"),
    (
        "multipart",
        b'--b\r\nContent-Disposition: form-data; name="email"\r\n\r\na\r\n--b--\r\n',
        "multipart/form-data; boundary=b",
    ),
    ("text/plain", b'{"email": "a@b.test"}', "text/plain"),
    ("xml", b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'a'>]><x>&a;</x>", "application/xml"),
    ("no content type", b'{"email": "a@b.test"}', ""),
    ("utf-16 claimed", b'{"email": "a@b.test"}', "application/json; charset=utf-16"),
    ("utf-16 body", '{"email": "a@b.test"}'.encode("utf-16"), "application/json; charset=utf-16"),
    ("unknown charset", b'{"email": "a@b.test"}', "application/json; charset=no-such-charset"),
    ("rot13 charset", b'{"email": "a@b.test"}', "application/json; charset=rot13"),
    ("zlib charset", b'{"email": "a@b.test"}', "application/json; charset=zlib"),
    ("bz2 charset", b'{"email": "a@b.test"}', "application/json; charset=bz2"),
    ("base64 charset", b"eyJlbWFpbCI6ICJhQGIudGVzdCJ9", "application/json; charset=base64"),
    ("weird media type", b"{}", "application/json+evil; x=\x01"),
]
METHODS = ["get", "post", "put", "patch", "delete", "options", "head", "trace"]


def endpoint_paths() -> list[str]:
    paths = []
    for pattern in tenancy_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        paths.append("/api/v1/" + str(pattern.pattern))
    return paths


def concrete(path: str, alpha) -> str:
    return re.sub(r"<uuid:\w+>", str(alpha.membership("staff").pk), path)


def assert_error_shape(response, context="") -> dict:
    assert response["Content-Type"].startswith("application/json"), (context, response["Content-Type"])
    body = json.loads(response.content)
    assert isinstance(body, dict) and set(body) == {"error"}, (context, body)
    error = body["error"]
    assert set(error) == {"code", "message", "fields"}, (context, body)
    assert isinstance(error["code"], str) and re.fullmatch(r"[a-z_]+", error["code"]), (context, body)
    assert isinstance(error["message"], str) and error["message"], (context, body)
    assert isinstance(error["fields"], dict), (context, body)
    return body


@pytest.fixture
def admin(api, alpha):
    client = api(alpha.host)
    client.sign_in_token(alpha.email("org_admin"))
    return client


@pytest.mark.parametrize("path", endpoint_paths())
def test_no_bad_body_on_any_method_of_any_endpoint_yields_a_500(admin, alpha, path):
    url = concrete(path, alpha)
    problems = []
    for method in METHODS:
        for name, body, content_type in BAD_BODIES:
            kwargs = {"data": body, "headers": admin.headers}
            if content_type:
                kwargs["content_type"] = content_type
            response = admin.client.generic(method.upper(), url, **kwargs)
            context = f"{method.upper()} {url} [{name}]"
            if response.status_code >= 500:
                problems.append(f"{context}: {response.status_code} {response.content[:200]!r}")
            elif response.status_code >= 400 and method != "head":
                try:
                    assert_error_shape(response, context)
                except AssertionError as exc:
                    problems.append(f"{context}: bad error shape {exc}")
            if url.endswith("/auth/logout") and response.status_code == 204:
                admin.sign_in_token(alpha.email("org_admin"))  # that body signed us out: sign in again
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "header,value",
    [
        ("X-Purpose-Of-Use", "x" * 16_000),
        ("X-Purpose-Of-Use", "treatment\x00"),
        ("X-Purpose-Of-Use", "tr\u00e9atment\u00ff"),
        ("X-Purpose-Of-Use", ""),
        ("X-Request-ID", "r" * 10_000),
        ("X-Request-ID", "../../etc/passwd\nInjected: 1"),
        ("Accept", "text/html"),
        ("Accept", "application/xml;q=1, */*;q=0"),
        ("Accept-Language", "x" * 5000),
        ("Cookie", "sessionid=" + "a" * 4000 + "; csrftoken=\x7f"),
        ("Cookie", "sessionid=../../etc/passwd"),
        ("Authorization", "Basic " + "QUJD" * 1000),
        ("Authorization", "Bearer " + "tmk_" + "\u00e9" * 90),
        ("Content-Length", "-1"),
    ],
)
def test_odd_headers_never_yield_a_500(admin, alpha, header, value):
    for path in ("/api/v1/auth/me", "/api/v1/memberships", "/api/v1/portal/branding"):
        response = admin.get(path, **{header: value})
        assert response.status_code < 500, (path, response.status_code, response.content[:300])
        if response.status_code >= 400:
            assert_error_shape(response, path)
        assert len(response.content) < 10_000, "nothing sent is echoed back at length"


# -- specific answers ------------------------------------------------------------------------------------


def test_malformed_json_is_400_malformed_json(admin):
    body = assert_error_shape(admin.post("/api/v1/memberships", '{"email": '))
    assert body["error"]["code"] == "malformed_json"


def test_deeply_nested_json_is_400_not_a_crash(admin):
    response = admin.post("/api/v1/memberships", "[" * 100_000 + "]" * 100_000)
    assert response.status_code == 400
    assert assert_error_shape(response)["error"]["code"] == "malformed_json"


def test_a_lone_surrogate_is_400_not_an_encoding_crash(admin, api, alpha):
    response = admin.post(
        "/api/v1/memberships", '{"email": "a@b.test", "role": "staff", "display_name": "\\ud800"}'
    )
    assert response.status_code == 400, response.content
    response = api(alpha.host).post("/api/v1/auth/tokens", '{"email": "a@b.test", "password": "\\udfff"}')
    assert response.status_code == 400, response.content
    # A proper pair is a character like any other.
    response = admin.post(
        "/api/v1/memberships",
        '{"email": "pair@b.test", "role": "staff", "display_name": "\\ud83d\\ude00 ok"}',
    )
    assert response.status_code == 202 and response.json()["display_name"] == "\U0001f600 ok"  # an invitation


def test_a_body_over_the_limit_is_413(admin):
    response = admin.post(
        "/api/v1/memberships", {"email": "a@b.test", "role": "staff", "display_name": "x" * 2_000_000}
    )
    assert response.status_code == 413
    assert assert_error_shape(response)["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("charset", ["zlib", "rot13", "bz2", "base64", "utf-16", "latin-1"])
def test_json_must_be_utf8(admin, charset):
    response = admin.client.generic(
        "POST",
        "/api/v1/memberships",
        data=b'{"email": "a@b.test", "role": "staff"}',
        content_type=f"application/json; charset={charset}",
        headers=admin.headers,
    )
    assert response.status_code == 415, response.content
    assert_error_shape(response)


def test_json_declared_as_utf8_is_fine(admin):
    for i, charset in enumerate(("UTF-8", "utf8", "utf-8")):
        response = admin.client.generic(
            "POST",
            "/api/v1/memberships",
            data=f'{{"email": "cafe{i}@b.test", "role": "staff", "display_name": "Caf\u00e9 \u6771"}}'.encode(),
            content_type=f"application/json; charset={charset}",
            headers=admin.headers,
        )
        assert response.status_code == 202, response.content
        assert response.json()["display_name"] == "Caf\u00e9 \u6771"


def test_wrong_content_type_is_415(admin):
    response = admin.client.post(
        "/api/v1/memberships",
        data="email=a@b.test&role=staff",
        content_type="application/x-www-form-urlencoded",
        headers=admin.headers,
    )
    assert response.status_code == 415
    assert assert_error_shape(response)["error"]["code"] == "unsupported_media_type"


def test_wrong_method_is_405(admin):
    response = admin.delete("/api/v1/memberships")
    assert response.status_code == 405
    assert assert_error_shape(response)["error"]["code"] == "method_not_allowed"
    response = admin.post("/api/v1/auth/csrf")
    assert response.status_code == 405
    assert assert_error_shape(response)["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/nope",
        "/api/v2/memberships",
        "/api/v1/memberships/",
        "/nope",
        "/static/nope.js",
        "/api/v1/auth/login/../../x",
        "/%00",
        "/api/v1/memberships/%E2%80%AE",
    ],
)
def test_unknown_urls_are_404_json(admin, path):
    response = admin.get(path)
    assert response.status_code == 404, (path, response.status_code)
    assert assert_error_shape(response)["error"]["code"] in ("not_found",)


def test_validation_errors_name_their_fields(admin, api, alpha):
    response = admin.post(
        "/api/v1/memberships", {"email": "not an email", "role": "wizard", "display_name": "x" * 500}
    )
    body = assert_error_shape(response)
    assert response.status_code == 400 and body["error"]["code"] == "invalid_request"
    assert set(body["error"]["fields"]) == {"email", "role", "display_name"}
    assert all(isinstance(v, list) and v for v in body["error"]["fields"].values())

    response = admin.patch(
        "/api/v1/organization",
        {"primary_color": "red", "idle_timeout_minutes": 0, "logo_url": "javascript:alert(1)"},
    )
    body = assert_error_shape(response)
    assert set(body["error"]["fields"]) == {"primary_color", "idle_timeout_minutes", "logo_url"}

    response = api(alpha.host).post("/api/v1/auth/login", {"password": PASSWORD})
    assert assert_error_shape(response)["error"]["fields"].keys() == {"email"}


def test_a_non_object_body_is_400_with_a_message(admin):
    for body in ("[]", "1", '"x"', "null", "true"):
        response = admin.post("/api/v1/memberships", body)
        assert response.status_code == 400, (body, response.content)
        assert assert_error_shape(response)["error"]["message"]


def test_nul_characters_are_refused_before_the_database(admin):
    response = admin.patch("/api/v1/organization", {"name": "Alpha\x00Clinic", "display_name": "\x00"})
    body = assert_error_shape(response)
    assert response.status_code == 400 and {"name", "display_name"} <= set(body["error"]["fields"])


def test_a_handled_error_rolls_back_the_requests_transaction_but_an_auth_failure_does_not(clinics):
    """A view that raises halfway leaves none of its writes (ATOMIC_REQUESTS), as with DRF's own handler;
    an authentication failure keeps what authentication did (the idle session's sign-out: see test_auth)."""
    from django.db import connection, transaction
    from rest_framework.exceptions import AuthenticationFailed, ValidationError

    from tenancy.authentication import SessionExpired
    from tenancy.errors import ApiError, api_exception_handler

    for exc in (ValidationError({"x": ["bad"]}), ApiError("conflict", "No.", 409)):
        with transaction.atomic():
            assert api_exception_handler(exc, {}).status_code in (400, 409)
            assert connection.needs_rollback
            connection.set_rollback(False)
    for exc in (AuthenticationFailed("no", code="invalid_token"), SessionExpired()):
        with transaction.atomic():
            assert api_exception_handler(exc, {}).status_code == 401
            assert not connection.needs_rollback


# -- schema and docs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["alpha.localhost", "nobody-serves-this.localhost", "testserver"])
def test_the_openapi_schema_lists_every_endpoint_on_any_host(api, clinics, host):
    response = api(host).get("/api/v1/schema/?format=json")
    assert response.status_code == 200, response.content[:500]
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    documented = set(schema["paths"])
    expected = {
        "/api/v1/" + re.sub(r"<uuid:(\w+)>", r"{\1}", str(p.pattern))
        for p in tenancy_urls.urlpatterns
        if p.name != "auth-csrf"
    }
    assert expected <= documented, expected - documented
    yaml = api(host).get("/api/v1/schema/")
    assert yaml.status_code == 200 and b"openapi: 3." in yaml.content


class _Assets(HTMLParser):
    def __init__(self):
        super().__init__()
        self.scripts: list[tuple[str | None, str]] = []
        self.links: list[str] = []
        self._in_script: str | None = None
        self._script_body = ""
        self._inline_handlers: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._inline_handlers += [k for k in attrs if k.startswith("on")]
        if tag == "script":
            self._in_script, self._script_body = attrs.get("src") or "", ""
        elif tag == "link" and attrs.get("href"):
            self.links.append(attrs["href"])

    def handle_data(self, data):
        if self._in_script is not None:
            self._script_body += data

    def handle_endtag(self, tag):
        if tag == "script" and self._in_script is not None:
            self.scripts.append((self._in_script or None, self._script_body.strip()))
            self._in_script = None


def test_the_docs_page_has_a_strict_csp_and_loads_only_our_own_scripts(api, clinics):
    client = api("nobody-serves-this.localhost")
    response = client.get("/api/v1/docs/")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    csp = response["Content-Security-Policy"]
    directives = dict((d.split()[0], d.split()[1:]) for d in csp.split(";") if d.strip())
    assert directives["script-src"] == ["'self'"]
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert directives["frame-ancestors"] == ["'none'"] and directives["object-src"] == ["'none'"]

    page = _Assets()
    page.feed(response.content.decode())
    assert page.scripts, "the docs page loads its scripts"
    assert not page._inline_handlers
    for src, inline in page.scripts:
        assert src and not inline, "no inline script: the CSP would block it"
        assert src.startswith("/") and not src.startswith("//"), f"{src} is not served by us"
        asset = client.get(src)
        assert asset.status_code == 200, src
        assert "javascript" in asset["Content-Type"], (src, asset["Content-Type"])
        if src.startswith("/static/"):
            assert b"".join(asset.streaming_content if asset.streaming else [asset.content])
    for href in page.links:
        assert href.startswith("/static/") and not href.startswith("//"), f"{href} is not served by us"
        assert client.get(href).status_code == 200, href


def test_no_docs_page_pulls_from_a_cdn_or_runs_inline_script(api, clinics):
    from django.urls import get_resolver

    client = api("testserver")
    for pattern in get_resolver().url_patterns:
        route = str(pattern.pattern)
        if not route.startswith("api/v1/docs"):
            continue
        response = client.get("/" + route)
        assert response.status_code == 200, route
        page = _Assets()
        page.feed(response.content.decode())
        assert all(src and not body for src, body in page.scripts), route
        assert "https://" not in response.content.decode() and "http://" not in response.content.decode(), (
            route
        )
