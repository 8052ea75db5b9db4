"""Every error code a client can receive is an ErrorCode member, listed in one place and shown in the schema.

- each app's codes are defined once Django is ready (tenancy.errors.every_error_code), and a code defined twice
  is refused where it is defined;
- each has a one-line description and, unless it is a socket code, a 4xx or 5xx status that the errors raised
  with it default to;
- a bare string is refused by ApiError and its kin, and no call site in the runtime passes one;
- every code the tests assert on is a member;
- the OpenAPI schema's Error code is an enum of exactly the HTTP codes, each described.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rest_framework import exceptions

from tenancy.errors import (
    ApiError,
    ErrorCode,
    RecordedFailure,
    SocketErrorCode,
    TenancyCode,
    api_exception_handler,
    error_body,
    every_error_code,
    json_error,
)

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ("config", "tenancy", "clinic", "audit", "video")


def http_codes() -> list[ErrorCode]:
    return [code for code in every_error_code() if code.status is not None]


# -- one list -------------------------------------------------------------------------------------------------


def test_every_apps_codes_are_listed_once_django_is_ready():
    """In a fresh interpreter, so that no import made by another test can stand in for the apps' own."""
    script = (
        "import django; django.setup()\n"
        "from tenancy.errors import every_error_code\n"
        "print(sorted({type(code).__module__ + '.' + type(code).__name__ for code in every_error_code()}))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(
        sorted(
            [
                "clinic.errors.ClinicCode",
                "tenancy.errors.TenancyCode",
                "video.errors.SignallingCode",
                "video.errors.VideoCode",
            ]
        )
    )


def test_each_code_has_a_one_line_description_and_an_error_status():
    for code in every_error_code():
        assert code.description.strip() and "\n" not in code.description, code
        assert re.fullmatch(r"[a-z][a-z0-9_]*", code.value), code
        if isinstance(code, SocketErrorCode):
            assert code.status is None, code
        else:
            assert isinstance(code.status, int) and 400 <= code.status <= 599, code


def test_http_codes_are_unique_and_so_are_socket_codes():
    http = [code.value for code in http_codes()]
    socket = [code.value for code in every_error_code() if code.status is None]
    assert len(http) == len(set(http)) and len(socket) == len(set(socket))
    assert "not_found" in http and "not_found" in socket  # the socket says it too, with its own close code


def test_a_code_defined_twice_is_refused_where_it_is_defined():
    with pytest.raises(TypeError, match="'not_found' is defined twice"):

        class Again(ErrorCode):
            NOT_FOUND = ("not_found", 404, "Not found.")

    with pytest.raises(TypeError, match="'invalid_message' is defined twice"):

        class SocketAgain(SocketErrorCode):
            INVALID_MESSAGE = ("invalid_message", "Dropped.")

    with pytest.raises(TypeError, match="two names"):

        class Alias(ErrorCode):
            ONE = ("zz_alias", 400, "One.")
            TWO = ("zz_alias", 400, "The same.")

    # A refused class leaves none of its codes behind, not even the new ones.
    with pytest.raises(TypeError, match="'conflict' is defined twice"):

        class Partly(ErrorCode):
            FRESH = ("zz_fresh", 400, "New.")
            CONFLICT = ("conflict", 409, "Taken.")

    assert not {"zz_alias", "zz_fresh"} & {code.value for code in every_error_code()}


def test_a_code_without_a_description_or_an_error_status_is_refused():
    with pytest.raises(TypeError, match="description"):

        class Undescribed(ErrorCode):
            ZZ_BLANK = ("zz_blank", 400, " ")

    with pytest.raises(TypeError, match="status"):

        class NotAnError(ErrorCode):
            ZZ_OK = ("zz_ok", 200, "Fine.")


# -- no bare strings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda code: ApiError(code, "Message."),
        lambda code: RecordedFailure(code, "Message."),
        lambda code: json_error(code, "Message.", 404),
        lambda code: error_body(code, "Message."),
    ],
    ids=["ApiError", "RecordedFailure", "json_error", "error_body"],
)
def test_a_bare_string_or_a_socket_code_is_refused(make):
    from video.errors import SignallingCode

    for code in ("not_found", SignallingCode.NOT_FOUND):
        with pytest.raises(TypeError, match="ErrorCode member"):
            make(code)


def test_the_status_defaults_to_the_codes():
    assert ApiError(TenancyCode.CONFLICT, "Taken.").status_code == 409
    assert RecordedFailure(TenancyCode.INVALID_CREDENTIALS, "No.").status_code == 401
    assert json_error(TenancyCode.UNKNOWN_HOST, "Nobody here.").status_code == 404
    assert ApiError(TenancyCode.NOT_FOUND, "Gone.", 410).status_code == 410  # given, it wins
    body = error_body(TenancyCode.NOT_FOUND, "Gone.")
    assert body == {"error": {"code": "not_found", "message": "Gone.", "fields": {}}}
    assert type(body["error"]["code"]) is str


