"""The operator's view: metrics that move as the service works, and JSON log lines."""

import json
import signal

import pytest
import requests

from support import EventStream, RedisServer, metric, wait_for

pytestmark = pytest.mark.e2e


def test_metrics_move_as_the_service_works(start_service, pg, upstream):
    service = start_service(SSE_PING_INTERVAL="30")
    slug = pg.add_project(pg.unique_slug("metrics"), base_url=upstream.url)
    broken = pg.add_project(pg.unique_slug("metrics"), base_url=upstream.url)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    upstream.set(f"/{broken}", b"nope", status=500)

    def m(name, labels=""):
        return metric(service.url, name, labels)

    assert m("public_status_open_streams") == 0
    requests.get(f"{service.url}/api/public/{slug}/status", timeout=5)
    requests.get(f"{service.url}/api/public/{slug}/status", timeout=5)
    assert m("public_status_cache_total", 'result="miss"') == 1
    assert m("public_status_cache_total", 'result="hit"') == 1
    assert m("public_status_upstream_requests_total", 'outcome="ok"') == 1
    assert m("public_status_upstream_seconds_count") == 1

    requests.get(f"{service.url}/api/public/{broken}/status", timeout=5)
    assert m("public_status_upstream_requests_total", 'outcome="http_error"') == 1

    def get_until(condition):
        requests.get(f"{service.url}/api/public/{slug}/status", timeout=5)
        return condition()

    wait_for(lambda: get_until(lambda: m("public_status_cache_total", 'result="miss"') == 2))
    upstream.set(f"/{slug}", b"nope", status=500)       # once the cache expires: stale
    wait_for(lambda: get_until(lambda: m("public_status_cache_total", 'result="stale"') == 1))
    assert m("public_status_cache_total", 'result="miss"') == 2

    requests.post(f"{service.url}/api/public/{slug}/status/refresh", timeout=5)
    requests.post(f"{service.url}/api/public/{slug}/status/refresh", timeout=5)
    assert m("public_status_refresh_limited_total") == 1

    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    streams = [EventStream(service.port, f"/api/public/{slug}/status/stream") for _ in range(3)]
    streams.append(EventStream(service.port, f"/api/public/{broken}/status/stream"))
    for stream in streams:
        stream.next_event("connected")
    assert m("public_status_open_streams") == 4
    assert m("public_status_watched_projects") == 2
    assert m("public_status_pollers") == 2
    for stream in streams:
        stream.close()
    wait_for(lambda: m("public_status_pollers") == 0)
    assert m("public_status_open_streams") == 0 and m("public_status_watched_projects") == 0

    text = requests.get(f"{service.url}/metrics", timeout=5).text
    requests.get(f"{service.url}/api/public/unknown-slug-xyz/status", timeout=5)
    assert "unknown-slug-xyz" not in requests.get(f"{service.url}/metrics", timeout=5).text
    assert slug not in text and broken not in text   # no slugs as label values at all


def test_json_logs_carry_project_event_and_duration(start_service, pg, upstream):
    service = start_service(LOG_FORMAT="json")
    slug = pg.add_project(pg.unique_slug("logs"), base_url=upstream.url)
    upstream.set(f"/{slug}", b"nope", status=502)
    assert requests.get(f"{service.url}/api/public/{slug}/status", timeout=5).status_code == 503

    def ours():
        entries = []
        for line in service.logs().splitlines():
            if line.startswith("{"):
                entries.append(json.loads(line))
        return [e for e in entries if e.get("project") == slug]

    [entry] = wait_for(ours)
    assert entry["event"] == "upstream_failed"
    assert entry["level"] == "WARNING" and entry["logger"] == "public_service"
    assert isinstance(entry["duration"], float) and entry["duration"] < 1
    assert "HTTP 502" in entry["message"]


def test_with_json_logs_every_line_is_json_gunicorns_own_included(start_service, pg, upstream):
    """LOG_FORMAT=json reaches gunicorn's master (start, workers, shutdown), its workers
    and its access log: one object a line, the service's keys, an access line with its
    request's fields, redacted like every other line."""
    service = start_service(LOG_FORMAT="json")
    secret = "json-access-Secret-77"
    slug = pg.add_project(pg.unique_slug("jsonlog"), base_url=upstream.url, auth_type="bearer",
                          credentials={"token": secret})
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    answer = requests.get(f"{service.url}/api/public/{slug}/status?seen={secret}", timeout=5,
                          headers={"User-Agent": "probe/1"})
    assert answer.status_code == 200
    assert service.stop() == 0

    lines = [line for line in service.logs().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]       # fails on any line that is not JSON
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
        assert entry["time"].endswith("Z")
    messages = [(e["logger"], e["message"]) for e in entries]
    for said in ("Listening at: http://127.0.0.1:", "Booting worker with pid", "Shutting down: Master"):
        assert any(logger == "gunicorn.error" and said in message for logger, message in messages), said
    [access] = [e for e in entries if e["logger"] == "gunicorn.access" and e.get("path", "").endswith("/status")]
    assert (access["method"], access["status"], access["user_agent"]) == ("GET", 200, "probe/1")
    assert access["path"] == f"/api/public/{slug}/status" and access["query"] == "seen=***"
    assert isinstance(access["bytes"], int) and access["bytes"] > 0
    assert isinstance(access["duration"], float) and access["duration"] < 5
    assert secret not in service.logs()


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_a_streams_access_line_counts_every_byte_it_sent(start_service, pg, upstream, gzip):
    """A waiting stream is written to by the fanout, not through the server: its access
    line still counts every byte that went out, to the last chunk."""
    service = start_service(LOG_FORMAT="json", SSE_PING_INTERVAL="30")
    slug = pg.add_project(pg.unique_slug("bytes"), base_url=upstream.url, interval=0.1)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    events = EventStream(service.port, f"/api/public/{slug}/status/stream",
                         headers={"Accept-Encoding": "gzip"} if gzip else None)
    assert events.next_event("status_update") is not None
    for status in ("held", "closed", "open"):
        upstream.set_statuses(f"/{slug}", {"A1": status})
        assert events.next_event("bulk_update", 3) is not None
    service.process.send_signal(signal.SIGTERM)         # sent away: `retry:`, the last chunk
    while events.next(5) is not None:
        pass
    assert events.closed and service.process.wait(10) == 0

    def access_line():
        entries = [json.loads(line) for line in service.logs().splitlines() if line.strip()]
        return next((e for e in entries if e["logger"] == "gunicorn.access"
                     and e.get("path", "").endswith("/stream")), None)
    wait_for(lambda: access_line() is not None)
    assert access_line()["bytes"] == events.received


def test_several_workers_without_redis_are_told_once(start_service):
    """WEB_CONCURRENCY=2, as Heroku's Python buildpack sets it on its smallest dynos: the
    master says once what that costs without REDIS_URL; with it, or with one worker,
    nothing is said."""
    warning = "workers without REDIS_URL"
    alone = start_service(WEB_CONCURRENCY="2")
    wait_for(lambda: len(alone.worker_pids()) == 2)
    assert alone.logs().count("2 " + warning) == 1
    assert start_service().logs().count(warning) == 0
    redis_server = RedisServer()
    try:
        shared = start_service(WEB_CONCURRENCY="2", REDIS_URL=redis_server.url)
        wait_for(lambda: len(shared.worker_pids()) == 2)
        assert shared.stop() == 0 and shared.logs().count(warning) == 0
    finally:
        redis_server.stop()
