"""The snapshot cache, refresh rules and the poller, driven by a fake clock against a
real client API on loopback (and, for the poller, the real database)."""

from __future__ import annotations

import logging
import math
import re
import time

import gevent
import pytest
import redis

import public_service
from public_service import (
    Config,
    Database,
    Fetched,
    LocalStore,
    LogScrubber,
    Metrics,
    NoSnapshot,
    ProjectDirectory,
    RefreshLimited,
    SharedStore,
    StatusService,
    UpstreamClient,
    project_from_row,
)
from support import FakeClock, RedisServer


@pytest.fixture
def clock():
    return FakeClock(5000.0)


@pytest.fixture
def status_service(clock):
    config = Config.from_env({"DATABASE_URL": "unused", "STATUS_CACHE_TTL": "30",
                              "REFRESH_MIN_INTERVAL": "10"})
    store = LocalStore(on_change=lambda *change: None, clock=clock)
    return StatusService(config, None, UpstreamClient(config.max_upstream_bytes), store, Metrics(),
                         clock)


def make_project(upstream, request, interval=5):
    slug = "svc-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:60]
    upstream.set_statuses(f"/{slug}", {"A1": "open", "A2": "held"})
    return project_from_row(slug, (upstream.url, f"/{slug}", None, None, 2, None, interval), 30.0)


@pytest.fixture
def project(upstream, request):
    return make_project(upstream, request)


def sample(status_service, name, **labels) -> float:
    """One sample of the service's metrics, as /metrics shows it."""
    return status_service.metrics.registry.get_sample_value(name, labels)


def cache_count(status_service, result):
    return sample(status_service, "public_status_cache_total", result=result)


def test_fresh_snapshots_are_served_from_cache(status_service, project, upstream, clock):
    first = status_service.status(project)
    assert first.statuses == {"A1": "available", "A2": "reserved"}
    clock.now += 29.9
    assert status_service.status(project) is first
    assert upstream.count(f"/{project.slug}") == 1
    assert (cache_count(status_service, "miss"), cache_count(status_service, "hit")) == (1, 1)


def test_an_expired_snapshot_is_fetched_again(status_service, project, upstream, clock):
    status_service.status(project)
    clock.now += 30
    status_service.status(project)
    assert upstream.count(f"/{project.slug}") == 2


def test_the_version_moves_only_on_change(status_service, project, upstream, clock):
    first = status_service.status(project)
    clock.now += 31
    assert status_service.status(project).position == first.position
    upstream.set_statuses(f"/{project.slug}", {"A1": "sold", "A2": "held"})
    clock.now += 31
    changed = status_service.status(project)
    assert changed.position.version == first.position.version + 1
    assert changed.statuses == {"A1": "sold", "A2": "reserved"}


def test_the_last_good_snapshot_is_served_when_a_fetch_fails(status_service, project, upstream, clock):
    good = status_service.status(project)
    upstream.set(f"/{project.slug}", b"oops", status=500)
    clock.now += 31
    assert status_service.status(project) is good
    assert cache_count(status_service, "stale") == 1


def test_after_a_failure_reads_do_not_refetch_at_once(status_service, project, upstream, clock):
    status_service.status(project)
    upstream.set(f"/{project.slug}", b"oops", status=500)
    clock.now += 31
    status_service.status(project)
    status_service.status(project)
    clock.now += 4.9          # the first backoff is at least one poll interval (5 s)
    status_service.status(project)
    assert upstream.count(f"/{project.slug}") == 2
    clock.now += 30           # and at most the cache TTL
    status_service.status(project)
    assert upstream.count(f"/{project.slug}") == 3


def test_no_snapshot_ever_is_503_material(status_service, project, upstream, clock):
    upstream.set(f"/{project.slug}", b"not json")
    with pytest.raises(NoSnapshot) as raised:
        status_service.status(project)
    assert 5 <= raised.value.retry_after <= 10
    upstream.set_statuses(f"/{project.slug}", {"A1": "open"})
    clock.now += raised.value.retry_after
    assert status_service.status(project).statuses == {"A1": "available"}


def test_refresh_bypasses_the_cache(status_service, project, upstream, clock):
    status_service.status(project)
    upstream.set_statuses(f"/{project.slug}", {"A1": "closed"})
    assert status_service.refresh(project).statuses == {"A1": "sold"}
    assert upstream.count(f"/{project.slug}") == 2


