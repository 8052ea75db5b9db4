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
    from tenancy.errors import ApiError, TenancyCode, api_exception_handler

    for exc in (ValidationError({"x": ["bad"]}), ApiError(TenancyCode.CONFLICT, "No.")):
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


# -- strict requests (issue 11, finding 15) --------------------------------------------------------------
# A body carries exactly the fields the operation declares: an unknown one (a client's typo) is refused by
# name instead of silently dropped, and so is a read-only one or a value of the wrong JSON type. The
# representative endpoints span tenancy, clinic, audit and video; tenancy.strict is the one mechanism.


@pytest.fixture
def signed_in(api, alpha):
    def client(role: str):
        result = api(alpha.host)
        result.sign_in_token(alpha.email(role))
        return result

    return client


@pytest.fixture
def world(alpha):
    from tests.clinic.test_cross_org import build_world

    return build_world(alpha, "alpha")


def assert_refused(response, **fields) -> dict:
    """400 invalid_request naming exactly `fields` (name -> the expected messages)."""
    body = assert_error_shape(response)
    assert response.status_code == 400, response.content
    assert body["error"]["code"] == "invalid_request", body
    assert body["error"]["fields"] == fields, body
    return body


def test_an_unknown_field_is_refused_by_name_and_nothing_is_saved(admin, api, alpha):
    before = admin.get("/api/v1/organization").json()
    response = admin.patch("/api/v1/organization", {"display_name": "Renamed", "primary_colour": "#000000"})
    assert_refused(response, primary_colour=["Unknown field."])
    assert admin.get("/api/v1/organization").json() == before, "the valid field was not applied either"

    response = admin.post("/api/v1/memberships", {"email": "typo@alpha.test", "role": "staff", "rol": "x"})
    assert_refused(response, rol=["Unknown field."])

    # Signed out too: a sign-in with an extra field is refused before the credentials are checked.
    response = api(alpha.host).post(
        "/api/v1/auth/tokens", {"email": alpha.email("staff"), "password": PASSWORD, "remember_me": True}
    )
    assert_refused(response, remember_me=["Unknown field."])


def test_clinic_bodies_refuse_unknown_fields(signed_in, world):
    staff, doctor = signed_in("staff"), signed_in("practitioner")
    new_patient = {"given_name": "Ada", "family_name": "Tessel", "birth_date": "1980-02-03"}
    response = staff.post("/api/v1/patients", {**new_patient, "famly_name": "Tesel"})
    assert_refused(response, famly_name=["Unknown field."])
    assert staff.post("/api/v1/patients", new_patient).status_code == 201

    url = f"/api/v1/patients/{world.patient.pk}"
    phone = staff.get(url).json()["phone"]
    response = staff.patch(url, {"phone": "+1-555-0000", "telephone": "+1-555-0000"})
    assert_refused(response, telephone=["Unknown field."])
    assert staff.get(url).json()["phone"] == phone

    response = doctor.post(
        f"/api/v1/encounters/{world.encounter.pk}/notes", {"body": "Seen.", "signed": True}
    )
    assert_refused(response, signed=["Unknown field."])
    response = staff.post(
        f"/api/v1/patients/{world.patient.pk}/consents", {"purpose": "analytics", "expires": "x"}
    )
    assert_refused(response, expires=["Unknown field."])


def test_read_only_fields_are_refused_saying_so(admin, signed_in, world):
    from tenancy.strict import READ_ONLY_FIELD

    staff = signed_in("staff")
    url = f"/api/v1/patients/{world.patient.pk}"
    echoed = staff.get(url).json()  # a client that sends the resource back with one change
    response = staff.patch(url, {**echoed, "phone": "+1-555-1234"})
    assert_refused(
        response, id=[READ_ONLY_FIELD], created_at=[READ_ONLY_FIELD], has_portal_account=[READ_ONLY_FIELD]
    )
    assert staff.get(url).json()["phone"] == echoed["phone"]
    assert_refused(admin.patch("/api/v1/organization", {"slug": "beta"}), slug=[READ_ONLY_FIELD])


def test_values_of_the_wrong_json_type_are_refused_not_coerced(admin, signed_in, world):
    response = admin.post(
        "/api/v1/memberships", {"email": "types@alpha.test", "role": "staff", "display_name": 0}
    )
    assert_refused(response, display_name=["Must be a string."])
    response = admin.patch("/api/v1/organization", {"require_mfa": "yes", "idle_timeout_minutes": "30"})
    assert_refused(
        response, require_mfa=["Must be true or false."], idle_timeout_minutes=["Must be an integer."]
    )
    response = signed_in("staff").patch(f"/api/v1/patients/{world.patient.pk}", {"address": {"line": 5}})
    assert_refused(response, address={"line": ["Must be a string."]})
    # JSON Schema's integer admits 30.0, and so does the server.
    assert admin.patch("/api/v1/organization", {"idle_timeout_minutes": 30.0}).status_code == 200


