"""A stream and its one writer (SocketTransport), on a real socket pair with a small window,
driven as the fanout drives it: offers that the socket takes whole, in part or not at all,
pings, a client that stops reading, hangs up or is shut down on. Its lifecycle table is
checked as a table; a property test drives random interleavings and checks that every byte
arrives once, in order, framed."""

from __future__ import annotations

import gzip
import os
import socket
import time

import gevent
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from public_service import (
    ENDING_SECONDS,
    STREAM_QUEUE_SIZE,
    STREAM_TRANSITIONS,
    Change,
    Ping,
    Position,
    QueueTransport,
    Snapshot,
    SocketTransport,
    Stream,
    StreamEvent,
    StreamState,
    StreamStateError,
    StreamStats,
    Wire,
    _rest,
    project_tag,
)

HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


class Client:
    """The reading end of the pair: it reads only when told, as a slow phone would."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.received = bytearray()
        self.eof = False

    def read(self, at_most: int = 1 << 20) -> None:
        while at_most > 0 and not self.eof:
            try:
                data = self.sock.recv(min(at_most, 65536))
            except BlockingIOError:
                return
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                return
            self.received += data
            at_most -= len(data)

    def read_to_the_end(self, timeout: float = 5.0) -> None:
        with gevent.Timeout(timeout):
            while not self.eof:
                self.read()
                gevent.sleep(0.001)

    def body(self) -> tuple[bytes, bool]:
        """(the body de-chunked, whether it ended with its last chunk); every chunk whole
        and framed: its size line, its bytes, its CRLF, nothing between chunks."""
        assert self.received.startswith(HEAD)
        raw = bytes(self.received[len(HEAD):])
        body = bytearray()
        while raw:
            size_line, crlf, rest = raw.partition(b"\r\n")
            if not crlf:
                break                                # cut off in its size line
            size = int(size_line, 16)
            if len(rest) < size + 2:
                break                                # cut off inside the chunk
            assert rest[size:size + 2] == b"\r\n"
            if size == 0:
                assert rest == b"\r\n"               # nothing after the last chunk
                return bytes(body), True
            body += rest[:size]
            raw = rest[size + 2:]
        return bytes(body), False


def attached(window: int = 4096):
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, window)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, window)
    ours.setblocking(False)
    theirs.setblocking(False)
    stats, closed, written = StreamStats(), [], []
    stream = Stream(["p"], closed.append, stats)
    stream.say(Wire(b"event: connected\ndata: {}\n\n"))
    stream.attach(SocketTransport(ours, HEAD, True, False, stats, written.append))
    return stream, Client(theirs), stats, closed, written


def message(size: int, letter: bytes = b"x") -> Wire:
    return Wire(b"data: " + letter * size + b"\n\n")


def test_the_lifecycle_is_one_table_and_refuses_what_it_does_not_name():
    assert set(STREAM_TRANSITIONS) == set(StreamState)
    assert set(STREAM_TRANSITIONS[StreamState.CLOSED]) == set(StreamEvent)   # late news: ignored
    assert STREAM_TRANSITIONS[StreamState.LIVE][StreamEvent.SHORT_WRITE] is StreamState.BACKED_UP
    assert STREAM_TRANSITIONS[StreamState.BACKED_UP][StreamEvent.OVERFLOW] is StreamState.CLOSED
    assert StreamEvent.OVERFLOW not in STREAM_TRANSITIONS[StreamState.LIVE]   # only when backed up
    stream, *_ = attached()
    with pytest.raises(StreamStateError):
        stream.event(StreamEvent.FLUSHED)            # a live stream has no last words to flush



def test_an_offer_steps_jumps_or_passes_by_the_one_rule_for_versions():
    stream, client, *_ = attached(window=1 << 16)

    def offer(version, statuses, base=None, updates=None):
        snapshot = Snapshot.build("p", Position("e", version), statuses)
        assert stream.offer(Change(snapshot, base and Position("e", base), updates)) is True  # not a drop
        before = len(client.received)
        client.read()
        return bytes(client.received[before:])

    assert b"id: e-1\nevent: status_update\n" in offer(1, {"A1": "sold"})           # first: whole
    assert b"id: e-2\nevent: bulk_update\n" in offer(2, {"A1": "available"}, 1, {"A1": "available"})
    assert offer(2, {"A1": "available"}, 1, {"A1": "available"}) == b""               # stale
    assert offer(3, {"A1": "available"}, 2, {}) == b""              # a step nobody can see...
    assert b"id: e-4\nevent: bulk_update\n" in offer(4, {"A1": "sold"}, 3, {"A1": "sold"})  # ...held
    assert b"id: e-6\nevent: status_update\n" in offer(6, {"A1": "reserved"}, 5, {"A1": "reserved"})



def test_a_multiplexed_stream_ends_each_status_message_with_every_position_it_holds():
    stats = StreamStats()
    stream = Stream(["p", "q"], lambda stream: None, stats, False, True)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    stream.attach(SocketTransport(ours, HEAD, True, False, stats))
    client = Client(theirs)
    p, q = project_tag("p"), project_tag("q")

    def offer(slug, version, statuses, base=None, updates=None):
        snapshot = Snapshot.build(slug, Position("e", version), statuses)
        assert stream.offer(Change(snapshot, base and Position("e", base), updates))
        before = len(client.received)
        client.read()
        return bytes(client.received[before:])

    assert offer("p", 1, {"A1": "sold"}).endswith(
        b'data: {"project": "p", "statuses": {"A1": "sold"}}\nid: ~e.%s1\n\n\r\n' % p.encode())
    said = offer("q", 4, {"B1": "sold"})
    assert b'"project": "q"' in said and b"id: ~e.%s1.%s4\n\n" % (p.encode(), q.encode()) in said
    said = offer("p", 2, {"A1": "available"}, 1, {"A1": "available"})
    assert said.endswith(b'data: {"project": "p", "updates": {"A1": "available"}}\n'
                         b'id: ~e.%s2.%s4\n\n\r\n' % (p.encode(), q.encode()))
    stream.offer(Ping(Wire(b": ping\n\n")))               # a ping says no id
    client.read()
    assert client.received.endswith(b": ping\n\n\r\n")


def test_a_message_the_socket_takes_in_part_is_finished_by_the_event_loop_in_order():
    stream, client, stats, closed, _ = attached()
    messages = [message(200_000, letter) for letter in (b"A", b"B", b"C")]
    for wire in messages:                             # one after another, no wait
        assert stream.offer(Ping(wire))
    assert stream.state is StreamState.BACKED_UP and stats.buffered > 0
    with gevent.Timeout(5):
        while stream.state is StreamState.BACKED_UP:
            client.read(8192)
            gevent.sleep(0.001)
    assert stream.state is StreamState.LIVE and stats.buffered == 0
    stream.end(b"retry: 3000\n\n")
    client.read_to_the_end()
    body, ended = client.body()
    assert ended and body == b"event: connected\ndata: {}\n\n" + b"".join(m.plain for m in messages) \
        + b"retry: 3000\n\n"
    assert stream.state is StreamState.CLOSED and closed == [stream]


def test_a_stream_ended_mid_write_finishes_that_write_before_its_last_words():
    stream, client, _, _, written = attached()
    wire = message(300_000)
    assert stream.offer(Ping(wire)) and stream.state is StreamState.BACKED_UP
    stream.end(b"retry: 3000\n\n")
    assert stream.state is StreamState.ENDING
    client.read_to_the_end()
    body, ended = client.body()
    assert ended and body.endswith(wire.plain + b"retry: 3000\n\n")
    assert written == [len(client.received)]          # the access line's count: every byte


def test_a_reader_that_falls_too_far_behind_is_dropped_and_hung_up_on():
    stream, client, stats, closed, _ = attached()
    results = [stream.offer(Ping(message(10_000))) for _ in range(STREAM_QUEUE_SIZE + 1)]
    assert results[-1] is False and results.count(False) == 1
    assert stream.state is StreamState.CLOSED and closed == [stream] and stats.buffered == 0
    client.read_to_the_end()                          # the hang-up reaches the client
    assert not client.body()[1]                       # cut, not ended: EventSource reconnects


def test_a_client_that_hangs_up_is_heard_at_once_whatever_it_sent_before():
    stream, client, _, closed, _ = attached()
    client.sock.send(b"stray")                        # an SSE client should send nothing
    gevent.sleep(0.01)
    assert stream.state is StreamState.LIVE           # stray bytes are dropped, not fatal
    client.sock.close()
    with gevent.Timeout(2):
        while stream.state is not StreamState.CLOSED:
            gevent.sleep(0.001)
    assert closed == [stream]



def bare_transport(gzip_body=False, chunked=True, window=4096, started=True):
    """A SocketTransport on its own (no Stream in front, unless `started` is False and a
    test attaches one): what its own guards do."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, window)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, window)
    ours.setblocking(False)
    theirs.setblocking(False)
    events, stats = [], StreamStats()
    head = HEAD if chunked else b"HTTP/1.0 200 OK\r\n\r\n"
    transport = SocketTransport(ours, head, chunked, gzip_body, stats)
    if started:
        transport.start(events.append)
    return transport, Client(theirs), stats, events


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "http-1.0"])
def test_a_gzip_body_is_one_gzip_stream_whose_crc_and_length_check(chunked):
    transport, client, stats, _ = bare_transport(gzip_body=True, chunked=chunked, window=1 << 16)
    wires = [message(100, b"a"), message(5000, b"b"), message(1, b"c")]
    for wire in wires:
        transport.write(wire)
    assert stats.messages == 3
    transport.end(b"retry: 3000\n\n")
    client.read_to_the_end()
    if chunked:
        body, ended = client.body()
        assert ended
    else:
        body = bytes(client.received).partition(b"\r\n\r\n")[2]
    assert gzip.decompress(body) == b"".join(wire.plain for wire in wires) + b"retry: 3000\n\n"


