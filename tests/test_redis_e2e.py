"""Scale-out on Redis: two instances (two service processes) against one Redis and one
PostgreSQL behave as one service."""

import itertools
import json
import os
import signal
import socket
import threading
import time

import pytest
import redis
import requests

from support import EventStream, RedisServer, metric, wait_for

pytestmark = pytest.mark.e2e

LEASE = 1.0


@pytest.fixture
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def two(start_service, redis_server):
    env = {"REDIS_URL": redis_server.url, "POLL_LEASE_TTL": str(LEASE)}
    return start_service(**env), start_service(**env)


def stream(service, slug):
    events = EventStream(service.port, f"/api/public/{slug}/status/stream")
    assert events.next().event == "connected"
    return events


def watched_on_both(two, pg, upstream, prefix, statuses, interval):
    """A fresh project and a stream on each instance, both past their first snapshot."""
    slug = pg.add_project(pg.unique_slug(prefix), base_url=upstream.url, interval=interval)
    upstream.set_statuses(f"/{slug}", statuses)
    on_a, on_b = stream(two[0], slug), stream(two[1], slug)
    on_a.next_event("status_update")
    on_b.next_event("status_update")
    return slug, on_a, on_b


def poll_gaps(upstream, slug, count):
    """Seconds between the project's next `count` + 1 requests to its client API."""
    since = time.monotonic()
    wait_for(lambda: len([r for r in upstream.requests_to(f"/{slug}") if r.at > since]) > count)
    times = [r.at for r in upstream.requests_to(f"/{slug}") if r.at > since][:count + 1]
    return [b - a for a, b in itertools.pairwise(times)]


def fetches(service) -> float:
    return metric(service.url, "public_status_upstream_requests_total", 'outcome="ok"')


def who_polls(services, upstream, slug, count=4):
    """Which of the services fetched the project's next `count` polls (by their own
    counters), and the gaps between those polls."""
    before = [fetches(service) for service in services]
    gaps = poll_gaps(upstream, slug, count)
    return [fetches(service) > was for service, was in zip(services, before, strict=True)], gaps


def test_both_instances_see_a_change_and_the_api_is_polled_once(two, pg, upstream):
    a, b = two
    slug = pg.add_project(pg.unique_slug("shared"), base_url=upstream.url, interval=0.25)
    upstream.set_statuses(f"/{slug}", {"A1": "open", "A2": "open"})
    on_a, on_b = stream(a, slug), stream(b, slug)
    first_a, first_b = on_a.next_event("status_update"), on_b.next_event("status_update")
    assert first_a.data == first_b.data

    polling, gaps = who_polls(two, upstream, slug)
    assert polling.count(True) == 1, polling        # one instance polls; never two at once
    assert all(gap >= 0.24 for gap in gaps), gaps

    upstream.set_statuses(f"/{slug}", {"A1": "open", "A2": "closed"})
    change_a, change_b = on_a.next_event("bulk_update", 3), on_b.next_event("bulk_update", 3)
    assert change_a.json() == change_b.json() == {"updates": {"A2": "sold"}}
    assert change_a.id == change_b.id
    get_a = requests.get(f"{a.url}/api/public/{slug}/status", timeout=5)
    get_b = requests.get(f"{b.url}/api/public/{slug}/status", timeout=5)
    assert get_a.json() == get_b.json()
    assert get_a.json()["statuses"]["A2"] == "sold"


def test_without_redis_each_instance_polls_on_its_own(start_service, pg, upstream):
    """The comparison docs/scaling.md quotes: one instance, then two, without REDIS_URL."""
    a = start_service()
    slug = pg.add_project(pg.unique_slug("alone"), base_url=upstream.url, interval=0.25)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    on_a = stream(a, slug)
    on_a.next_event("status_update")
    gaps = poll_gaps(upstream, slug, 4)
    assert all(gap >= 0.24 for gap in gaps), gaps   # one instance: one poll per interval

    b = start_service()
    on_b = stream(b, slug)
    on_b.next_event("status_update")
    polling, gaps = who_polls([a, b], upstream, slug, count=8)
    assert polling == [True, True]                  # each polls on its own
    assert min(gaps) < 0.2, gaps                    # so polls come closer than the interval


