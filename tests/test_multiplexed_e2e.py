"""The multiplexed stream (SPEC, "Several projects, one connection"), over raw sockets against
the real service: bad lists, unknown and deactivated projects, per-project resume by header
and by query, gzip, one ping, a slow consumer, shutdown, and resume on another instance
through Redis."""

import json
import signal
from urllib.parse import quote

import pytest
import requests

from support import EventStream, RedisServer, metric, wait_for

pytestmark = pytest.mark.e2e



def projects(pg, upstream, count: int, prefix: str = "mux", **settings) -> list[str]:
    slugs = []
    for n in range(count):
        slug = pg.add_project(pg.unique_slug(prefix), base_url=upstream.url, **settings)
        upstream.set_statuses(f"/{slug}", {"A1": "open", f"B{n}": "held"})
        slugs.append(slug)
    return slugs


def mux(service, slugs, headers=None, query: str = "", **options) -> EventStream:
    return EventStream(service.port, f"/api/public/status/stream?projects={','.join(slugs)}{query}",
                       headers=headers, **options)


def opened(service, slugs, **options):
    """A multiplexed stream past its `connected` and one status_update per project with a
    snapshot: (stream, connected data, {slug: statuses}, the last id)."""
    stream = mux(service, slugs, **options)
    assert stream.status == 200
    connected = stream.next_event("connected").json()
    snapshots, last_id = {}, None
    for _ in connected["projects"]:
        message = stream.next_event("status_update")
        data = message.json()
        snapshots[data["project"]] = data["statuses"]
        last_id = message.id
    return stream, connected, snapshots, last_id


@pytest.mark.parametrize("query", [
    "", "?projects=", "?projects=a,,b", "?projects=Not-A-Slug", "?projects=a%20b",
    "?projects=" + ",".join(f"p{n}" for n in range(21)), "?projects=" + "a" * 3000,
], ids=["none", "empty", "empty-item", "malformed", "space", "too-many", "too-long"])
def test_a_wrong_list_is_a_400_the_client_need_not_retry(live, query):
    answer = requests.get(f"{live.url}/api/public/status/stream{query}", timeout=5)
    assert answer.status_code == 400
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Cache-Control"] == "no-store"
    assert set(answer.json()) == {"error"}


def test_every_project_unknown_is_a_404_as_on_the_single_stream(live):
    answer = requests.get(f"{live.url}/api/public/status/stream?projects=no-such-a,no-such-b", timeout=5)
    assert answer.status_code == 404 and answer.json() == {"error": "project not found"}


def test_the_stream_carries_every_known_project_and_names_the_unknown(live, pg, upstream):
    a, b = projects(pg, upstream, 2)
    stream, connected, snapshots, _ = opened(live, [a, "no-such-project", b, a])
    assert stream.headers["content-type"] == "text/event-stream"
    assert stream.headers["x-accel-buffering"] == "no" and stream.headers["connection"] == "keep-alive"
    assert connected == {"projects": [a, b], "unknown": ["no-such-project"],
                         "resumed": {a: False, b: False}}
    assert snapshots == {a: {"A1": "available", "B0": "reserved"},
                         b: {"A1": "available", "B1": "reserved"}}
    upstream.set_statuses(f"/{b}", {"A1": "closed", "B1": "held"})
    change = stream.next_event("bulk_update")
    assert change.json() == {"project": b, "updates": {"A1": "sold"}}
    pings = [stream.next_event("ping"), stream.next_event("ping")]
    assert pings[1].at - pings[0].at >= 0.4                      # one ping for the stream
    stream.close()


def test_a_stream_of_several_projects_is_one_stream(start_service, pg, upstream):
    service = start_service()
    slugs = projects(pg, upstream, 3)
    stream, *_ = opened(service, slugs)
    assert metric(service.url, "public_status_open_streams") == 1
    assert metric(service.url, "public_status_watched_projects") == 3
    stream.close()
    wait_for(lambda: metric(service.url, "public_status_watched_projects") == 0)


@pytest.mark.parametrize("how", ["header", "query"])
def test_each_project_resumes_on_its_own(live, pg, upstream, how):
    a, b, c = projects(pg, upstream, 3)
    stream, _, _, last_id = opened(live, [a, b])
    stream.close()
    upstream.set_statuses(f"/{a}", {"A1": "closed", "B0": "held"})   # a moves on, b does not
    refreshed = requests.post(f"{live.url}/api/public/{a}/status/refresh", timeout=5)
    assert refreshed.json()["statuses"]["A1"] == "sold"
    headers = {"Last-Event-ID": last_id} if how == "header" else None
    query = "" if how == "header" else f"&lastEventId={quote(last_id)}"
    again = mux(live, [a, b, c], headers=headers, query=query)       # and c is new to it
    connected = again.next_event("connected").json()
    assert connected["resumed"] == {a: True, b: True, c: False}
    first, second = again.next(), again.next()
    assert (first.event, first.json()) == ("bulk_update", {"project": a, "updates": {"A1": "sold"}})
    assert (second.event, second.json()["project"]) == ("status_update", c)
    assert again.next_event("status_update", timeout=1) is None      # nothing for b
    again.close()


