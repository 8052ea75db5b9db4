"""Headless Chromium on the video visit page: a practitioner and a patient sign in, meet in the waiting room,
get into the call, survive a cut WebSocket, and the practitioner ends the visit.

Real pieces throughout: uvicorn serving config.asgi on a loopback port (the test database, the in-memory
channel layer), Debian's Chromium driven by Playwright with fake camera and microphone, and, when coturn is
installed, a local coturn the server hands credentials for, so the media assertions (a relay candidate pair on
both sides, bytes flowing, flowing again after the resume) run too. Without coturn only signalling is asserted.

Needs `pip install playwright` and `apt-get install chromium` (never `playwright install`: the browser is the
system's); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

import pytest

from clinic.models import Encounter
from tenancy.context import tenant_context
from tests.conftest import PASSWORD
from tests.tools import IN_CI
from tests.video.test_aiortc_call import uvicorn_server
from tests.video.test_signalling import committed, visit

# Outside CI a developer without a browser skips these; in CI (CI=true) a missing browser is a failure.
if os.environ.get("CI") == "true":
    import playwright.sync_api as playwright_api
else:
    playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--host-resolver-rules=MAP *.localhost 127.0.0.1",
]
ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = [
    pytest.mark.django_db(transaction=False),
    # Debian's Chromium missing on a developer's machine: skip. Under CI (.ci/run installs it) never skip, so a
    # missing browser fails the tests instead.
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and not IN_CI,
        reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def turn(tmp_path_factory):
    """A local coturn and the settings naming it, or None when coturn (or devstack.coturn) is not available, or when
    E2E_WITHOUT_TURN=1 asks for the signalling-only run."""
    if os.environ.get("E2E_WITHOUT_TURN") == "1":
        yield None
        return
    try:
        from devstack.coturn import prepare_local_turn, turnserver_binary
    except ImportError:
        yield None
        return
    if turnserver_binary() is None:
        yield None
        return
    secret = os.urandom(24).hex()
    server = prepare_local_turn(tmp_path_factory.mktemp("coturn-e2e"), [secret])
    server.start()
    try:
        yield {"TURN_SHARED_SECRETS": secret, "TURN_URLS": ",".join(server.urls()), "server": server}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def asgi_server(turn, tmp_path_factory):
    """uvicorn on a free loopback port with the test database's environment (devstack/launcher.py)."""
    log = tmp_path_factory.mktemp("uvicorn") / "server.log"
    turn_env = {k: v for k, v in (turn or {}).items() if k.startswith("TURN_")}
    with uvicorn_server(log, turn_env) as port:
        yield {"port": port, "log": log}


@pytest.fixture
def browser():
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


