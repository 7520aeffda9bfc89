"""The real pieces that the tests, the benchmark and the demo run against. Not part of
the service, which never imports it.

- a database: a fresh (or reused) PostgreSQL database of the two tables, written as its
  owner, and a role holding nothing but SELECT on them, which the service reads as;
- a client API: a threaded HTTP server on loopback whose answers are set per path;
- the service: the Procfile's own command under gunicorn on a loopback port, and one
  sample of its /metrics;
- its streams: a chunked body undone as it arrives, and a raw-socket reader of one
  event stream;
- what tests take away and give back: a TCP proxy, a redis-server, an nginx in front.

It lives at the top of the checkout so that all three import it as they are: pytest
(`pythonpath = ["."]`), `demo.py` (its own folder) and the bench scripts (which put the
checkout on `sys.path`). It needs nothing beyond requirements.txt: `make run` installs
no more (tests/test_docs.py holds it to that).
"""

from __future__ import annotations

import http.server
import itertools
import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from psycopg2 import sql

ROOT = Path(__file__).resolve().parent
MACHINE_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"   # its admin, trusted locally


# --------------------------------------------------------------------------- waiting and ports

def free_port() -> int:
    """A loopback port nobody listens on (for a server that cannot pick its own)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.01):
    """Poll until `predicate()` is truthy; return its value, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def exchange(service, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes to a service; everything it answers until it closes (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return answer


def seconds_until_closed(sock: socket.socket, timeout: float = 10.0) -> float:
    """Seconds until the server closes `sock` (reading and dropping whatever comes)."""
    started = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, TimeoutError):
        pass
    return time.monotonic() - started


class FakeClock:
    """A clock a test moves by hand: `clock.now += 31`."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- the database

def with_database(url: str, name: str, user: str | None = None, password: str | None = None) -> str:
    """`url` naming database `name` instead (its host, port and query kept), as `user`
    (with `password`) if given, else as the user it names."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if user:
        netloc = f"{user}:{password}@{netloc}" if password else f"{user}@{netloc}"
    elif "@" in parts.netloc:
        netloc = parts.netloc
    return urlunsplit((parts.scheme, netloc, f"/{name}", parts.query, ""))


def _json(value):
    return None if value is None else (value if isinstance(value, str) else json.dumps(value))


class Database:
    """One database of the two tables (schema.sql), written through its owner's
    connection; the service reads it as `reader_url`, a role holding nothing but
    SELECT on the two tables.

    `Database.create(admin_url, name, role)` makes it anew (dropping what was there);
    with `fresh=False` it reuses a database and role that exist, as the demo does.
    """

    def __init__(self, admin_url: str, name: str, role: str, password: str | None = None):
        self.server_admin_url = admin_url
        self.name, self.role = name, role
        self.admin_url = with_database(admin_url, name)
        self.reader_url = with_database(admin_url, name, user=role, password=password)
        self.conn = psycopg2.connect(self.admin_url)
        self.conn.autocommit = True
        self._slugs = itertools.count(1)

    @classmethod
    def create(cls, admin_url: str, name: str, role: str, password: str | None = None,
               fresh: bool = True) -> Database:
        admin = psycopg2.connect(admin_url)
        admin.autocommit = True
        database, reader = sql.Identifier(name), sql.Identifier(role)
        try:
            with admin.cursor() as cursor:
                if fresh:
                    cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))
                    cursor.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(reader))
                cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                if cursor.fetchone() is None:
                    cursor.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(reader), (password,))
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(sql.SQL("CREATE DATABASE {}").format(database))
        finally:
            admin.close()
        created = cls(admin_url, name, role, password)
        if created.execute("SELECT to_regclass('public.projects')") == [(None,)]:
            created.execute((ROOT / "schema.sql").read_text())
        created.execute(sql.SQL("REVOKE ALL ON SCHEMA public FROM PUBLIC; "
                                "GRANT USAGE ON SCHEMA public TO {role}; "
                                "GRANT SELECT ON projects, integration_configs TO {role}")
                        .format(role=reader))
        return created

    def drop(self) -> None:
        """Close this connection; drop the database and the role."""
        self.conn.close()
        Database.drop_named(self.server_admin_url, self.name, self.role)

    @staticmethod
    def drop_named(admin_url: str, name: str, role: str) -> None:
        admin = psycopg2.connect(admin_url)
        admin.autocommit = True
        try:
            with admin.cursor() as cursor:
                cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                cursor.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        finally:
            admin.close()

    def execute(self, statement, params=()) -> list:
        with self.conn.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def unique_slug(self, prefix: str = "p") -> str:
        return f"{prefix}-{os.getpid()}-{next(self._slugs)}"

    def add_project(self, slug: str, *, base_url: str | None = None, endpoint: str | None = None,
                    auth_type=None, credentials=None, timeout=None, mapping=None, interval=None,
                    active: bool = True, config: bool = True, name: str = "",
                    schema: str = "public") -> str:
        """A project row and (unless `config=False`) its integration config; the endpoint
        is `/<slug>` unless given. JSON columns take Python values or text as it is."""
        [(project_id,)] = self.execute(
            f"INSERT INTO {schema}.projects (slug, name, is_active) VALUES (%s, %s, %s) RETURNING id",
            (slug, name, active),
        )
        if config:
            self.execute(
                f"INSERT INTO {schema}.integration_configs (project_id, api_base_url, "
                "status_endpoint, auth_type, auth_credentials, timeout_seconds, status_mapping, "
                "polling_interval_seconds) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (project_id, base_url, endpoint if endpoint is not None else f"/{slug}",
                 auth_type, _json(credentials), timeout, _json(mapping), interval),
            )
        return slug

    def remove_project(self, slug: str) -> None:
        self.execute("DELETE FROM integration_configs WHERE project_id IN "
                     "(SELECT id FROM projects WHERE slug = %s)", (slug,))
        self.execute("DELETE FROM projects WHERE slug = %s", (slug,))

    def update_config(self, slug: str, **columns) -> None:
        for column, value in columns.items():
            if column in ("auth_credentials", "status_mapping"):
                value = _json(value)
            self.execute(
                f"UPDATE integration_configs SET {column} = %s "
                "WHERE project_id = (SELECT id FROM projects WHERE slug = %s)", (value, slug))

    def set_active(self, slug: str, active: bool) -> None:
        self.execute("UPDATE projects SET is_active = %s WHERE slug = %s", (active, slug))

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------- a client API