def test_a_refresh_on_one_instance_reaches_the_other(two, pg, upstream):
    a, b = two
    slug = pg.add_project(pg.unique_slug("shared"), base_url=upstream.url, interval=60)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    on_b = stream(b, slug)
    on_b.next_event("status_update")
    upstream.set_statuses(f"/{slug}", {"A1": "held"})
    answer = requests.post(f"{a.url}/api/public/{slug}/status/refresh", timeout=5)
    assert answer.status_code == 200 and answer.json()["statuses"] == {"A1": "reserved"}
    assert on_b.next_event("bulk_update", 2).json() == {"updates": {"A1": "reserved"}}
    limited = requests.post(f"{b.url}/api/public/{slug}/status/refresh", timeout=5)
    assert limited.status_code == 429                  # the limit holds across instances
    assert 1 <= int(limited.headers["Retry-After"]) <= 1


def crowd(port: int, request: bytes, count: int = 250) -> list[socket.socket]:
    """`count` connections, each sent `request` once all are open, so that the service
    reads them in one go, as it would a crowd's."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
    for sock in sockets:
        sock.sendall(request)
    return sockets


def hgetall_calls(redis_server) -> int:
    stats = redis.Redis.from_url(redis_server.url).info("commandstats")
    return stats.get("cmdstat_hgetall", {}).get("calls", 0)


def test_a_crowd_of_streams_new_to_an_instance_asks_redis_once(two, pg, upstream, redis_server):
    """Launch: hundreds of viewers land at once on a project no instance has fetched yet.
    A new stream asks Redis whether another instance has the snapshot: the crowd asks
    once, and the next change arrives as a step."""
    a, b = two
    slug = pg.add_project(pg.unique_slug("crowd"), base_url=upstream.url, interval=60)
    upstream.set_statuses(f"/{slug}", {"A1": "open"}, delay=0.2)
    asked = hgetall_calls(redis_server)
    viewers = crowd(b.port, f"GET /api/public/{slug}/status/stream HTTP/1.1\r\nHost: b\r\n\r\n".encode())
    try:
        watching = stream(b, slug)
        watching.next_event("status_update")
        assert hgetall_calls(redis_server) - asked <= 5
        upstream.set_statuses(f"/{slug}", {"A1": "held"})
        assert requests.post(f"{a.url}/api/public/{slug}/status/refresh", timeout=5).ok
        change = watching.next_event("bulk_update", 2)
        assert change is not None and change.json() == {"updates": {"A1": "reserved"}}
        assert "Redis unavailable" not in b.logs()
    finally:
        for viewer in viewers:
            viewer.close()


def test_a_crowd_of_refreshes_is_not_a_redis_outage(two, pg, upstream):
    """Each forced refresh claims its turn in Redis: hundreds at once wait for one of the
    worker's connections to Redis; none of them makes the worker go alone."""
    _, b = two
    slug = pg.add_project(pg.unique_slug("crowd"), base_url=upstream.url, interval=60)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    stream(b, slug).next_event("status_update")
    agents = crowd(b.port, f"POST /api/public/{slug}/status/refresh HTTP/1.1\r\nHost: b\r\n"
                           "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
    try:
        answers = [agent.recv(64).split(b" ")[1] for agent in agents]
    finally:
        for agent in agents:
            agent.close()
    assert set(answers) <= {b"200", b"429"} and b"200" in answers, set(answers)
    assert metric(b.url, "public_status_redis_shared") == 1
    assert "Redis unavailable" not in b.logs()


def test_concurrent_refreshes_across_instances_share_one_fetch(two, pg, upstream):
    a, b = two
    slug = pg.add_project(pg.unique_slug("shared"), base_url=upstream.url, interval=60)
    upstream.set_statuses(f"/{slug}", {"A1": "open"}, delay=0.6)
    answers = []
    barrier = threading.Barrier(8)

    def refresh(service):
        barrier.wait()
        answers.append(requests.post(f"{service.url}/api/public/{slug}/status/refresh", timeout=5))

    threads = [threading.Thread(target=refresh, args=(s,)) for s in (a, b) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status_code for r in answers) == [200] * 8
    assert {json.dumps(r.json()) for r in answers} == {json.dumps({"project": slug, "statuses": {"A1": "available"}, "count": 1})}
    assert upstream.count(f"/{slug}") == 1


def test_the_lease_moves_when_its_holder_dies(two, pg, upstream, redis_server):
    a, b = two
    slug, on_a, on_b = watched_on_both(two, pg, upstream, "lease", {"A1": "open"}, 0.2)
    holder = wait_for(lambda: redis.Redis.from_url(redis_server.url).get(
        f"public-status:lease:{slug}")).decode()
    holder_pid = int(holder.split(":")[1])
    dying, surviving_stream = (a, on_b) if holder_pid in a.worker_pids() else (b, on_a)
    assert holder_pid in dying.worker_pids()

    os.kill(dying.process.pid, signal.SIGKILL)     # the master first, so none respawns
    os.kill(holder_pid, signal.SIGKILL)
    killed = time.monotonic()
    upstream.set_statuses(f"/{slug}", {"A1": "closed"})
    assert surviving_stream.next_event("bulk_update", 5).json() == {"updates": {"A1": "sold"}}
    resumed = next(r.at for r in upstream.requests_to(f"/{slug}") if r.at > killed)
    print(f"\npolling resumed {resumed - killed:.2f} s after the lease holder died (lease {LEASE} s)")
    assert resumed - killed <= LEASE + 0.2 + 0.3
    assert holder != redis.Redis.from_url(redis_server.url).get(f"public-status:lease:{slug}").decode()



def test_a_worker_killed_mid_fetch_holds_the_fetch_for_no_longer_than_a_lease(two, pg, upstream, redis_server):
    """The fetch lock is renewed while its holder fetches: killed mid-fetch, it lets go
    within the lease, not after the project's whole timeout (10 s here)."""
    a, b = two
    slug, on_a, on_b = watched_on_both(two, pg, upstream, "midfetch", {"A1": "open"}, 0.2)
    client = redis.Redis.from_url(redis_server.url)
    upstream.set_statuses(f"/{slug}", {"A1": "open"}, delay=30)      # the next fetch hangs
    holder = wait_for(lambda: client.get(f"public-status:fetching:{slug}"), timeout=3).decode()
    holder_pid = int(holder.split(":")[1])
    dying, surviving_stream = (a, on_b) if holder_pid in a.worker_pids() else (b, on_a)

    os.kill(dying.process.pid, signal.SIGKILL)     # the master first, so none respawns
    os.kill(holder_pid, signal.SIGKILL)
    killed = time.monotonic()
    upstream.set_statuses(f"/{slug}", {"A1": "closed"})
    change = surviving_stream.next_event("bulk_update", 4 * LEASE)
    assert change is not None, f"no change {time.monotonic() - killed:.1f} s after the fetch's holder died"
    assert change.json() == {"updates": {"A1": "sold"}}



def alone_then_back(service, redis_server, pause) -> None:
    """Redis away (paused, or stopped) until `service` works alone, then back."""
    os.kill(redis_server.process.pid, signal.SIGSTOP) if pause else redis_server.stop()
    try:
        wait_for(lambda: metric(service.url, "public_status_redis_shared") == 0, timeout=10)
        yield
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT) if pause else redis_server.start()
    wait_for(lambda: metric(service.url, "public_status_redis_shared") == 1, timeout=10)