def test_a_garbage_id_is_a_first_connect_for_every_project(live, pg, upstream):
    a, b = projects(pg, upstream, 2)
    _, connected, snapshots, _ = opened(live, [a, b], headers={"Last-Event-ID": "x" * 5000})
    assert connected["resumed"] == {a: False, b: False} and set(snapshots) == {a, b}


def test_compressed_the_same_events_arrive(live, pg, upstream):
    a, b = projects(pg, upstream, 2)
    stream, _, snapshots, _ = opened(live, [a, b], headers={"Accept-Encoding": "gzip"})
    assert stream.headers["content-encoding"] == "gzip"
    assert stream.headers["cache-control"] == "no-store, no-transform"
    assert set(snapshots) == {a, b}
    upstream.set_statuses(f"/{a}", {"A1": "closed", "B0": "held"})
    assert stream.next_event("bulk_update").json() == {"project": a, "updates": {"A1": "sold"}}
    stream.close()


def test_a_deactivated_project_ends_the_stream_and_the_reconnect_names_it_unknown(
        start_service, pg, upstream):
    service = start_service()
    a, b = projects(pg, upstream, 2, interval=0.2)
    stream, _, _, last_id = opened(service, [a, b])
    pg.set_active(a, False)
    ended = stream.next_event("never", timeout=5)                    # read to the end
    assert ended is None and stream.closed
    again = mux(service, [a, b], headers={"Last-Event-ID": last_id})
    assert again.next_event("connected").json() == {"projects": [b], "unknown": [a], "resumed": {b: True}}
    assert again.next_event("status_update", timeout=1) is None
    again.close()


def test_a_slow_reader_is_dropped_and_the_others_are_not(start_service, pg, upstream):
    service = start_service(REFRESH_MIN_INTERVAL="0")
    slug = pg.add_project(pg.unique_slug("slow"), base_url=upstream.url)
    big = {f"U{n:05d}": "open" for n in range(20_000)}
    upstream.set_statuses(f"/{slug}", big)
    slow = mux(service, [slug], receive_buffer=4096)
    fast, *_ = opened(service, [slug])
    for n in range(80):                                 # each refresh changes every unit
        upstream.set_statuses(f"/{slug}", dict.fromkeys(big, "held" if n % 2 == 0 else "open"))
        requests.post(f"{service.url}/api/public/{slug}/status/refresh", timeout=10)
        assert fast.next_event("bulk_update", timeout=10) is not None
        if metric(service.url, "public_status_streams_dropped_total") >= 1:
            break
    assert metric(service.url, "public_status_streams_dropped_total") == 1
    assert metric(service.url, "public_status_open_streams") == 1
    slow.close()
    fast.close()


def test_shutdown_sends_each_stream_away_with_a_retry_of_its_own(start_service, pg, upstream):
    service = start_service(SSE_RETRY_MS="1000", SSE_RECONNECT_SPREAD_MS="5000")
    a, b = projects(pg, upstream, 2)
    streams = [opened(service, [a, b], headers={"Accept-Encoding": "gzip"} if n % 2 else None)[0]
               for n in range(6)]
    service.process.send_signal(signal.SIGTERM)
    retries = []
    for stream in streams:
        last = None
        while (message := stream.next(timeout=5)) is not None:
            last = message
        assert last is not None and last.retry is not None
        retries.append(last.retry)
        if stream.headers.get("content-encoding") == "gzip":
            assert stream.gzip_ended                    # the trailer: a whole gzip stream
    assert all(1000 <= retry <= 6000 for retry in retries) and len(set(retries)) > 1
    assert service.process.wait(10) == 0


def test_a_head_opens_no_stream(live, pg, upstream):
    a, b = projects(pg, upstream, 2)
    answer = requests.head(f"{live.url}/api/public/status/stream?projects={a},{b}", timeout=5)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "text/event-stream"
    assert answer.content == b""


def test_resumed_on_another_instance_through_redis(start_service, pg, upstream):
    server = RedisServer()
    try:
        env = {"REDIS_URL": server.url, "POLL_LEASE_TTL": "1"}
        first, second = start_service(**env), start_service(**env)
        a, b = projects(pg, upstream, 2)
        stream, _, _, last_id = opened(first, [a, b])
        stream.close()
        again = mux(second, [a, b], headers={"Last-Event-ID": last_id})
        assert again.next_event("connected").json()["resumed"] == {a: True, b: True}
        assert again.next_event("status_update", timeout=1) is None        # current: nothing
        upstream.set_statuses(f"/{b}", {"A1": "closed", "B1": "held"})
        change = again.next_event("bulk_update", timeout=5)
        assert change.json() == {"project": b, "updates": {"A1": "sold"}}
        assert json.loads(requests.get(f"{second.url}/api/public/{b}/status", timeout=5).text)[
            "statuses"]["A1"] == "sold"
        again.close()
    finally:
        server.stop()
