"""Server-Sent Events on the wire, byte for byte: the message as a value, a snapshot's
ready-made encodings, and the `retry:` of a stream sent away."""

import json

import pytest

from public_service import Position, Snapshot, SSEMessage, Wire, retry_message


@pytest.mark.parametrize(("message", "wire"), [
    (SSEMessage(data="x"), b"data: x\n\n"),
    (SSEMessage(data="x", event="ping"), b"event: ping\ndata: x\n\n"),
    (SSEMessage(data="x", event="e", id=0), b"id: 0\nevent: e\ndata: x\n\n"),
    (SSEMessage(data="x", event="e", id=7, retry=3000), b"id: 7\nevent: e\nretry: 3000\ndata: x\n\n"),
    (SSEMessage(retry=250), b"retry: 250\n\n"),
    (SSEMessage(data="a\nb\r\nc\rd"), b"data: a\ndata: b\ndata: c\ndata: d\n\n"),
    (SSEMessage(data=""), b"data: \n\n"),
    (SSEMessage(data="a\n"), b"data: a\ndata: \n\n"),
    (SSEMessage(data="x", event="evil\nevent: other"), b"event: evil event: other\ndata: x\n\n"),
    (SSEMessage(data="x", id="1\r\n2\x003"), b"id: 1 23\ndata: x\n\n"),
    (SSEMessage(data='{"k": "\u00e9"}'), 'data: {"k": "\u00e9"}\n\n'.encode()),
])
def test_sse_message_encoding(message, wire):
    assert message.encode() == wire


def test_sse_messages_compare_by_value():
    assert SSEMessage(data="x", id=1) == SSEMessage(data="x", id=1)
    assert SSEMessage(data="x", id=1) != SSEMessage(data="x", id=2)


def test_snapshot_carries_its_encodings():
    snapshot = Snapshot.build("demo", Position("e1f", 3), {"A1": "sold", "A2": "available"})
    assert json.loads(snapshot.body) == {
        "project": "demo", "statuses": {"A1": "sold", "A2": "available"}, "count": 2}
    assert snapshot.event.plain == (
        b'id: e1f-3\nevent: status_update\ndata: {"statuses": {"A1": "sold", "A2": "available"}}\n\n')
    assert snapshot.id == "e1f-3"
    assert snapshot.mux_event.plain == (
        b'event: status_update\ndata: {"project": "demo", "statuses": {"A1": "sold", "A2": "available"}}\n')


def test_a_wire_with_a_tail_is_made_once_per_tail_and_the_tails_kept_are_bounded():
    wire = Wire(b"data: x\n")
    first = wire.with_tail(b"id: 0\n\n")
    assert first.plain == b"data: x\nid: 0\n\n"
    assert wire.with_tail(b"id: 0\n\n") is first                  # made once, shared
    for n in range(1, Wire.TAILS):
        assert wire.with_tail(b"id: %d\n\n" % n).plain == b"data: x\nid: %d\n\n" % n
    assert wire.with_tail(b"id: 0\n\n") is first                  # all TAILS of them kept
    beyond = b"id: more\n\n"
    assert wire.with_tail(beyond).plain == b"data: x\nid: more\n\n"
    assert wire.with_tail(beyond) is not wire.with_tail(beyond)   # made each time, not kept


def test_a_sent_away_stream_gets_its_own_retry_within_the_spread():
    assert retry_message(3000, 5000, lambda: 0.0) == b"retry: 3000\n\n"
    assert retry_message(3000, 5000, lambda: 0.9999) == b"retry: 7999\n\n"
    assert len({retry_message(3000, 5000) for _ in range(50)}) > 10
