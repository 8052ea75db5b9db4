"""Over HTTP, one organization's portal never reaches, confirms or counts another organization's data.

Every attack here runs as a real signed-in client of clinic alpha against clinic beta's objects, hosts and
accounts, through the full middleware, DRF authentication and row-level security stack.
"""

from __future__ import annotations

import uuid

import pytest

from tenancy.models import Membership
from tenancy.services import ensure_member
from tests.conftest import PASSWORD, in_context

pytestmark = pytest.mark.django_db


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.content)
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "fields"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def call(client, method: str, path: str, body=None):
    return client.get(path) if method == "get" else getattr(client, method)(path, body)


@pytest.fixture
def alpha_admin(api, alpha):
    client = api(alpha.host)
    client.sign_in_token(alpha.email("org_admin"))
    return client


# -- another organization's object by id -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "patch"])
def test_another_orgs_membership_by_id_is_not_found_never_forbidden(alpha_admin, beta, method):
    target = beta.membership("practitioner")
    response = call(alpha_admin, method, f"/api/v1/memberships/{target.pk}", {"role": "org_admin"})
    body = assert_error(response, 404, "not_found")
    # Exactly what a uuid that exists nowhere gets: the answer cannot tell "elsewhere" from "nowhere".
    nowhere = call(alpha_admin, method, f"/api/v1/memberships/{uuid.uuid4()}", {"role": "org_admin"})
    assert nowhere.status_code == 404 and nowhere.json() == body
    with in_context(beta.org):
        assert Membership.objects.get(pk=target.pk).role == "practitioner"


@pytest.mark.parametrize(
    "bad_id",
    [
        "not-a-uuid",
        "1",
        "0",
        "' OR 1=1 --",
        "%00",
        "..%2F..%2Fetc%2Fpasswd",
        "A" * 5000,
        "00000000-0000-0000-0000-00000000000g",
        "{beta}x",
        "{beta_upper}",
    ],
)
@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_malformed_membership_ids_answer_404_json(alpha_admin, beta, bad_id, method):
    beta_id = str(beta.membership("org_admin").pk)
    bad_id = bad_id.replace("{beta}", beta_id).replace("{beta_upper}", beta_id.upper())
    response = call(alpha_admin, method, f"/api/v1/memberships/{bad_id}", {"role": "patient"})
    assert_error(response, 404, "not_found")


def test_a_member_without_the_admin_role_gets_the_same_answer_for_any_id(api, alpha, beta):
    """A practitioner is refused the membership endpoints whatever the id: the refusal says nothing of it."""
    client = api(alpha.host)
    client.sign_in_token(alpha.email("practitioner"))
    own = client.get(f"/api/v1/memberships/{alpha.membership('staff').pk}")
    other = client.get(f"/api/v1/memberships/{beta.membership('staff').pk}")
    nowhere = client.get(f"/api/v1/memberships/{uuid.uuid4()}")
    assert_error(own, 403, "permission_denied")
    assert own.json() == other.json() == nowhere.json() and other.status_code == nowhere.status_code == 403


# -- credentials carried to another organization's host ---------------------------------------------------


def test_alphas_bearer_token_means_nothing_on_betas_host(api, alpha, beta):
    token = api(alpha.host).sign_in_token(alpha.email("org_admin"))
    on_beta = api(beta.host)
    on_beta.headers["Authorization"] = f"Bearer {token}"
    for path in (
        "/api/v1/auth/me",
        "/api/v1/memberships",
        f"/api/v1/memberships/{beta.membership('staff').pk}",
        "/api/v1/organization",
    ):
        response = on_beta.get(path)
        assert_error(response, 401, "invalid_token")
        assert "beta" not in response.content.decode() and "alpha" not in response.content.decode()
    # ... and it still works where it was issued.
    on_alpha = api(alpha.host)
    on_alpha.headers["Authorization"] = f"Bearer {token}"
    assert on_alpha.get("/api/v1/auth/me").status_code == 200


def test_alphas_session_cookie_means_nothing_on_betas_host(api, alpha, beta):
    portal = api(alpha.host)
    response = portal.post("/api/v1/auth/login", {"email": alpha.email("org_admin"), "password": PASSWORD})
    assert response.status_code == 200, response.content
    on_beta = api(beta.host)
    on_beta.client.cookies = portal.client.cookies  # the same browser, pointed at the other clinic
    for path in ("/api/v1/auth/me", "/api/v1/memberships", "/api/v1/organization"):
        response = on_beta.get(path)
        assert response.status_code in (401, 403)
        assert_error(response, response.status_code)
        assert response.json()["error"]["code"] in ("not_authenticated", "permission_denied")
    response = on_beta.patch("/api/v1/organization", {"name": "Taken over"})
    assert response.status_code in (401, 403)
    assert on_beta.get("/api/v1/portal/branding").json()["display_name"] == "Beta Clinic"
    assert portal.get("/api/v1/auth/me").json()["organization"] == "alpha"


@pytest.mark.parametrize("endpoint", ["/api/v1/auth/login", "/api/v1/auth/tokens"])
def test_signing_in_where_one_is_not_a_member_looks_exactly_like_a_wrong_password(api, alpha, beta, endpoint):
    on_beta = api(beta.host)
    not_a_member = on_beta.post(endpoint, {"email": alpha.email("practitioner"), "password": PASSWORD})
    wrong_password = on_beta.post(endpoint, {"email": beta.email("practitioner"), "password": PASSWORD + "x"})
    unknown = on_beta.post(endpoint, {"email": "nobody-at-all@example.test", "password": PASSWORD})
    assert not_a_member.status_code == wrong_password.status_code == unknown.status_code == 401
    assert not_a_member.content == wrong_password.content == unknown.content
    assert not_a_member.get("WWW-Authenticate") == wrong_password.get("WWW-Authenticate")
    assert "sessionid" not in not_a_member.cookies