def test_an_operation_without_a_body_refuses_one_instead_of_ignoring_it(signed_in, world):
    doctor = signed_in("practitioner")
    response = doctor.post("/api/v1/auth/logout", {"all_sessions": True})
    assert_refused(response, all_sessions=["Unknown field: this operation takes no request body."])
    assert doctor.get("/api/v1/auth/me").status_code == 200, "the refused sign-out did not happen"

    response = doctor.post(f"/api/v1/notes/{world.draft.pk}/sign", {"force": True})
    assert_refused(response, force=["Unknown field: this operation takes no request body."])
    assert doctor.get(f"/api/v1/notes/{world.draft.pk}").json()["status"] == "draft"
    response = doctor.post(f"/api/v1/notes/{world.draft.pk}/sign", "[]")
    assert response.status_code == 400
    assert "no request body" in assert_error_shape(response)["error"]["message"]

    # No body at all, or an empty object, is no body.
    assert doctor.post(f"/api/v1/notes/{world.draft.pk}/sign", {}).status_code == 200
    assert doctor.client.generic("POST", "/api/v1/auth/logout", headers=doctor.headers).status_code == 204


@pytest.mark.parametrize("body", ["[]", '[{"body": "x"}]', '"x"', "null", "1", "true"])
def test_a_body_that_is_not_a_json_object_is_refused_everywhere(admin, signed_in, world, body):
    doctor, staff = signed_in("practitioner"), signed_in("staff")
    for client, method, path in [
        (admin, "post", "/api/v1/memberships"),
        (admin, "patch", "/api/v1/organization"),
        (staff, "post", "/api/v1/patients"),
        (staff, "patch", f"/api/v1/patients/{world.patient.pk}"),
        (doctor, "patch", f"/api/v1/notes/{world.draft.pk}"),
        (doctor, "post", f"/api/v1/encounters/{world.encounter.pk}/end"),
    ]:
        response = getattr(client, method)(path, body)
        assert response.status_code == 400, (method, path, body, response.content)
        message = assert_error_shape(response)["error"]["message"]
        assert "JSON object" in message or "no request body" in message, (path, message)


@pytest.mark.parametrize(
    "value,status,code",
    [
        ("", 400, "invalid_purpose"),
        ("   ", 400, "invalid_purpose"),
        ("Treatment", 400, "invalid_purpose"),
        ("care", 400, "invalid_purpose"),
        ("treatment,emergency", 400, "invalid_purpose"),
        ("audit", 403, "purpose_not_permitted"),
    ],
)
def test_an_empty_or_unknown_purpose_header_is_a_clear_400(signed_in, value, status, code):
    for path in ("/api/v1/auth/me", "/api/v1/patients", "/api/v1/encounters"):
        response = signed_in("practitioner").get(path, **{"X-Purpose-Of-Use": value})
        body = assert_error_shape(response)
        assert (response.status_code, body["error"]["code"]) == (status, code), (path, value, body)
        if status == 400:
            assert set(body["error"]["fields"]) == {"X-Purpose-Of-Use"}
            assert "treatment" in body["error"]["fields"]["X-Purpose-Of-Use"][0]


def test_a_missing_purpose_header_is_the_roles_usual_purpose(signed_in):
    doctor = signed_in("practitioner")
    assert doctor.get("/api/v1/auth/me").json()["purpose_of_use"] == "treatment"
    assert doctor.get("/api/v1/auth/me", **{"X-Purpose-Of-Use": "emergency"}).json()["purpose_of_use"] == (
        "emergency"
    )


@pytest.mark.parametrize(
    "role,method,path",
    [
        (None, "delete", "/api/v1/patients"),
        (None, "put", "/api/v1/auth/me"),
        ("staff", "post", "/api/v1/audit/events"),
        ("patient", "delete", "/api/v1/organization"),
        ("auditor", "post", "/api/v1/video/turn-credentials"),
        ("practitioner", "patch", "/api/v1/encounters"),
    ],
)
def test_an_undeclared_method_is_405_for_everyone_with_allow(api, alpha, signed_in, role, method, path):
    """Before authentication and permissions: not a 401 or a 403 that depends on who asks."""
    client = signed_in(role) if role else api(alpha.host)
    response = client.client.generic(
        method.upper(), path, data=b"{}", content_type="application/json", headers=client.headers
    )
    assert response.status_code == 405, (role, method, path, response.content)
    assert assert_error_shape(response)["error"]["code"] == "method_not_allowed"
    allowed = {m.strip() for m in response["Allow"].split(",")}
    assert method.upper() not in allowed and "OPTIONS" in allowed


