"""Fault injection against real processes: the client API, the database, clients and
shutdown misbehave; the service keeps serving, loses nothing and leaks nothing.

Its services log at DEBUG and every project they serve carries distinctive
credentials: after each test, none may be in an answer it received or in a log line
written while it ran (`no_secret_leaks`).
"""

import itertools
import json
import re
import signal
import socket
import struct
import threading
import time

import psycopg2
import pytest
import requests

from conftest import FAST, READER_PASSWORD
from support import EventStream, Service, TcpProxy, metric, wait_for

pytestmark = pytest.mark.e2e

SECRET = {
    "bearer": "fault-bearer-Tq83Zk",
    "key": "fault-apikey-Wm27Xc",
    "user": "fault-user-Hb51",
    "password": "fault-pass-Ny64Rd",
    "url_user": "fault-urluser-Pj72",
    "url_password": "fault-urlpass-Gs95Le",
}
ANSWERS: list[requests.Response] = []   # the answers of the test under way
LOGS: list[str] = []                    # logs of the services the test under way stopped


@pytest.fixture(scope="module")
def faulty(pg):
    service = Service({"DATABASE_URL": pg.reader_url, **FAST, "LOG_LEVEL": "DEBUG"})
    yield service
    service.stop()


def assert_no_secret(logs: str, answers: list[requests.Response]) -> None:
    for secret in [*SECRET.values(), READER_PASSWORD]:
        assert secret not in logs, f"{secret} is in a log line"
        for answer in answers:
            assert secret not in answer.text and secret not in str(answer.headers)
    assert not re.search(r"Bearer \S|Basic [A-Za-z0-9+/=]{8}", logs)


@pytest.fixture(autouse=True)
def no_secret_leaks(faulty):
    """Whatever a test did: no credential in its answers or in the log lines of its time."""
    ANSWERS.clear()
    LOGS.clear()
    start = len(faulty.logs())
    yield
    assert_no_secret("\n".join([*LOGS, faulty.logs()[start:]]), ANSWERS)


@pytest.fixture
def own_service(pg):
    """A service of a test's own, for worker-wide figures; its logs join the check."""
    started = []

    def start(database_url=None, **env):
        service = Service({"DATABASE_URL": database_url or pg.reader_url, **FAST,
                           "LOG_LEVEL": "DEBUG", **env})
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
        LOGS.append(service.logs())


_kinds = itertools.cycle(["bearer", "api_key", "basic", "userinfo"])


def secret_project(pg, upstream, statuses=None, **columns):
    """A project whose client API wants one of the credentials above, in rotation."""
    kind = next(_kinds)
    base = upstream.url
    auth = {}
    if kind == "bearer":
        auth = {"auth_type": "bearer", "credentials": {"token": SECRET["bearer"]}}
    elif kind == "api_key":
        auth = {"auth_type": "api_key", "credentials": {"header": "X-Key", "key": SECRET["key"]}}
    elif kind == "basic":
        auth = {"auth_type": "basic",
                "credentials": {"username": SECRET["user"], "password": SECRET["password"]}}
    else:
        base = base.replace("http://", f"http://{SECRET['url_user']}:{SECRET['url_password']}@")
    slug = pg.add_project(pg.unique_slug("fault"), base_url=base, **{**auth, **columns})
    upstream.set_statuses(f"/{slug}", statuses or {"A1": "open", "A2": "held"})
    return slug


def get(service, slug, route="status", method="GET", **kwargs):
    response = requests.request(method, f"{service.url}/api/public/{slug}/{route}", timeout=10, **kwargs)
    ANSWERS.append(response)
    return response


def failure_lines(service, slug):
    return [line for line in service.logs().splitlines()
            if f"project {slug}: client API fetch failed" in line]


# --------------------------------------------------------------------------- client API faults

def set_route(**route):
    return lambda upstream, pg, slug: upstream.set(f"/{slug}", **route)


def set_base_url(template):
    def inject(upstream, pg, slug):
        url = template.format(port=upstream.port, **SECRET)
        pg.update_config(slug, api_base_url=url, status_endpoint="/status")
    return inject


