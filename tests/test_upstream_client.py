"""The upstream client alone, its transport replaced by requests-mock."""

import base64
import json
import time

import pytest
import requests
import requests_mock as rm

from public_service import (
    VALIDATOR_LENGTH,
    NotModified,
    UpstreamClient,
    UpstreamError,
    Validators,
    project_from_row,
    retry_after_seconds,
)

BASE = "https://client.example.com/api"


def make_project(auth_type=None, credentials=None, base=BASE, endpoint="units", timeout=None):
    return project_from_row(
        "demo", (base, endpoint, auth_type, json.dumps(credentials) if credentials else None,
                 timeout, None, None), 30.0)


@pytest.fixture
def upstream_client():
    return UpstreamClient(max_bytes=1000)


@pytest.fixture
def mock(upstream_client):
    with rm.Mocker(session=upstream_client.session) as mocker:
        yield mocker


def test_get_joins_the_url_and_returns_the_body(upstream_client, mock):
    mock.get(BASE + "/units", json={"A1": "open"})
    assert json.loads(upstream_client.get(make_project()).content) == {"A1": "open"}
    assert mock.last_request.headers["Accept"] == "application/json"
    assert "Authorization" not in mock.last_request.headers


def test_bearer_header(upstream_client, mock):
    mock.get(BASE + "/units", json={})
    upstream_client.get(make_project("bearer", {"token": "tok-123"}))
    assert mock.last_request.headers["Authorization"] == "Bearer tok-123"


def test_api_key_header(upstream_client, mock):
    mock.get(BASE + "/units", json={})
    upstream_client.get(make_project("api_key", {"header": "X-Client-Key", "key": "k-456"}))
    assert mock.last_request.headers["X-Client-Key"] == "k-456"
    upstream_client.get(make_project("api_key", {"api_key": "k-789"}))
    assert mock.last_request.headers["X-API-Key"] == "k-789"


def test_basic_header(upstream_client, mock):
    mock.get(BASE + "/units", json={})
    upstream_client.get(make_project("basic", {"username": "ann", "password": "pw"}))
    assert mock.last_request.headers["Authorization"] == "Basic " + base64.b64encode(b"ann:pw").decode()


def test_userinfo_in_the_base_url_becomes_basic_auth_and_leaves_the_url(upstream_client, mock):
    mock.get(BASE + "/units", json={})
    upstream_client.get(make_project(base="https://ann:pw@client.example.com/api"))
    assert mock.last_request.url == BASE + "/units"
    assert mock.last_request.headers["Authorization"] == "Basic " + base64.b64encode(b"ann:pw").decode()


def test_configured_auth_wins_over_userinfo(upstream_client, mock):
    mock.get(BASE + "/units", json={})
    upstream_client.get(make_project("bearer", {"token": "t"}, base="https://ann:pw@client.example.com/api"))
    assert mock.last_request.headers["Authorization"] == "Bearer t"


def test_absolute_endpoint_is_used_as_is(upstream_client, mock):
    mock.get("https://elsewhere.example.com/s", json={"B1": "sold"})
    assert json.loads(upstream_client.get(make_project(endpoint="https://elsewhere.example.com/s")).content) == {"B1": "sold"}


def test_timeout_is_passed_to_requests(upstream_client, mock):
    mock.get(BASE + "/units", json={})
    upstream_client.get(make_project(timeout=2.5))
    assert mock.last_request.timeout == 2.5


@pytest.mark.parametrize("status", [400, 401, 403, 404, 500, 502, 503])
def test_http_errors(upstream_client, mock, status):
    mock.get(BASE + "/units", status_code=status, text="oops")
    with pytest.raises(UpstreamError) as raised:
        upstream_client.get(make_project())
    assert (raised.value.outcome, raised.value.detail) == ("http_error", f"HTTP {status}")


def test_redirects_are_not_followed(upstream_client, mock):
    mock.get(BASE + "/units", status_code=302, headers={"Location": "https://evil.example.com/"})
    mock.get("https://evil.example.com/", json={})
    with pytest.raises(UpstreamError, match="HTTP 302"):
        upstream_client.get(make_project("api_key", {"key": "k"}))
    assert mock.call_count == 1


@pytest.mark.parametrize(("exception", "outcome"), [
    (requests.exceptions.ConnectTimeout, "timeout"),
    (requests.exceptions.ReadTimeout, "timeout"),
    (requests.exceptions.SSLError, "tls"),
    (requests.exceptions.ConnectionError, "connection"),
    (requests.exceptions.ChunkedEncodingError, "connection"),
])
def test_transport_errors(upstream_client, mock, exception, outcome):
    mock.get(BASE + "/units", exc=exception("https://secret@client.example.com/api/units?key=x"))
    with pytest.raises(UpstreamError) as raised:
        upstream_client.get(make_project())
    assert raised.value.outcome == outcome
    assert "secret" not in str(raised.value) and "key=x" not in str(raised.value)