def test_a_worker_back_from_a_redis_pause_keeps_what_it_fetched_alone(start_service, pg, upstream, redis_server):
    """Redis still holds the version from before the pause; the worker fetched a newer
    one alone. Back, it makes its own the shared one: its streams never go back in time."""
    service = start_service(REDIS_URL=redis_server.url, POLL_LEASE_TTL=str(LEASE))
    slug = pg.add_project(pg.unique_slug("paused"), base_url=upstream.url, interval=0.25)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    watching = stream(service, slug)
    watching.next_event("status_update")
    for _ in alone_then_back(service, redis_server, pause=True):
        upstream.set_statuses(f"/{slug}", {"A1": "closed"})
        assert watching.next_event("bulk_update", 5).json() == {"updates": {"A1": "sold"}}
    seen = []
    until = time.monotonic() + 1.5                        # six polls, shared again
    while (message := watching.next(until - time.monotonic())) is not None:
        seen.append((message.event, message.data))
    assert [data for event, data in seen if event != "ping"] == []
    stored = redis.Redis.from_url(redis_server.url).hget(f"public-status:snapshot:{slug}", "statuses")
    assert json.loads(stored) == {"A1": "sold"}


def test_no_id_is_given_out_twice_across_two_spells_alone(start_service, pg, upstream, redis_server):
    service = start_service(REDIS_URL=redis_server.url, POLL_LEASE_TTL=str(LEASE))
    slug = pg.add_project(pg.unique_slug("spells"), base_url=upstream.url, interval=0.25)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    watching = stream(service, slug)
    said = {watching.next_event("status_update").id: "available"}
    for statuses, status in (({"A1": "closed"}, "sold"), ({"A1": "held"}, "reserved")):
        for _ in alone_then_back(service, redis_server, pause=False):
            upstream.set_statuses(f"/{slug}", statuses)
            change = watching.next_event("bulk_update", 5)
            assert change.json() == {"updates": {"A1": status}}
            assert said.setdefault(change.id, status) == status, f"{change.id} given out for two states"
    again = EventStream(service.port, f"/api/public/{slug}/status/stream",
                        headers={"Last-Event-ID": next(iter(said))})
    assert again.next().event == "connected"
    assert again.next_event("status_update").json() == {"statuses": {"A1": "reserved"}}
    again.close()


