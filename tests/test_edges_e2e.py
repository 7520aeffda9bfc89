"""The edge, probed as an attacker would: the real service under gunicorn (the Procfile's
command), real sockets on loopback. Connections that send nothing or send slowly,
oversized heads and endless bodies, floods of made-up slugs, cookies, configs no one
meant, and documents far larger than usual. Every loop is bounded."""

import itertools
import os
import selectors
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from support import EventStream, exchange, metric, seconds_until_closed, wait_for

pytestmark = pytest.mark.e2e


def connect(service) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    return sock


def healthz_seconds(service) -> float:
    started = time.monotonic()
    assert requests.get(f"{service.url}/healthz", timeout=10).status_code == 200
    return time.monotonic() - started


# --------------------------------------------------------------------------- idle and slow

def test_connections_that_send_nothing_are_closed(start_service):
    service = start_service(HEADER_TIMEOUT="0.5")
    socks = [connect(service) for _ in range(50)]
    waited = [seconds_until_closed(sock) for sock in socks]
    assert all(0.4 <= seconds <= 2.0 for seconds in waited[:1]), waited
    assert max(waited) <= 2.0, waited


def test_a_head_sent_slowly_is_cut_off_at_the_header_timeout(start_service):
    """A byte every 0.1 s never lets a read time out; the head's own deadline does."""
    service = start_service(HEADER_TIMEOUT="0.5")
    sock = connect(service)
    started = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    with pytest.raises(OSError):
        for _ in range(100):                                  # bounded: 10 s at most
            sock.sendall(b"X")
            time.sleep(0.1)
    assert 0.4 <= time.monotonic() - started <= 1.5


def test_an_idle_keep_alive_connection_lasts_the_keepalive_timeout(start_service):
    service = start_service(HEADER_TIMEOUT="0.3", KEEPALIVE_TIMEOUT="1")
    sock = connect(service)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while not answer.endswith(b'{"status": "ok"}'):
        answer += sock.recv(4096)
    assert 0.9 <= seconds_until_closed(sock) <= 2.5             # longer than a head may take


def test_idle_connections_go_first_near_the_connection_cap(start_service, pg, upstream):
    service = start_service(HEADER_TIMEOUT="30", KEEPALIVE_TIMEOUT="30", SSE_PING_INTERVAL="0.2",
                            extra_args=["--worker-connections", "300"])
    slug = pg.add_project(pg.unique_slug("cap"), base_url=upstream.url)
    slow = pg.add_project(pg.unique_slug("cap"), base_url=upstream.url)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    upstream.set_statuses(f"/{slow}", {"A1": "open"}, delay=2)
    streams = [EventStream(service.port, f"/api/public/{slug}/status/stream") for _ in range(20)]
    for stream in streams:
        stream.next_event("status_update")
    in_progress = {}
    getter = threading.Thread(target=lambda: in_progress.update(
        answer=requests.get(f"{service.url}/api/public/{slow}/status", timeout=10)))
    getter.start()
    wait_for(lambda: upstream.count(f"/{slow}") == 1)
    idle = [connect(service) for _ in range(400)]        # more than the worker may hold
    assert healthz_seconds(service) < 1.0                 # idle ones made room
    for stream in streams:                                # no stream was dropped for them
        assert stream.next_event("ping", timeout=2) is not None
    getter.join()
    assert in_progress["answer"].status_code == 200       # nor a request in progress
    for sock in idle:
        sock.close()