def test_refresh_is_rate_limited_per_project(status_service, project, upstream, clock):
    status_service.refresh(project)
    clock.now += 4
    with pytest.raises(RefreshLimited) as raised:
        status_service.refresh(project)
    assert raised.value.retry_after == pytest.approx(6)
    assert sample(status_service, "public_status_refresh_limited_total") == 1
    clock.now += 6
    status_service.refresh(project)
    assert upstream.count(f"/{project.slug}") == 2


def test_a_failed_refresh_serves_the_last_good_snapshot(status_service, project, upstream, clock):
    good = status_service.refresh(project)
    upstream.set(f"/{project.slug}", b"", status=502)
    clock.now += 10
    assert status_service.refresh(project) is good


def test_failures_are_logged_once_per_streak(status_service, project, upstream, clock, caplog):
    caplog.set_level(logging.WARNING, logger="public_service")
    status_service.status(project)

    def streak(failures):
        upstream.set(f"/{project.slug}", b"oops", status=500)
        for _ in range(failures):
            clock.now += 100
            status_service.status(project)
        upstream.set_statuses(f"/{project.slug}", {"A1": "open"})
        clock.now += 100
        status_service.status(project)

    streak(4)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("fetch failed" in m for m in messages) == 1
    assert sum("recovered after 4 failed fetches" in m for m in messages) == 1
    streak(2)                                  # a new streak is told again, counted afresh
    messages = [r.getMessage() for r in caplog.records]
    assert sum("fetch failed" in m for m in messages) == 2
    assert sum("recovered after 2 failed fetches" in m for m in messages) == 1


def test_the_stale_window_after_a_failure_is_bounded_by_the_cache_ttl(status_service, upstream, clock,
                                                                      request):
    """A project polled every 100 s backs off for 100-200 s after a failure; a GET waits
    at most STATUS_CACHE_TTL (30 s) before it asks the client API again."""
    project = make_project(upstream, request, interval=100)
    good = status_service.status(project)
    upstream.set(f"/{project.slug}", b"oops", status=500)
    clock.now += 30
    assert status_service.status(project) is good                  # the failed fetch: stale
    clock.now += 29.9
    assert status_service.status(project) is good
    assert upstream.count(f"/{project.slug}") == 2
    clock.now += 0.1
    upstream.set_statuses(f"/{project.slug}", {"A1": "closed"})
    assert status_service.status(project).statuses == {"A1": "sold"}
    assert upstream.count(f"/{project.slug}") == 3


def test_no_snapshot_says_exactly_when_to_try_again(status_service, project, upstream, clock):
    upstream.set(f"/{project.slug}", b"oops", status=500)
    with pytest.raises(NoSnapshot) as raised:
        status_service.status(project)
    clock.now += 1.5
    with pytest.raises(NoSnapshot) as again:
        status_service.status(project)                              # not fetched again meanwhile
    assert again.value.retry_after == pytest.approx(raised.value.retry_after - 1.5)
    assert upstream.count(f"/{project.slug}") == 1


# --------------------------------------------------------------------------- the poller

@pytest.fixture
def poller(pg, upstream, clock):
    """A status_service whose poller sleeps on the fake clock: `poller.run_until(predicate)` lets
    it go until the predicate holds; `poller.sleeps` lists every wait it took."""
    config = Config.from_env({"DATABASE_URL": pg.reader_url, "STATUS_CACHE_TTL": "30",
                              "PROJECT_CACHE_TTL": "30", "DEFAULT_POLL_INTERVAL": "5"})
    db = Database(config.database_url, 1, 2.0)
    metrics = Metrics()
    directory = ProjectDirectory(db, config, metrics, LogScrubber(), clock)
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        clock.now += seconds
        gevent.sleep(0)

    store = LocalStore(on_change=lambda *change: None, clock=clock)
    status_service = StatusService(config, directory, UpstreamClient(config.max_upstream_bytes), store,
                            metrics, clock, sleep)
    greenlets = []

    class Poller:
        def start(self, slug):
            greenlets.append(gevent.spawn(status_service.poll, slug))
            return greenlets[-1]

        def run_until(self, predicate, steps=10_000):
            for _ in range(steps):
                if predicate():
                    return
                gevent.sleep(0)
            raise AssertionError("the poller never got there")

    runner = Poller()
    runner.sleeps, runner.status_service = sleeps, status_service
    yield runner
    gevent.killall(greenlets)
    db.close()