@dataclass
class Route:
    """What the fake client API answers on one path."""

    body: bytes = b"{}"
    status: int = 200
    delay: float = 0.0
    trickle: bool = False          # send headers, then one byte a second, forever
    headers: dict = field(default_factory=dict)
    declare_length: bool = True    # False: no Content-Length, the body ends at close
    content_type: str = "application/json"
    bodies: list = field(default_factory=list)   # if set, answered in turn, cycling
    cookies_per_answer: int = 0    # new cookies (never seen names) set by every answer
    authorization: str | None = None   # if set, any other Authorization header gets a 401
    etag: str | None = None            # sent, and a matching If-None-Match gets a 304
    last_modified: str | None = None   # sent, and a matching If-Modified-Since gets a 304
    served: int = 0
    not_modified: int = 0              # of them, 304s


@dataclass
class SeenRequest:
    path: str
    headers: dict
    at: float


class Upstream:
    """A real HTTP server on 127.0.0.1, port 0, whose answers are set per path.

    `with Upstream() as upstream:` runs it in a thread, like requests' own test server
    (or `start()`, `stop()`). Every request is kept in `seen` unless `keep_requests` is
    False (a demo that runs for days keeps none).
    """

    def __init__(self, keep_requests: bool = True):
        self.routes: dict[str, Route] = {}
        self.seen: list[SeenRequest] = []
        self.keep_requests = keep_requests
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Upstream:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def set_statuses(self, path: str, statuses, **route) -> None:
        self.set(path, json.dumps(statuses).encode(), **route)

    def set(self, path: str, body: bytes = b"{}", **route) -> None:
        with self._lock:
            self.routes[path] = Route(body=body, **route)

    def requests_to(self, path: str) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.seen if r.path == path]

    def count(self, path: str) -> int:
        return len(self.requests_to(path))

    def _handler(self):
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?", 1)[0]
                with upstream._lock:
                    if upstream.keep_requests:
                        upstream.seen.append(SeenRequest(path, dict(self.headers), time.monotonic()))
                    route = upstream.routes.get(path)
                    if route is not None:
                        body = route.bodies[route.served % len(route.bodies)] if route.bodies else route.body
                        route.served += 1
                if route is None:
                    self.send_error(404)
                    return
                if route.authorization is not None and self.headers.get("Authorization") != route.authorization:
                    self.send_error(401)
                    return
                time.sleep(route.delay)
                if route.status == 200 and (
                        (route.etag and self.headers.get("If-None-Match") == route.etag)
                        or (route.last_modified and self.headers.get("If-Modified-Since") == route.last_modified)):
                    with upstream._lock:
                        route.not_modified += 1
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                if route.etag:
                    self.send_header("ETag", route.etag)
                if route.last_modified:
                    self.send_header("Last-Modified", route.last_modified)
                if route.trickle:
                    self.send_header("Content-Length", "1000000")
                    self.end_headers()
                    try:
                        while True:
                            self.wfile.write(b" ")
                            self.wfile.flush()
                            time.sleep(1)
                    except OSError:
                        return
                for n in range(route.cookies_per_answer):
                    self.send_header("Set-Cookie", f"c{route.served}x{n}={'v' * 40}; Path=/")
                self.send_header("Content-Type", route.content_type)
                if route.declare_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        return Handler


