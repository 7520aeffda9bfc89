"""The board runs no script but its own origin's (issue 17, point 2): `?api=` names where
the streams come from, never a script, and the page runs under the service's
Content-Security-Policy without breaking it. Headless Chromium against the real service."""

from __future__ import annotations

import socket
import threading
from urllib.parse import quote

import pytest
from board_pages import STATE, add_building

from browser import Browser

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

PWNED = b"window.pwned = 1;"
# Every CSP violation the page meets, recorded before any of its own scripts runs.
WATCH_CSP = """window.cspViolations = [];
document.addEventListener('securitypolicyviolation',
    (e) => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));"""
SCRIPTS = ("JSON.stringify(performance.getEntriesByType('resource')"
           ".filter(e => e.initiatorType === 'script').map(e => new URL(e.name).origin))")


class ForeignOrigin:
    """Another origin on loopback, as an attacker's link would name: it answers
    `/public-status.js` with a script that marks the page (`window.pwned`), and relays
    every other request to the service, so that a stream through it works."""

    def __init__(self, service_port: int):
        self.service_port = service_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.scripts_asked = 0
        self.relayed: list[str] = []                # the paths of requests passed on
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._open.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                client.close()
                return
            head += chunk
        path = head.split(b" ", 2)[1].decode("latin-1")
        if path.startswith("/public-status.js"):
            self.scripts_asked += 1
            client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/javascript\r\n"
                           b"Access-Control-Allow-Origin: *\r\nConnection: close\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(PWNED), PWNED))
            client.close()
            return
        self.relayed.append(path)
        service = socket.create_connection(("127.0.0.1", self.service_port))
        self._open.append(service)
        service.sendall(head)
        threading.Thread(target=self._pipe, args=(service, client), daemon=True).start()
        self._pipe(client, service)

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        for sock in self._open:
            sock.close()


@pytest.fixture
def browser():
    with Browser() as browser:
        browser.call("Page.enable")
        browser.call("Page.addScriptToEvaluateOnNewDocument", source=WATCH_CSP)
        yield browser


@pytest.fixture
def board(pg, upstream, start_service):
    """(the service, the slug of a 3 x 4 project it serves)"""
    slug, _ = add_building(pg, upstream)
    return start_service(), slug


def no_foreign_script(browser) -> None:
    """Once the board has its client (or a foreign script ran), that nothing foreign ran."""
    browser.wait_for("!!(window.board?.live || window.pwned)")
    assert browser.evaluate("typeof window.pwned") == "undefined"


def live_with_12_units(browser) -> None:
    assert browser.wait_for(f"{STATE} === 'live'")
    browser.wait_for("document.querySelectorAll('[data-unit]').length === 12")


@pytest.mark.parametrize("api", ["data:text/javascript,window.pwned=1//",
                                 "javascript:window.pwned=1//",
                                 "//127.0.0.1:9/", "not a url"])
def test_an_api_that_is_no_http_origin_is_ignored_and_said_so(board, browser, api):
    service, slug = board
    browser.goto(f"{service.url}/?project={slug}&api={quote(api, safe='')}")
    no_foreign_script(browser)
    live_with_12_units(browser)                     # from the board's own service
    assert set(browser.evaluate(SCRIPTS).strip("[]").split(",")) == {f'"{service.url}"'}
    assert not browser.evaluate("document.getElementById('notice').hidden")
    assert "ignored" in browser.evaluate("document.getElementById('notice').textContent")
    assert browser.evaluate("window.cspViolations.length") == 0


def test_an_api_on_another_origin_gets_the_streams_and_never_a_script(board, browser):
    service, slug = board
    foreign = ForeignOrigin(service.port)
    try:
        browser.goto(f"{service.url}/?project={slug}&api={quote(foreign.url, safe='')}")
        no_foreign_script(browser)
        assert foreign.scripts_asked == 0
        live_with_12_units(browser)                 # through the other origin
        assert any("/status/stream" in path for path in foreign.relayed), foreign.relayed
        assert set(browser.evaluate(SCRIPTS).strip("[]").split(",")) == {f'"{service.url}"'}
        assert browser.evaluate("document.getElementById('notice').hidden")
        assert browser.evaluate("window.cspViolations.length") == 0
    finally:
        foreign.close()


def test_the_board_runs_under_its_policy_which_allows_no_other_script(board, browser):
    """The service's Content-Security-Policy on the board: the board itself breaks none of
    it, and a script it did not name (inline, or from another origin) does not run."""
    service, slug = board
    browser.goto(f"{service.url}/?project={slug}")
    live_with_12_units(browser)
    assert browser.evaluate("window.cspViolations") == []
    browser.evaluate("""for (const src of [null, 'data:text/javascript,window.pwned=2', 'http://localhost:9/x.js']) {
        const script = document.createElement('script');
        if (src) script.src = src; else script.textContent = 'window.pwned = 1';
        document.head.append(script);
    }""")
    violations = browser.wait_for("window.cspViolations.length >= 3 && window.cspViolations")
    assert all(v.startswith("script-src") for v in violations), violations
    assert browser.evaluate("typeof window.pwned") == "undefined"