BIG = b'{"units": [' + b'{"unit": "U", "status": "open"},' * 1_700_000 + b"{}]}"   # ~54 MB

FAULTS = {
    "http-400": (set_route(body=b"bad request", status=400), "http_error: HTTP 400"),
    "http-401-wrong-credentials": (set_route(body=b"who are you", status=401), "http_error: HTTP 401"),
    "http-404": (set_route(body=b"", status=404), "http_error: HTTP 404"),
    "http-500": (set_route(body=b"Traceback ...", status=500), "http_error: HTTP 500"),
    "http-503": (set_route(body=b"", status=503), "http_error: HTTP 503"),
    "malformed-json": (set_route(body=b'{"A1": "open", '), "bad_body: the body is not JSON"),
    "wrong-shape-list": (set_route(body=b"[1, 2, 3]"), "bad_body"),
    "wrong-shape-scalar": (set_route(body=b'"all open"'), "bad_body"),
    "wrong-shape-items": (set_route(body=b'{"units": [{"unit": "A1"}]}'), "bad_body"),
    "slower-than-timeout": (set_route(body=b"{}", delay=3), "timeout"),
    "trickling-body": (set_route(trickle=True), "timeout"),
    "50-mb-declared": (set_route(body=BIG), "too_large"),
    "50-mb-undeclared": (set_route(body=BIG, declare_length=False), "too_large"),
    "connection-refused": (set_base_url("http://{url_user}:{url_password}@127.0.0.1:1"), "connection"),
    "dns-failure": (set_base_url("http://{url_user}:{url_password}@status.nonexistent-host.invalid"), "connection"),
    "tls-error": (set_base_url("https://127.0.0.1:{port}"), "tls"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_client_api_faults_serve_the_last_good_snapshot(faulty, pg, upstream, fault):
    inject, expected = FAULTS[fault]
    slug = secret_project(pg, upstream, timeout=0.5)
    good = get(faulty, slug)
    assert good.status_code == 200

    inject(upstream, pg, slug)
    slowest = 0.0

    def served_stale_until(condition):
        nonlocal slowest
        started = time.monotonic()
        answer = get(faulty, slug)
        slowest = max(slowest, time.monotonic() - started)
        assert answer.status_code == 200 and answer.content == good.content
        return condition()

    # GETs are answered with the last good snapshot while the service notices the fault
    # (when its caches expire), then tries again and fails again.
    [line] = wait_for(lambda: served_stale_until(lambda: failure_lines(faulty, slug)))
    assert expected in line
    wait_for(lambda: served_stale_until(lambda: f"project {slug}: fetch failed again" in faulty.logs()))
    assert len(failure_lines(faulty, slug)) == 1     # once per streak, not per request
    assert slowest < 1.0                              # a fetch is bounded by its 0.5 s timeout


def test_no_detail_of_a_failure_reaches_the_public(faulty, pg, upstream):
    slug = secret_project(pg, upstream)
    upstream.set(f"/{slug}", b"ORA-00942 at db7.client.internal", status=500)
    answer = get(faulty, slug)
    assert answer.status_code == 503
    assert answer.json() == {"error": "statuses not available yet"}
    assert 1 <= int(answer.headers["Retry-After"]) <= 1


def test_a_hanging_client_api_does_not_slow_other_projects(faulty, pg, upstream):
    hanging = secret_project(pg, upstream, timeout=2)
    healthy = secret_project(pg, upstream)
    upstream.set(f"/{hanging}", b"{}", delay=3)
    waiting = threading.Thread(target=get, args=(faulty, hanging))
    waiting.start()
    wait_for(lambda: upstream.count(f"/{hanging}") == 1)   # the hanging fetch is under way
    latencies = []
    for _ in range(20):
        started = time.monotonic()
        assert get(faulty, healthy).status_code == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.03)
    waiting.join()
    assert max(latencies) < 0.25, latencies


def poll_gaps(upstream, slug, count, since):
    """Seconds between the project's next `count` + 1 requests after `since`."""
    wait_for(lambda: len([r for r in upstream.requests_to(f"/{slug}") if r.at > since]) > count)
    times = [r.at for r in upstream.requests_to(f"/{slug}") if r.at > since][:count + 1]
    return [b - a for a, b in itertools.pairwise(times)]


def test_the_poller_backs_off_and_recovers(faulty, pg, upstream):
    slug = secret_project(pg, upstream, interval=0.1)
    stream = EventStream(faulty.port, f"/api/public/{slug}/status/stream")
    stream.next_event("status_update")
    upstream.set(f"/{slug}", b"", status=500)
    gaps = poll_gaps(upstream, slug, 4, since=time.monotonic())
    # After the n-th failure: between 1 and 2, 2 and 4, then 4 and 8 intervals of 0.1 s
    # (the exact rule is tested in-process; here, that the real poller follows it).
    for gap, (low, high) in zip(gaps, [(0.1, 0.2), (0.2, 0.4), (0.4, 0.8), (0.4, 0.8)], strict=True):
        assert low * 0.95 <= gap <= high + 0.1, gaps

    upstream.set_statuses(f"/{slug}", {"A1": "sold"})
    assert stream.next_event("bulk_update", timeout=2).json()["updates"]["A1"] == "sold"
    gaps = poll_gaps(upstream, slug, 4, since=time.monotonic())
    assert all(gap < 0.2 for gap in gaps), gaps        # back to 0.1 s at once
    stream.close()


# --------------------------------------------------------------------------- database faults

@pytest.fixture
def db_proxy():
    proxy = TcpProxy(5432)
    yield proxy
    proxy.cut()


def test_the_database_going_away_and_coming_back(own_service, pg, upstream, db_proxy):
    url = pg.reader_url.replace("127.0.0.1:5432", f"127.0.0.1:{db_proxy.port}")
    service = own_service(database_url=url)
    known = secret_project(pg, upstream, interval=0.1)
    never_seen = secret_project(pg, upstream)
    assert get(service, known).status_code == 200
    watching = EventStream(service.port, f"/api/public/{known}/status/stream")
    watching.next_event("status_update")

    db_proxy.cut()

    def known_still_served():
        assert get(service, known).status_code == 200  # from its cached row, however old
        return metric(service.url, "public_status_db_errors_total") >= 1

    wait_for(known_still_served)                        # until its row expired and was tried
    assert get(service, never_seen).status_code == 503  # one never seen cannot be
    assert get(service, never_seen).headers["Retry-After"]
    assert requests.get(f"{service.url}/readyz", timeout=5).status_code == 503
    refused = EventStream(service.port, f"/api/public/{never_seen}/status/stream")
    assert refused.status == 200 and refused.headers["content-type"] == "text/event-stream"
    assert refused.next().retry > 0 and refused.next() is None and refused.closed
    again = EventStream(service.port, f"/api/public/{known}/status/stream")
    assert again.next_event("status_update") is not None   # new streams for known projects
    upstream.set_statuses(f"/{known}", {"A1": "sold", "A2": "held"})
    assert watching.next_event("bulk_update", timeout=3).json() == {"updates": {"A1": "sold"}}
    assert metric(service.url, "public_status_db_errors_total") >= 1

    db_proxy.restore()
    wait_for(lambda: requests.get(f"{service.url}/readyz", timeout=5).status_code == 200, timeout=5)
    wait_for(lambda: get(service, never_seen).status_code == 200, timeout=3)
    watching.close()
    again.close()


def test_a_multiplexed_stream_serves_its_known_projects_while_the_database_is_away(
        own_service, pg, upstream, db_proxy):
    """A project never seen cannot be looked up: the stream opens for the known ones
    (neither list names the other), and ends after about a `retry:` so that its client
    asks again; it resumes the known ones, and gets the other once the database is back."""
    url = pg.reader_url.replace("127.0.0.1:5432", f"127.0.0.1:{db_proxy.port}")
    service = own_service(database_url=url)
    known = secret_project(pg, upstream, interval=0.1)
    never_seen = secret_project(pg, upstream)
    assert get(service, known).status_code == 200
    db_proxy.cut()
    wait_for(lambda: get(service, known).status_code == 200
             and metric(service.url, "public_status_db_errors_total") >= 1)
    stream = EventStream(service.port, f"/api/public/status/stream?projects={known},{never_seen}")
    connected = stream.next_event("connected").json()
    assert connected["projects"] == [known] and connected["unknown"] == []
    assert stream.next_event("status_update").json()["project"] == known
    upstream.set_statuses(f"/{known}", {"A1": "sold", "A2": "held"})
    bulk = stream.next_event("bulk_update", timeout=3)
    assert bulk.json()["updates"] == {"A1": "sold"}
    last_id = bulk.id
    ending = [message for message in iter(lambda: stream.next(timeout=3), None)]
    assert stream.closed and ending and ending[-1].retry > 0       # sent on, to ask again
    db_proxy.restore()
    time.sleep(1.1)                                               # DB_RETRY_SECONDS
    again = EventStream(service.port, f"/api/public/status/stream?projects={known},{never_seen}",
                        headers={"Last-Event-ID": last_id})
    connected = again.next_event("connected").json()
    assert connected["projects"] == [known, never_seen] and connected["resumed"][known] is True
    assert again.next_event("status_update").json()["project"] == never_seen
    again.close()


def test_broken_pooled_connections_are_replaced(own_service, pg, upstream):
    service = own_service()
    first = secret_project(pg, upstream)
    assert get(service, first).status_code == 200       # leaves a connection in the pool
    killed = pg.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = 'public-status' AND datname = current_database()")
    assert killed[0][0] >= 1
    second = secret_project(pg, upstream)
    assert get(service, second).status_code == 200      # not a 503: the dead one was dropped


# --------------------------------------------------------------------------- client faults

def test_a_reader_that_never_reads_does_not_delay_the_others(own_service, pg, upstream):
    service = own_service(SSE_PING_INTERVAL="0.01", DEFAULT_POLL_INTERVAL="0.05")
    units = [f"unit-{i:05d}" for i in range(20_000)]
    slug = secret_project(pg, upstream)
    upstream.set(f"/{slug}", bodies=[json.dumps({u: "open" for u in units}).encode(),
                                     json.dumps({u: "closed" for u in units}).encode()])

    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", service.port))
    stalled.sendall(f"GET /api/public/{slug}/status/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode())

    readers = [EventStream(service.port, f"/api/public/{slug}/status/stream") for _ in range(3)]
    arrivals = [[] for _ in readers]
    done = threading.Event()

    def read(index):
        while not done.is_set():
            message = readers[index].next(timeout=0.2)
            if message is not None and message.event in ("status_update", "bulk_update"):
                arrivals[index].append(message.at)

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(3)]
    for thread in threads:
        thread.start()
    wait_for(lambda: metric(service.url, "public_status_streams_dropped_total") == 1, timeout=20)
    assert metric(service.url, "public_status_open_streams") == 3
    dropped = time.monotonic()
    wait_for(lambda: all(len([t for t in times if t > dropped]) >= 3 for times in arrivals))
    done.set()
    for thread in threads:
        thread.join()
    for times in arrivals:
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) >= 10 and max(gaps) < 1.0, gaps
    stalled.settimeout(5)
    with pytest.raises((ConnectionResetError, TimeoutError)):
        while stalled.recv(1 << 20):          # what was sent, then the server's hang-up
            pass
        raise ConnectionResetError("closed")
    for reader in readers:
        reader.close()