class Person:
    """One participant's browser context and page, with the page's console problems collected."""

    def __init__(self, browser, base: str, name: str):
        self.name = name
        self.context = browser.new_context(base_url=base, permissions=["camera", "microphone"])
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.problems.append(f"pageerror: {exc}"))
        self.page.on("dialog", lambda dialog: dialog.accept())

    def _console(self, message) -> None:
        text = message.text
        if "Content Security Policy" in text:
            self.problems.append(f"CSP: {text}")
        elif message.type == "error" and not text.startswith("Failed to load resource"):
            # (A 401 before signing in, or a missing favicon, is the browser logging an answer, not a fault.)
            self.problems.append(f"{message.type}: {text}")

    def sign_in(self, path: str, email: str) -> None:
        page = self.page
        page.goto(path)
        page.wait_for_selector("#view-signin:not([hidden])")
        page.fill("#signin-email", email)
        page.fill("#signin-password", PASSWORD)
        page.click("#signin-submit")

    def view(self) -> str:
        return self.page.evaluate("document.body.dataset.view")

    def wait_view(self, view: str, timeout: float = 15_000) -> None:
        self.page.wait_for_function("(v) => document.body.dataset.view === v", arg=view, timeout=timeout)

    def snapshot(self) -> dict:
        return self.page.evaluate("window.__call.snapshot()")

    def stats(self) -> dict:
        return self.page.evaluate("window.__call.stats()")

    def signal(self) -> dict:
        return self.page.evaluate(
            "({status: window.__signal.status, seq: window.__signal.seq, encounter: window.__signal.encounter,"
            " you: window.__signal.you})"
        )

    def wait(self, expression: str, timeout: float = 20_000) -> None:
        # A function, not an expression: Playwright polls an expression with eval(), which the page's CSP
        # (rightly) refuses; a function is compiled once over the DevTools protocol, outside the CSP.
        self.page.wait_for_function(f"() => ({expression})", timeout=timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.context.close()


NEGOTIATED = (
    "(() => { const s = window.__call && window.__call.snapshot();"
    " return s && s.state === 'in-call' && s.pc && s.pc.signalingState === 'stable'"
    " && s.pc.localDescription && s.pc.remoteDescription && s.negotiations > 0; })()"
)


def wait_media(person: Person, min_bytes: int, timeout: float = 60.0) -> dict:
    """Until the selected pair is relay on both ends, connected, and more than `min_bytes` arrived."""
    deadline = time.monotonic() + timeout
    stats: dict = {}
    while time.monotonic() < deadline:
        stats = person.stats()
        if (
            stats["connectionState"] == "connected"
            and stats["localCandidateType"] == "relay"
            and stats["remoteCandidateType"] == "relay"
            and stats["bytesReceived"] > min_bytes
        ):
            return stats
        time.sleep(0.25)
    pytest.fail(f"{person.name}: no relayed media within {timeout} s: {stats} / {person.snapshot()}")


def test_practitioner_and_patient_meet_survive_a_cut_socket_and_end_the_visit(
    clinics, asgi_server, turn, browser
):
    call = committed(visit)
    base = f"http://{call['host']}:{asgi_server['port']}"
    path = f"/visit/{call['encounter']}"
    slug = call["host"].split(".")[0]
    doctor = Person(browser, base, "practitioner")
    patient = Person(browser, base, "patient")
    try:
        # Signed out, the page is a sign-in form and nothing else.
        doctor.sign_in(path, f"dr@{slug}.test")
        doctor.wait_view("practitioner-waiting")
        assert doctor.signal()["you"]["role"] == "practitioner"

        patient.sign_in(path, f"pat@{slug}.test")
        patient.wait_view("patient-waiting")
        assert patient.signal()["you"] == {
            "user": call["patient"],
            "role": "patient",
            "polite": True,
            "admitted": False,
        }

        # The practitioner sees the patient in the waiting room and admits them.
        doctor.page.wait_for_selector(f"#waiting-list li[data-user='{call['patient']}']")
        # The practitioner's page reads the patient's name over the API (signed in, audited).
        doctor.page.wait_for_function(
            "() => document.querySelector('#waiting-list .waiting-name').textContent === 'Vi Deo'"
        )
        doctor.page.click(f"#waiting-list li[data-user='{call['patient']}'] [data-action='admit']")
        doctor.wait_view("call")
        patient.wait_view("call")
        doctor.wait(NEGOTIATED)
        patient.wait(NEGOTIATED)
        for person in (doctor, patient):
            snap = person.snapshot()
            assert snap["pc"]["iceTransportPolicy"] == "relay"
            assert snap["turn"] is bool(turn)
        assert patient.snapshot()["polite"] is True and doctor.snapshot()["polite"] is False
        assert doctor.signal()["encounter"]["status"] == "in-progress"

        if turn:
            before = {p.name: wait_media(p, 20_000) for p in (doctor, patient)}
            doctor.wait("document.querySelector('#quality').dataset.quality !== 'unknown'")
            for person in (doctor, patient):  # the fake camera's frames are decoded on the other side
                person.wait("document.querySelector('#remote-video').videoWidth > 0")
                assert not person.page.is_visible("#turn-missing")
        else:
            # No relay, no candidates: the page says the server has no relay configured and what to install
            # (the endpoint answered 503 turn_unavailable), and the visit goes on.
            for person in (doctor, patient):
                person.page.wait_for_selector("#turn-missing:not([hidden])")
                assert "install coturn" in person.page.inner_text("#turn-missing")
                assert not person.page.is_visible("#call-notice")

        # A second window of the same patient is told the visit is open elsewhere (and does not take it).
        other_tab = patient.context.new_page()
        other_tab.goto(path)
        other_tab.wait_for_function("() => document.body.dataset.view === 'message'")
        assert other_tab.is_visible("#takeover")
        other_tab.close()
        patient.wait(NEGOTIATED)
        assert patient.view() == "call"

        # The patient's WebSocket is cut: the page says so, reconnects and resumes the same visit.
        seq_before = patient.signal()["seq"]
        restarts_before = doctor.snapshot()["iceRestarts"]
        negotiations_before = doctor.snapshot()["negotiations"]
        started = time.monotonic()
        patient.page.evaluate(
            "window.__resumed = new Promise((resolve) =>"
            " window.__signal.addEventListener('reconnected', (e) => resolve(e.detail), { once: true }));"
            " window.__signal.drop();"
        )
        patient.page.wait_for_selector("#banner:not([hidden])", timeout=5_000)
        welcome = patient.page.evaluate("window.__resumed")
        resumed_after = time.monotonic() - started
        assert welcome["resumed"] is True
        assert welcome["encounter"]["id"] == call["encounter"]
        assert welcome["seq"] > seq_before
        patient.wait("window.__signal.status === 'open'")
        assert patient.view() == "call"
        assert patient.signal()["encounter"]["status"] == "in-progress"
        # restart_ice reached the practitioner, who is impolite: it restarted ICE, and both settled again.
        doctor.wait(f"window.__call.snapshot().iceRestarts > {restarts_before}" if turn else NEGOTIATED)
        doctor.wait(NEGOTIATED)
        patient.wait(NEGOTIATED)
        if turn:
            assert doctor.snapshot()["negotiations"] > negotiations_before  # the restart's offer and answer
        assert (
            doctor.snapshot()["generation"] == 1 and patient.snapshot()["generation"] == 1
        )  # same connections
        assert doctor.snapshot()["peerStatus"] == "connected"
        assert doctor.signal()["encounter"] == {"id": call["encounter"], "status": "in-progress"}
        media_after = None
        if turn:
            after = {
                p.name: wait_media(p, before[p.name]["bytesReceived"] + 20_000) for p in (doctor, patient)
            }
            media_after = time.monotonic() - started
            print(f"\nrelayed media before the cut: {before}\nand after the resume: {after}")
        print(
            f"\nsignalling resumed {resumed_after:.2f} s after the cut; "
            + (
                f"media flowing again after {media_after:.2f} s"
                if media_after
                else "no TURN: media not asserted"
            )
        )

        # Only the practitioner ends the visit; both pages say it is over.
        doctor.page.click("#end-visit")
        for person in (doctor, patient):
            person.wait_view("message")
            assert "ended" in person.page.inner_text("#message-title")

        def encounter_state():
            with tenant_context(org_id=call["org"].id, role="platform"):
                encounter = Encounter.objects.get(pk=call["encounter"])
                return encounter.status, encounter.documentation_required

        assert committed(encounter_state) == ("finished", False)
        assert doctor.problems == [] and patient.problems == []
    finally:
        doctor.close()
        patient.close()


def test_a_patient_who_reloads_the_page_rejoins_the_same_visit(clinics, asgi_server, turn, browser):
    """A reload is a fresh join, not a resume: the server replays the patient's earlier stream before the new
    welcome, which the client must not act on; the practitioner's page builds a new peer connection."""
    call = committed(visit)
    base = f"http://{call['host']}:{asgi_server['port']}"
    path = f"/visit/{call['encounter']}"
    slug = call["host"].split(".")[0]
    doctor = Person(browser, base, "practitioner")
    patient = Person(browser, base, "patient")
    try:
        doctor.sign_in(path, f"dr@{slug}.test")
        doctor.wait_view("practitioner-waiting")
        patient.sign_in(path, f"pat@{slug}.test")
        patient.wait_view("patient-waiting")
        doctor.page.click(f"#waiting-list li[data-user='{call['patient']}'] [data-action='admit']")
        doctor.wait(NEGOTIATED)
        patient.wait(NEGOTIATED)
        if turn:
            wait_media(patient, 10_000)

        patient.page.reload()
        patient.wait_view("call")  # the session cookie still signs the patient in; admitted already
        patient.wait(NEGOTIATED)
        doctor.wait("window.__call.snapshot().generation === 2")
        doctor.wait(NEGOTIATED)
        welcome = patient.signal()
        assert welcome["you"]["admitted"] is True
        assert welcome["encounter"] == {"id": call["encounter"], "status": "in-progress"}
        assert patient.snapshot()["generation"] == 1  # a new page: its first connection
        skipped = patient.page.evaluate("window.__signal.skippedOnJoin")
        print(f"\nthe rejoining page set aside {skipped} replayed messages from before its welcome")
        if turn:
            for person in (doctor, patient):
                wait_media(person, 10_000)
        assert doctor.view() == "call" and patient.view() == "call"
        assert doctor.problems == [] and patient.problems == []
    finally:
        doctor.close()
        patient.close()


def test_the_page_signed_out_shows_only_the_sign_in_form_and_refuses_a_wrong_password(
    clinics, asgi_server, browser
):
    call = committed(visit)
    base = f"http://{call['host']}:{asgi_server['port']}"
    person = Person(browser, base, "stranger")
    try:
        person.page.goto(f"/visit/{call['encounter']}")
        person.page.wait_for_selector("#view-signin:not([hidden])")
        assert person.page.evaluate("window.__signal === undefined")
        text = person.page.inner_text("body")
        assert "Vi" not in text.split() and "Deo" not in text.split()
        person.page.fill("#signin-email", f"pat@{call['host'].split('.')[0]}.test")
        person.page.fill("#signin-password", "not the password at all")
        person.page.click("#signin-submit")
        person.page.wait_for_selector("#signin-error:not([hidden])")
        assert person.view() == "signin"
        assert person.problems == []
    finally:
        person.close()


def test_someone_else_signed_in_gets_not_available(clinics, asgi_server, browser):
    call = committed(visit)
    slug = call["host"].split(".")[0]
    base = f"http://{call['host']}:{asgi_server['port']}"
    person = Person(browser, base, "other practitioner")
    try:
        person.sign_in(f"/visit/{call['encounter']}", f"dr2@{slug}.test")
        person.wait_view("message")
        assert "not available" in person.page.inner_text("#message-title")
    finally:
        person.close()
