"""The benchmark's stream load generator: raw non-blocking sockets on epoll, in a process
(and on a core) of its own, so that it is not what gets measured.

It keeps its streams open between phases: commands arrive as JSON lines on stdin and
each answer leaves as one JSON line on stdout.
"""

import json
import re
import resource
import select
import socket
import struct
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from support import Dechunker


def percentile(values, fraction):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(latencies_ms, expected):
    return {
        "expected": expected,
        "delivered": len(latencies_ms),
        "p50_ms": percentile(latencies_ms, 0.50),
        "p99_ms": percentile(latencies_ms, 0.99),
        "max_ms": max(latencies_ms) if latencies_ms else None,
    }


def request_bytes(method, path, gzip=False):
    encoding = "Accept-Encoding: gzip\r\n" if gzip else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n"
            f"{encoding}Content-Length: 0\r\n\r\n").encode()


class StreamBody(Dechunker):
    """One stream's body as it arrives: the response head skipped, chunks undone."""

    def __init__(self):
        super().__init__()
        self.head = b""

    def feed(self, data: bytes) -> bytes:
        if self.head is not None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return b""
            data = self.head.split(b"\r\n\r\n", 1)[1]
            self.head = None
        return super().feed(data)


class Inflater(StreamBody):
    """A gzip stream's body, its deflate pieces inflated as they come, so that markers
    can be found in what it says."""

    def __init__(self):
        super().__init__()
        self.zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> bytes:
        return self.zlib.decompress(super().feed(data))


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)   # Linux


class EventParser(StreamBody):
    """A plain stream's body, handed out as whole SSE messages: (event, data, id)."""

    def __init__(self):
        super().__init__()
        self.body = b""

    def feed(self, data: bytes) -> list[tuple[str, str, str]]:
        *messages, self.body = (self.body + super().feed(data)).split(b"\n\n")
        events = []
        for message in messages:
            fields = dict(line.split(": ", 1) for line in message.decode().split("\n") if ": " in line)
            events.append((fields.get("event", ""), fields.get("data", ""), fields.get("id", "")))
        return events


def path_of(stream_path: str) -> str:
    """The client API path of a project's stream: /api/public/<slug>/status/stream -> /<slug>."""
    return "/" + stream_path.split("/")[3]


def urllib_get(port: int, path: str) -> bytes:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return answer.read()


