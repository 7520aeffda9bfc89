"""End to end: the Procfile command (gunicorn, gevent worker) against the real
database and a real client API on loopback; streams read over raw sockets."""

import itertools
import json
import threading
import time

import pytest
import requests

from public_service import parse_event_id
from support import EventStream, metric, wait_for

pytestmark = pytest.mark.e2e



def version_after(event_id: str) -> str:
    """The id of the next version of the same epoch."""
    epoch, version = parse_event_id(event_id)
    return f"{epoch}-{version + 1}"


def open_stream(service, slug, **kwargs):
    return EventStream(service.port, f"/api/public/{slug}/status/stream", **kwargs)


def watch_new_project(service, pg, upstream, statuses, **columns):
    """A fresh project answering `statuses`, and a stream on it past its first snapshot."""
    slug = pg.add_project(pg.unique_slug(), base_url=upstream.url, **columns)
    upstream.set_statuses(f"/{slug}", statuses)
    stream = open_stream(service, slug)
    stream.next_event("status_update")
    return slug, stream


def test_stream_headers_as_received_on_the_wire(live, slug):
    stream = open_stream(live, slug)
    assert stream.status_line == "HTTP/1.1 200 OK"
    assert stream.headers["content-type"] == "text/event-stream"
    assert stream.headers["cache-control"] == "no-store"
    assert stream.headers["connection"] == "keep-alive"
    assert stream.headers["x-accel-buffering"] == "no"
    assert stream.headers["access-control-allow-origin"] == "*"
    assert stream.headers["transfer-encoding"] == "chunked"
    assert [name for name, _ in stream.header_list].count("Connection") == 1
    stream.close()


def test_http_1_0_clients_get_a_stream_until_close(live, slug):
    stream = open_stream(live, slug, version="1.0")
    assert stream.status == 200
    assert stream.headers["connection"] == "close"
    assert stream.next().event == "connected"
    assert stream.next().event == "status_update"
    stream.close()


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_http_1_0_clients_get_changes_unframed(live, pg, upstream, gzip):
    """A change is written to a waiting stream as its body goes: no chunk framing when
    the body ends with the connection."""
    slug = pg.add_project(pg.unique_slug(), base_url=upstream.url, interval=0.05)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    stream = open_stream(live, slug, version="1.0", headers={"Accept-Encoding": "gzip"} if gzip else None)
    assert stream.headers.get("content-encoding") == ("gzip" if gzip else None)
    assert stream.next_event("status_update") is not None
    for status, shown in (("held", "reserved"), ("closed", "sold")):
        upstream.set_statuses(f"/{slug}", {"A1": status})
        change = stream.next_event("bulk_update", 3)
        assert change is not None and change.json() == {"updates": {"A1": shown}}
    lines = stream.transcript.split("\n")
    assert all(line.startswith(("event: ", "data: ", "id: ", "retry: ")) for line in lines if line)
    stream.close()


def test_a_reader_that_pauses_gets_every_change_whole_and_in_order(live, pg, upstream):
    """Changes far bigger than the socket's buffers, to a reader that stops reading for a
    while: each is written in part while the stream waits, the rest by the stream once
    the reader reads again, and nothing is lost, doubled or cut into another."""
    units = [f"unit-{i:05d}" for i in range(20_000)]
    slug = pg.add_project(pg.unique_slug(), base_url=upstream.url, interval=0.05)
    upstream.set(f"/{slug}", bodies=[json.dumps(dict.fromkeys(units, status)).encode()
                                     for status in ("open", "closed")])
    stream = open_stream(live, slug, receive_buffer=4096, timeout=10)
    first = stream.next_event("status_update", 10)
    time.sleep(1.0)                                   # about twenty changes meanwhile
    epoch, version = parse_event_id(first.id)
    shown = set(first.json()["statuses"].values())
    for _ in range(25):
        change = stream.next_event("bulk_update", 10)
        assert change is not None and parse_event_id(change.id) == (epoch, version + 1)
        updates = change.json()["updates"]
        assert updates.keys() == set(units) and len(set(updates.values())) == 1
        assert set(updates.values()) != shown
        version, shown = version + 1, set(updates.values())
    assert metric(live.url, "public_status_streams_dropped_total") == 0
    stream.close()


def test_connected_then_the_full_snapshot(live, slug):
    stream = open_stream(live, slug)
    connected = stream.next()
    assert (connected.event, connected.retry, connected.json()) == (
        "connected", 250, {"project": slug, "resumed": False})
    assert connected.id is None
    update = stream.next()
    assert update.event == "status_update"
    assert update.json() == {"statuses": {"A101": "available", "A102": "reserved", "A103": "sold"}}
    assert parse_event_id(update.id) is not None
    stream.close()


