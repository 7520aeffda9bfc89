"""HTTP answers of the app in-process: status codes, bodies and headers, every route."""

import gzip
import json
import logging
import zlib

import pytest

from public_service import json_error

UNREACHABLE_DB = "postgresql://nobody:db-pass-Kq2@127.0.0.1:1/none"


def assert_public_headers(response):
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def hits(app) -> float:
    """Warm GETs so far: the cache's hits, as /metrics shows them."""
    registry = app.extensions["public_status"].metrics.registry
    return registry.get_sample_value("public_status_cache_total", {"result": "hit"})


def assert_json_error(response, status):
    assert response.status_code == status
    assert response.content_type == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    assert_public_headers(response)


def test_get_status(client, slug):
    response = client.get(f"/api/public/{slug}/status")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    assert response.get_json() == {
        "project": slug,
        "statuses": {"A101": "available", "A102": "reserved", "A103": "sold"},
        "count": 3,
    }
    assert_public_headers(response)


def test_head_status(client, slug):
    response = client.head(f"/api/public/{slug}/status")
    assert response.status_code == 200
    assert response.data == b""


def test_unknown_project_is_404(client):
    assert_json_error(client.get("/api/public/no-such-project/status"), 404)
    assert_json_error(client.post("/api/public/no-such-project/status/refresh"), 404)
    assert_json_error(client.get("/api/public/no-such-project/status/stream"), 404)


def test_inactive_and_unconfigured_projects_are_404(client, pg, upstream):
    inactive = pg.add_project(pg.unique_slug(), base_url=upstream.url, active=False)
    unconfigured = pg.add_project(pg.unique_slug(), config=False)
    for slug in (inactive, unconfigured):
        assert_json_error(client.get(f"/api/public/{slug}/status"), 404)
        assert_json_error(client.get(f"/api/public/{slug}/status/stream"), 404)


BAD_SLUGS = [
    "UPPER", "-leading", "a" * 129, "sp%20ace", "unicod%C3%A9", "x'%20OR%201=1--",
    "..", "%2e%2e", "a%2Fb", "a%00b", "a_b", "a.b", "%E2%80%A8",
]


@pytest.fixture
def offline_client(make_app):
    """Flask's test client of an app whose database never answers."""
    return make_app({"DATABASE_URL": UNREACHABLE_DB, "DB_TIMEOUT": "1"}).test_client()


@pytest.mark.parametrize("bad_slug", BAD_SLUGS)
@pytest.mark.parametrize("route", ["status", "status/stream", "status/refresh"])
def test_malformed_slugs_are_404_without_touching_the_database(offline_client, bad_slug, route):
    method = offline_client.post if route.endswith("refresh") else offline_client.get
    assert_json_error(method(f"/api/public/{bad_slug}/{route}"), 404)


def test_the_longest_valid_slug_reaches_the_database(offline_client):
    assert_json_error(offline_client.get(f"/api/public/{'a' * 128}/status"), 503)


def test_never_seen_project_while_the_database_is_down_is_503(offline_client):
    response = offline_client.get("/api/public/some-project/status")
    assert_json_error(response, 503)
    assert int(response.headers["Retry-After"]) >= 1
    assert "db-pass" not in response.get_data(as_text=True)


def test_stream_while_the_database_is_down_says_come_back(offline_client):
    response = offline_client.get("/api/public/some-project/status/stream")
    assert response.status_code == 200
    assert response.content_type == "text/event-stream"
    assert response.data.startswith(b"retry: ") and response.data.endswith(b"\n\n")
    assert 3000 <= int(response.data.split()[1]) <= 3000 + 5000   # SSE_RETRY_MS + spread


@pytest.mark.parametrize("path", [
    "/api//public/{slug}/status",
    "/api/public//{slug}/status",
    "/api/public/{slug}//status",
    "/api/public/{slug}/status/",
    "//api/public/{slug}/status",
    "/api/public/{slug}/status//stream",
    "/api/public/{slug}/status/stream/",
    "/api/public/{slug}",
    "/api/public/",
])
def test_never_a_redirect_whatever_the_slashes(client, slug, path):
    for method in (client.get, client.post):
        response = method(path.format(slug=slug))
        assert not 300 <= response.status_code < 400
        assert "Location" not in response.headers
        assert response.status_code in (404, 405)
        assert_json_error(response, response.status_code)


@pytest.mark.parametrize(("method", "route", "allowed"), [
    ("post", "status", "GET"),
    ("delete", "status", "GET"),
    ("put", "status/stream", "GET"),
    ("get", "status/refresh", "POST"),
    ("patch", "status/refresh", "POST"),
])
def test_wrong_methods_are_405_json(client, slug, method, route, allowed):
    response = getattr(client, method)(f"/api/public/{slug}/{route}")
    assert_json_error(response, 405)
    assert allowed in response.headers["Allow"]


