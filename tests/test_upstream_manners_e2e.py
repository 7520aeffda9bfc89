"""Upstream manners (SPEC): conditional requests with the validators a client API gave, and
its Retry-After held by every kind of request, against the real service and a real client
API on loopback, alone and on Redis."""

import email.utils
import time

import pytest
import requests

from support import EventStream, RedisServer, metric, wait_for

pytestmark = pytest.mark.e2e


def watched(service, pg, upstream, statuses, interval=0.2, **route):
    slug = pg.add_project(pg.unique_slug("manners"), base_url=upstream.url, interval=interval)
    upstream.set_statuses(f"/{slug}", statuses, **route)
    stream = EventStream(service.port, f"/api/public/{slug}/status/stream")
    assert stream.next_event("status_update") is not None
    return slug, stream


def outcome(service, name: str) -> float:
    return metric(service.url, "public_status_upstream_requests_total", f'outcome="{name}"')


@pytest.mark.parametrize("validator", ["etag", "last_modified"])
def test_an_unchanged_document_is_a_304_and_the_stream_stays_quiet(start_service, pg, upstream, validator):
    service = start_service()
    value = '"v1"' if validator == "etag" else "Wed, 02 Dec 2026 10:00:00 GMT"
    slug, stream = watched(service, pg, upstream, {"A1": "open"}, **{validator: value})
    route = upstream.routes[f"/{slug}"]
    wait_for(lambda: route.not_modified >= 3)           # polls every 0.2 s, each a 304
    header = "If-None-Match" if validator == "etag" else "If-Modified-Since"
    assert upstream.requests_to(f"/{slug}")[-1].headers[header] == value
    assert upstream.requests_to(f"/{slug}")[0].headers.get(header) is None   # the first asks all
    assert outcome(service, "not_modified") >= 3
    assert stream.next_event("bulk_update", timeout=0.5) is None
    answer = requests.get(f"{service.url}/api/public/{slug}/status", timeout=5)
    assert answer.json()["statuses"] == {"A1": "available"}
    stream.close()


def test_a_change_behind_a_new_validator_reaches_the_streams(start_service, pg, upstream):
    service = start_service()
    slug, stream = watched(service, pg, upstream, {"A1": "open"}, etag='"v1"')
    wait_for(lambda: upstream.routes[f"/{slug}"].not_modified >= 1)
    upstream.set_statuses(f"/{slug}", {"A1": "closed"}, etag='"v2"')
    assert stream.next_event("bulk_update", timeout=3).json() == {"updates": {"A1": "sold"}}
    wait_for(lambda: upstream.requests_to(f"/{slug}")[-1].headers.get("If-None-Match") == '"v2"')
    stream.close()


def test_validators_never_cross_projects_on_one_host(start_service, pg, upstream):
    service = start_service()
    one, first = watched(service, pg, upstream, {"A1": "open"}, etag='"one"')
    two, second = watched(service, pg, upstream, {"A1": "open"}, etag='"two"')
    wait_for(lambda: upstream.routes[f"/{one}"].not_modified >= 2 and upstream.routes[f"/{two}"].not_modified >= 2)
    sent = {slug: {r.headers.get("If-None-Match") for r in upstream.requests_to(f"/{slug}")}
            for slug in (one, two)}
    assert sent == {one: {None, '"one"'}, two: {None, '"two"'}}
    first.close()
    second.close()


def test_a_changed_config_forgets_the_validators(start_service, pg, upstream):
    service = start_service()
    slug, stream = watched(service, pg, upstream, {"A1": "open"}, etag='"v1"')
    wait_for(lambda: upstream.routes[f"/{slug}"].not_modified >= 1)
    pg.update_config(slug, status_mapping={"sold": ["open"]})       # the same bytes mean another thing
    assert stream.next_event("bulk_update", timeout=5).json() == {"updates": {"A1": "sold"}}
    asked = [r.headers.get("If-None-Match") for r in upstream.requests_to(f"/{slug}")]
    assert None in asked[2:]                              # asked whole again under the new mapping
    stream.close()