def test_a_cached_snapshot_is_sent_at_once(live, slug):
    requests.get(f"{live.url}/api/public/{slug}/status", timeout=5)
    stream = open_stream(live, slug)
    connected = stream.next()
    update = stream.next()
    assert update.event == "status_update"
    assert update.at - connected.at < 0.05
    stream.close()


def test_a_change_upstream_arrives_as_bulk_update(live, slug, upstream):
    stream = open_stream(live, slug)
    first = stream.next_event("status_update")
    upstream.set_statuses(f"/{slug}", {"A101": "sold", "A102": "held", "A103": "closed"})
    change = stream.next_event("bulk_update", timeout=3)
    assert change.json() == {"updates": {"A101": "sold"}}
    assert version_after(first.id) == change.id
    upstream.set_statuses(f"/{slug}", {"A101": "sold", "A103": "closed"})
    gone = stream.next_event("bulk_update", timeout=3)
    assert gone.json() == {"updates": {"A102": "hidden"}}
    assert version_after(change.id) == gone.id
    stream.close()


def test_pings_keep_their_cadence(live, slug):
    stream = open_stream(live, slug)
    pings = []
    deadline = time.monotonic() + 2.4
    while time.monotonic() < deadline:
        message = stream.next(deadline - time.monotonic())
        if message is not None and message.event == "ping":
            pings.append(message)
    assert len(pings) >= 4
    gaps = [b.at - a.at for a, b in itertools.pairwise(pings)]
    assert all(0.35 < gap < 0.7 for gap in gaps), gaps
    for ping in pings:
        assert ping.id is None
        assert abs(ping.json()["time"] - time.time()) < 5
        assert isinstance(ping.json()["time"], int)
    stream.close()


def poll_gaps(upstream, slug, count, since=0.0):
    """Seconds between the project's next `count` polls after `since` (waiting for them)."""
    wait_for(lambda: len([r for r in upstream.requests_to(f"/{slug}") if r.at > since]) > count)
    times = [r.at for r in upstream.requests_to(f"/{slug}") if r.at > since][:count + 1]
    return [b - a for a, b in itertools.pairwise(times)]


def test_polling_follows_the_subscribers(live, pg, upstream):
    slug = pg.add_project(pg.unique_slug(), base_url=upstream.url)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    time.sleep(0.5)                                    # proving an absence takes a while:
    assert upstream.count(f"/{slug}") == 0            # nobody watches, nobody polls

    stream = open_stream(live, slug)
    stream.next_event("status_update")
    gaps = poll_gaps(upstream, slug, 4)
    assert all(0.19 <= gap <= 0.4 for gap in gaps), gaps   # every 0.2 s

    stream.close()
    closed_at = time.monotonic()
    time.sleep(0.6)                                    # three intervals without a poll:
    polls = upstream.requests_to(f"/{slug}")
    assert polls[-1].at - closed_at < 0.3              # it stopped with its last stream


def test_many_subscribers_share_one_poller(live, pg, upstream):
    slug = pg.add_project(pg.unique_slug(), base_url=upstream.url, interval=0.25)
    upstream.set_statuses(f"/{slug}", {"A1": "open", "A2": "open"})
    streams = [open_stream(live, slug) for _ in range(25)]
    for stream in streams:
        assert stream.next_event("status_update").json() == {
            "statuses": {"A1": "available", "A2": "available"}}
    gaps = poll_gaps(upstream, slug, 4, since=time.monotonic())
    assert all(gap >= 0.24 for gap in gaps), gaps      # one poller, not 25: never closer
    upstream.set_statuses(f"/{slug}", {"A1": "open", "A2": "held"})
    for stream in streams:
        assert stream.next_event("bulk_update", timeout=3).json() == {"updates": {"A2": "reserved"}}
        stream.close()


def test_forced_refresh_reaches_subscribers(live, pg, upstream):
    slug, stream = watch_new_project(live, pg, upstream, {"A1": "open"}, interval=60)
    upstream.set_statuses(f"/{slug}", {"A1": "closed"})
    sent = time.monotonic()
    response = requests.post(f"{live.url}/api/public/{slug}/status/refresh", timeout=5)
    assert response.json()["statuses"] == {"A1": "sold"}
    update = stream.next_event("bulk_update", timeout=2)
    assert update.json() == {"updates": {"A1": "sold"}}
    assert update.at - sent < 0.5
    assert upstream.count(f"/{slug}") == 2
    stream.close()


