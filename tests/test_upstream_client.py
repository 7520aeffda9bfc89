"""The upstream client alone, its transport replaced by requests-mock."""

import base64
import json

import pytest
import requests
import requests_mock as rm

from public_service import UpstreamClient, UpstreamError, project_from_row

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
    assert json.loads(upstream_client.get(make_project())) == {"A1": "open"}
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
    assert json.loads(upstream_client.get(make_project(endpoint="https://elsewhere.example.com/s"))) == {"B1": "sold"}


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
    assert upstream_client.get(make_project()) == body      # judging it is the service's job


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
        assert upstream_client.get(make_project()) == b'{"A": "open"}'


def test_unusable_config_fails_without_a_request(upstream_client, mock):
    with pytest.raises(UpstreamError) as raised:
        upstream_client.get(make_project("bearer", None))
    assert raised.value.outcome == "config"
    assert mock.call_count == 0


@pytest.mark.parametrize(("status", "ok"), [(200, True), (204, True), (299, True), (300, False)])
def test_only_2xx_answers_are_bodies(upstream_client, mock, status, ok):
    mock.get(BASE + "/units", status_code=status, content=b"{}")
    if ok:
        assert upstream_client.get(make_project()) == b"{}"
    else:
        with pytest.raises(UpstreamError, match="http_error"):
            upstream_client.get(make_project())


def test_a_declared_length_at_the_limit_is_read():
    upstream_client = UpstreamClient(max_bytes=13)
    with rm.Mocker(session=upstream_client.session) as mock:
        mock.get(BASE + "/units", content=b'{"A": "open"}', headers={"Content-Length": "13"})
        assert upstream_client.get(make_project()) == b'{"A": "open"}'