def test_after_its_end_a_writer_writes_nothing_more():
    transport, client, _, events = bare_transport()
    transport.write(message(300_000))                 # the socket takes part of it
    transport.end(b"retry: 3000\n\n")
    transport.write(message(10, b"z"))                # late news
    transport.end(b"retry: 9999\n\n")                 # and a second end
    client.read_to_the_end()
    body, ended = client.body()                       # nothing after the last chunk
    assert ended and body.endswith(b"x" * 1000 + b"\n\nretry: 3000\n\n")
    assert events[-1] is StreamEvent.FLUSHED



def test_a_drained_backlog_leaves_no_write_watcher_running():
    """Once the socket took the backlog, the event loop stops watching for room: a
    watcher left on a writable socket would wake the loop for ever."""
    loop = gevent.get_hub().loop
    transport, client, stats, events = bare_transport()
    idle = loop.activecnt                             # the read watcher's
    transport.write(message(300_000))
    assert loop.activecnt == idle + 1                 # watching for room
    with gevent.Timeout(5):
        while stats.buffered:
            client.read(65536)
            gevent.sleep(0.001)
    assert events[-1] is StreamEvent.DRAINED and loop.activecnt == idle
    transport.write(message(300_000))                 # and again, a watcher of its own
    assert loop.activecnt == idle + 1
    transport.abort()