def test_connection_storms_leave_nothing_behind(own_service, pg, upstream):
    service = own_service(SSE_PING_INTERVAL="30")
    slugs = [secret_project(pg, upstream) for _ in range(5)]
    assert get(service, slugs[0]).status_code == 200
    baseline = service.client_sockets()
    for round_ in range(10):
        streams = []
        for i in range(100):
            stream = EventStream(service.port, f"/api/public/{slugs[i % 5]}/status/stream")
            assert stream.next().event == "connected"
            streams.append(stream)
        for i, stream in enumerate(streams):
            if (i + round_) % 2:              # half of them hang up rudely (RST)
                stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stream.close()
    for name in ("open_streams", "watched_projects", "pollers"):
        wait_for(lambda name=name: metric(service.url, f"public_status_{name}") == 0, timeout=5)
    wait_for(lambda: service.client_sockets() <= baseline, timeout=5)
    assert get(service, slugs[1]).status_code == 200


def test_streams_beyond_the_cap_are_sent_away_to_retry(own_service, pg, upstream):
    service = own_service(MAX_STREAMS="3")
    slug = secret_project(pg, upstream)
    streams = [EventStream(service.port, f"/api/public/{slug}/status/stream") for _ in range(3)]
    for stream in streams:
        stream.next_event("status_update")
    refused = EventStream(service.port, f"/api/public/{slug}/status/stream")
    assert refused.status == 200 and refused.headers["content-type"] == "text/event-stream"
    message = refused.next(timeout=2)
    assert 250 <= message.retry <= 500 and message.data is None
    assert refused.next(timeout=2) is None and refused.closed
    assert metric(service.url, "public_status_streams_rejected_total") == 1
    streams.pop().close()
    wait_for(lambda: metric(service.url, "public_status_open_streams") == 2)
    accepted = EventStream(service.port, f"/api/public/{slug}/status/stream")
    assert accepted.next_event("status_update") is not None


