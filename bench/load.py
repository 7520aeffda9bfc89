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
import sys
import time
import zlib


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


class Inflater:
    """One gzip stream's body as it arrives: the response head skipped, chunks undone,
    the deflate pieces inflated, so that markers can be found in what it says."""

    def __init__(self):
        self.head_done = False
        self.raw = b""
        self.zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> bytes:
        self.raw += data
        if not self.head_done:
            if b"\r\n\r\n" not in self.raw:
                return b""
            self.raw = self.raw.split(b"\r\n\r\n", 1)[1]
            self.head_done = True
        body = []
        while b"\r\n" in self.raw:
            size_line, rest = self.raw.split(b"\r\n", 1)
            size = int(size_line, 16)
            if len(rest) < size + 2:
                break
            body.append(rest[:size])
            self.raw = rest[size + 2:]
        return self.zlib.decompress(b"".join(body))


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