def a_chain() -> BaseException:
    inner = ConnectionRefusedError("refused")
    middle = OSError("wrapping")
    middle.__cause__ = inner
    return requests.exceptions.ConnectionError(middle)


def looped() -> BaseException:
    outer = requests.exceptions.ConnectionError("a")
    outer.__context__ = KeyError("b")
    outer.__context__.__context__ = outer                 # a cycle ends, it does not spin
    return outer


def with_reason() -> BaseException:
    exc = requests.exceptions.ConnectionError("x")
    exc.reason = TimeoutError("slow")
    return exc


@pytest.mark.parametrize(("exception", "detail"), [
    (a_chain(), {"ConnectionRefusedError"}),
    (with_reason(), {"TimeoutError"}),
    (looped(), {"ConnectionError", "KeyError"}),
    (requests.exceptions.ConnectionError("alone"), {"ConnectionError"}),
    (requests.exceptions.SSLError(ConnectionResetError("reset")), {"ConnectionResetError"}),
], ids=["a-chain", "a-reason", "a-loop", "alone", "tls"])
def test_a_transport_error_says_its_innermost_cause_and_no_more(upstream_client, mock, exception,
                                                                detail):
    mock.get(BASE + "/units", exc=exception)
    with pytest.raises(UpstreamError) as raised:
        upstream_client.get(make_project())
    assert raised.value.detail in detail


@pytest.mark.parametrize("body", [b"<html>", b"", b'"open"', b'[{"unit": "A1"}]'])
def test_any_body_of_a_2xx_is_returned_as_it_came(upstream_client, mock, body):
    mock.get(BASE + "/units", content=body)
    assert upstream_client.get(make_project()).content == body      # judging it is the service's job


def test_no_cookie_is_kept_or_sent(upstream_client, mock):
    """Two projects' client APIs on one host: what one sets never reaches the other."""
    cookies = "; ".join(f"c{i}=v{i}" for i in range(3))
    mock.get(BASE + "/units", json={}, headers={"Set-Cookie": f"session=abc123; Path=/; {cookies}"})
    mock.get(BASE + "/other", json={})
    for _ in range(3):
        upstream_client.get(make_project())
    upstream_client.get(make_project(endpoint="other"))
    assert len(upstream_client.session.cookies) == 0
    assert all("Cookie" not in request.headers for request in mock.request_history)


def test_declared_oversized_body(upstream_client, mock):
    mock.get(BASE + "/units", content=b"{}", headers={"Content-Length": "1001"})
    with pytest.raises(UpstreamError) as raised:
        upstream_client.get(make_project())
    assert raised.value.outcome == "too_large"


def test_streamed_oversized_body(upstream_client, mock):
    body = json.dumps({f"U{i}": "open" for i in range(200)}).encode()
    assert len(body) > 1000
    mock.get(BASE + "/units", content=body)
    with pytest.raises(UpstreamError) as raised:
        upstream_client.get(make_project())
    assert raised.value.outcome == "too_large"


def test_body_at_the_limit_is_fine():
    upstream_client = UpstreamClient(max_bytes=len(b'{"A": "open"}'))
    with rm.Mocker(session=upstream_client.session) as mock:
        mock.get(BASE + "/units", content=b'{"A": "open"}')
        assert upstream_client.get(make_project()).content == b'{"A": "open"}'


def test_unusable_config_fails_without_a_request(upstream_client, mock):
    with pytest.raises(UpstreamError) as raised:
        upstream_client.get(make_project("bearer", None))
    assert raised.value.outcome == "config"
    assert mock.call_count == 0


@pytest.mark.parametrize(("status", "ok"), [(200, True), (204, True), (299, True), (300, False)])
def test_only_2xx_answers_are_bodies(upstream_client, mock, status, ok):
    mock.get(BASE + "/units", status_code=status, content=b"{}")
    if ok:
        assert upstream_client.get(make_project()).content == b"{}"
    else:
        with pytest.raises(UpstreamError, match="http_error"):
            upstream_client.get(make_project())


def test_a_declared_length_at_the_limit_is_read():
    upstream_client = UpstreamClient(max_bytes=13)
    with rm.Mocker(session=upstream_client.session) as mock:
        mock.get(BASE + "/units", content=b'{"A": "open"}', headers={"Content-Length": "13"})
        assert upstream_client.get(make_project()).content == b'{"A": "open"}'


# --------------------------------------------------------------------------- upstream manners