def concurrently(n, call):
    results = [None] * n
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_cache_misses_share_one_request(live, pg, upstream):
    slug = pg.add_project(pg.unique_slug(), base_url=upstream.url)
    upstream.set_statuses(f"/{slug}", {"A1": "open"}, delay=0.5)
    responses = concurrently(20, lambda: requests.get(f"{live.url}/api/public/{slug}/status", timeout=5))
    assert [r.status_code for r in responses] == [200] * 20
    assert {r.text for r in responses} == {responses[0].text}
    assert upstream.count(f"/{slug}") == 1


def test_concurrent_refreshes_share_one_fetch(live, pg, upstream):
    slug = pg.add_project(pg.unique_slug(), base_url=upstream.url)
    upstream.set_statuses(f"/{slug}", {"A1": "open"}, delay=0.5)
    responses = concurrently(10, lambda: requests.post(f"{live.url}/api/public/{slug}/status/refresh", timeout=5))
    assert [r.status_code for r in responses] == [200] * 10
    assert upstream.count(f"/{slug}") == 1
    late = requests.post(f"{live.url}/api/public/{slug}/status/refresh", timeout=5)
    assert late.status_code == 429
    assert late.headers["Retry-After"] == "1"


def test_unknown_project_is_404_before_any_stream(live):
    stream = open_stream(live, "no-such-project")
    assert stream.status == 404
    assert stream.headers["content-type"] == "application/json"
    assert stream.headers["cache-control"] == "no-store"


def test_the_first_snapshot_arrives_once_the_client_api_answers(live, pg, upstream):
    slug = pg.add_project(pg.unique_slug(), base_url=upstream.url, interval=0.1)
    upstream.set(f"/{slug}", b"down for maintenance", status=503)
    stream = open_stream(live, slug)
    assert stream.next().event == "connected"
    assert stream.next().event == "ping"             # open, waiting, alive
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    update = stream.next_event("status_update", timeout=5)
    assert update.json() == {"statuses": {"A1": "available"}}
    stream.close()


def test_streams_of_a_deactivated_project_end(live, pg, upstream):
    slug, stream = watch_new_project(live, pg, upstream, {"A1": "open"}, interval=0.1)
    pg.set_active(slug, False)
    while stream.next(timeout=3) is not None:
        pass
    assert stream.closed
    assert open_stream(live, slug).status == 404


def test_a_closed_client_is_unsubscribed_at_once(start_service, slug):
    """Pings every 30 s: only the socket watcher can notice the close this fast."""
    service = start_service(SSE_PING_INTERVAL="30")
    stream = open_stream(service, slug)
    stream.next_event("status_update")
    assert metric(service.url, "public_status_open_streams") == 1
    assert metric(service.url, "public_status_pollers") == 1
    stream.close()
    closed = time.monotonic()
    wait_for(lambda: metric(service.url, "public_status_open_streams") == 0, timeout=2, interval=0.002)
    delay = time.monotonic() - closed
    print(f"\ndisconnect noticed after {delay * 1000:.1f} ms")
    assert delay < 0.5
    assert metric(service.url, "public_status_pollers") == 0
    assert metric(service.url, "public_status_watched_projects") == 0


def test_a_refresh_joins_a_fetch_under_way_without_counting_against_the_limit(live, pg, upstream):
    slug = pg.add_project(pg.unique_slug(), base_url=upstream.url, interval=60)
    upstream.set_statuses(f"/{slug}", {"A1": "open"}, delay=0.5)
    refresh_url = f"{live.url}/api/public/{slug}/status/refresh"
    miss = threading.Thread(target=requests.get, args=(f"{live.url}/api/public/{slug}/status",),
                            kwargs={"timeout": 5})
    miss.start()
    wait_for(lambda: upstream.count(f"/{slug}") == 1)      # the miss's fetch is under way
    joined = requests.post(refresh_url, timeout=5)
    miss.join()
    assert joined.status_code == 200 and upstream.count(f"/{slug}") == 1
    upstream.set_statuses(f"/{slug}", {"A1": "closed"})
    claimed = requests.post(refresh_url, timeout=5)      # not 429: joining did not count
    assert claimed.status_code == 200 and claimed.json()["statuses"] == {"A1": "sold"}
    assert requests.post(refresh_url, timeout=5).status_code == 429
