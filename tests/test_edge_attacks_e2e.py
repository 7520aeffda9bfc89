"""The edge probed as an attacker with a laptop would (issue "Hold the edge, round two"): the
real service under the Procfile's command, raw sockets on loopback. Bodies that never
come, framing a front end could read another way, ids of any length, request bytes that
would forge a log line, and the small things: Expect, Host, a head full of tokens, stray
bytes after a stream's request. Every loop is bounded."""

import base64
import json
import re
import socket
import time

import pytest
import requests

from support import EventStream, exchange, metric, seconds_until_closed, wait_for

pytestmark = pytest.mark.e2e



def statuses(answer: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


# --------------------------------------------------------------------------- bodies owed

@pytest.mark.parametrize("head", [
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 16000\r\n\r\n",
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
], ids=["content-length", "chunked", "get-with-a-body"])
def test_a_declared_body_that_never_comes_is_waited_for_one_header_timeout(start_service, head):
    service = start_service(HEADER_TIMEOUT="0.5", KEEPALIVE_TIMEOUT="5")
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        sock.sendall(head)
        answer = sock.recv(65536)                         # the answer comes at once
        assert statuses(answer) in ([200], [405]) and answer.endswith(b"}")
        assert b"Connection: close" in answer and b"100 Continue" not in answer
        assert seconds_until_closed(sock) <= 1.5            # HEADER_TIMEOUT, and one sweep


@pytest.mark.parametrize("first_bytes", [
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 16000\r\n\r\n",
    b"G",
], ids=["owing a body", "a byte of a head"])
def test_connections_that_cost_nothing_go_first_near_the_cap(start_service, slug, first_bytes):
    """Connections owing a body, and heads still coming in (after the idle ones), make
    room near the cap: one byte a connection cannot fill the worker."""
    service = start_service(HEADER_TIMEOUT="30", KEEPALIVE_TIMEOUT="30", SSE_PING_INTERVAL="0.2",
                            extra_args=["--worker-connections", "200"])
    streams = [EventStream(service.port, f"/api/public/{slug}/status/stream") for _ in range(10)]
    for stream in streams:
        assert stream.next_event("status_update") is not None
    crowd = []
    for _ in range(300):                                  # more than the worker may hold
        sock = socket.create_connection(("127.0.0.1", service.port))
        sock.sendall(first_bytes)
        crowd.append(sock)
    started = time.monotonic()
    assert requests.get(f"{service.url}/healthz", timeout=5).status_code == 200
    assert time.monotonic() - started < 1.0               # the crowd made room
    assert metric(service.url, "public_status_connections_evicted_total") >= 100
    for stream in streams:                                # no stream was closed for them
        assert stream.next_event("ping", timeout=2) is not None
    for sock in crowd:
        sock.close()


# --------------------------------------------------------------------------- framing

HIDDEN = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
SMUGGLED = {
    "two Content-Lengths": (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                            b"Content-Length: %d\r\n\r\n" % len(HIDDEN) + HIDDEN, 400),
    "Content-Length and Transfer-Encoding: Chunked": (
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b"0\r\n\r\n" % (len(HIDDEN) + 5) + HIDDEN, 400),
    "a bare CR": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\rContent-Length: 0\r\n\r\n" + HIDDEN, 400),
    "a space before a colon": (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length : %d\r\n\r\n"
                               % len(HIDDEN) + HIDDEN, 400),
    "a NUL in a header name": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX\x00A: 1\r\n\r\n" + HIDDEN, 400),
    "Transfer-Encoding: gzip": (b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"
                                + HIDDEN, 400),
    "no Host": (b"GET /healthz HTTP/1.1\r\n\r\n" + HIDDEN, 400),
    "two Hosts": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n" + HIDDEN, 400),
    "obs-folding": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n" + HIDDEN, 400),
    "gzip, then chunked": (b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                           b"0\r\n\r\n" + HIDDEN, 501),
    "a Content-Length with leading zeros": (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                            + b"0" * 19 + b"%d\r\n\r\n" % len(HIDDEN) + HIDDEN, 405),
}


@pytest.mark.parametrize(("data", "status"), SMUGGLED.values(), ids=SMUGGLED.keys())
def test_a_request_hidden_behind_ambiguous_framing_is_never_served(live, data, status):
    answer = exchange(live, data)
    assert statuses(answer) == [status]                   # the refusal only: nothing hidden served
    assert b"Connection: close" in answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head and "error" in json.loads(body)



REFUSED = {                                               # each after its method
    "413": b" /api/public/x/status/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n",
    "431": b" /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    "400": b" /healthz HTTP/1.1\r\nHost: x\r\nX\x00A: 1\r\n\r\n",
}


@pytest.mark.parametrize("method", ["POST", "HEAD"])
@pytest.mark.parametrize("status", REFUSED)
def test_the_edges_own_refusals_carry_every_answers_headers(live, status, method):
    """A page of another origin reading the answer must see it (CORS), nobody may keep
    it, and a HEAD gets the head alone."""
    data = method.encode() + REFUSED[status]
    answer = exchange(live, data)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert statuses(answer) == [int(status)]
    assert b"\r\nAccess-Control-Allow-Origin: *\r\n" in head and b"\r\nCache-Control: no-store" in head
    if method == "HEAD":
        assert body == b""
    else:
        assert "error" in json.loads(body)


# --------------------------------------------------------------------------- ids

@pytest.mark.parametrize("how", ["header", "query"])
def test_an_event_id_of_any_length_is_a_first_connect(live, slug, how):
    long_id = "abc-" + "9" * (5000 if how == "header" else 3900)
    path = f"/api/public/{slug}/status/stream"
    stream = (EventStream(live.port, path, headers={"Last-Event-ID": long_id}) if how == "header"
              else EventStream(live.port, f"{path}?lastEventId={long_id}"))
    assert stream.status == 200
    assert stream.next_event("connected").json()["resumed"] is False
    assert stream.next_event("status_update") is not None
    stream.close()
    assert "Traceback" not in live.logs()


# --------------------------------------------------------------------------- logs

def test_request_bytes_never_break_a_text_log_line(start_service):
    service = start_service(LOG_FORMAT="text")
    forged = base64.b64encode(b"evil\nFORGED 127.0.0.1 - - the sender's own line").decode()
    requests.get(f"{service.url}/healthz", headers={"Authorization": f"Basic {forged}"}, timeout=5)
    requests.get(f"{service.url}/api/public/%0AFORGED%0D/status", timeout=5)
    requests.get(f"{service.url}/healthz?q=%0AFORGED", timeout=5)
    folded = exchange(service, b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: a\r\n FORGED\r\n\r\n")
    assert statuses(folded) == [400]
    wait_for(lambda: service.logs().count("GET /") >= 3)
    lines = service.logs().splitlines()
    assert not [line for line in lines if "FORGED" in line and not re.match(r"\S+ - ", line)]
    assert not [line for line in lines if line.startswith(("FORGED", " FORGED"))]
    assert "evil" not in service.logs()                   # the client's own credential, nowhere


def test_every_line_is_json_whatever_the_request(start_service):
    service = start_service(LOG_FORMAT="json")
    for data in (b"GET /healthz HTTP/1.x\r\nHost: x\r\n\r\n",
                 b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                 b"GET /healthz HTTP/1.1\nHost: x\n\n",
                 b"GET /healthz HTTP/1.1\r\nHost: x\r\nX\x00: 1\r\n\r\n",
                 b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n"):
        assert statuses(exchange(service, data))[0] in (400, 505)
    requests.get(f"{service.url}/healthz", timeout=5)
    wait_for(lambda: '"path": "/healthz"' in service.logs())
    for line in service.logs().splitlines():
        assert isinstance(json.loads(line), dict), line


# --------------------------------------------------------------------------- the small things

def test_expect_100_continue_gets_the_final_answer_only(live, slug):
    answer = exchange(live, f"POST /api/public/{slug}/status/refresh HTTP/1.1\r\nHost: x\r\n"
                            "Expect: 100-continue\r\nContent-Length: 10\r\n\r\n".encode())
    assert statuses(answer) == [200]
    assert b"100 Continue" not in answer


def test_a_head_full_of_accept_encoding_tokens_is_still_read_right(live, slug):
    tokens = "identity;q=0.5, " * 500
    lines = "".join(f"Accept-Encoding: {tokens}\r\n" for _ in range(96))
    data = f"GET /api/public/{slug}/status HTTP/1.1\r\nHost: x\r\n{lines}Accept-Encoding: gzip\r\n\r\n"
    assert len(data) > 700_000
    answer = exchange(live, data.encode() + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(answer) == [200, 200]
    assert b"Content-Encoding: gzip" in answer


def test_a_stream_whose_client_sent_stray_bytes_still_ends_when_it_hangs_up(start_service, slug):
    """Not at the next ping (30 s away), at once: the hang-up is heard, stray bytes or not."""
    live = start_service(SSE_PING_INTERVAL="30")
    streams = [EventStream(live.port, f"/api/public/{slug}/status/stream") for _ in range(20)]
    for stream in streams:
        assert stream.next_event("status_update") is not None
        stream.sock.sendall(b"x")
    assert wait_for(lambda: metric(live.url, "public_status_open_streams") == 20)
    for stream in streams:
        stream.close()
    wait_for(lambda: metric(live.url, "public_status_open_streams") == 0, timeout=1.0)