def test_a_query_parameter_given_twice_is_refused(signed_in, world):
    response = signed_in("auditor").get("/api/v1/audit/events?after_seq=1&after_seq=2")
    assert_refused(response, after_seq=["Given more than once; send it once."])
    encounter = world.encounter.pk
    response = signed_in("practitioner").get(
        f"/api/v1/video/turn-credentials?encounter={encounter}&encounter=x"
    )
    assert_refused(response, encounter=["Given more than once; send it once."])


# -- the schema tells the truth --------------------------------------------------------------------------


@pytest.fixture
def openapi(api, clinics) -> dict:
    response = api("alpha.localhost").get("/api/v1/schema/?format=json")
    assert response.status_code == 200
    return json.loads(response.content)


def operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", method, operation


def test_every_operation_documents_its_error_responses(openapi):
    from tenancy.models import PurposeOfUse

    error = {"$ref": "#/components/schemas/Error"}
    for label, method, operation in operations(openapi):
        responses = operation["responses"]
        expected = {"404", "406", "503"}
        signed_in = any("bearerToken" in requirement for requirement in operation.get("security", []))
        if signed_in:
            expected |= {"400", "401", "403"}
            purpose = [p for p in operation.get("parameters", []) if p["name"] == "X-Purpose-Of-Use"]
            assert len(purpose) == 1 and purpose[0]["in"] == "header", label
            assert sorted(purpose[0]["schema"]["enum"]) == sorted(PurposeOfUse.values), label
        if method in ("post", "put", "patch", "delete"):
            expected |= {"400", "409"}
        if "requestBody" in operation:
            expected |= {"400", "413", "415"}
        assert expected <= set(responses), (label, sorted(expected - set(responses)))
        for status, response in responses.items():
            if int(status) >= 400:
                assert response["content"]["application/json"]["schema"] == error, (label, status)
        assert "503" in responses and "Retry-After" in responses["503"]["headers"], label


def test_every_request_body_refuses_fields_it_does_not_declare(openapi):
    """Every input serializer is strict (tenancy.strict), so the schema says `additionalProperties: false`."""
    components = openapi["components"]["schemas"]
    bodies = 0
    for label, _method, operation in operations(openapi):
        for media in operation.get("requestBody", {}).get("content", {}).values():
            name = media["schema"]["$ref"].rsplit("/", 1)[1]
            assert components[name].get("additionalProperties") is False, (label, name)
            bodies += 1
    assert bodies >= 15


def test_the_error_schema_is_the_shape_the_server_sends(admin, openapi):
    import jsonschema

    components = openapi["components"]["schemas"]
    # The component, with the components beside it so that its "#/components/..." references resolve.
    schema = {**components["Error"], "components": {"schemas": components}}
    for response in (
        admin.post("/api/v1/memberships", {"email": "x", "role": "wizard", "nope": 1}),
        admin.patch("/api/v1/organization", {"address": {"line": 5}}),
        admin.delete("/api/v1/memberships"),
        admin.get("/api/v1/memberships/00000000-0000-0000-0000-000000000000"),
        admin.get("/api/v1/auth/me", **{"X-Purpose-Of-Use": ""}),
    ):
        assert response.status_code >= 400
        jsonschema.validate(json.loads(response.content), schema)


@pytest.mark.django_db(transaction=True)
def test_an_internal_error_on_a_connection_django_dropped_is_an_outage_not_a_500(rf):
    """Through PgBouncer a server lost during COMMIT reads "received 2 results from command 'COMMIT'"
    (InternalError); the ROLLBACK that follows fails too and Django drops the connection. That is the
    database going away (503 database_unavailable, Retry-After), seen in the PostgreSQL restart drill."""
    from django.db import InternalError, connection

    from tenancy.errors import server_error

    connection.ensure_connection()
    connection.close()  # what Atomic.__exit__ does when the rollback after a failed COMMIT fails as well
    try:
        raise InternalError("received 2 results from command 'COMMIT'")
    except InternalError:
        response = server_error(rf.post("/api/v1/encounters/x/notes"))
    assert response.status_code == 503
    assert json.loads(response.content)["error"]["code"] == "database_unavailable"
    assert response["Retry-After"]


@pytest.mark.django_db(transaction=True)
def test_an_internal_error_on_a_working_connection_stays_a_500(rf):
    """A genuine internal error (the connection still answers) is a bug to see, not an outage to retry."""
    from django.db import InternalError, connection

    from tenancy.errors import server_error

    connection.ensure_connection()
    try:
        raise InternalError("an internal error of the server's own")
    except InternalError:
        response = server_error(rf.get("/api/v1/patients"))
    assert response.status_code == 500
    assert json.loads(response.content)["error"]["code"] == "internal_error"
