"""The benchmark's stream load generator: raw non-blocking sockets on epoll, in a process
(and on a core) of its own, so that it is not what gets measured.

It keeps its streams open between phases: commands arrive as JSON lines on stdin and
each answer leaves as one JSON line on stdout.
"""

import json
import resource
import select
import socket
import sys
import time


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


def request_bytes(method, path):
    return (f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n"
            "Content-Length: 0\r\n\r\n").encode()


class Streams:
    def __init__(self):
        self.epoll = select.epoll()
        self.sockets = {}      # fd -> socket
        self.buffers = {}      # fd -> bytes not yet matched

    def _wait_for(self, fds, marker: bytes, timeout: float) -> dict:
        """Read until each fd has shown `marker`; {fd: monotonic time it arrived}."""
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
                buffer = self.buffers[fd] + data
                if fd in waiting and marker in buffer:
                    arrived[fd] = now
                    waiting.discard(fd)
                    buffer = b""
                self.buffers[fd] = buffer[-200:]
        return arrived

    def _connect(self, port, path):
        sock = socket.socket()
        sock.connect(("127.0.0.1", port))
        sock.sendall(request_bytes("GET", path))
        sock.setblocking(False)
        fd = sock.fileno()
        self.sockets[fd] = sock
        self.buffers[fd] = b""
        self.epoll.register(fd, select.EPOLLIN)
        return fd

    def _drop(self, fd):
        sock = self.sockets.pop(fd, None)
        self.buffers.pop(fd, None)
        if sock is not None:
            self.epoll.unregister(fd)
            sock.close()

    def open(self, port, path, count, marker, batch=250):
        """Open `count` streams, `batch` at a time, each waiting for its first `marker`."""
        errors, ready = 0, 0
        started = time.monotonic()
        while ready + errors < count:
            fds = []
            for _ in range(min(batch, count - ready - errors)):
                try:
                    fds.append(self._connect(port, path))
                except OSError:
                    errors += 1
            arrived = self._wait_for(fds, marker.encode(), 30)
            ready += len(arrived)
            errors += len(fds) - len(arrived)
        return {"ready": ready, "errors": errors, "seconds": time.monotonic() - started,
                "open": len(self.sockets)}

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
        """Send the trigger request; milliseconds until each stream shows `marker`."""
        fds = list(self.sockets)
        trigger = socket.socket()
        trigger.connect(("127.0.0.1", port))
        started = time.monotonic()
        trigger.sendall(request_bytes(method, path))
        arrived = self._wait_for(fds, marker.encode(), timeout)
        trigger.close()
        return summary([(t - started) * 1000 for t in arrived.values()], len(fds))

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