# --------------------------------------------------------------------------- shutdown

def test_sigterm_ends_streams_finishes_requests_and_exits(own_service, pg, upstream):
    service = own_service(SSE_PING_INTERVAL="30")
    watched = secret_project(pg, upstream, interval=0.1)
    slow = secret_project(pg, upstream)
    upstream.set_statuses(f"/{slow}", {"A1": "open"}, delay=1.5)
    streams = [EventStream(service.port, f"/api/public/{watched}/status/stream") for _ in range(3)]
    for stream in streams:
        stream.next_event("status_update")
    in_flight = {}
    request = threading.Thread(target=lambda: in_flight.update(answer=get(service, slow)))
    request.start()
    idle = socket.create_connection(("127.0.0.1", service.port))   # a browser's idle keep-alive
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while not answer.endswith(b'{"status": "ok"}'):
        answer += idle.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200")
    wait_for(lambda: upstream.count(f"/{slow}") == 1)   # the slow request is in flight

    signalled = time.monotonic()
    service.process.send_signal(signal.SIGTERM)
    for stream in streams:
        while stream.next(timeout=3) is not None:
            pass
        assert stream.closed                      # the chunked body ended properly
        assert stream.sock.recv(1) == b""         # and the connection was closed
    streams_ended = time.monotonic() - signalled
    request.join()
    assert in_flight["answer"].status_code == 200
    idle.settimeout(5)
    assert idle.recv(1) == b""                    # the idle connection was let go
    assert service.process.wait(15) == 0
    exited = time.monotonic() - signalled
    polls_after = [r for r in upstream.requests_to(f"/{watched}") if r.at > signalled + 0.2]
    print(f"\nSIGTERM: streams ended after {streams_ended * 1000:.0f} ms, exit after {exited:.1f} s")
    assert streams_ended < 1.0
    assert exited < 10 and "graceful timeout" not in service.logs()
    assert polls_after == []