def test_without_redis_both_keep_serving_and_converge_when_it_returns(two, pg, upstream, redis_server):
    a, b = two
    slug, on_a, on_b = watched_on_both(two, pg, upstream, "outage", {"A1": "open", "A2": "open"}, 0.25)

    redis_server.stop()
    for service in (a, b):
        wait_for(lambda service=service: metric(service.url, "public_status_redis_shared") == 0)
    upstream.set_statuses(f"/{slug}", {"A1": "closed", "A2": "open"})
    assert on_a.next_event("bulk_update", 5).json() == {"updates": {"A1": "sold"}}
    assert on_b.next_event("bulk_update", 5).json() == {"updates": {"A1": "sold"}}
    for service in (a, b):
        answer = requests.get(f"{service.url}/api/public/{slug}/status", timeout=5)
        assert answer.status_code == 200 and answer.json()["statuses"]["A1"] == "sold"
    polling, _ = who_polls([a, b], upstream, slug, count=8)
    assert polling == [True, True]                      # each polls on its own

    redis_server.start()
    for service in (a, b):
        wait_for(lambda service=service: metric(service.url, "public_status_redis_shared") == 1)
    upstream.set_statuses(f"/{slug}", {"A1": "closed", "A2": "held"})
    seen_a = on_a.next(5)
    while seen_a.event not in ("bulk_update", "status_update") or "reserved" not in seen_a.data:
        seen_a = on_a.next(5)
    seen_b = on_b.next(5)
    while seen_b.event not in ("bulk_update", "status_update") or "reserved" not in seen_b.data:
        seen_b = on_b.next(5)
    assert seen_a.id == seen_b.id                       # one version again, on both
    polling, gaps = who_polls([a, b], upstream, slug)
    assert polling.count(True) == 1, polling            # one poller again
    assert all(gap >= 0.24 for gap in gaps), gaps
    for service in (a, b):
        logs = service.logs()
        assert logs.count("Redis unavailable") == 1 and logs.count("Redis reachable again") == 1


