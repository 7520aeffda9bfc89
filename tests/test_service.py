"""The snapshot cache and refresh rules, driven by a fake clock against a real client
API on loopback."""

import logging

import pytest

from helpers import FakeClock
from public_service import (
    Config,
    LocalStore,
    Metrics,
    NoSnapshot,
    RefreshLimited,
    StatusService,
    UpstreamClient,
    project_from_row,
)


@pytest.fixture
def clock():
    return FakeClock(5000.0)


@pytest.fixture
def service(clock):
    config = Config.from_env({"DATABASE_URL": "unused", "STATUS_CACHE_TTL": "30",
                              "REFRESH_MIN_INTERVAL": "10"})
    store = LocalStore(on_change=lambda *change: None, clock=clock)
    return StatusService(config, None, UpstreamClient(config.max_upstream_bytes), store, Metrics(),
                         clock)


@pytest.fixture
def project(upstream, request):
    slug = "svc-" + request.node.name.replace("_", "-")[:60].lower()
    upstream.set_statuses(f"/{slug}", {"A1": "open", "A2": "held"})
    return project_from_row(slug, (upstream.url, f"/{slug}", None, None, 2, None, 5), 30.0)


def cache_count(service, result):
    return service.metrics.cache.labels(result)._value.get()


def test_fresh_snapshots_are_served_from_cache(service, project, upstream, clock):
    first = service.status(project)
    assert first.statuses == {"A1": "available", "A2": "reserved"}
    clock.now += 29.9
    assert service.status(project) is first
    assert upstream.count(f"/{project.slug}") == 1
    assert (cache_count(service, "miss"), cache_count(service, "hit")) == (1, 1)


def test_an_expired_snapshot_is_fetched_again(service, project, upstream, clock):
    service.status(project)
    clock.now += 30
    service.status(project)
    assert upstream.count(f"/{project.slug}") == 2


def test_the_version_moves_only_on_change(service, project, upstream, clock):
    first = service.status(project)
    clock.now += 31
    assert service.status(project).version == first.version
    upstream.set_statuses(f"/{project.slug}", {"A1": "sold", "A2": "held"})
    clock.now += 31
    changed = service.status(project)
    assert changed.version == first.version + 1
    assert changed.statuses == {"A1": "sold", "A2": "reserved"}


def test_the_last_good_snapshot_is_served_when_a_fetch_fails(service, project, upstream, clock):
    good = service.status(project)
    upstream.set(f"/{project.slug}", b"oops", status=500)
    clock.now += 31
    assert service.status(project) is good
    assert cache_count(service, "stale") == 1


def test_after_a_failure_reads_do_not_refetch_at_once(service, project, upstream, clock):
    service.status(project)
    upstream.set(f"/{project.slug}", b"oops", status=500)
    clock.now += 31
    service.status(project)
    service.status(project)
    clock.now += 4.9          # the first backoff is at least one poll interval (5 s)
    service.status(project)
    assert upstream.count(f"/{project.slug}") == 2
    clock.now += 30           # and at most the cache TTL
    service.status(project)
    assert upstream.count(f"/{project.slug}") == 3


def test_no_snapshot_ever_is_503_material(service, project, upstream, clock):
    upstream.set(f"/{project.slug}", b"not json")
    with pytest.raises(NoSnapshot) as raised:
        service.status(project)
    assert 5 <= raised.value.retry_after <= 10
    upstream.set_statuses(f"/{project.slug}", {"A1": "open"})
    clock.now += raised.value.retry_after
    assert service.status(project).statuses == {"A1": "available"}


def test_refresh_bypasses_the_cache(service, project, upstream, clock):
    service.status(project)
    upstream.set_statuses(f"/{project.slug}", {"A1": "closed"})
    assert service.refresh(project).statuses == {"A1": "sold"}
    assert upstream.count(f"/{project.slug}") == 2


def test_refresh_is_rate_limited_per_project(service, project, upstream, clock):
    service.refresh(project)
    clock.now += 4
    with pytest.raises(RefreshLimited) as raised:
        service.refresh(project)
    assert raised.value.retry_after == pytest.approx(6)
    assert service.metrics.refresh_limited._value.get() == 1
    clock.now += 6
    service.refresh(project)
    assert upstream.count(f"/{project.slug}") == 2


def test_a_failed_refresh_serves_the_last_good_snapshot(service, project, upstream, clock):
    good = service.refresh(project)
    upstream.set(f"/{project.slug}", b"", status=502)
    clock.now += 10
    assert service.refresh(project) is good


def test_failures_are_logged_once_per_streak(service, project, upstream, clock, caplog):
    caplog.set_level(logging.WARNING, logger="public_service")
    service.status(project)
    upstream.set(f"/{project.slug}", b"oops", status=500)
    for _ in range(4):
        clock.now += 100
        service.status(project)
    upstream.set_statuses(f"/{project.slug}", {"A1": "open"})
    clock.now += 100
    service.status(project)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("fetch failed" in m for m in messages) == 1
    assert sum("recovered after 4 failed fetches" in m for m in messages) == 1


def test_unknown_values_are_logged_once_per_project_and_value(service, project, upstream, clock, caplog):
    caplog.set_level(logging.WARNING, logger="public_service")
    upstream.set_statuses(f"/{project.slug}", {"A1": "weird", "A2": "weird", "A3": "odd"})
    assert service.status(project).statuses == {"A1": "hidden", "A2": "hidden", "A3": "hidden"}
    clock.now += 31
    service.status(project)
    unknown = [r.getMessage() for r in caplog.records if "unknown status" in r.getMessage()]
    assert len(unknown) == 2
    assert any("'weird'" in m for m in unknown) and any("'odd'" in m for m in unknown)
