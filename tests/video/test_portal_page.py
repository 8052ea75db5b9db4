"""The video visit page: a branded shell under the strict CSP, its scripts and styles served from /static/."""

from __future__ import annotations

import re
import uuid
from html.parser import HTMLParser

import pytest
from django.test import Client

from tenancy.middleware import PAGE_CSP

pytestmark = [
    pytest.mark.django_db,
    # WhiteNoise looks for STATIC_ROOT (collectstatic's output), which tests do not build: files come from apps.
    pytest.mark.filterwarnings("ignore:No directory at"),
]

STATIC_FILES = {
    "/static/video/signal.js": "text/javascript",
    "/static/video/call.js": "text/javascript",
    "/static/video/visit.js": "text/javascript",
    "/static/video/visit.css": "text/css",
}


class PageParser(HTMLParser):
    """Collects what the CSP cares about: scripts, stylesheets, inline code and inline styles."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict] = []
        self.links: list[dict] = []
        self.inline_scripts = 0
        self.style_elements = 0
        self.style_attributes: list[str] = []
        self.event_handlers: list[str] = []
        self.title = ""
        self._in: str | None = None
        self.html_attrs: dict = {}
        self.body_attrs: dict = {}

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for name in attributes:
            if name == "style":
                self.style_attributes.append(tag)
            if name.startswith("on"):
                self.event_handlers.append(f"{tag}[{name}]")
        if tag == "script":
            self.scripts.append(attributes)
            self._in = "script"
        elif tag == "style":
            self.style_elements += 1
        elif tag == "link":
            self.links.append(attributes)
        elif tag == "title":
            self._in = "title"
        elif tag == "html":
            self.html_attrs = attributes
        elif tag == "body":
            self.body_attrs = attributes

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "script" and data.strip():
            self.inline_scripts += 1
        elif self._in == "title":
            self.title += data


def page(host: str, encounter: str | None = None):
    return Client(HTTP_HOST=host).get(f"/visit/{encounter or uuid.uuid4()}")


def parsed(response) -> PageParser:
    parser = PageParser()
    parser.feed(response.content.decode())
    return parser


def test_the_page_is_html_under_the_strict_csp(alpha):
    response = page(alpha.host)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert response["Content-Security-Policy"] == PAGE_CSP
    csp = dict(part.strip().split(" ", 1) for part in PAGE_CSP.split(";"))
    assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    assert "unsafe" not in PAGE_CSP
    assert response["X-Frame-Options"] == "DENY"
    assert response["Cache-Control"] == "no-store"
    assert "camera=(self)" in response["Permissions-Policy"]


def test_the_page_loads_only_static_scripts_and_styles_and_nothing_inline(alpha):
    doc = parsed(page(alpha.host))
    assert doc.scripts, "the page loads its module"
    for script in doc.scripts:
        assert script.get("src", "").startswith("/static/video/"), script
        assert script.get("type") == "module"
    stylesheets = [link for link in doc.links if link.get("rel") == "stylesheet"]
    assert stylesheets and all(link["href"].startswith("/static/video/") for link in stylesheets)
    assert doc.inline_scripts == 0
    assert doc.style_elements == 0
    assert doc.style_attributes == []
    assert doc.event_handlers == []


def test_the_page_is_branded_for_the_host(alpha, beta):
    alpha_doc, beta_doc = parsed(page(alpha.host)), parsed(page(beta.host))
    assert alpha.org.branding["display_name"] in alpha_doc.title
    assert beta.org.branding["display_name"] in beta_doc.title
    assert alpha_doc.title != beta_doc.title
    assert alpha_doc.html_attrs["data-primary"] == alpha.org.primary_color
    assert alpha_doc.html_attrs["data-accent"] == alpha.org.accent_color


def test_the_page_reveals_nothing_about_the_encounter_or_its_patient(alpha):
    """The same shell for any id (no oracle for which encounters exist), and no health information."""
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    one = page(alpha.host, first).content.decode().replace(first, "ID")
    other = page(alpha.host, second).content.decode().replace(second, "ID")
    assert one == other
    for patient in alpha.patients:
        for value in (patient.given_name, patient.family_name, patient.email, patient.health_card_number):
            assert value not in one
    assert parsed(page(alpha.host, first)).body_attrs["data-encounter"] == first


def test_unknown_host_and_bad_paths_are_refused(alpha):
    assert page("nowhere.localhost").status_code == 404
    assert Client(HTTP_HOST=alpha.host).get("/visit/not-an-id").status_code == 404
    refused = Client(HTTP_HOST=alpha.host).post(f"/visit/{uuid.uuid4()}")
    assert refused.status_code == 405 and refused["Allow"] == "GET, HEAD"
    assert refused.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(("path", "content_type"), sorted(STATIC_FILES.items()))
def test_the_static_files_are_served(alpha, path, content_type):
    response = Client(HTTP_HOST=alpha.host).get(path)
    assert response.status_code == 200
    assert response["Content-Type"].split(";")[0] == content_type
    assert response["X-Content-Type-Options"] == "nosniff"
    body = b"".join(response.streaming_content).decode() if response.streaming else response.content.decode()
    assert body.strip()
    if path.endswith(".js"):
        # Module imports stay on this origin; no HTML injection sinks, no eval.
        imports = re.findall(r"^import .* from '([^']+)';$", body, flags=re.MULTILINE)
        assert all(name.startswith("./") for name in imports), imports
        for sink in (
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ):
            assert sink not in body, f"{path} uses {sink}"


def test_the_page_references_what_it_serves(alpha):
    """Every /static/ URL the page or its modules name exists."""
    client = Client(HTTP_HOST=alpha.host)
    doc = parsed(page(alpha.host))
    urls = [s["src"] for s in doc.scripts] + [link["href"] for link in doc.links]
    visit = b"".join(client.get("/static/video/visit.js").streaming_content).decode()
    urls += ["/static/video/" + name[2:] for name in re.findall(r"from '(\./[^']+)'", visit)]
    assert set(urls) >= {"/static/video/visit.js", "/static/video/signal.js", "/static/video/call.js"}
    for url in urls:
        assert client.get(url).status_code == 200, url


def test_the_page_says_so_when_the_server_has_no_video_relay(alpha, settings):
    """Calls are relay-only, so without a TURN server video cannot connect. The page carries the message in its
    template (translatable; no inline script or style), hidden, and visit.js shows it once the credentials
    endpoint answers 503 `turn_unavailable`. The shell is the same with or without TURN: it tells a visitor
    who has not signed in nothing about the server."""
    settings.TURN_SHARED_SECRETS, settings.TURN_URLS = [], []
    without = page(alpha.host, "00000000-0000-0000-0000-000000000001").content.decode()
    found = re.search(r'<p class="banner" id="turn-missing" role="alert" hidden>([^<]+)</p>', without)
    assert found, "no hidden #turn-missing message on the page"
    assert "not configured" in found.group(1) and "coturn" in found.group(1)
    settings.TURN_SHARED_SECRETS, settings.TURN_URLS = ["s" * 32], ["turn:127.0.0.1:3478?transport=udp"]
    assert page(alpha.host, "00000000-0000-0000-0000-000000000001").content.decode() == without
    client = Client(HTTP_HOST=alpha.host)
    visit = b"".join(client.get("/static/video/visit.js").streaming_content).decode()
    assert "$('turn-missing').hidden = false" in visit and "'turn_unavailable'" in visit