def test_no_credential_reaches_redis(two, pg, upstream, redis_server):
    a, _ = two
    secret = "redis-bearer-Kx93Lq"
    slug = pg.add_project(pg.unique_slug("secret"), base_url=upstream.url, auth_type="bearer",
                          credentials={"token": secret}, interval=0.2)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    client = redis.Redis.from_url(redis_server.url)
    published = []
    pubsub = client.pubsub()
    pubsub.psubscribe("*")
    on_a = stream(a, slug)
    on_a.next_event("status_update")
    requests.post(f"{a.url}/api/public/{slug}/status/refresh", timeout=5)
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message and message["type"] == "pmessage":
            published.append(message["data"])
    assert published
    dump = [key + b"=" + repr(client.dump(key)).encode() for key in client.keys("*")]
    assert dump and all(secret.encode() not in item for item in dump + published)
    assert all(b"Bearer" not in item and b"token" not in item for item in dump + published)


def test_when_the_holders_viewers_leave_another_instance_polls_within_an_interval(
        start_service, pg, upstream, redis_server):
    """The lease lives 10 s, the project is polled every 0.2 s. Its holder's last viewer
    leaves and it lets go; the other instance, which found the lease taken, must not
    wait out the 10 s: its viewers get the next poll within an interval or so."""
    env = {"REDIS_URL": redis_server.url, "POLL_LEASE_TTL": "10"}
    a, b = start_service(**env), start_service(**env)
    slug = pg.add_project(pg.unique_slug("letgo"), base_url=upstream.url, interval=0.2)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    on_a = stream(a, slug)
    on_a.next_event("status_update")
    wait_for(lambda: upstream.count(f"/{slug}") >= 3)   # a polls; a's lease is taken
    on_b = stream(b, slug)                             # b finds it taken: it waits
    on_b.next_event("status_update")
    time.sleep(0.3)
    on_a.close()                                        # a's last viewer leaves
    left = time.monotonic()
    wait_for(lambda: fetches(b) >= 1, timeout=5)
    assert time.monotonic() - left < 1.0
    upstream.set_statuses(f"/{slug}", {"A1": "held"})
    assert on_b.next_event("bulk_update", 1) is not None


def test_a_stopping_holder_gives_its_lease_back(two, pg, upstream, redis_server):
    a, b = two
    slug, *_open_streams = watched_on_both(two, pg, upstream, "handover", {"A1": "open"}, 0.2)
    client = redis.Redis.from_url(redis_server.url)
    holder = client.get(f"public-status:lease:{slug}").decode()
    stopping = a if int(holder.split(":")[1]) in a.worker_pids() else b
    assert metric(stopping.url, "public_status_redis_shared") == 1
    stopping.process.send_signal(signal.SIGTERM)
    wait_for(lambda: client.get(f"public-status:lease:{slug}") != holder.encode(), timeout=0.5)
    assert stopping.process.wait(10) == 0
    assert "Traceback" not in stopping.logs()          # its follower stopped before Redis closed



def test_a_malformed_message_on_the_channel_deafens_no_worker(two, pg, upstream, redis_server):
    """Anyone who can reach Redis may publish on the channel: a message of any shape is
    let go, and each worker still hears every commit after it."""
    a, b = two
    slug = pg.add_project(pg.unique_slug("deaf"), base_url=upstream.url, interval=0.25)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    on_a, on_b = stream(a, slug), stream(b, slug)
    on_a.next_event("status_update"), on_b.next_event("status_update")
    client = redis.Redis.from_url(redis_server.url)
    epoch, version = (value.decode() for value in client.hmget(f"public-status:snapshot:{slug}",
                                                               "epoch", "version"))
    for junk in ({"kind": "commit", "slug": slug, "epoch": epoch, "version": int(version) + 1,
                  "fetched_at": time.time(), "digest": "x", "statuses": ["A1"]},   # a step, of a list
                 {"kind": "commit", "slug": slug, "epoch": "e0", "version": "9", "fetched_at": 0,
                  "digest": "x", "statuses": {"A1": "sold"}},
                 {"kind": "commit", "slug": slug}, [1, 2], "text"):
        client.publish("public-status:changes", json.dumps(junk))
    upstream.set_statuses(f"/{slug}", {"A1": "closed"})
    for on in (on_a, on_b):                               # the one that did not poll heard it
        assert on.next_event("bulk_update", 3).json() == {"updates": {"A1": "sold"}}