class Streams:
    def __init__(self):
        self.epoll = select.epoll()
        self.sockets = {}      # fd -> socket
        self.buffers = {}      # fd -> bytes not yet matched
        self.inflaters = {}    # fd -> Inflater, for a gzip stream
        self.wire = {}         # fd -> bytes received on the wire

    def _wait_for(self, fds, marker: bytes, timeout: float, inflate: bool = True) -> dict:
        """Read until each fd has shown `marker`; {fd: monotonic time it arrived}. With
        `inflate` False, a gzip stream's first bytes count as the marker (it is timed
        as plain ones are, not after this process inflated the streams before it)."""
        arrived = {}
        waiting = set(fds)
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for fd, _ in self.epoll.poll(0.05):
                try:
                    data = self.sockets[fd].recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                now = time.monotonic()
                if not data:
                    self._drop(fd)
                    waiting.discard(fd)
                    continue
                self.wire[fd] += len(data)
                if fd in self.inflaters:
                    if not inflate and fd in waiting:
                        arrived[fd] = now
                        waiting.discard(fd)
                        continue
                    data = self.inflaters[fd].feed(data)
                buffer = self.buffers[fd] + data
                if fd in waiting and marker in buffer:
                    arrived[fd] = now
                    waiting.discard(fd)
                    buffer = b""
                self.buffers[fd] = buffer[-200:]
        return arrived

    def _connect(self, port, path, gzip=False):
        sock = socket.socket()
        sock.connect(("127.0.0.1", port))
        sock.sendall(request_bytes("GET", path, gzip))
        sock.setblocking(False)
        fd = sock.fileno()
        self.sockets[fd] = sock
        self.buffers[fd] = b""
        self.wire[fd] = 0
        if gzip:
            self.inflaters[fd] = Inflater()
        self.epoll.register(fd, select.EPOLLIN)
        return fd

    def _drop(self, fd):
        sock = self.sockets.pop(fd, None)
        self.buffers.pop(fd, None)
        self.inflaters.pop(fd, None)
        self.wire.pop(fd, None)
        if sock is not None:
            self.epoll.unregister(fd)
            sock.close()

    def open(self, port, path, count, marker, batch=250, gzip=False):
        """Open `count` streams, `batch` at a time, each waiting for its first `marker`;
        `gzip` asks for compressed streams. Also: the mean bytes on the wire per stream
        until then (head, `connected` and the first snapshot)."""
        errors, ready, wire = 0, 0, 0
        started = time.monotonic()
        while ready + errors < count:
            fds = []
            for _ in range(min(batch, count - ready - errors)):
                try:
                    fds.append(self._connect(port, path, gzip))
                except OSError:
                    errors += 1
            arrived = self._wait_for(fds, marker.encode(), 30)
            ready += len(arrived)
            errors += len(fds) - len(arrived)
            wire += sum(self.wire.get(fd, 0) for fd in arrived)
        return {"ready": ready, "errors": errors, "seconds": time.monotonic() - started,
                "open": len(self.sockets), "bytes_per_stream": wire / max(1, ready)}

    def first_event(self, port, path, count, marker):
        """Connect one at a time; milliseconds from connect to the first `marker`."""
        latencies = []
        for _ in range(count):
            started = time.monotonic()
            fd = self._connect(port, path)
            arrived = self._wait_for([fd], marker.encode(), 5)
            if fd in arrived:
                latencies.append((arrived[fd] - started) * 1000)
            self._drop(fd)
        return summary(latencies, count)

    def deliver(self, port, method, path, marker, timeout=15):
        """Send the trigger request; milliseconds until each stream shows `marker`, and
        the mean bytes that took on the wire."""
        fds = list(self.sockets)
        before = {fd: self.wire[fd] for fd in fds}
        trigger = socket.socket()
        trigger.connect(("127.0.0.1", port))
        started = time.monotonic()
        trigger.sendall(request_bytes(method, path))
        arrived = self._wait_for(fds, marker.encode(), timeout, inflate=False)
        trigger.close()
        result = summary([(t - started) * 1000 for t in arrived.values()], len(fds))
        result["bytes_per_stream"] = sum(self.wire[fd] - before[fd] for fd in arrived) / max(1, len(arrived))
        return result

    def storm_open(self, port, paths, count, batch=250):
        """Open `count` streams over `paths` (round robin), each past its first snapshot;
        every stream keeps what it received, for its last id when it is sent away."""
        self.storm = {}
        errors = 0
        for start in range(0, count, batch):
            waiting = set()
            for n in range(start, min(count, start + batch)):
                try:
                    fd = self._connect(port, paths[n % len(paths)])
                except OSError:
                    errors += 1
                    continue
                waiting.add(fd)
                self.storm[fd] = {"path": paths[n % len(paths)], "text": b""}
            deadline = time.monotonic() + 30
            while waiting and time.monotonic() < deadline:
                for fd, _ in self.epoll.poll(0.05):
                    try:
                        data = self.sockets[fd].recv(65536)
                    except BlockingIOError:
                        continue
                    info = self.storm[fd]
                    info["text"] = info["text"] + data
                    for found in re.finditer(rb"^id: (\S+)$", info["text"], re.M):
                        info["id"] = found.group(1).decode()
                    info["text"] = info["text"][-8192:]
                    at = info["text"].find(b"event: status_update")
                    if at >= 0 and info["text"].find(b"\n\n", at) >= 0:
                        waiting.discard(fd)
            errors += len(waiting)
        return {"ready": len(self.storm) - errors, "errors": errors}

    def storm_follow(self, port, resume, timeout=40):
        """The servers sent every stream away: reconnect each, after the `retry:` it was
        sent, to `port` (with Last-Event-ID if `resume`), and time its way back: until
        `connected` (back) and until it is current (a resumed `connected`, or a full
        `status_update`). Reconnect times are seconds after the first close."""
        import heapq
        import re
        closed_at, schedule, results, errors = None, [], [], 0
        streams = self.storm
        epoll = self.epoll
        deadline = time.monotonic() + timeout
        following = {}  # fd -> {"started", "bytes", "back"}
        while (streams or schedule or following) and time.monotonic() < deadline:
            now = time.monotonic()
            while schedule and schedule[0][0] <= now:
                _, _, info = heapq.heappop(schedule)
                headers = f"Last-Event-ID: {info['id']}\r\n" if resume and info.get("id") else ""
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                except OSError:
                    errors += 1
                    continue
                sock.sendall((f"GET {info['path']} HTTP/1.1\r\nHost: bench\r\n"
                              f"Accept: text/event-stream\r\n{headers}\r\n").encode())
                sock.setblocking(False)
                fd = sock.fileno()
                self.sockets[fd] = sock
                self.buffers[fd] = b""
                epoll.register(fd, select.EPOLLIN)
                following[fd] = {"started": now - closed_at, "bytes": 0, "text": b"", "back": None}
            timeout_ms = max(0.0, min(0.05, (schedule[0][0] - now) if schedule else 0.05))
            for fd, _ in epoll.poll(timeout_ms):
                sock = self.sockets.get(fd)
                if sock is None:
                    continue
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                now = time.monotonic()
                if fd in streams:                      # an old stream: closing, or talking
                    info = streams[fd]
                    info["text"] = info["text"] + data
                    for found in re.finditer(rb"^id: (\S+)$", info["text"], re.M):
                        info["id"] = found.group(1).decode()
                    info["text"] = info["text"][-8192:]
                    if not data:
                        closed_at = closed_at or now
                        retries = re.findall(rb"^retry: (\d+)$", info["text"], re.M)
                        retry = int(retries[-1]) / 1000 if retries else 3.0
                        info["retry"] = retry
                        heapq.heappush(schedule, (now + retry, fd, info))
                        del streams[fd]
                        self._drop(fd)
                    continue
                entry = following.get(fd)
                if entry is None:
                    continue
                if not data:
                    errors += 1
                    del following[fd]
                    self._drop(fd)
                    continue
                entry["bytes"] += len(data)
                entry["text"] += data
                if entry["back"] is None and b"event: connected" in entry["text"]:
                    entry["back"] = now - closed_at
                resumed = b'"resumed": true' in entry["text"]
                snapshot_at = entry["text"].find(b"event: status_update")
                whole = snapshot_at >= 0 and entry["text"].find(b"\n\n", snapshot_at) >= 0
                if entry["back"] is not None and (resumed or whole):
                    results.append({"reconnected": entry["started"], "back": entry["back"],
                                    "current": now - closed_at, "bytes": entry["bytes"],
                                    "resumed": resumed})
                    del following[fd]
                    self._drop(fd)
        return {"results": results, "errors": errors, "lost": len(streams) + len(schedule) + len(following)}

    def launch(self, port, path, count, seconds, reconnects_per_second, refreshes_per_second,
               refresh_path, units, per_generation, upstream_port, batch=250):
        """Launch day, as viewers and agents live it. `count` streams on `path`; each
        second `reconnects_per_second` of them, at random, drop and come straight back
        with their last id (as a phone's EventSource would), and `refreshes_per_second`
        forced refreshes go to `refresh_path`. Each stream's events are read whole and
        their units mapped to the generation of the launch that changed them (unit n:
        generation n // per_generation, see bench/upstream.py). Returns, per change: how
        long after the client API first served it each open stream had it (live), and for
        a viewer that was away, how long after its reconnect (catching up)."""
        import random

        viewers = []               # index -> {"fd", "id", "connected_at", "parser"}
        by_fd = {}                 # stream fd -> viewer index
        refreshing = {}            # fd -> (socket, bytes so far)
        seen = [dict() for _ in range(count)]  # viewer -> {generation: (arrival, connected_at)}
        refreshes, errors = {}, {"connect": 0, "dropped": 0, "refresh": 0}
        counts = {"reconnects": 0, "resumed": 0, "full_on_reconnect": 0}

        # Arrivals are the kernel's receive times (SO_TIMESTAMPNS, wall clock, made
        # monotonic), so that this process reading 10,000 streams one after another does
        # not count as delay.
        wall_to_monotonic = time.time() - time.monotonic()

        def open_stream(viewer, last_id=None):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.connect(("127.0.0.1", port))
            resume = f"Last-Event-ID: {last_id}\r\n" if last_id else ""
            sock.sendall((f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n"
                          f"{resume}\r\n").encode())
            sock.setblocking(False)
            fd = sock.fileno()
            self.sockets[fd] = sock
            self.epoll.register(fd, select.EPOLLIN)
            by_fd[fd] = viewer
            return {"fd": fd, "id": last_id, "connected_at": time.monotonic(),
                    "parser": EventParser(), "reconnected": last_id is not None, "current": False}

        def generations_of(units):
            return {int(unit[1:]) // per_generation for unit in units}

        def take(viewer, events, now):
            state = viewers[viewer]
            for event, data, event_id in events:
                if event_id:
                    state["id"] = event_id
                if event == "connected" and state["reconnected"]:
                    resumed = json.loads(data)["resumed"]
                    counts["resumed" if resumed else "full_on_reconnect"] += 1
                    state["current"] = state["current"] or resumed
                if event == "bulk_update":
                    changed = generations_of(json.loads(data)["updates"])
                elif event == "status_update":
                    state["current"] = True
                    statuses = json.loads(data)["statuses"]
                    changed = generations_of(u for u, s in statuses.items() if s != "available")
                else:
                    continue
                for generation in changed:
                    seen[viewer].setdefault(generation, (now, state["connected_at"]))

        def read(fd, now):
            sock = self.sockets.get(fd)
            try:
                data, ancillary, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(16))
            except BlockingIOError:
                return
            except OSError:
                data, ancillary = b"", []
            for level, kind, stamp in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = struct.unpack("qq", stamp[:16])
                    now = seconds + nanoseconds / 1e9 - wall_to_monotonic
            if fd in refreshing:
                sock, answer = refreshing[fd]
                answer += data
                if b"\r\n" in answer or not data:
                    status = answer.split(b" ", 2)[1].decode() if data else "closed"
                    refreshes[status] = refreshes.get(status, 0) + 1
                    if status not in ("200", "429"):
                        errors["refresh"] += 1
                    del refreshing[fd]
                    self._drop(fd)
                else:
                    refreshing[fd] = (sock, answer)
                return
            viewer = by_fd.pop(fd, None)
            if viewer is None:
                return
            if not data:
                errors["dropped"] += 1
                self._drop(fd)
                viewers[viewer] = open_stream(viewer, viewers[viewer]["id"])
                return
            by_fd[fd] = viewer
            take(viewer, viewers[viewer]["parser"].feed(data), now)

        def reconnect(viewer):
            old = viewers[viewer]
            by_fd.pop(old["fd"], None)
            self._drop(old["fd"])
            counts["reconnects"] += 1
            try:
                viewers[viewer] = open_stream(viewer, old["id"])
            except OSError:
                errors["connect"] += 1

        def refresh():
            sock = socket.socket()
            try:
                sock.connect(("127.0.0.1", port))
            except OSError:
                errors["connect"] += 1
                sock.close()
                return
            sock.sendall(request_bytes("POST", refresh_path))
            sock.setblocking(False)
            fd = sock.fileno()
            self.sockets[fd] = sock
            self.epoll.register(fd, select.EPOLLIN)
            refreshing[fd] = (sock, b"")

        urllib_get(upstream_port, f"/_launch?path={path_of(path)}&units={units}&per_second={per_generation}")
        for start in range(0, count, batch):   # open them all, each past its status_update
            for viewer in range(start, min(count, start + batch)):
                viewers.append(open_stream(viewer))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(
                    viewers[v]["current"] for v in range(start, min(count, start + batch))):
                for fd, _ in self.epoll.poll(0.05):
                    read(fd, time.monotonic())
        opened = sum(1 for viewer in viewers if viewer["current"])

        # The launch itself: its changes, the viewers coming and going, the refreshes.
        urllib_get(upstream_port, f"/_launch?path={path_of(path)}&go=1")
        started = time.monotonic()
        next_reconnect = next_refresh = started
        end = started + seconds
        while time.monotonic() < end:
            now = time.monotonic()
            while next_reconnect <= now:
                reconnect(random.randrange(count))
                next_reconnect += 1 / reconnects_per_second
            while next_refresh <= now:
                refresh()
                next_refresh += 1 / refreshes_per_second
            wait = max(0.0, min(next_reconnect, next_refresh, end) - time.monotonic())
            for fd, _ in self.epoll.poll(min(wait, 0.01)):
                read(fd, time.monotonic())
        served = {int(g): t for g, t in json.loads(urllib_get(
            upstream_port, f"/_launch?path={path_of(path)}&stop=1")).items()}
        settle = time.monotonic() + 3
        while time.monotonic() < settle:          # changes already served, still on their way
            for fd, _ in self.epoll.poll(0.05):
                read(fd, time.monotonic())

        live, catching_up, delivered = [], [], 0
        for viewer_seen in seen:
            for generation, served_at in served.items():
                if generation not in viewer_seen:
                    continue
                delivered += 1
                arrival, connected_at = viewer_seen[generation]
                if connected_at < served_at:
                    live.append((arrival - served_at) * 1000)
                else:
                    catching_up.append((arrival - connected_at) * 1000)
        self.close_all()
        return {"opened": opened, "changes": len(served), "expected": len(served) * count,
                "delivered": delivered, "live": summary(live, len(live)),
                "catching_up": summary(catching_up, len(catching_up)),
                "refreshes": refreshes, "errors": errors, **counts}

    def close_all(self):
        for fd in list(self.sockets):
            self._drop(fd)
        return {"open": 0}


def raise_open_files_limit() -> None:
    """Soft limit up to the hard one (10,000 streams need 10,000 descriptors a side)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main():
    raise_open_files_limit()
    streams = Streams()
    wall = time.monotonic()
    for line in sys.stdin:
        command = json.loads(line)
        name = command.pop("cmd")
        if name == "quit":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu = usage.ru_utime + usage.ru_stime
            answer = {"cpu_seconds": cpu, "wall_seconds": time.monotonic() - wall}
        else:
            answer = getattr(streams, name)(**command)
        print(json.dumps(answer), flush=True)
        if name == "quit":
            return


if __name__ == "__main__":
    main()