def test_the_poller_fetches_once_per_interval(poller, pg, upstream):
    slug = pg.add_project(pg.unique_slug("poll"), base_url=upstream.url, interval=5)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    poller.start(slug)
    poller.run_until(lambda: upstream.count(f"/{slug}") == 6)
    assert poller.sleeps == [5.0] * 5                   # a fetch, then one every 5 s


def test_the_interval_is_the_projects_own(poller, pg, upstream):
    slug = pg.add_project(pg.unique_slug("poll"), base_url=upstream.url, interval=12.5)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    poller.start(slug)
    poller.run_until(lambda: upstream.count(f"/{slug}") == 3)
    assert poller.sleeps == [12.5, 12.5]


def test_the_poller_backs_off_while_failing_and_recovers(poller, pg, upstream):
    slug = pg.add_project(pg.unique_slug("poll"), base_url=upstream.url, interval=5)
    upstream.set(f"/{slug}", b"", status=503)
    poller.start(slug)
    poller.run_until(lambda: upstream.count(f"/{slug}") == 6)
    bounds = [(5, 10), (10, 20), (20, 40), (20, 40), (20, 40)]   # 1-2, 2-4, then 4-8 intervals
    assert len(poller.sleeps) == 5
    for waited, (low, high) in zip(poller.sleeps, bounds, strict=True):
        assert low <= waited <= high, poller.sleeps
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    poller.run_until(lambda: upstream.count(f"/{slug}") == 9)
    assert poller.sleeps[6:] == [5.0, 5.0]              # back to the interval at once