RETRY_AFTER_FORMS = {
    "seconds": lambda seconds: str(seconds),
    "date": lambda seconds: email.utils.formatdate(time.time() + seconds, usegmt=True),
}


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("form", RETRY_AFTER_FORMS)
def test_retry_after_holds_back_the_poller_gets_and_refreshes(start_service, pg, upstream, status, form):
    service = start_service(REFRESH_MIN_INTERVAL="0", STATUS_CACHE_TTL="0.1")
    slug, stream = watched(service, pg, upstream, {"A1": "open"}, interval=0.5)
    upstream.set(f"/{slug}", b"", status=status, headers={"Retry-After": RETRY_AFTER_FORMS[form](3)})
    wait_for(lambda: outcome(service, "rate_limited") == 1, timeout=3)
    held_since = time.monotonic()
    asked = upstream.count(f"/{slug}")
    for _ in range(5):                                    # GETs and refreshes meanwhile
        assert requests.get(f"{service.url}/api/public/{slug}/status", timeout=5).status_code == 200
        refresh = requests.post(f"{service.url}/api/public/{slug}/status/refresh", timeout=5)
        assert refresh.status_code == 200 and refresh.json()["statuses"] == {"A1": "available"}
        time.sleep(0.2)
    assert upstream.count(f"/{slug}") == asked            # nobody asked it again
    assert metric(service.url, "public_status_upstream_deferred_total") >= 5
    upstream.set_statuses(f"/{slug}", {"A1": "closed"})
    assert stream.next_event("bulk_update", timeout=5).json() == {"updates": {"A1": "sold"}}
    first_again = next(r.at for r in upstream.requests_to(f"/{slug}")[asked:])
    assert first_again - held_since >= 1.5                # the 3 s asked, less the time to see it
    assert service.logs().count("asks us to wait") == 1   # once for the spell
    stream.close()


def test_a_retry_after_beyond_eight_intervals_is_cut_to_them(start_service, pg, upstream):
    service = start_service()
    slug, stream = watched(service, pg, upstream, {"A1": "open"}, interval=0.2)
    upstream.set(f"/{slug}", b"", status=429, headers={"Retry-After": "86400"})
    wait_for(lambda: outcome(service, "rate_limited") >= 1, timeout=3)
    upstream.set_statuses(f"/{slug}", {"A1": "closed"})
    assert stream.next_event("bulk_update", timeout=4).json() == {"updates": {"A1": "sold"}}
    stream.close()



@pytest.mark.parametrize("form", ["zero", "a date gone by"])
def test_a_retry_after_shorter_than_the_backoff_does_not_cut_it(start_service, pg, upstream, form):
    """"At least that long": a client API that says Retry-After: 0 while it keeps
    failing is still backed off from, exponentially, as any failing one is."""
    service = start_service()
    slug, stream = watched(service, pg, upstream, {"A1": "open"}, interval=0.5)
    retry_after = "0" if form == "zero" else email.utils.formatdate(time.time() - 60, usegmt=True)
    upstream.set(f"/{slug}", b"", status=429, headers={"Retry-After": retry_after})
    wait_for(lambda: outcome(service, "rate_limited") >= 1, timeout=3)
    asked = upstream.count(f"/{slug}")
    time.sleep(2.5)          # backoff: 0.5-1 s, then 1-2 s, then 2-4 s (the 8-interval cap)
    assert upstream.count(f"/{slug}") - asked <= 3
    stream.close()


def test_with_no_snapshot_yet_a_get_says_when_to_come_back(start_service, pg, upstream):
    service = start_service()
    slug = pg.add_project(pg.unique_slug("manners"), base_url=upstream.url, interval=1)
    upstream.set(f"/{slug}", b"", status=429, headers={"Retry-After": "6"})
    first = requests.get(f"{service.url}/api/public/{slug}/status", timeout=5)
    second = requests.get(f"{service.url}/api/public/{slug}/status", timeout=5)
    assert first.status_code == second.status_code == 503
    assert 5 <= int(second.headers["Retry-After"]) <= 6
    assert upstream.count(f"/{slug}") == 1


def test_on_redis_one_workers_retry_after_holds_every_worker_back(start_service, pg, upstream):
    server = RedisServer()
    try:
        env = {"REDIS_URL": server.url, "POLL_LEASE_TTL": "1", "REFRESH_MIN_INTERVAL": "0",
               "STATUS_CACHE_TTL": "0.1"}
        a, b = start_service(**env), start_service(**env)
        slug, stream = watched(a, pg, upstream, {"A1": "open"}, interval=0.5)
        requests.get(f"{b.url}/api/public/{slug}/status", timeout=5)
        upstream.set(f"/{slug}", b"", status=503, headers={"Retry-After": "3"})
        wait_for(lambda: outcome(a, "rate_limited") + outcome(b, "rate_limited") == 1, timeout=3)
        asked = upstream.count(f"/{slug}")
        for service in (a, b, a, b):
            assert requests.get(f"{service.url}/api/public/{slug}/status", timeout=5).status_code == 200
            assert requests.post(f"{service.url}/api/public/{slug}/status/refresh", timeout=5).status_code == 200
            time.sleep(0.25)
        assert upstream.count(f"/{slug}") == asked
        stream.close()
    finally:
        server.stop()