def test_last_words_nobody_reads_are_given_up_on_after_the_ending_seconds():
    transport, client, _, events = bare_transport()
    transport.write(message(300_000))                 # backed up, and nobody reads
    started = time.monotonic()
    transport.end(b"retry: 3000\n\n")
    with gevent.Timeout(ENDING_SECONDS + 2):
        while StreamEvent.LOST not in events:
            gevent.sleep(0.01)
    assert time.monotonic() - started >= ENDING_SECONDS - 0.1
    client.read_to_the_end()
    assert not client.body()[1]                       # cut, not ended



def test_what_is_left_of_parts_once_some_bytes_went_out():
    parts = [b"abc", b"de"]
    assert [bytes(part) for part in _rest(parts, 0)] == [b"abc", b"de"]
    assert [bytes(part) for part in _rest(parts, 2)] == [b"c", b"de"]
    assert [bytes(part) for part in _rest(parts, 3)] == [b"de"]
    assert [bytes(part) for part in _rest(parts, 4)] == [b"e"]
    assert _rest(parts, 5) == []


def test_a_writer_closed_gives_back_its_socket_and_says_nothing_more():
    assert gevent.get_hub().loop is not None           # its own descriptors, made once, first
    before = len(os.listdir("/proc/self/fd"))
    transport, client, stats, events = bare_transport()
    transport.write(message(300_000))
    transport.abort()
    transport.write(message(10))                       # after the end: nothing, no error
    transport.abort()
    assert events == [StreamEvent.SHORT_WRITE, StreamEvent.LOST] and stats.buffered == 0
    client.sock.close()
    assert len(os.listdir("/proc/self/fd")) == before



def test_a_stream_closed_or_ended_before_its_writer_came_tells_the_writer_so():
    overflowed = Stream(["p"], lambda stream: None, StreamStats())
    for _ in range(STREAM_QUEUE_SIZE + 1):
        overflowed.say(message(1))
    assert overflowed.state is StreamState.CLOSED
    assert overflowed.say(message(1)) is True              # late news: ignored, not a drop
    transport, client, _, _ = bare_transport(started=False)
    overflowed.attach(transport)
    client.read_to_the_end()                              # hung up on at once
    assert client.received == b""

    ended = Stream(["p"], lambda stream: None, StreamStats())
    ended.say(Wire(b"event: connected\ndata: {}\n\n"))
    ended.end(b"retry: 3000\n\n")
    transport, client, _, _ = bare_transport(started=False)
    ended.attach(transport)
    client.read_to_the_end()
    assert client.body() == (b"event: connected\ndata: {}\n\nretry: 3000\n\n", True)


