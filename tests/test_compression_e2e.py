"""Compression end to end: the clients people use (Python's zlib on a raw socket, curl,
Node's `eventsource` package, headless Chromium's EventSource) each receive every event
as it is sent, gzip or plain, straight from the service and through nginx; a stream the
service ends ends as a whole gzip stream. Arrival times, compressed and plain, are
measured in the same run and printed."""

import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from browser import Browser
from support import EventStream, Nginx, wait_for

pytestmark = pytest.mark.e2e

NODE = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="module")
def setup(pg, upstream):
    """A service (compressing), nginx in front of it, and a project whose statuses a test
    changes with `change()`, which returns when the service has committed the change."""
    from conftest import FAST
    from support import Service

    service = Service({"DATABASE_URL": pg.reader_url, **FAST, "REFRESH_MIN_INTERVAL": "0",
                       "SSE_PING_INTERVAL": "5"})
    proxy = Nginx(service.port)
    slug = pg.add_project(pg.unique_slug("gzip"), base_url=upstream.url, interval=60)
    units = {f"{floor}{unit:02d}": "open" for floor in range(1, 16) for unit in range(1, 17)}
    upstream.set_statuses(f"/{slug}", units)
    flips = iter(range(10**6))

    def change(url: str = service.url) -> float:
        """Flip unit 101 and have the service at `url` fetch it; the time it began."""
        status = "closed" if next(flips) % 2 == 0 else "open"
        upstream.set_statuses(f"/{slug}", {**units, "101": status})
        started = time.time()
        assert requests.post(f"{url}/api/public/{slug}/status/refresh", timeout=5).ok
        return started

    yield service, proxy, slug, change
    proxy.stop()
    service.stop()


def via(setup, proxied: bool) -> tuple[int, str]:
    service, proxy, _, _ = setup
    return (proxy.port, proxy.url) if proxied else (service.port, service.url)


@pytest.mark.parametrize("proxied", [False, True], ids=["direct", "nginx"])
def test_a_python_zlib_reader_gets_each_event_as_it_is_sent(setup, proxied):
    _, _, slug, change = setup
    port, _ = via(setup, proxied)
    path = f"/api/public/{slug}/status/stream"
    packed = EventStream(port, path, headers={"Accept-Encoding": "gzip"})
    plain = EventStream(port, path)
    assert packed.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
    assert packed.headers["vary"] == plain.headers["vary"] == "Accept-Encoding"
    for stream in (packed, plain):
        assert stream.next_event("status_update") is not None
    snapshot_bytes = packed.wire_bytes, plain.wire_bytes
    changed_at = change()
    arrived = [stream.next_event("bulk_update", timeout=2) for stream in (packed, plain)]
    assert arrived[0].json() == arrived[1].json() == {"updates": {"101": arrived[0].json()["updates"]["101"]}}
    delays = [(time.time() - changed_at) - (time.monotonic() - message.at) for message in arrived]
    print(f"\nzlib reader ({'nginx' if proxied else 'direct'}): connect + status_update "
          f"{snapshot_bytes[0]:,} B gzip / {snapshot_bytes[1]:,} B plain; bulk_update after "
          f"{delays[0] * 1000:.1f} ms gzip / {delays[1] * 1000:.1f} ms plain")
    assert all(delay < 0.5 for delay in delays), delays
    assert snapshot_bytes[0] * 4 < snapshot_bytes[1]
    packed.close()
    plain.close()


def test_a_stream_the_service_ends_ends_as_a_whole_gzip_stream(start_service, slug):
    service = start_service()
    stream = EventStream(service.port, f"/api/public/{slug}/status/stream",
                         headers={"Accept-Encoding": "gzip"})
    stream.next_event("status_update")
    service.process.send_signal(signal.SIGTERM)
    last = None
    while (message := stream.next(timeout=5)) is not None:
        last = message
    assert stream.closed and last.retry is not None           # sent away, with its retry
    assert stream.gzip_ended                                   # trailer and all: a valid stream