# -- existence leaks ---------------------------------------------------------------------------------------


def test_adding_a_member_whose_email_is_known_elsewhere_reveals_nothing_about_them(alpha_admin, beta):
    """Whether an address already has an account in another clinic must not show in the answer."""
    elsewhere = alpha_admin.post(
        "/api/v1/memberships", {"email": beta.email("practitioner"), "role": "staff"}
    )
    fresh = alpha_admin.post("/api/v1/memberships", {"email": "brand-new@example.test", "role": "staff"})
    # Both are invitations (ADR 0013): nobody becomes a member, with or without an account, until they accept.
    assert elsewhere.status_code == fresh.status_code == 202, (elsewhere.content, fresh.content)
    a, b = elsewhere.json(), fresh.json()
    assert set(a) == set(b)
    for key in ("display_name", "role", "status"):
        assert a[key] == b[key], key
    text = elsewhere.content.decode()
    assert "beta practitioner" not in text.lower()
    assert (
        str(beta.membership("practitioner").pk) not in text and str(beta.user("practitioner").pk) not in text
    )
    # The member list shows the new member with nothing beta knows about them.
    listing = alpha_admin.get("/api/v1/memberships").content.decode()
    assert "beta practitioner" not in listing.lower()


def test_adding_an_existing_member_again_is_a_conflict_not_a_silent_role_change(alpha_admin, alpha):
    """Re-adding is refused: role changes go through PATCH (which refuses an admin demoting themself)."""
    response = alpha_admin.post("/api/v1/memberships", {"email": alpha.email("org_admin"), "role": "patient"})
    assert_error(response, 409, "already_member")
    response = alpha_admin.post(
        "/api/v1/memberships", {"email": alpha.email("staff").upper(), "role": "org_admin"}
    )
    assert_error(response, 409, "already_member")
    with in_context(alpha.org):
        assert Membership.objects.get(pk=alpha.membership("org_admin").pk).role == "org_admin"
        assert Membership.objects.get(pk=alpha.membership("staff").pk).role == "staff"


def test_member_list_pages_show_no_counts_and_no_other_orgs_rows(alpha_admin, alpha, beta):
    with in_context(alpha.org, role="platform"):
        for i in range(60):
            ensure_member(org=alpha.org, email=f"pager{i}@alpha.test", role="patient", password=None)
    with in_context(beta.org, role="platform"):
        for i in range(10):
            ensure_member(org=beta.org, email=f"pager{i}@beta.test", role="patient", password=None)
    with in_context(alpha.org):
        expected = set(Membership.objects.values_list("id", flat=True))
    assert len(expected) >= 65

    seen: list[str] = []
    path = "/api/v1/memberships"
    pages = 0
    while path:
        response = alpha_admin.get(path)
        assert response.status_code == 200, response.content
        body = response.json()
        assert set(body) == {"next", "previous", "results"}, "no count, no total, nothing but the page"
        seen += [row["id"] for row in body["results"]]
        assert all(not row["email"].endswith("@beta.test") for row in body["results"])
        pages += 1
        path = body["next"] and body["next"].split(alpha.host, 1)[1]
        if body["next"]:
            assert body["next"].startswith(f"http://{alpha.host}/")
    assert pages >= 2
    assert len(seen) == len(set(seen)) and {uuid.UUID(i) for i in seen} == expected


@pytest.mark.parametrize(
    "cursor", ["garbage", "cD0yMDI2", "bz05OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5", "%00", "=" * 300]
)
def test_a_tampered_cursor_is_a_clean_4xx_or_alphas_rows_only(alpha_admin, cursor):
    response = alpha_admin.get(f"/api/v1/memberships?cursor={cursor}")
    assert response.status_code in (200, 400, 404), response.content
    if response.status_code != 200:
        assert_error(response, response.status_code)
    else:
        assert all(not row["email"].endswith("@beta.test") for row in response.json()["results"])


# -- hosts ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/api/v1/portal/branding", "/api/v1/auth/login", "/api/v1/memberships", "/api/v1/auth/csrf", "/nope"],
)
def test_an_unknown_host_gets_404_unknown_host(api, path):
    response = api("nobody-serves-this.localhost").get(path)
    assert_error(response, 404, "unknown_host")
    response = api("nobody-serves-this.localhost").post(path, {"email": "a@b.test", "password": "x"})
    assert_error(response, 404, "unknown_host")


@pytest.mark.parametrize(
    "host", ["evil.example.com", "alpha.localhost.evil.example", "alpha.localhost:abc", "a b"]
)
def test_a_host_outside_allowed_hosts_gets_the_same_404(api, host):
    assert_error(api(host).get("/api/v1/portal/branding"), 404, "unknown_host")


@pytest.mark.parametrize(
    "host",
    [
        "alpha.localhost",
        "beta.localhost",
        "nobody-serves-this.localhost",
        "testserver",
        "localhost",
        "127.0.0.1",
    ],
)
def test_healthz_answers_on_any_allowed_host(api, clinics, host):
    response = api(host).get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_the_host_decides_the_branding_and_forged_host_headers_do_not(api, alpha, beta):
    response = api(alpha.host).get("/api/v1/portal/branding", **{"X-Forwarded-Host": beta.host})
    assert response.status_code == 200 and response.json()["organization"] == "alpha"
    assert api(f"{beta.host.upper()}.").get("/api/v1/portal/branding").json()["organization"] == "beta"