def queued(gzip_body: bool = False):
    """A stream whose writer is a queue, as under a WSGI server other than the edge."""
    stats, closed = StreamStats(), []
    stream = Stream(["p"], closed.append, stats, gzip_body)
    transport = QueueTransport(gzip_body, stats)
    stream.attach(transport)
    return stream, transport, stats, closed


@pytest.mark.parametrize("gzip_body", [False, True], ids=["plain", "gzip"])
def test_a_reader_is_dropped_past_exactly_the_queue_size(gzip_body):
    stream, _, _, closed = queued(gzip_body)          # (the gzip header is no message)
    assert all(stream.say(message(1)) for _ in range(STREAM_QUEUE_SIZE))
    assert stream.say(message(1)) is False and closed == [stream]
    opening = Stream(["p"], closed.append, StreamStats())   # not attached yet: kept aside
    assert all(opening.say(message(1)) for _ in range(STREAM_QUEUE_SIZE))
    assert opening.say(message(1)) is False


@pytest.mark.parametrize("gzip_body", [False, True], ids=["plain", "gzip"])
def test_a_queued_stream_gives_every_message_once_then_its_end(gzip_body):
    stream, transport, stats, closed = queued(gzip_body)
    wires = [message(100, b"a"), message(3000, b"b")]
    for wire in wires:
        stream.say(wire)
    assert stats.messages == 2
    stream.end(b"retry: 3000\n\n")
    stream.end(b"retry: 9999\n\n")                    # said once only
    with gevent.Timeout(2):
        body = b"".join(transport)
    expected = b"".join(wire.plain for wire in wires) + b"retry: 3000\n\n"
    assert (gzip.decompress(body) if gzip_body else body) == expected
    assert stats.buffered == 0 and closed == [stream]


def test_a_queued_stream_ended_then_let_go_unread_holds_no_bytes():
    stream, transport, stats, closed = queued()
    stream.say(message(1000))                          # not taken by the server yet
    stream.end(b"retry: 3000\n\n")                     # shutting down: its last words wait too
    stream.close()                                     # the server is done with it, unread
    assert stream.state is StreamState.CLOSED and closed == [stream]
    assert stats.buffered == 0 and transport.backlog == 0


def test_a_queued_stream_ended_without_last_words_ends_its_body():
    stream, transport, _, closed = queued()
    reading = gevent.spawn(lambda: b"".join(transport))   # the server, waiting for more
    gevent.sleep(0.01)
    stream.end()
    assert reading.get(timeout=2) == b"" and closed == [stream]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.tuples(st.just("offer"), st.integers(1, 120_000)),
    st.tuples(st.just("read"), st.integers(0, 200_000)),
    st.tuples(st.just("tick"), st.just(0)),
    st.tuples(st.just("hang up"), st.just(0)),
    st.tuples(st.just("end"), st.just(0)),
), max_size=40))
def test_any_interleaving_delivers_every_byte_once_in_order_framed(operations):
    stream, client, stats, closed, written = attached()
    expected = bytearray(b"event: connected\ndata: {}\n\n")
    dropped = hung_up = ended = False
    for number, (operation, size) in enumerate(operations):
        if operation == "offer":
            wire = message(size, b"abcdefgh"[number % 8:number % 8 + 1])
            taken = stream.offer(Ping(wire))
            if stream.state in (StreamState.LIVE, StreamState.BACKED_UP) or not taken:
                expected += wire.plain
            dropped = dropped or not taken
        elif operation == "read" and not hung_up:
            client.read(size)
        elif operation == "hang up" and not hung_up:
            client.sock.close()
            hung_up = True
        elif operation == "end" and not ended and stream.state is not StreamState.CLOSED:
            stream.end(b"retry: 1000\n\n")
            expected += b"retry: 1000\n\n"
            ended = True
        gevent.sleep(0)                               # the event loop writes, and hears
    if hung_up:
        with gevent.Timeout(2):
            while stream.state is not StreamState.CLOSED:
                gevent.sleep(0.001)
        assert closed == [stream] and stats.buffered == 0
        return
    if not ended and not dropped:
        stream.end(b"retry: 1000\n\n")
        expected += b"retry: 1000\n\n"
    client.read_to_the_end()
    body, complete = client.body()
    assert stream.state is StreamState.CLOSED and closed == [stream] and stats.buffered == 0
    if dropped:
        assert not complete and bytes(expected).startswith(body)
    else:
        assert complete and body == bytes(expected)
        assert written == [len(client.received)]