def test_validators_are_kept_and_sent_back_as_a_conditional_request(upstream_client, mock):
    project = make_project()
    mock.get(BASE + "/units", json={"A1": "open"},
             headers={"ETag": '"v1"', "Last-Modified": "Wed, 02 Dec 2026 10:00:00 GMT"})
    first = upstream_client.get(project)
    assert first.validators == Validators('"v1"', "Wed, 02 Dec 2026 10:00:00 GMT", project.settings)
    assert "If-None-Match" not in mock.last_request.headers
    mock.get(BASE + "/units", status_code=304)
    assert isinstance(upstream_client.get(project, first.validators), NotModified)
    assert mock.last_request.headers["If-None-Match"] == '"v1"'
    assert mock.last_request.headers["If-Modified-Since"] == "Wed, 02 Dec 2026 10:00:00 GMT"


def test_a_304_to_a_request_that_was_not_conditional_is_a_failure(upstream_client, mock):
    mock.get(BASE + "/units", status_code=304)
    with pytest.raises(UpstreamError, match="http_error"):
        upstream_client.get(make_project())


@pytest.mark.parametrize("etag", ['"' + "x" * 2000 + '"', "a\tb", ""])
def test_a_validator_that_cannot_be_sent_back_is_not_kept(upstream_client, mock, etag):
    mock.get(BASE + "/units", json={}, headers={"ETag": etag})
    assert upstream_client.get(make_project()).validators is None


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize(("value", "seconds"), [
    ("7", 7.0), ("0", 0.0), ("99999999999999999999999", 240.0),       # capped: 8 x 30 s
    ("Wed, 02 Dec 2026 10:01:40 GMT", 100.0), ("Wed, 02 Dec 2026 09:00:00 GMT", 0.0),
    ("soon", 240.0), ("-5", 240.0),
])
def test_a_retry_after_holds_us_back_at_most_eight_intervals(mock, status, value, seconds):
    upstream_client = UpstreamClient(1_000_000, clock=lambda: 1796205600.0)  # 2026-12-02 10:00 UTC
    with rm.Mocker(session=upstream_client.session) as mock:
        mock.get(BASE + "/units", status_code=status, headers={"Retry-After": value})
        with pytest.raises(UpstreamError) as raised:
            upstream_client.get(make_project())
    assert raised.value.outcome == "rate_limited"
    assert raised.value.retry_after == pytest.approx(seconds)


def test_without_retry_after_a_429_is_a_failure_like_any_other(upstream_client, mock):
    mock.get(BASE + "/units", status_code=429)
    with pytest.raises(UpstreamError) as raised:
        upstream_client.get(make_project())
    assert raised.value.outcome == "http_error" and raised.value.retry_after is None


def test_retry_after_seconds_reads_both_forms():
    assert retry_after_seconds(" 12 ", now=0, cap=60) == 12
    assert retry_after_seconds("Thu, 01 Jan 1970 00:00:30 GMT", now=0, cap=60) == 30
    assert retry_after_seconds("Thu, 01 Jan 1970 00:00:30 GMT", now=100, cap=60) == 0
    assert retry_after_seconds("١٢", now=0, cap=60) == 60     # digits, but not ASCII ones


@pytest.mark.parametrize("headers", [{"ETag": '"v1"'}, {"Last-Modified": "Wed, 02 Dec 2026 10:00:00 GMT"}])
def test_either_validator_alone_is_kept_and_sent_back_alone(upstream_client, mock, headers):
    project = make_project()
    mock.get(BASE + "/units", json={}, headers=headers)
    kept = upstream_client.get(project).validators
    assert kept is not None and (kept.etag, kept.last_modified) == (headers.get("ETag"), headers.get("Last-Modified"))
    upstream_client.get(project, kept)
    sent = {name: mock.last_request.headers.get(name) for name in ("If-None-Match", "If-Modified-Since")}
    assert sent == {"If-None-Match": headers.get("ETag"), "If-Modified-Since": headers.get("Last-Modified")}


def test_a_validator_of_exactly_the_longest_length_is_kept(upstream_client, mock):
    etag = '"' + "x" * (VALIDATOR_LENGTH - 2) + '"'
    mock.get(BASE + "/units", json={}, headers={"ETag": etag})
    assert upstream_client.get(make_project()).validators.etag == etag


def test_a_retry_after_date_without_a_zone_is_read_as_utc(monkeypatch):
    # "-0000" says the zone is unknown; parsedate_to_datetime gives a naive time for it,
    # which must not be taken as the machine's local time
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert retry_after_seconds("Thu, 01 Jan 1970 00:00:30 -0000", now=0, cap=60) == 30
    finally:
        monkeypatch.undo()
        time.tzset()