def test_no_snapshot_yet_is_503_with_retry_after(client, pg, upstream):
    slug = pg.add_project(pg.unique_slug(), base_url=upstream.url)
    upstream.set(f"/{slug}", b"Internal trouble at client.example.com", status=500)
    response = client.get(f"/api/public/{slug}/status")
    assert_json_error(response, 503)
    assert int(response.headers["Retry-After"]) >= 1
    text = response.get_data(as_text=True)
    assert "127.0.0.1" not in text and "500" not in text and "client.example" not in text


def test_refresh_returns_the_body_then_429(client, slug):
    first = client.post(f"/api/public/{slug}/status/refresh")
    assert first.status_code == 200
    assert first.get_json()["count"] == 3
    assert_public_headers(first)
    second = client.post(f"/api/public/{slug}/status/refresh")
    assert_json_error(second, 429)
    assert second.headers["Retry-After"] == "1"


def test_stream_starts_with_connected_and_its_headers(client, slug):
    response = client.get(f"/api/public/{slug}/status/stream", headers={"Last-Event-ID": "x-1"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert_public_headers(response)
    first = next(response.response)
    assert first == (b'event: connected\nretry: 250\ndata: {"project": "%s", "resumed": false}\n\n'
                     % slug.encode())
    response.close()


@pytest.mark.parametrize(("seconds", "header"), [
    (0.2, "1"), (1.0, "1"), (1.01, "2"), (5.2, "6"), (29.999, "30"), (30, "30")])
def test_retry_after_rounds_up_to_whole_seconds_of_at_least_one(seconds, header):
    assert json_error(503, "later", seconds).headers["Retry-After"] == header
    assert "Retry-After" not in json_error(404, "not found").headers


def test_health_and_readiness(client, offline_client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert offline_client.get("/healthz").status_code == 200
    response = offline_client.get("/readyz")
    assert_json_error(response, 503)
    assert response.get_json() == {"error": "database unavailable"}


def test_unknown_paths_are_json_404(client):
    response = client.get("/nothing-here")
    assert response.status_code == 404
    assert json.loads(response.data) == {"error": "not found"}


def test_metrics_are_prometheus_text(client, slug):
    client.get(f"/api/public/{slug}/status")
    client.get(f"/api/public/{slug}/status")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'public_status_cache_total{result="hit"} 1.0' in text
    assert 'public_status_cache_total{result="miss"} 1.0' in text
    assert 'public_status_upstream_requests_total{outcome="ok"} 1.0' in text
    assert "public_status_open_streams 0.0" in text
    assert slug not in text


def test_the_warm_fast_path_answers_exactly_as_flask_does(app, client, slug):
    slow = client.get(f"/api/public/{slug}/status")      # a miss: Flask's own path
    before = hits(app)
    fast = client.get(f"/api/public/{slug}/status?x=1")  # warm: the fast path
    assert hits(app) == before + 1
    assert fast.status_code == slow.status_code == 200
    assert fast.data == slow.data
    assert list(fast.headers.items()) == list(slow.headers.items())


def test_the_fast_path_leaves_everything_else_to_flask(client, slug):
    client.get(f"/api/public/{slug}/status")
    assert client.head(f"/api/public/{slug}/status").data == b""
    assert client.post(f"/api/public/{slug}/status").status_code == 405
    assert client.get(f"/api/public/{slug}x/status").status_code == 404
    assert client.get(f"/api/public/a/{slug}/status").status_code == 404


def test_a_configured_origin_is_on_every_answer_the_fast_path_included(make_app, pg, slug):
    origin = "https://board.example.com"
    app = make_app({"DATABASE_URL": pg.reader_url, "CORS_ALLOW_ORIGIN": origin})
    client = app.test_client()
    slow = client.get(f"/api/public/{slug}/status")
    fast = client.get(f"/api/public/{slug}/status")
    assert hits(app) == 1                                    # the second one took the fast path
    answers = [slow, fast, client.get("/api/public/no-such-project/status"),
               client.post(f"/api/public/{slug}/status/refresh"), client.get("/metrics")]
    for answer in answers:
        assert answer.headers["Access-Control-Allow-Origin"] == origin
    assert list(fast.headers.items()) == list(slow.headers.items())


def test_a_password_in_redis_url_is_redacted(make_app, pg, capfd):
    password = "redis-pw-Vq93Lk"
    app = make_app({"DATABASE_URL": pg.reader_url, "LOG_FORMAT": "json",
                    "REDIS_URL": f"redis://:{password}@127.0.0.1:1/0"})
    public = app.extensions["public_status"]
    logging.getLogger("redis.connection").warning("connecting to %s", public.config.redis_url)
    err = capfd.readouterr().err
    assert password not in err and "redis://:***@127.0.0.1:1/0" in err
    assert password not in repr(public.config) and password not in repr(public.store)


def test_a_warm_get_never_reaches_flask_and_anything_else_does(app, client, slug):
    dispatched = []
    app.before_request(lambda: dispatched.append(1))
    client.get(f"/api/public/{slug}/status")              # a miss: Flask's path
    assert dispatched == [1]
    fast = client.get(f"/api/public/{slug}/status")
    assert dispatched == [1] and fast.status == "200 OK"
    client.head(f"/api/public/{slug}/status")
    client.get(f"/api/public/{slug}/status", headers={"Content-Length": "3"}, data=b"abc")
    assert len(dispatched) == 3                               # a HEAD, a body: Flask's path
    client.get(f"/api/public/{slug}/status", environ_overrides={"CONTENT_LENGTH": "0"})
    assert len(dispatched) == 3                               # an empty body is none
    client.get(f"/api/public/{slug}/status", environ_overrides={"HTTP_TRANSFER_ENCODING": "chunked"})
    assert len(dispatched) == 4


def test_the_stream_gauges_move_in_process(client, slug):
    response = client.get(f"/api/public/{slug}/status/stream")
    next(response.response)                                   # `connected`: subscribed
    text = client.get("/metrics").get_data(as_text=True)
    assert "public_status_open_streams 1.0" in text
    assert "public_status_watched_projects 1.0" in text
    response.close()
    assert "public_status_open_streams 0.0" in client.get("/metrics").get_data(as_text=True)


def test_every_answer_exposes_retry_after_to_scripts(client, slug):
    for answer in (client.get(f"/api/public/{slug}/status"), client.get("/nothing")):
        assert answer.headers["Access-Control-Expose-Headers"] == "Retry-After"


def test_a_declared_body_over_the_limit_is_413(client, slug):
    answer = client.post(f"/api/public/{slug}/status/refresh", data=b"x" * (16 * 1024 + 1))
    assert_json_error(answer, 413)
    assert answer.get_json() == {"error": "request body too large"}
    at_the_limit = client.post(f"/api/public/{slug}/status/refresh", data=b"x" * (16 * 1024))
    assert at_the_limit.status_code == 200


def test_a_get_that_accepts_gzip_gets_the_snapshots_gzip_body(client, slug):
    url = f"/api/public/{slug}/status"
    plain = client.get(url)                                   # a miss: Flask's path
    packed = client.get(url, headers={"Accept-Encoding": "gzip, deflate, br"})
    assert (packed.headers["Content-Encoding"], packed.headers["Vary"],
            packed.headers["Cache-Control"]) == ("gzip", "Accept-Encoding", "no-store, no-transform")
    assert gzip.decompress(packed.data) == plain.data
    assert plain.headers["Vary"] == "Accept-Encoding" and "Content-Encoding" not in plain.headers
    assert hits(client.application) >= 1
    refused = client.get(url, headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert refused.data == plain.data and "Content-Encoding" not in refused.headers
    head = client.head(url, headers={"Accept-Encoding": "gzip"})
    assert head.headers["Content-Encoding"] == "gzip" and head.data == b""


def test_the_fast_path_answers_gzip_exactly_as_flask_does(app, slug):
    slow_client, fast_client = app.test_client(), app.test_client()
    url = f"/api/public/{slug}/status"
    dispatched = []
    app.before_request(lambda: dispatched.append(1))
    slow = slow_client.get(url, headers={"Accept-Encoding": "gzip"})   # a miss: Flask's path
    fast = fast_client.get(url, headers={"Accept-Encoding": "gzip"})   # warm: the fast path
    assert dispatched == [1]
    assert fast.data == slow.data and list(fast.headers.items()) == list(slow.headers.items())


def test_compression_off_restores_todays_answers_exactly(make_app, pg, slug):
    client = make_app({"DATABASE_URL": pg.reader_url, "COMPRESSION": "off"}).test_client()
    url = f"/api/public/{slug}/status"
    for answer in (client.get(url, headers={"Accept-Encoding": "gzip"}),        # Flask's path
                   client.get(url, headers={"Accept-Encoding": "gzip"})):       # the fast path
        assert [name for name, _ in answer.headers] == [
            "Content-Type", "Content-Length", "Access-Control-Allow-Origin",
            "Access-Control-Expose-Headers", "Cache-Control"]
        assert answer.get_json()["project"] == slug
    stream = client.get(f"/api/public/{slug}/status/stream", headers={"Accept-Encoding": "gzip"})
    assert "Vary" not in stream.headers and "Content-Encoding" not in stream.headers
    assert next(stream.response).startswith(b"event: connected")
    stream.close()


def test_a_compressed_stream_is_one_gzip_stream_of_its_messages(client, slug):
    client.get(f"/api/public/{slug}/status")               # a snapshot to begin with
    response = client.get(f"/api/public/{slug}/status/stream", headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Cache-Control"] == "no-store, no-transform"
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    opening = decoder.decompress(next(iter(response.response)))    # what waited for the server
    assert opening.startswith(b"event: connected\n")
    assert b"\n\nid: " in opening and b"event: status_update\n" in opening   # the whole snapshot
    assert decoder.eof is False
    response.close()
