"""Resume, over raw sockets against the real service: a reconnecting client gets only
what it missed (SPEC, "Resume"), and a stream sent away comes back on its own time
(SPEC, "Sent away, and coming back")."""

import signal
import time

import pytest
import requests

from conftest import FAST
from public_service import parse_event_id
from support import EventStream, RedisServer, Service

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def resumable(pg):
    service = Service({"DATABASE_URL": pg.reader_url, **FAST, "REFRESH_MIN_INTERVAL": "0",
                       "SSE_HISTORY": "3"})
    yield service
    service.stop()


def watched(service, pg, upstream, statuses):
    """A fresh project (polled once a minute: changes come by refresh) and the id of its
    first snapshot."""
    slug = pg.add_project(pg.unique_slug("resume"), base_url=upstream.url, interval=60)
    upstream.set_statuses(f"/{slug}", statuses)
    stream = connect(service, slug)
    update = stream.next_event("status_update")
    stream.close()
    return slug, update.id


def change(service, upstream, slug, statuses) -> str:
    upstream.set_statuses(f"/{slug}", statuses)
    answer = requests.post(f"{service.url}/api/public/{slug}/status/refresh", timeout=5)
    assert answer.status_code == 200
    stream = connect(service, slug)
    return stream.next_event("status_update").id          # the id it is at now


def connect(service, slug, last_event_id=None, query=None):
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    path = f"/api/public/{slug}/status/stream" + (f"?lastEventId={query}" if query else "")
    return EventStream(service.port, path, headers=headers)


def first_two(stream, wait: float = 1.0):
    """`connected` (its data) and the next message that is no ping, if one comes within
    `wait` seconds (pings come every 0.5 s here)."""
    connected = stream.next()
    assert connected.event == "connected"
    deadline = time.monotonic() + wait
    while (message := stream.next(timeout=max(0.0, deadline - time.monotonic()))) is not None:
        if message.event != "ping":
            return connected.json(), message
    return connected.json(), None


def test_a_first_connect_gets_everything(resumable, pg, upstream):
    slug, _ = watched(resumable, pg, upstream, {"A1": "open"})
    connected, following = first_two(connect(resumable, slug))
    assert connected == {"project": slug, "resumed": False}
    assert following.event == "status_update" and following.json() == {"statuses": {"A1": "available"}}


def test_a_current_client_gets_nothing_but_connected(resumable, pg, upstream):
    slug, current = watched(resumable, pg, upstream, {"A1": "open"})
    stream = connect(resumable, slug, current)
    connected, following = first_two(stream)
    assert connected == {"project": slug, "resumed": True}
    assert following is None                               # pings only: it is current
    change(resumable, upstream, slug, {"A1": "closed"})
    update = stream.next_event("bulk_update", timeout=3)   # and live from there
    assert update.json() == {"updates": {"A1": "sold"}}


def test_a_client_that_missed_changes_gets_them_in_one_bulk_update(resumable, pg, upstream):
    slug, missed_from = watched(resumable, pg, upstream, {"A1": "open", "A2": "open", "A3": "held"})
    change(resumable, upstream, slug, {"A1": "held", "A2": "open", "A3": "held"})
    now = change(resumable, upstream, slug, {"A1": "closed", "A2": "open", "A4": "open"})
    stream = connect(resumable, slug, missed_from)
    connected, update = first_two(stream)
    assert connected == {"project": slug, "resumed": True}
    assert update.event == "bulk_update" and update.id == now
    assert update.json() == {"updates": {"A1": "sold", "A3": "hidden", "A4": "available"}}
    assert stream.next_event("status_update", timeout=0.6) is None


def test_a_page_may_pass_the_id_on_its_first_connect_and_the_header_wins(resumable, pg, upstream):
    slug, current = watched(resumable, pg, upstream, {"A1": "open"})
    connected, following = first_two(connect(resumable, slug, query=current))
    assert connected["resumed"] is True and following is None
    connected, following = first_two(connect(resumable, slug, "garbage", query=current))
    assert connected["resumed"] is False and following.event == "status_update"


@pytest.mark.parametrize("case", ["garbage", "empty", "future", "other-epoch", "too-old"])
def test_anything_else_is_a_full_status_update(resumable, pg, upstream, case):
    slug, first = watched(resumable, pg, upstream, {"A1": "open"})
    epoch, version = parse_event_id(first)
    if case == "too-old":                                  # SSE_HISTORY is 3: four changes
        for n, status in enumerate(["held", "closed", "open", "held"]):
            change(resumable, upstream, slug, {"A1": status, f"B{n}": "open"})
    sent = {"garbage": "<script>", "empty": "", "future": f"{epoch}-{version + 5}",
            "other-epoch": f"0000000000-{version}", "too-old": first}[case]
    connected, following = first_two(connect(resumable, slug, sent))
    assert connected == {"project": slug, "resumed": False}
    assert following.event == "status_update" and "A1" in following.json()["statuses"]


def test_after_a_restart_ids_are_of_another_epoch(start_service, pg, upstream):
    before = start_service()
    slug, old = watched(before, pg, upstream, {"A1": "open"})
    before.stop()
    after = start_service()
    connected, following = first_two(connect(after, slug, old))
    assert connected["resumed"] is False and following.event == "status_update"
    assert parse_event_id(following.id)[0] != parse_event_id(old)[0]


def test_with_redis_a_client_resumes_across_a_restart_of_the_instance(start_service, pg, upstream):
    server = RedisServer()
    try:
        env = {"REDIS_URL": server.url, "REFRESH_MIN_INTERVAL": "0"}
        before = start_service(**env)
        slug, first = watched(before, pg, upstream, {"A1": "open", "A2": "open"})
        current = change(before, upstream, slug, {"A1": "held", "A2": "open"})
        before.stop()
        after = start_service(**env)                       # a new process, a new mirror
        connected, following = first_two(connect(after, slug, current))
        assert connected["resumed"] is True and following is None
        connected, update = first_two(connect(after, slug, first))
        assert connected["resumed"] is True and update.event == "bulk_update"
        assert update.json() == {"updates": {"A1": "reserved"}} and update.id == current
        assert upstream.count(f"/{slug}") == 2             # none of this asked the client API
    finally:
        server.stop()


def test_streams_sent_away_at_shutdown_each_get_their_own_retry(start_service, pg, upstream):
    service = start_service(SSE_RETRY_MS="1000", SSE_RECONNECT_SPREAD_MS="4000",
                            SSE_PING_INTERVAL="30")
    slug, _ = watched(service, pg, upstream, {"A1": "open"})
    streams = [connect(service, slug) for _ in range(30)]
    for stream in streams:
        stream.next_event("status_update")
    service.process.send_signal(signal.SIGTERM)
    retries = []
    for stream in streams:
        last = None
        while (message := stream.next(timeout=5)) is not None:
            last = message
        assert stream.closed and last.retry is not None and last.data is None
        retries.append(last.retry)
    assert all(1000 <= retry <= 5000 for retry in retries), retries
    assert len(set(retries)) > 15                          # spread, not one value for all