def lines_of(process: subprocess.Popen, into: list) -> threading.Thread:
    """Read a process's stdout line by line, each with the time it arrived."""
    def read():
        for line in process.stdout:
            into.append((time.time(), line))
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("proxied", [False, True], ids=["direct", "nginx"])
def test_curl_compressed_gets_each_event_as_it_is_sent(setup, proxied):
    _, _, slug, change = setup
    _, base = via(setup, proxied)
    runs = {}
    for compressed in (True, False):
        command = ["curl", "-sS", "-N", *(["--compressed"] if compressed else []),
                   f"{base}/api/public/{slug}/status/stream"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        lines = []
        lines_of(process, lines)
        wait_for(lambda lines=lines: any("event: status_update" in line for _, line in lines))
        runs[compressed] = (process, lines)
    changed_at = change()
    delays = {}
    for compressed, (process, lines) in runs.items():
        arrival = wait_for(lambda lines=lines: next(
            (at for at, line in lines if "event: bulk_update" in line), None), timeout=2)
        delays[compressed] = arrival - changed_at
        process.terminate()
        assert process.wait(5) in (0, -signal.SIGTERM)
    print(f"\ncurl ({'nginx' if proxied else 'direct'}): bulk_update after "
          f"{delays[True] * 1000:.1f} ms --compressed / {delays[False] * 1000:.1f} ms plain")
    assert all(delay < 0.5 for delay in delays.values()), delays


def test_curl_compressed_reads_a_stream_to_its_valid_end(start_service, slug):
    service = start_service()
    process = subprocess.Popen(["curl", "-sS", "-N", "--compressed",
                                f"{service.url}/api/public/{slug}/status/stream"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    lines_of(process, lines)
    wait_for(lambda: any("event: status_update" in line for _, line in lines))
    service.process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0, process.stderr.read()      # curl checks the gzip end
    assert any(line.startswith("retry: ") for _, line in lines)


def node_listener(url: str, encoding: str = "gzip"):
    process = subprocess.Popen(["node", str(NODE / "listen.mjs"), url, encoding],
                               stdout=subprocess.PIPE, text=True, cwd=NODE)
    events = []

    def read():
        for line in process.stdout:
            events.append(json.loads(line))
    threading.Thread(target=read, daemon=True).start()
    return process, events


@pytest.mark.skipif(shutil.which("node") is None, reason="node is installed by make test")
@pytest.mark.parametrize("proxied", [False, True], ids=["direct", "nginx"])
def test_nodes_eventsource_gets_each_event_as_it_is_sent(setup, proxied):
    _, _, slug, change = setup
    _, base = via(setup, proxied)
    url = f"{base}/api/public/{slug}/status/stream"
    listeners = {encoding: node_listener(url, encoding) for encoding in ("gzip", "identity")}
    for _, events in listeners.values():
        wait_for(lambda events=events: any(e["event"] == "status_update" for e in events), timeout=10)
    changed_at = change()
    delays = {}
    for encoding, (process, events) in listeners.items():
        update = wait_for(lambda events=events: next(
            (e for e in events if e["event"] == "bulk_update"), None), timeout=2)
        delays[encoding] = update["at"] / 1000 - changed_at
        assert "101" in json.loads(update["data"])["updates"]
        process.terminate()
    print(f"\nnode eventsource ({'nginx' if proxied else 'direct'}): bulk_update after "
          f"{delays['gzip'] * 1000:.1f} ms gzip / {delays['identity'] * 1000:.1f} ms plain")
    assert all(delay < 0.5 for delay in delays.values()), delays


def stream_encodings(browser) -> dict[str, set[str]]:
    """Origin -> the Content-Encodings of the streams the page opened there (DevTools)."""
    seen: dict[str, set[str]] = {}
    for event in browser.events:
        if event["method"] == "Network.responseReceived":
            response = event["params"]["response"]
            if "/status/stream" in response["url"]:
                origin = response["url"].split("/api/")[0]
                headers = {name.lower(): value for name, value in response["headers"].items()}
                seen.setdefault(origin, set()).add(headers.get("content-encoding", ""))
    return seen


@pytest.mark.browser
def test_chromiums_eventsource_gets_each_event_gzip_direct_and_through_nginx(setup, start_service, pg):
    service, proxy, slug, change = setup
    plain = start_service(COMPRESSION="off", REFRESH_MIN_INTERVAL="0")
    delays = {}
    with Browser() as browser:
        browser.call("Network.enable")
        for name, base in (("gzip direct", service.url), ("gzip nginx", proxy.url),
                           ("plain direct", plain.url)):
            browser.goto(f"{base}/?project={slug}")
            browser.wait_for("document.getElementById('connection').dataset.state === 'live'")
            browser.wait_for("document.querySelectorAll('[data-unit]').length === 240")
            before = browser.evaluate("document.querySelector('[data-unit=\"101\"]').dataset.status")
            changed_at = change(plain.url if name.startswith("plain") else service.url)
            browser.wait_for(f"document.querySelector('[data-unit=\"101\"]').dataset.status !== '{before}'",
                             timeout=3)
            delays[name] = time.time() - changed_at
        encodings = stream_encodings(browser)
    print("\nChromium EventSource, tile changed after: " +
          ", ".join(f"{name} {delay * 1000:.0f} ms" for name, delay in delays.items()))
    assert encodings == {service.url: {"gzip"}, proxy.url: {"gzip"}, plain.url: {""}}, encodings
    assert all(delay < 1.0 for delay in delays.values()), delays