def test_sigterm_lets_half_sent_requests_go_at_once(start_service):
    service = start_service(HEADER_TIMEOUT="30")
    half_sent = [connect(service) for _ in range(300)]
    for sock in half_sent:
        sock.sendall(b"GET /api/public/x/status HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.2)                                       # let the worker read them
    signalled = time.monotonic()
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(15) == 0
    assert time.monotonic() - signalled < 4               # not the 20 s graceful timeout
    for sock in half_sent:
        sock.close()


def test_sigterm_does_not_wait_on_a_body_that_never_comes(start_service, pg, upstream):
    """A request that declared a body is answered, then its connection lingers for what
    the client still sends: at most HEADER_TIMEOUT, after SIGTERM too."""
    service = start_service(HEADER_TIMEOUT="1", DEFAULT_POLL_INTERVAL="60")
    slug = pg.add_project(pg.unique_slug("linger"), base_url=upstream.url)
    upstream.set_statuses(f"/{slug}", {"A1": "open"}, delay=1.5)
    sock = connect(service)
    sock.sendall(f"POST /api/public/{slug}/status/refresh HTTP/1.1\r\nHost: x\r\n"
                 "Content-Length: 5\r\n\r\n".encode())    # the 5 bytes never come
    wait_for(lambda: upstream.count(f"/{slug}") == 1)     # the request is in progress
    signalled = time.monotonic()
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(15) == 0
    assert time.monotonic() - signalled < 6               # not the 20 s graceful timeout
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")   # and it had its answer
    sock.close()


def test_a_304_says_no_length_and_every_answer_has_one_date(live):
    first = exchange(live, b"GET /board.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    etag = first.partition(b"\r\nETag: ")[2].partition(b"\r\n")[0]
    again = exchange(live, b"GET /board.js HTTP/1.1\r\nHost: x\r\nIf-None-Match: " + etag
                     + b"\r\nConnection: close\r\n\r\n")
    head = again.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 304") and b"\r\nContent-Length:" not in head
    healthz = exchange(live, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    for answer in (first, again, healthz):
        assert answer.partition(b"\r\n\r\n")[0].count(b"\r\nDate: ") == 1


# --------------------------------------------------------------------------- heads and bodies

def head_of(request_line: str = "GET /healthz HTTP/1.1", fields: int = 1, field_size: int = 20) -> bytes:
    """A request head: `fields` header lines, each `field_size` bytes with its CRLF."""
    lines = [request_line, "Host: x", "Connection: close"]
    lines += [f"X-F{n:03d}: " + "v" * (field_size - len(f"X-F{n:03d}: ") - 2) for n in range(fields - 2)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
def any_worker(start_service):
    """The service as the Procfile runs it (its edge: the one worker class it supports)."""
    return start_service()


@pytest.mark.parametrize(("head", "status"), [
    (head_of("GET /healthz?" + "q" * (4094 - len("GET /healthz? HTTP/1.1")) + " HTTP/1.1"), 200),
    (head_of("GET /healthz?" + "q" * (4095 - len("GET /healthz? HTTP/1.1")) + " HTTP/1.1"), 414),
    (head_of(field_size=8190, fields=10), 200),
    (head_of(field_size=8191, fields=10), 431),
    (head_of(fields=100), 200),
    (head_of(fields=101), 431),
], ids=["line-4094", "line-4095", "field-8190", "field-8191", "fields-100", "fields-101"])
def test_request_heads_are_bounded_as_gunicorns_defaults(any_worker, head, status):
    answer = exchange(any_worker, head)
    assert int(answer.split()[1]) == status, answer[:120]
    assert healthz_seconds(any_worker) < 1.0


def test_a_declared_large_body_is_refused_unread(any_worker):
    with connect(any_worker) as sock:
        sock.sendall(b"POST /api/public/x/status/refresh HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 10000000000\r\n\r\n")
        sock.settimeout(5)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:120]


def test_an_endless_chunked_body_is_not_read_forever(start_service, slug):
    service = start_service()
    sock = connect(service)
    sock.sendall(f"POST /api/public/{slug}/status/refresh HTTP/1.1\r\nHost: x\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    sent = 0
    chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
    started = time.monotonic()
    sock.settimeout(2)
    with pytest.raises(OSError):
        while time.monotonic() - started < 10:           # bounded: the server stops first
            sock.sendall(chunk)
            sent += len(chunk)
    assert time.monotonic() - started < 5
    assert sent < 20_000_000                              # what kernel buffers held, no more
    assert healthz_seconds(service) < 1.0


def test_head_on_the_stream_leaves_the_connection_usable(any_worker, slug):
    answer = exchange(any_worker, f"HEAD /api/public/{slug}/status/stream HTTP/1.1\r\n"
                                  "Host: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n"
                                  "Connection: close\r\n\r\n".encode())
    head, rest = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
    assert rest.startswith(b"HTTP/1.1 200 OK"), rest[:60]  # no stray body bytes between
    assert rest.endswith(b'{"status": "ok"}')


# --------------------------------------------------------------------------- floods

def flood(service, paths: list[str], concurrency: int = 500) -> list[int]:
    """GET every path, `concurrency` connections at a time; the status of each answer."""
    statuses = []
    selector = selectors.DefaultSelector()
    pending = iter(paths)
    for path in itertools.islice(pending, concurrency):
        _start(selector, service, path)
    deadline = time.monotonic() + 60
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1):
            sock, buffer = key.fileobj, key.data
            data = sock.recv(65536)
            buffer += data
            if data and b"\r\n\r\n" not in buffer:
                selector.modify(sock, selectors.EVENT_READ, buffer)
                continue
            statuses.append(int(buffer.split()[1]) if buffer else 0)
            selector.unregister(sock)
            sock.close()
            path = next(pending, None)
            if path is not None:
                _start(selector, service, path)
    return statuses


def _start(selector, service, path):
    sock = connect(service)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    selector.register(sock, selectors.EVENT_READ, b"")


def test_a_flood_of_unknown_slugs_is_no_database_outage(start_service, slug):
    """3,000 made-up slugs at once, through one pooled connection with a 0.5 s timeout:
    most lookups wait for the connection longer than that. Waiting is a crowd, not an
    outage: "service busy" for some, 404 for the rest, no database error, no outage
    logged, /readyz 200, and the project in use served all along: its row expires
    every 0.2 s, and a lookup of it waits once for a connection at most (then the cached
    row serves), so no answer of it takes longer than the flood itself and one wait."""
    service = start_service(DB_POOL_SIZE="1", DB_TIMEOUT="0.5")
    known = f"{service.url}/api/public/{slug}/status"
    assert requests.get(known, timeout=5).status_code == 200
    worst, known_statuses, stop = [0.0], [], threading.Event()

    def use_the_known_project():
        while not stop.is_set():
            started = time.monotonic()
            known_statuses.append(requests.get(known, timeout=20).status_code)
            worst[0] = max(worst[0], time.monotonic() - started)

    user = threading.Thread(target=use_the_known_project)
    user.start()
    started = time.monotonic()
    statuses = flood(service, [f"/api/public/made-up-{n}/status" for n in range(3000)], 3000)
    flood_seconds = time.monotonic() - started
    ready = requests.get(f"{service.url}/readyz", timeout=5).status_code
    stop.set()
    user.join()
    assert len(statuses) == 3000 and set(statuses) <= {404, 503}, set(statuses)
    assert statuses.count(404) > 0
    assert metric(service.url, "public_status_db_errors_total") == 0
    assert "database unavailable" not in service.logs()
    assert ready == 200
    assert set(known_statuses) == {200} and worst[0] < flood_seconds + 0.5, (worst, flood_seconds)
    busy = requests.get(f"{service.url}/api/public/made-up-0/status", timeout=5)
    assert busy.status_code == 404                      # remembered: no query this time


def test_no_cookie_travels_between_projects_or_piles_up(start_service, pg, upstream):
    service = start_service(DEFAULT_POLL_INTERVAL="0.1", MIN_POLL_INTERVAL="0.1")
    setter = pg.add_project(pg.unique_slug("cookie"), base_url=upstream.url)
    other = pg.add_project(pg.unique_slug("cookie"), base_url=upstream.url)
    # 90 new cookies an answer, and a session cookie: with the server's own two, 94
    # header fields, under http.client's limit of 100, so that every answer is taken.
    upstream.set_statuses(f"/{setter}", {"A1": "open"}, headers={
        "Set-Cookie": "session=s3cr3t; Path=/"}, cookies_per_answer=90)
    upstream.set_statuses(f"/{other}", {"A1": "open"})
    streams = [EventStream(service.port, f"/api/public/{slug}/status/stream") for slug in (setter, other)]
    for stream in streams:
        assert stream.next_event("status_update") is not None     # the answers were taken
    wait_for(lambda: upstream.count(f"/{setter}") >= 10 and upstream.count(f"/{other}") >= 10)
    assert metric(service.url, "public_status_upstream_requests_total", 'outcome="connection"') == 0
    cookies = [r.headers.get("Cookie") for r in upstream.seen if r.path in (f"/{setter}", f"/{other}")]
    assert cookies == [None] * len(cookies)
    for stream in streams:
        stream.close()


# --------------------------------------------------------------------------- configs

DEEP = "[" * 5000 + "]" * 5000
HOSTILE = {
    "interval-nan": {"interval": "NaN"},
    "interval-infinity": {"interval": "Infinity"},
    "timeout-nan": {"timeout": "NaN"},
    "timeout-minus-infinity": {"timeout": "-Infinity"},
    "credentials-5000-deep": {"auth_type": "bearer", "credentials": '{"token": ' + DEEP + "}"},
    "mapping-5000-deep": {"mapping": '{"sold": ' + DEEP + "}"},
    "credentials-an-array": {"auth_type": "bearer", "credentials": "[1, 2]"},
    "token-an-object": {"auth_type": "bearer", "credentials": {"token": {"nested": [1, {"x": None}]}}},
    "mapping-a-string": {"mapping": '"sold"'},
    "mapping-values-numbers": {"mapping": {"sold": 7}},
}


@pytest.mark.parametrize("columns", HOSTILE.values(), ids=HOSTILE.keys())
def test_an_unusable_config_is_503_and_a_stream_sent_away_never_500(live, pg, upstream, columns):
    slug = pg.add_project(pg.unique_slug("hostile"), base_url=upstream.url, **columns)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    for _ in range(3):
        answer = requests.get(f"{live.url}/api/public/{slug}/status", timeout=5)
        assert answer.status_code == 503 and answer.json() == {"error": "statuses not available yet"}
        stream = EventStream(live.port, f"/api/public/{slug}/status/stream")
        assert stream.status == 200 and stream.headers["content-type"] == "text/event-stream"
        assert stream.next().retry > 0 and stream.next() is None and stream.closed
    lines = [line for line in live.logs().splitlines()
             if f"project {slug}: integration config unusable" in line]
    assert len(lines) == 1, lines
    assert upstream.count(f"/{slug}") == 0
    assert "Traceback" not in live.logs()



def test_a_watched_project_survives_a_broken_config_and_resumes_when_fixed(start_service, pg, upstream):
    service = start_service()
    slug = pg.add_project(pg.unique_slug("mended"), base_url=upstream.url, interval=0.2)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    stream = EventStream(service.port, f"/api/public/{slug}/status/stream")
    stream.next_event("status_update")
    pg.update_config(slug, polling_interval_seconds="NaN", status_mapping=DEEP)
    wait_for(lambda: "integration config unusable" in service.logs())
    upstream.set_statuses(f"/{slug}", {"A1": "closed"})
    assert stream.next_event("ping", timeout=2) is not None        # still open, still alive
    pg.update_config(slug, polling_interval_seconds=0.2, status_mapping=None)
    assert stream.next_event("bulk_update", timeout=5).json() == {"updates": {"A1": "sold"}}
    assert metric(service.url, "public_status_pollers") == 1
    stream.close()


def test_a_tiny_polling_interval_is_floored(start_service, pg, upstream):
    service = start_service(MIN_POLL_INTERVAL="0.25")
    slug = pg.add_project(pg.unique_slug("tiny"), base_url=upstream.url, interval=0.001)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    stream = EventStream(service.port, f"/api/public/{slug}/status/stream")
    stream.next_event("status_update")
    since = time.monotonic()
    wait_for(lambda: len([r for r in upstream.requests_to(f"/{slug}") if r.at > since]) >= 5)
    times = [r.at for r in upstream.requests_to(f"/{slug}") if r.at > since]
    assert all(b - a >= 0.24 for a, b in itertools.pairwise(times)), times
    stream.close()


# --------------------------------------------------------------------------- large documents

def worker_cpu_seconds(service) -> float:
    stat = Path(f"/proc/{service.worker_pids()[-1]}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_unchanged_large_document_costs_no_parse(start_service, pg, upstream):
    units = {f"U{n:06d}": "open" for n in range(200_000)}          # about 3.4 MB
    service = start_service(MIN_POLL_INTERVAL="0.1")
    slug = pg.add_project(pg.unique_slug("large"), base_url=upstream.url, interval=0.2)
    upstream.set_statuses(f"/{slug}", units)
    stream = EventStream(service.port, f"/api/public/{slug}/status/stream", timeout=30)
    assert stream.next_event("status_update", timeout=30) is not None
    before, polled = worker_cpu_seconds(service), upstream.count(f"/{slug}")
    wait_for(lambda: upstream.count(f"/{slug}") >= polled + 10, timeout=30)
    polls = upstream.count(f"/{slug}") - polled
    per_poll = (worker_cpu_seconds(service) - before) / polls
    print(f"\nCPU per poll of an unchanged 200,000-unit document: {per_poll * 1000:.0f} ms")
    assert per_poll < 0.1
    stream.close()


def test_a_large_document_being_parsed_does_not_hold_the_worker(start_service, pg, upstream, slug):
    service = start_service()
    large = pg.add_project(pg.unique_slug("large"), base_url=upstream.url)
    upstream.set_statuses(f"/{large}", {f"U{n:06d}": "open" for n in range(200_000)})
    fetch = threading.Thread(target=requests.get, args=(f"{service.url}/api/public/{large}/status",),
                             kwargs={"timeout": 30})
    warm = f"{service.url}/api/public/{slug}/status"
    requests.get(warm, timeout=5)
    fetch.start()
    wait_for(lambda: upstream.count(f"/{large}") == 1)
    latencies = []
    while fetch.is_alive() and len(latencies) < 500:
        started = time.monotonic()
        requests.get(warm, timeout=5)
        latencies.append(time.monotonic() - started)
    fetch.join()
    latencies.sort()
    print(f"\nother project's GETs while 200,000 units were parsed: {len(latencies)}, "
          f"worst {latencies[-1] * 1000:.0f} ms")
    # Held by the parse, the worker would answer one GET when it ends, not many during it;
    # the worst of them is the machine's (three test files share two cores), not the parse's.
    assert len(latencies) >= 5 and latencies[len(latencies) // 2] < 0.1, latencies[-5:]