def test_a_drf_exception_without_a_code_of_ours_gets_its_statuss_code():
    """Never an unlisted code: DRF's own `authentication_failed` or `error` becomes the status's code."""
    for exc, status, code in (
        (exceptions.AuthenticationFailed("No."), 401, "not_authenticated"),
        (exceptions.AuthenticationFailed("No.", code=TenancyCode.INVALID_TOKEN), 401, "invalid_token"),
        (exceptions.ParseError("Bad JSON."), 400, "malformed_json"),
        (exceptions.NotAcceptable(), 406, "not_acceptable"),
        (exceptions.APIException("Broken."), 500, "internal_error"),
    ):
        response = api_exception_handler(exc, {})
        assert response is not None and response.status_code == status
        assert response.data["error"]["code"] == code


def _name(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _is_text(node: ast.expr) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def bare_codes(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for each place a code is written as a string instead of an ErrorCode member."""
    found = []
    takes_code = {"ApiError", "RecordedFailure", "json_error", "error_body", "Refused"}
    socket_methods = {"refuse", "error", "evicted"}  # the signalling consumer's own, not logger.error
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            on_self = (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id == "self"
            )
            named = _name(func) in takes_code or (on_self and _name(func) in socket_methods)
            if named and node.args and _is_text(node.args[0]):
                found.append((node.lineno, f"{_name(node.func)}({ast.unparse(node.args[0])}, ...)"))
            # DRF's ValidationError codes never reach a client: the handler answers invalid_request.
            if _name(node.func) != "ValidationError":
                for keyword in node.keywords:
                    if keyword.arg == "code" and _is_text(keyword.value):
                        found.append((node.lineno, f"code={ast.unparse(keyword.value)}"))
        elif isinstance(node, ast.Assign) and _is_text(node.value):
            if any(isinstance(t, ast.Name) and t.id == "default_code" for t in node.targets):
                found.append((node.lineno, f"default_code = {ast.unparse(node.value)}"))
        elif isinstance(node, ast.Dict):
            keys = {k.value: v for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant)}
            if "code" in keys and "message" in keys and _is_text(keys["code"]):
                found.append((node.lineno, f'{{"code": {ast.unparse(keys["code"])}, "message": ...}}'))
    return found


def test_no_code_is_written_as_a_bare_string_in_the_runtime():
    found = []
    for package in RUNTIME:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            tree = ast.parse(path.read_text(), str(path))
            found += [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in bare_codes(tree)]
    assert found == []


def test_the_scan_finds_bare_strings():
    source = """
raise ApiError("not_found", "Not found.", 404)
json_error(f"x_{y}", "m")
raise exceptions.AuthenticationFailed("No.", code="invalid_token")
class E(APIException):
    default_code = "mine"
await self.refuse("already_active", "Open elsewhere.", 4409)
logger.error("%s went wrong", what)
send_json({"type": "error", "code": "internal_error", "message": "Oops."})
raise ValidationError("Bad.", code="invalid")
"""
    assert [line for line, _ in bare_codes(ast.parse(source))] == [2, 3, 4, 6, 7, 9]


# -- every code the tests expect is a member -----------------------------------------------------------------


def asserted_codes(tree: ast.AST) -> set[str]:
    """Strings the tests compare an error's code with: `...["error"]["code"] == "x"` (or `in (...)`), a socket
    message's `(...)["code"] == "x"`, `assert_error(response, status, "x")` and `{"code": "x", "message": ...}`."""
    codes: set[str] = set()

    def strings(node: ast.expr) -> list[str]:
        items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        return [i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)]

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Subscript):
            left = node.left
            if not (isinstance(left.slice, ast.Constant) and left.slice.value == "code"):
                continue
            inner = left.value
            # `ev["type"]["code"]` and the like are FHIR codings, not errors.
            if isinstance(inner, ast.Subscript) and not (
                isinstance(inner.slice, ast.Constant) and inner.slice.value == "error"
            ):
                continue
            for comparator in node.comparators:
                codes.update(strings(comparator))
        elif isinstance(node, ast.Call) and _name(node.func) == "assert_error":
            given = node.args[2:3] + [k.value for k in node.keywords if k.arg == "code"]
            for value in given:
                codes.update(strings(value))
        elif isinstance(node, ast.Dict):
            keys = {k.value: v for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant)}
            if "code" in keys and "message" in keys:
                codes.update(strings(keys["code"]))
    return {code for code in codes if re.fullmatch(r"[a-z][a-z0-9_]*", code)}


def test_every_code_the_tests_expect_is_a_member():
    expected: set[str] = set()
    for path in sorted((ROOT / "tests").rglob("*.py")):
        expected |= asserted_codes(ast.parse(path.read_text(), str(path)))
    assert len(expected) >= 30  # the scan still finds the tests' assertions
    assert expected - {code.value for code in every_error_code()} == set()


# -- the schema -----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_schema_lists_every_http_code_with_its_status_and_description(api, clinics):
    response = api("alpha.localhost").get("/api/v1/schema/?format=json")
    assert response.status_code == 200
    code = json.loads(response.content)["components"]["schemas"]["Error"]["properties"]["error"][
        "properties"
    ]["code"]
    assert code["enum"] == [c.value for c in http_codes()]
    for c in http_codes():
        assert f"- `{c.value}` ({c.status}): {c.description}" in code["description"]
    assert "resume_rejected" not in code["enum"]  # a socket code (video/PROTOCOL.md), not an HTTP answer