def test_a_connection_accepted_while_shutting_down_gets_an_answer_not_a_reset(start_service, slug):
    """gunicorn closes its listener at its next tick after SIGTERM: what it accepts until
    then is answered (a stream: sent away with a `retry:`), then closed."""
    service = start_service()
    service.process.send_signal(signal.SIGTERM)
    outcomes = []
    until = time.monotonic() + 2
    while time.monotonic() < until and len(outcomes) < 200:
        try:
            with socket.create_connection(("127.0.0.1", service.port), timeout=3) as sock:
                sock.sendall(f"GET /api/public/{slug}/status/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                answer = sock.recv(65536)
        except ConnectionRefusedError:
            break                                       # the listener is closed: fine
        except ConnectionResetError:
            answer = b"reset"
        outcomes.append(answer[:12])
        time.sleep(0.02)
    # The first may be let go unanswered: accepted before the worker heard SIGTERM, it
    # was still waiting for its head when every waiting connection was let go. The last
    # may be reset by the kernel: still in the listen queue when the listener closes (as
    # with any server). Between them, every one is answered.
    answered = [n for n, answer in enumerate(outcomes) if answer.startswith(b"HTTP/1.1 ")]
    assert len(answered) >= 3 and answered[0] <= 1, outcomes
    assert all(answer.startswith(b"HTTP/1.1 ") for answer in outcomes[answered[0]:-1]), outcomes
    assert service.process.wait(15) == 0


# --------------------------------------------------------------------------- bad input

def raw_request(port, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer:
                break
        return answer


@pytest.mark.parametrize("path", [
    "/api/public/x'%20OR%20'1'='1/status",
    "/api/public/x;DROP%20TABLE%20projects/status",
    "/api/public/../../etc/passwd/status",
    "/api/public/%2e%2e%2f%2e%2e%2fetc/status",
    "/api/public/caf%C3%A9/status",
    "/api/public/\u00e9\u00e8/status",
    "/api/public/" + "a" * 10_000 + "/status",
])
def test_hostile_paths(faulty, path):
    answer = raw_request(faulty.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    status = int(answer.split()[1])
    assert status in (400, 404, 414), answer[:200]
    if status == 404:
        assert b"no-store" in answer.lower() and b"application/json" in answer
    assert requests.get(f"{faulty.url}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("headers", [
    f"X-Big: {'b' * 70_000}\r\n",                           # over pywsgi's 64 KB line
    "".join(f"X-Many-{i}: x\r\n" for i in range(120)),      # over its 100 headers
])
def test_oversized_headers(faulty, pg, upstream, headers):
    slug = secret_project(pg, upstream)
    answer = raw_request(faulty.port, (f"GET /api/public/{slug}/status HTTP/1.1\r\nHost: x\r\n"
                                       f"{headers}\r\n").encode())
    assert int(answer.split()[1]) in (400, 431)
    assert get(faulty, slug).status_code == 200


def test_library_debug_lines_are_there_and_redacted(faulty, pg, upstream):
    """The check after each test means something: the libraries' DEBUG lines, which
    would carry URLs and headers, are in the log, with every credential redacted."""
    start = len(faulty.logs())
    for _ in range(4):                                 # every kind of credential
        slug = secret_project(pg, upstream)
        assert get(faulty, slug).status_code == 200
    logs = faulty.logs()[start:]
    assert "DEBUG" in logs and "urllib3" in logs
    assert_no_secret(logs, ANSWERS)


@pytest.fixture(autouse=True, scope="module")
def _database_kept_for(pg):
    """Keeps the admin connection alive across the module (pg_terminate_backend above
    must never hit the tests' own connection)."""
    assert isinstance(pg.conn, psycopg2.extensions.connection)
    yield


def test_a_database_that_accepts_and_never_answers_is_an_outage_not_a_hang(start_service):
    """Under psycogreen (wsgi.py) libpq's connect_timeout does not hold: the connect has a
    time limit of its own, so the outage is told (503, /readyz, the metric), not hidden
    behind requests that never end."""
    silent = socket.create_server(("127.0.0.1", 0))
    accepted = []
    threading.Thread(target=lambda: accepted.extend(silent.accept() for _ in range(50)), daemon=True).start()
    service = start_service(DATABASE_URL=f"postgresql://nobody@127.0.0.1:{silent.getsockname()[1]}/none",
                            DB_TIMEOUT="1", DB_POOL_SIZE="2")
    for path in ("/api/public/anything/status", "/readyz"):
        started = time.monotonic()
        answer = requests.get(f"{service.url}{path}", timeout=10)
        assert answer.status_code == 503 and time.monotonic() - started < 4   # libpq's 2 s floor
    assert metric(service.url, "public_status_database_up") == 0
    assert metric(service.url, "public_status_db_errors_total") >= 1
    silent.close()