# --------------------------------------------------------------------------- the service

def procfile_command(root: Path = ROOT) -> list[str]:
    """The Procfile's `web:` command, split as a shell would (`$PORT` as written)."""
    lines = (root / "Procfile").read_text().splitlines()
    line = next(line for line in lines if line.startswith("web:"))
    return shlex.split(line.removeprefix("web:"))


def gunicorn_command(bind: str, *, root: Path = ROOT, access_log: bool = True,
                     app: str | None = None, extra: list[str] | tuple = ()) -> list[str]:
    """The Procfile's command, its gunicorn run by this interpreter (whatever PATH says),
    bound to `bind` in place of `0.0.0.0:$PORT`; without the access log if asked, and
    serving `app` in place of `wsgi:app` if given. `extra` flags come last, so they win
    over the Procfile's (gunicorn takes the last of a repeated flag: `--worker-class`)."""
    command = procfile_command(root)
    assert command[0] == "gunicorn", command
    args = command[1:]
    args[args.index("--bind") + 1] = bind
    if not access_log:
        at = args.index("--access-logfile")
        del args[at:at + 2]
    if app is not None:
        args[args.index("wsgi:app")] = app
    return [sys.executable, "-m", "gunicorn", *args, *extra]


class Service:
    """The real service: the Procfile's command (from the checkout at `root`), bound to
    127.0.0.1 on a free port, with nothing of this process's environment but PATH and
    HOME.

    Its stderr and stdout are kept (`logs()`), so tests can read what it logged.
    """

    def __init__(self, env: dict[str, str], port: int = 0, extra_args: list[str] | None = None,
                 root: Path = ROOT, access_log: bool = True):
        command = gunicorn_command(f"127.0.0.1:{port}", root=root, access_log=access_log,
                                   extra=extra_args or [])
        base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "PORT": "0"}
        self.process = subprocess.Popen(
            command, cwd=root, env={**base, **env},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        self._lines: list[str] = []
        self._listening = threading.Event()
        self.port = 0
        threading.Thread(target=self._read_output, daemon=True).start()
        if not self._listening.wait(20):
            self.stop()
            raise RuntimeError("service did not start:\n" + self.logs())
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait_ready()

    def _read_output(self) -> None:
        for line in self.process.stdout:
            self._lines.append(line)
            found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                self._listening.set()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                    if re.match(rb"HTTP/1\.[01] 200 ", sock.recv(64)):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("service never became healthy:\n" + self.logs())

    def logs(self) -> str:
        return "".join(self._lines)

    def worker_pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", self.logs())]

    def client_sockets(self) -> int:
        """Sockets the (last) worker holds for clients of its own port, not counting its
        listener nor its database and client API connections (pools may grow and shrink
        as they like). A socket the kernel no longer lists, closed on the wire but with
        its descriptor still open, counts too: that is what a leak looks like."""
        pid = self.worker_pids()[-1]
        ports = {}  # socket inode -> (local port, state)
        for table in ("tcp", "tcp6"):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                ports[fields[9]] = (int(fields[1].rsplit(":", 1)[1], 16), fields[3])
        count = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:["):
                port, state = ports.get(target[8:-1], (self.port, "closed"))
                count += port == self.port and state != "0A"  # 0A: LISTEN
        return count

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


_NO_DEFAULT = object()


def metric(service_url: str, name: str, labels: str = "", default=_NO_DEFAULT) -> float:
    """One sample of the service's /metrics, e.g. metric(url, "public_status_open_streams")
    or metric(url, "public_status_upstream_requests_total", 'outcome="ok"'); `default`
    when it has no such sample (else a KeyError)."""
    with urllib.request.urlopen(service_url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    if default is _NO_DEFAULT:
        raise KeyError(key)
    return default


# --------------------------------------------------------------------------- event streams

class Dechunker:
    """An HTTP/1.1 chunked body undone as it arrives: `feed()` takes the bytes off the
    wire and gives back the data of every chunk now whole; `ended` once the last chunk
    (size 0) has come."""

    def __init__(self):
        self._raw = b""
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        self._raw += data
        body = []
        while not self.ended and b"\r\n" in self._raw:
            size_line, rest = self._raw.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                break
            body.append(rest[:size])
            self._raw = rest[size + 2:]
            self.ended = size == 0
        return b"".join(body)


@dataclass
class Message:
    """One SSE message as received: its fields and when its last byte arrived."""

    event: str | None = None
    data: str | None = None
    id: str | None = None
    retry: int | None = None
    at: float = 0.0

    def json(self):
        return json.loads(self.data)


class EventStream:
    """A raw-socket HTTP client for one text/event-stream response.

    Headers are kept exactly as they came on the wire; the body is de-chunked and cut
    into messages following the WHATWG parsing rules (a message with only `retry:`
    is kept too, so tests can see it).
    """

    def __init__(self, port: int, path: str, headers: dict | None = None,
                 version: str = "1.1", method: str = "GET", timeout: float = 5.0,
                 receive_buffer: int | None = None):
        self.sock = socket.socket()
        if receive_buffer:             # set before connecting: it bounds the TCP window
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.received = 0          # bytes on the wire, head and chunk framing included
        self.transcript = ""       # the body as the client has it, de-chunked
        self._raw = b""
        self._text = ""
        self.closed = False
        head = self._read_until(b"\r\n\r\n", timeout)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status_line = status_line
        self.status = int(status_line.split()[1])
        self.header_list = [tuple(h.split(": ", 1)) for h in header_lines]
        self.headers = {name.lower(): value for name, value in self.header_list}
        chunked = self.headers.get("transfer-encoding") == "chunked"
        self._dechunker = Dechunker() if chunked else None
        # A gzip body is inflated as it comes, as a browser does; `gzip_ended` tells
        # whether it ended as a whole gzip stream (trailer and all).
        gzipped = self.headers.get("content-encoding") == "gzip"
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
        self.wire_bytes = 0

    @property
    def gzip_ended(self) -> bool:
        return self._inflater is not None and self._inflater.eof and not self._inflater.unused_data

    def _recv(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not ready:
            return False
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
            return False
        self.received += len(data)
        self._raw += data
        return True

    def _read_until(self, marker: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self._raw:
            if not self._recv(deadline - time.monotonic()) and (self.closed or time.monotonic() >= deadline):
                raise TimeoutError(f"no {marker!r} in {self._raw[:200]!r}")
        head, self._raw = self._raw.split(marker, 1)
        return head

    def _decode_body(self) -> None:
        raw, self._raw = self._raw, b""
        if self._dechunker is None:
            body = raw
        else:
            body = self._dechunker.feed(raw)
            self.closed = self.closed or self._dechunker.ended
        self.wire_bytes += len(body)
        if self._inflater is not None:
            body = self._inflater.decompress(body)
        text = body.decode()
        self._text += text
        self.transcript += text

    def next(self, timeout: float = 5.0) -> Message | None:
        """The next message, or None when the server closed the stream or time ran out."""
        deadline = time.monotonic() + timeout
        while True:
            self._decode_body()
            found = re.search(r"(\r\n|\r|\n)(\r\n|\r|\n)", self._text)
            if found:
                block, self._text = self._text[: found.start()], self._text[found.end():]
                message = _parse_message(block)
                if message is not None:
                    return message
                continue
            if self.closed or time.monotonic() >= deadline:
                return None
            self._recv(deadline - time.monotonic())

    def next_event(self, event: str, timeout: float = 5.0) -> Message | None:
        """The next message of the given event type, skipping others (pings, say)."""
        deadline = time.monotonic() + timeout
        while (message := self.next(deadline - time.monotonic())) is not None:
            if message.event == event:
                return message
        return None

    def close(self) -> None:
        self.sock.close()


def _parse_message(block: str) -> Message | None:
    message = Message(at=time.monotonic())
    data: list[str] = []
    for line in re.split(r"\r\n|\r|\n", block):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            message.event = value
        elif name == "id":
            message.id = value
        elif name == "retry" and value.isdigit():
            message.retry = int(value)
    message.data = "\n".join(data) if data else None
    if message.data is None and message.event is None and message.retry is None and message.id is None:
        return None
    return message


# --------------------------------------------------------------------------- taken away, given back

class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target, so a test can take the target away.

    `cut()` makes it look stopped: new connections are refused and open ones are
    dropped. `restore()` serves again on the same port.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self._target = (target_host, target_port)
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = None
        self.port = 0
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)   # wakes the accept(); close() would not
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class RedisServer:
    """A redis-server of its own on a free port, which a test may stop and start; pinned
    to a core (`taskset -c`) if given one, as the benchmark's is."""

    def __init__(self, core: str | None = None):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._pin = ["taskset", "-c", core] if core is not None else []
        self.process = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*self._pin, "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._answers, timeout=10)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


NGINX_CONF = ROOT / "deploy" / "nginx.conf"


def nginx_conf(service_port: int, listen_port: int) -> str:
    """deploy/nginx.conf (its `upstream` and `server` blocks) with only its two ports
    changed: to the service's, and to the one nginx listens on."""
    conf = NGINX_CONF.read_text()
    for placeholder in ("server 127.0.0.1:8000;", "listen 80;"):
        if conf.count(placeholder) != 1:
            raise AssertionError(f"{NGINX_CONF} no longer holds `{placeholder}` once")
    return (conf.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{service_port};")
                .replace("listen 80;", f"listen 127.0.0.1:{listen_port};"))


def nginx_main_conf(home: Path, snippet: str, workers: int = 1, connections: int = 1024) -> str:
    """A whole nginx.conf around a `server` snippet (nginx_conf's): in the foreground,
    its pid, error log and temporary files under `home`, no access log."""
    temp = " ".join(f"{kind}_temp_path {home}/{kind};"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root;" if os.geteuid() == 0 else ""
    files = f"worker_rlimit_nofile {2 * connections};" if connections > 1024 else ""
    return f"""
{user}
worker_processes {workers};
{files}
daemon off;
pid {home}/nginx.pid;
error_log {home}/error.log;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    {temp}
{snippet}
}}
"""


class Nginx:
    """Debian's nginx on a free loopback port, in front of a service port, configured
    with deploy/nginx.conf (only its two ports changed; a subclass may change more in
    `snippet`). `stop()` and `start()`."""

    def __init__(self, service_port: int, workers: int = 1, connections: int = 1024):
        import tempfile

        self.home = Path(tempfile.mkdtemp(prefix="nginx-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.home / "nginx.conf").write_text(
            nginx_main_conf(self.home, self.snippet(service_port), workers, connections))
        self.process = None
        self.start()

    def snippet(self, service_port: int) -> str:
        """The `upstream` and `server` blocks nginx runs."""
        return nginx_conf(service_port, self.port)

    def start(self) -> None:
        self.process = subprocess.Popen(["nginx", "-p", str(self.home), "-c", str(self.home / "nginx.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._answers, timeout=10)

    def _answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