def test_the_poller_returns_when_the_project_is_gone(poller, pg, upstream, caplog):
    caplog.set_level(logging.INFO, logger="public_service")
    slug = pg.add_project(pg.unique_slug("poll"), base_url=upstream.url, interval=5)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    running = poller.start(slug)
    poller.run_until(lambda: upstream.count(f"/{slug}") == 2)
    pg.set_active(slug, False)
    poller.run_until(lambda: running.dead)
    assert running.successful()
    assert sum(poller.sleeps) <= 35                     # seen within PROJECT_CACHE_TTL
    assert any("is gone" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("body", [b"<html>", b"", b'"open"', b'[{"unit": "A1"}]'])
def test_a_body_that_is_no_status_document_is_a_failed_fetch(status_service, project, upstream, body):
    upstream.set(f"/{project.slug}", body)
    with pytest.raises(NoSnapshot):
        status_service.status(project)
    assert sample(status_service, "public_status_upstream_requests_total", outcome="bad_body") == 1


def test_an_unchanged_body_is_not_parsed_again(status_service, project, upstream, clock, monkeypatch):
    """Counting calls of the parser (which still runs): the same bytes are not parsed."""
    parses = []
    parse = public_service.parse_statuses
    monkeypatch.setattr(public_service, "parse_statuses", lambda *args: parses.append(1) or parse(*args))
    first = status_service.status(project)
    clock.now += 31
    assert status_service.status(project) is first               # fetched again, the same bytes
    assert upstream.count(f"/{project.slug}") == 2 and len(parses) == 1
    upstream.set_statuses(f"/{project.slug}", {"A1": "open", "A2": "closed"})
    clock.now += 31
    assert status_service.status(project).statuses["A2"] == "sold"
    assert len(parses) == 2


def test_unknown_values_are_logged_once_per_project_and_value(status_service, project, upstream, clock, caplog):
    caplog.set_level(logging.WARNING, logger="public_service")
    upstream.set_statuses(f"/{project.slug}", {"A1": "weird", "A2": "weird", "A3": "odd"})
    assert status_service.status(project).statuses == {"A1": "hidden", "A2": "hidden", "A3": "hidden"}
    clock.now += 31
    status_service.status(project)
    unknown = [r.getMessage() for r in caplog.records if "unknown status" in r.getMessage()]
    assert len(unknown) == 2
    assert any("'weird'" in m for m in unknown) and any("'odd'" in m for m in unknown)


def test_the_first_failure_is_told_at_once_with_what_is_served(status_service, project, upstream, clock, caplog):
    caplog.set_level(logging.WARNING, logger="public_service")
    upstream.set(f"/{project.slug}", b"oops", status=500)
    with pytest.raises(NoSnapshot):
        status_service.status(project)
    [record] = [r for r in caplog.records if "fetch failed" in r.getMessage()]
    assert record.getMessage().endswith("(http_error: HTTP 500); serving 503 (no snapshot yet)")
    assert 0 <= record.duration < 5                          # how long the failed fetch took
    upstream.set_statuses(f"/{project.slug}", {"A1": "open"})
    clock.now += 31
    status_service.status(project)
    upstream.set(f"/{project.slug}", b"oops", status=500)
    clock.now += 31
    status_service.status(project)
    assert [r.getMessage() for r in caplog.records if "fetch failed" in r.getMessage()][-1].endswith(
        "serving the last good snapshot")


def test_every_fetch_is_counted_by_outcome_and_timed(status_service, project, upstream, clock):
    def count(outcome):
        return sample(status_service, "public_status_upstream_requests_total", outcome=outcome)

    status_service.status(project)
    upstream.set(f"/{project.slug}", b"", status=502)
    clock.now += 31
    status_service.status(project)
    assert (count("ok"), count("http_error")) == (1, 1)
    assert sample(status_service, "public_status_upstream_seconds_count") == 2
    assert 0 <= sample(status_service, "public_status_upstream_seconds_sum") < 5


def test_at_most_a_hundred_unknown_values_are_logged_per_project(status_service, project, upstream, caplog):
    caplog.set_level(logging.WARNING, logger="public_service")
    upstream.set_statuses(f"/{project.slug}", {f"A{n}": f"odd-{n}" for n in range(101)})
    status_service.status(project)
    assert sum("unknown status value" in r.getMessage() for r in caplog.records) == 100


def test_a_refetch_of_the_same_statuses_makes_the_snapshot_fresh_again(clock):
    store = LocalStore(on_change=lambda *change: None, clock=clock)
    first = store.commit("p", Fetched.over(None, {"A1": "sold"}, []))
    clock.now += 20
    assert store.commit("p", Fetched.over(first, {"A1": "sold"}, [])) is first
    assert store.read("p") == (first, 0)
    store.touch("p", clock.now - 10, None)               # an older fetch never ages it
    assert store.read("p")[1] == 0
    store.touch("unknown", clock.now, None)
    assert store.read("unknown") == (None, math.inf)
    assert first.position.version == 1


def test_a_refresh_is_allowed_again_exactly_after_the_interval(clock):
    store = LocalStore(on_change=lambda *change: None, clock=clock)
    assert store.claim_refresh("p", 10) == 0
    clock.now += 9.5
    assert store.claim_refresh("p", 10) == pytest.approx(0.5)
    clock.now += 0.5
    assert store.claim_refresh("p", 10) == 0
    assert store.claim_refresh("p", 10) == 10             # and that one counts


def test_a_successful_refresh_ends_the_pollers_backoff(poller, pg, upstream):
    slug = pg.add_project(pg.unique_slug("poll"), base_url=upstream.url, interval=5)
    upstream.set(f"/{slug}", b"", status=503)
    running = poller.start(slug)
    poller.run_until(lambda: upstream.count(f"/{slug}") == 4)   # three backoffs: 20-40 s next
    running.kill()
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    project = poller.status_service.directory.get(slug)
    poller.status_service.refresh(project)
    poller.sleeps.clear()
    poller.start(slug)
    poller.run_until(lambda: upstream.count(f"/{slug}") == 6)
    assert poller.sleeps == [5.0]                         # the interval, not the backoff


def test_any_successful_fetch_ends_the_backoff_at_once(poller, pg, upstream, clock):
    """Three failed refreshes put the next poll 20-40 s after the last; a refresh that
    succeeds 10 s later brings it back to one interval from then."""
    slug = pg.add_project(pg.unique_slug("poll"), base_url=upstream.url, interval=5)
    upstream.set(f"/{slug}", b"", status=503)
    project = poller.status_service.directory.get(slug)
    for _ in range(3):
        with pytest.raises(NoSnapshot):
            poller.status_service.refresh(project)
        clock.now += 10
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    poller.status_service.refresh(project)
    poller.start(slug)
    poller.run_until(lambda: upstream.count(f"/{slug}") == 5)
    assert poller.sleeps == [5.0]


def test_a_miss_takes_what_another_worker_committed(upstream, request, clock):
    """Two workers on one Redis, their mirrors deaf to each other (no follower): the
    second's GET looks in Redis before it fetches."""
    server = RedisServer()
    config = Config.from_env({"DATABASE_URL": "unused", "STATUS_CACHE_TTL": "30",
                              "REDIS_URL": server.url})
    clients = [redis.Redis.from_url(server.url) for _ in range(2)]
    stores = [SharedStore(client, f"worker-{n}", LocalStore(lambda change: None, time.time), 10, 100)
              for n, client in enumerate(clients)]
    try:
        services = [StatusService(config, None, UpstreamClient(1_000_000), store, Metrics(), clock)
                    for store in stores]
        project = make_project(upstream, request)
        first = services[0].status(project)
        second = services[1].status(project)
        assert second.statuses == first.statuses and second.position == first.position
        assert upstream.count(f"/{project.slug}") == 1
    finally:
        for client in clients:
            client.close()
        server.stop()


# --------------------------------------------------------------------------- upstream manners

def test_a_retry_after_holds_back_reads_and_refreshes_to_its_end(status_service, project, upstream, clock):
    served = status_service.status(project)                  # a snapshot to serve meanwhile
    upstream.set(f"/{project.slug}", b"", status=429, headers={"Retry-After": "40"})  # 8 intervals
    clock.now += 31
    assert status_service.status(project) is served         # asked, held back: the stale one
    asked = upstream.count(f"/{project.slug}")
    clock.now += 35                  # past the failure's own wait (the cache TTL), still held
    assert status_service.status(project) is served
    clock.now += 4.5                                         # half a second of the hold left
    assert status_service.status(project) is served
    assert status_service.refresh(project) is served        # a refresh too, and not counted
    assert upstream.count(f"/{project.slug}") == asked
    assert sample(status_service, "public_status_upstream_deferred_total") == 3
    upstream.set_statuses(f"/{project.slug}", {"A1": "closed"})
    clock.now += 0.6                                         # the hold is over
    assert status_service.refresh(project).statuses == {"A1": "sold"}


def test_an_unchanged_document_is_asked_for_with_the_validator_it_came_with(status_service, upstream, request, clock):
    project = make_project(upstream, request)
    path = f"/{project.slug}"
    upstream.set_statuses(path, {"A1": "open"}, etag='"v1"')
    first = status_service.status(project)
    clock.now += 31
    assert status_service.status(project) is first           # a 304: the same snapshot
    assert upstream.routes[path].not_modified == 1
    assert upstream.requests_to(path)[-1].headers.get("If-None-Match") == '"v1"'
    clock.now += 29.9
    assert status_service.status(project) is first           # fresh again from the 304
    assert upstream.count(path) == 2

    upstream.set_statuses(path, {"A1": "open"}, etag='"v2"')  # the same bytes, a new validator
    clock.now += 0.2
    assert status_service.status(project) is first           # unchanged, so the same snapshot
    clock.now += 31
    status_service.status(project)
    assert upstream.requests_to(path)[-1].headers.get("If-None-Match") == '"v2"'   # the newer one

    moved = project_from_row(project.slug, (upstream.url, path, "bearer", '{"token": "t2"}', 2, None, 5), 30.0)
    clock.now += 31
    status_service.status(moved)                             # new settings: asked whole
    assert upstream.requests_to(path)[-1].headers.get("If-None-Match") is None


def test_a_spell_of_being_held_back_is_logged_once_and_a_new_spell_again(status_service, project, upstream,
                                                                          clock, caplog):
    status_service.status(project)
    caplog.set_level(logging.WARNING, logger="public_service")

    def held_back_lines():
        return [record for record in caplog.records if getattr(record, "event", "") == "upstream_held_back"]

    for _ in range(2):                                        # one spell: two 429s in a row
        upstream.set(f"/{project.slug}", b"", status=429, headers={"Retry-After": "1"})
        clock.now += 41
        status_service.refresh(project)
    assert len(held_back_lines()) == 1 and held_back_lines()[0].project == project.slug
    upstream.set_statuses(f"/{project.slug}", {"A1": "open"})
    clock.now += 41
    status_service.refresh(project)                           # recovered: the spell is over
    upstream.set(f"/{project.slug}", b"", status=429, headers={"Retry-After": "1"})
    clock.now += 41
    status_service.refresh(project)
    assert len(held_back_lines()) == 2
