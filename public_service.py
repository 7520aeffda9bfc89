"""public-status: live unit statuses of a real-estate project, for anyone's browser.

For each project the service reads the integration settings from the shared PostgreSQL
database (read-only, raw SQL), fetches the unit statuses from that project's own client
API, normalizes them to five statuses (available, reserved, sold, hidden, unreleased),
caches them, and streams every change to browsers over Server-Sent Events:

    GET  /api/public/<slug>/status          the current statuses, as JSON
    GET  /api/public/<slug>/status/stream   text/event-stream of changes
    POST /api/public/<slug>/status/refresh  fetch now (rate limited)
    GET  /healthz, /readyz, /metrics        for the operator

Run it with the Procfile's command (gunicorn, its gevent_pywsgi worker, `wsgi:app`);
`wsgi.py` monkey-patches first. The contract is SPEC.md; the README says the rest.

The file, in the order data flows, a section under each banner:

    config             Config, read once from the environment
    logs and metrics   Metrics, SecretRedactor, JsonFormatter
    types              errors, Project, SSEMessage, Wire (a message, plain and as a gzip
                       piece), Snapshot (with its encodings), SingleFlight
    normalization      pure: response shapes -> unit statuses -> the five statuses, diffs
    database           ProjectDirectory: project rows by slug, cached, over a small pool
    upstream client    UpstreamClient: one project's statuses from its client API
    cache and pollers  StatusService (fetch, refresh, poll) -> Store (Local or Redis),
                       each project's History of changes (for resume)
    SSE                Fanout -> Stream: each change, encoded once, to every open stream
    routes             the Flask views, the warm-GET fast path, and ConnectionGuard: the
                       edge pywsgi lacks (head and idle timeouts, head and body bounds)
    app factory        create_app(): builds and wires all of the above

Data flows one way. The service fetches and commits into the store; the store tells
the fanout of each new snapshot (a callback given at construction); the fanout hands it
to the project's streams, which write it, and runs one poller per watched
project (the service's `poll`, also a callback). Nothing holds what consumes it.
A stream's deliveries are named cases (Ping, Delta, Full); its ids are
`<epoch>-<version>`, and a client that sends one back is resumed from the store's
history, never from the client API.

Choices a reader might otherwise "fix": one upstream request per project at a time
(misses, refreshes and the poller join it; `SingleFlight`, `Store.fetch`); a warm GET
never reaches Flask (`WarmStatusFastPath`); a failed fetch never reaches the public
(stale snapshot, else 503 + Retry-After); every message is encoded once for all its
streams, and compressed once too, as a deflate piece that stands on its own (`Wire`:
no compressor per stream); the stream answers 404 only for a truly unknown project, and
200 + `retry:` for transient trouble, as EventSource gives up on anything else; a
closed client is noticed by an I/O watcher on its socket; credentials stay out of reprs
and leave only as request headers, and every log line is scrubbed of them
(`SecretRedactor`).
"""

from __future__ import annotations

import base64
import email.parser
import errno
import fcntl
import functools
import gzip
import hashlib
import http.cookiejar
import json
import logging
import math
import os
import random
import re
import socket
import struct
import termios
import threading
import time
import zlib
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import gevent
import gevent.event
import gevent.lock
import gevent.pywsgi
import psycopg2
import psycopg2.extensions
import redis
import requests
import requests.auth
from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- config

class ConfigError(ValueError):
    """A setting in the environment is missing or malformed."""


@dataclass(frozen=True)
class Config:
    """Every setting of the service, read once from the environment (see README)."""

    database_url: str = field(repr=False)
    port: int = 8000
    status_cache_ttl: float = 30.0
    sse_ping_interval: float = 30.0
    sse_retry_ms: int = 3000
    sse_reconnect_spread_ms: int = 5000
    sse_history: int = 100
    default_poll_interval: float = 30.0
    refresh_min_interval: float = 10.0
    project_cache_ttl: float = 30.0
    cors_allow_origin: str = "*"
    log_level: str = "INFO"
    log_format: str = "text"
    max_upstream_bytes: int = 5_000_000
    max_streams: int = 10_000
    redis_url: str | None = field(default=None, repr=False)
    poll_lease_ttl: float = 10.0
    min_poll_interval: float = 1.0
    header_timeout: float = 10.0
    keepalive_timeout: float = 100.0
    compression: bool = True
    db_pool_size: int = 5
    db_timeout: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, Any]) -> Config:
        """Build the config from environment-style names (`STATUS_CACHE_TTL=0.5`)."""
        database_url = env.get("DATABASE_URL")
        if not database_url:
            raise ConfigError("DATABASE_URL is not set (see README: `make run` provides one)")
        log_level = str(env.get("LOG_LEVEL", "INFO")).upper()
        if not isinstance(logging.getLevelName(log_level), int):
            raise ConfigError(f"LOG_LEVEL must be a logging level name, got {log_level!r}")
        log_format = str(env.get("LOG_FORMAT", "text")).lower()
        if log_format not in ("text", "json"):
            raise ConfigError(f"LOG_FORMAT must be 'text' or 'json', got {log_format!r}")
        compression = str(env.get("COMPRESSION", "on")).lower()
        if compression not in ("on", "off"):
            raise ConfigError(f"COMPRESSION must be 'on' or 'off', got {compression!r}")
        return cls(
            database_url=str(database_url),
            port=_env_number(env, "PORT", 8000, int, minimum=0),
            status_cache_ttl=_env_number(env, "STATUS_CACHE_TTL", 30.0),
            sse_ping_interval=_env_number(env, "SSE_PING_INTERVAL", 30.0),
            sse_retry_ms=_env_number(env, "SSE_RETRY_MS", 3000, int, minimum=0),
            sse_reconnect_spread_ms=_env_number(env, "SSE_RECONNECT_SPREAD_MS", 5000, int, minimum=0),
            sse_history=_env_number(env, "SSE_HISTORY", 100, int, minimum=0),
            default_poll_interval=_env_number(env, "DEFAULT_POLL_INTERVAL", 30.0),
            refresh_min_interval=_env_number(env, "REFRESH_MIN_INTERVAL", 10.0, minimum=0),
            project_cache_ttl=_env_number(env, "PROJECT_CACHE_TTL", 30.0, minimum=0),
            cors_allow_origin=str(env.get("CORS_ALLOW_ORIGIN", "*")),
            log_level=log_level,
            log_format=log_format,
            max_upstream_bytes=_env_number(env, "MAX_UPSTREAM_BYTES", 5_000_000, int, minimum=1),
            max_streams=_env_number(env, "MAX_STREAMS", 10_000, int, minimum=0),
            redis_url=env.get("REDIS_URL") or None,
            poll_lease_ttl=_env_number(env, "POLL_LEASE_TTL", 10.0),
            min_poll_interval=_env_number(env, "MIN_POLL_INTERVAL", 1.0),
            header_timeout=_env_number(env, "HEADER_TIMEOUT", 10.0),
            keepalive_timeout=_env_number(env, "KEEPALIVE_TIMEOUT", 100.0),
            compression=compression == "on",
            db_pool_size=_env_number(env, "DB_POOL_SIZE", 5, int, minimum=1),
            db_timeout=_env_number(env, "DB_TIMEOUT", 5.0),
        )


def _env_number(env, name, default, kind=float, minimum=None):
    """Parse one numeric setting; durations must be > 0 unless a minimum is given."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if minimum is None and not value > 0:
        raise ConfigError(f"{name} must be greater than 0, got {raw!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {raw!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {raw!r}")
    return value


# --------------------------------------------------------------------------- logs and metrics

class Metrics:
    """Per-worker Prometheus metrics. Label values come from fixed sets only."""

    UPSTREAM_OUTCOMES = ("ok", "http_error", "timeout", "connection", "tls", "too_large",
                         "bad_body", "config", "error")

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.open_streams = Gauge("public_status_open_streams", "Open SSE streams", registry=r)
        self.watched_projects = Gauge("public_status_watched_projects",
                                      "Projects with at least one open stream", registry=r)
        self.pollers = Gauge("public_status_pollers", "Poller greenlets running", registry=r)
        self.upstream_requests = Counter("public_status_upstream_requests",
                                         "Client API fetches by outcome", ["outcome"], registry=r)
        self.upstream_seconds = Histogram("public_status_upstream_seconds",
                                          "Client API fetch duration", registry=r)
        self.cache = Counter("public_status_cache", "Status reads by cache result", ["result"],
                             registry=r)
        self.refresh_limited = Counter("public_status_refresh_limited",
                                       "Forced refreshes answered 429", registry=r)
        self.db_errors = Counter("public_status_db_errors", "Failed database queries", registry=r)
        self.streams_rejected = Counter("public_status_streams_rejected",
                                        "Streams sent away because MAX_STREAMS was reached",
                                        registry=r)
        self.streams_dropped = Counter("public_status_streams_dropped",
                                       "Streams closed for falling too far behind", registry=r)
        self.redis_shared = Gauge("public_status_redis_shared",
                                  "1 while snapshots and pollers are shared through Redis",
                                  registry=r)
        for outcome in self.UPSTREAM_OUTCOMES:
            self.upstream_requests.labels(outcome)
        for result in ("hit", "miss", "stale"):
            self.cache.labels(result)
        self.cache_hits = self.cache.labels("hit")  # the hot path's child, looked up once

    def watch(self, fanout: Fanout, store: Store) -> None:  # gauges read when scraped
        self.open_streams.set_function(lambda: fanout.stream_count)
        self.watched_projects.set_function(lambda: fanout.watched_projects)
        self.pollers.set_function(lambda: fanout.poller_count)
        self.redis_shared.set_function(lambda: int(store.shared))


class SecretRedactor(logging.Filter):
    """Replaces every known credential in a log record with `***`, whoever logged it.

    Attached to the handlers, so it sees records of every library, tracebacks included.
    """

    MIN_LENGTH = 3  # shorter strings are no secret, and replacing them garbles every line

    def __init__(self):
        super().__init__()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern | None = None
        self._lock = threading.Lock()

    def add(self, secrets) -> None:
        fresh = {s for s in secrets if s and len(s) >= self.MIN_LENGTH} - self._secrets
        if fresh:
            with self._lock:
                self._secrets |= fresh
                ordered = sorted(self._secrets, key=len, reverse=True)
                self._pattern = re.compile("|".join(map(re.escape, ordered)))

    def redact(self, text: str) -> str:
        return self._pattern.sub("***", text) if self._pattern else text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is None:
            return True
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if isinstance(record.args, dict):    # gunicorn's access atoms: redacted where they
            for key, value in record.args.items():  # are, so that JSON lines keep fields
                if isinstance(value, str):
                    record.args[key] = self.redact(value)
        if not isinstance(record.args, dict) or self._pattern.search(record.getMessage()):
            record.msg, record.args = self.redact(record.getMessage()), None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the `project`, `event` and `duration` extras."""

    EXTRAS = ("project", "event", "duration")

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: getattr(record, key) for key in self.EXTRAS if hasattr(record, key)})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry)


def configure_logging(config: Config, redactor: SecretRedactor) -> None:
    """Our handler on the root logger (so library lines are formatted and redacted too),
    and the redactor on gunicorn's handlers as well."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "public_status", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.public_status = True
    if config.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(redactor)
    root.addHandler(handler)
    root.setLevel(config.log_level)
    for name in ("gunicorn.error", "gunicorn.access"):
        for gunicorn_handler in logging.getLogger(name).handlers:
            gunicorn_handler.addFilter(redactor)


# --------------------------------------------------------------------------- types

STATUSES = ("available", "reserved", "sold", "hidden", "unreleased")

SLUG_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")

DEFAULT_TIMEOUT_SECONDS = 10.0
MAX_TIMEOUT_SECONDS = 120.0       # a misconfigured timeout must not pin a fetch for hours
STREAM_QUEUE_SIZE = 64            # messages a slow reader may fall behind before it is dropped
STREAM_ENVIRON_KEY = "public_status.stream"  # a stream's request names its Stream
DB_RETRY_SECONDS = 1.0            # after a database failure, serve from cache this long untried
DB_RETRY_AFTER = 5                # Retry-After (s) on a 503 caused by the database
KNOWN_PROJECTS = 10_000           # project rows kept, least recently used dropped first
UNKNOWN_SLUGS = 10_000            # slugs remembered as unknown, apart: a flood evicts only them
POLLER_RESTART_SECONDS = 1.0      # a poller that crashed (a bug of ours) starts again after this
PARSE_IN_THREAD_BYTES = 256 * 1024  # bodies this large are parsed off the event loop
HISTORY_BYTES = 256 * 1024        # a project's history of changed units, at most (and SSE_HISTORY)
REQUEST_LINE_LIMIT = 4094         # the request head's bounds: gunicorn's defaults,
HEADER_FIELD_LIMIT = 8190         # its CRLF included,
HEADER_FIELDS_LIMIT = 100         # whatever the worker class
REQUEST_BODY_LIMIT = 16 * 1024    # no route reads a body: larger ones are refused, not read


class PublicStatusError(Exception):
    """Base of the service's own errors. Their messages are safe to log, never shown;
    `retry_after` is the Retry-After of an answer that says "try again"."""

    retry_after: float | None = None


class StatusParseError(PublicStatusError):
    """A client API answered with a body this service does not understand."""


class UpstreamError(PublicStatusError):
    """A fetch from a project's client API failed. `outcome` is a metrics label."""

    def __init__(self, outcome: str, detail: str):
        super().__init__(f"{outcome}: {detail}")
        self.outcome = outcome
        self.detail = detail


class DatabaseUnavailable(PublicStatusError):
    """The shared database did not answer (down, timed out, refused the query)."""

    retry_after = DB_RETRY_AFTER


class DatabaseBusy(PublicStatusError):
    """Every pooled connection stayed in use: a crowd, not a failure of the database."""

    retry_after = 1


class ProjectNotFound(PublicStatusError):
    """No active project with an integration config has this slug (or it is malformed)."""


class TryLater(PublicStatusError):
    """An answer that says "try again in `retry_after` seconds"."""

    def __init__(self, retry_after: float):
        super().__init__(f"{type(self).__name__}, retry after {retry_after:.1f}s")
        self.retry_after = retry_after


class NoSnapshot(TryLater):
    """There is no snapshot to serve yet."""


class StreamsFull(PublicStatusError):
    """This worker takes no more streams: it holds MAX_STREAMS, or is shutting down."""


class RefreshLimited(TryLater):
    """A forced refresh came too soon after the previous one."""


@dataclass(frozen=True)
class Project:
    """One active project's integration settings, ready to fetch with.

    Credentials only ever leave this object as request headers: they are excluded from
    repr, and `secrets` lists every string a log line must never show.
    """

    slug: str
    status_url: str                                   # userinfo removed
    timeout: float
    poll_interval: float
    auth_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    status_lookup: Mapping[str, str] = field(default_factory=dict, repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)
    config_error: str | None = None                   # why it cannot be fetched, if so


@dataclass(frozen=True)
class SSEMessage:
    """One Server-Sent Events message, as a value. `encode()` gives the wire bytes."""

    data: str | None = None
    event: str | None = None
    id: int | str | None = None
    retry: int | None = None

    def encode(self) -> bytes:
        lines = []
        if self.id is not None:
            lines.append(f"id: {_one_line(str(self.id))}")
        if self.event is not None:
            lines.append(f"event: {_one_line(self.event)}")
        if self.retry is not None:
            lines.append(f"retry: {int(self.retry)}")
        if self.data is not None:
            lines.extend(f"data: {line}" for line in _SSE_LINE_BREAK.split(self.data))
        return ("\n".join(lines) + "\n\n").encode()


_SSE_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _one_line(value: str) -> str:
    """A field value may not break the line, and an id holding NUL is ignored by clients."""
    return _SSE_LINE_BREAK.sub(" ", value).replace("\0", "")


class Wire:
    """One SSE message, made once for all its streams: its bytes as they are, and the
    first time a compressed stream asks, as a self-contained piece of a deflate stream
    (`deflate_piece`; for a message of one connection, a stored block: no compressor).
    Either as an HTTP/1.1 chunk too (`chunk`), for the streams that write it themselves."""

    __slots__ = ("_chunks", "_piece", "_stored", "plain")

    def __init__(self, plain: bytes, stored: bool = False):
        self.plain = plain
        self._stored = stored
        self._piece: bytes | None = None
        self._chunks: list[bytes | None] = [None, None]  # plain, piece

    @property
    def piece(self) -> bytes:
        if self._piece is None:
            stored = stored_piece(self.plain)
            self._piece = stored if self._stored else min(deflate_piece(self.plain), stored, key=len)
        return self._piece

    def chunk(self, gzip: bool) -> bytes:
        """The plain bytes, or the piece, framed as one chunk of a chunked body."""
        if self._chunks[gzip] is None:
            data = self.piece if gzip else self.plain
            self._chunks[gzip] = b"%x\r\n%s\r\n" % (len(data), data)
        return self._chunks[gzip]


GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no time


def deflate_piece(data: bytes) -> bytes:
    """`data` compressed as a piece of a deflate stream that stands on its own: a fresh
    compressor (no back-reference to what came before) ended by a sync flush (byte
    aligned, not final). After GZIP_HEADER any sequence of such pieces, then
    `gzip_end`, is a gzip stream, and a decoder inflates each piece as it arrives."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def stored_piece(data: bytes) -> bytes:
    """`data` as stored (uncompressed) deflate blocks, not final: for a small message
    of one connection, cheaper than a compressor, and as valid a piece."""
    pieces = []
    for start in range(0, len(data), 0xFFFF):
        block = data[start:start + 0xFFFF]
        pieces.append(b"\x00" + struct.pack("<HH", len(block), len(block) ^ 0xFFFF) + block)
    return b"".join(pieces)


def gzip_end(crc: int, size: int) -> bytes:
    """A final empty block, then the gzip trailer: CRC-32 and length of what was sent."""
    return b"\x03\x00" + struct.pack("<II", crc, size & 0xFFFFFFFF)


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header allows gzip (`gzip` or `*`, with a q above 0)."""
    allowed = {}
    for coding in (accept_encoding or "").lower().split(","):
        name, _, params = coding.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        allowed[name.strip()] = q
    if "gzip" in allowed or "x-gzip" in allowed:
        return max(allowed.get("gzip", 0), allowed.get("x-gzip", 0)) > 0
    return allowed.get("*", 0) > 0


@dataclass(frozen=True, eq=False)
class Snapshot:
    """Statuses of one project at one version of one epoch (an unbroken line of
    versions), with their encodings made once. Its id, `<epoch>-<version>`, is opaque
    to clients."""

    slug: str
    epoch: str
    version: int
    statuses: Mapping[str, str]
    body: bytes = field(repr=False)      # the GET /status response body
    event: Wire = field(repr=False)      # the `status_update` SSE message

    @property
    def id(self) -> str:
        return f"{self.epoch}-{self.version}"

    @functools.cached_property
    def gzip_body(self) -> bytes:
        """The GET body gzipped, made once (for the first client that accepts gzip)."""
        return gzip.compress(self.body, compresslevel=6, mtime=0)

    @classmethod
    def build(cls, slug: str, epoch: str, version: int, statuses: Mapping[str, str],
              encoded: str | None = None) -> Snapshot:
        """`encoded`: `json.dumps(statuses)`, if it is made already (for a big project,
        off the event loop). Both encodings splice it in: the same bytes as encoding
        each whole, at half the cost."""
        encoded = json.dumps(statuses) if encoded is None else encoded
        body = f'{{"project": {json.dumps(slug)}, "statuses": {encoded}, "count": {len(statuses)}}}'
        event = SSEMessage(event="status_update", data=f'{{"statuses": {encoded}}}',
                           id=f"{epoch}-{version}")
        return cls(slug, epoch, version, statuses, body.encode(), Wire(event.encode()))


@dataclass(frozen=True, eq=False)
class Fetched:
    """A successful fetch, its costly pure work done once (off the event loop for a big
    body): the statuses, their JSON, and how they differ from `base`, the snapshot that
    was current when the fetch began. `unchanged`: the same statuses as `base`'s."""

    statuses: dict[str, str]
    unknown: list[str]
    base: Snapshot | None
    updates: dict[str, str] | None = None     # None: no base to step from
    unchanged: bool = False
    encoded: str | None = field(default=None, repr=False)

    @classmethod
    def over(cls, base: Snapshot | None, statuses: dict[str, str], unknown: list[str]) -> Fetched:
        if base is not None and base.statuses == statuses:
            return cls(base.statuses, unknown, base, {}, True)
        updates = diff_statuses(base.statuses, statuses) if base is not None else None
        return cls(statuses, unknown, base, updates, False, json.dumps(statuses))


class SingleFlight:
    """One call at a time per key: whoever asks while the work runs joins it. The work
    has its own greenlet, so a caller that goes away cannot cancel it; it returns errors
    rather than raising them (gevent would print them)."""

    def __init__(self):
        self._running: dict[str, gevent.Greenlet] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._running

    def join(self, key: str, work: Callable[[], Any]) -> Any:
        flight = self._running.get(key) or self._running.setdefault(key, gevent.spawn(self._run, key, work))
        return flight.get()

    def _run(self, key: str, work: Callable[[], Any]) -> Any:
        try:
            return work()
        finally:
            del self._running[key]


# --------------------------------------------------------------------------- normalization

DEFAULT_STATUS_VALUES: Mapping[str, tuple[str, ...]] = {
    "available": ("available", "open", "free", "for_sale"),
    "reserved": ("reserved", "held", "pending"),
    "sold": ("sold", "purchased", "closed"),
    "hidden": ("hidden", "disabled", "inactive"),
    "unreleased": ("unreleased", "coming_soon", "future"),
}

UNIT_KEYS = ("unit", "unit_id", "unit_number", "id", "code", "name")
STATUS_KEYS = ("status", "state", "availability")
WRAPPER_KEYS = ("units", "data", "items", "results", "statuses")
MAX_WRAPPING = 3  # {"data": {"items": [...]}} is still understood; deeper is not


def normalize_key(value: str) -> str:
    """`" Coming Soon "` -> `"coming_soon"`: trim, lower-case, spaces and hyphens to `_`."""
    return value.strip().lower().replace(" ", "_").replace("-", "_")


def _lookup_from(values_by_status: Mapping[str, Any]) -> dict[str, str]:
    lookup: dict[str, str] = {}
    for status, values in values_by_status.items():
        for value in [values] if isinstance(values, str) else values:
            if isinstance(value, str):
                lookup.setdefault(normalize_key(value), status)
    return lookup


DEFAULT_LOOKUP = _lookup_from(DEFAULT_STATUS_VALUES)


def build_status_lookup(mapping: Any) -> dict[str, str]:
    """The value -> status table of a project: its own mapping first, the default second.

    `mapping` is the `status_mapping` column: `{"sold": ["closed", ...], ...}`; a single
    string stands for a one-item list. Keys that are not one of the five statuses and
    values that are not strings are ignored.
    """
    own: dict[str, Any] = {}
    if isinstance(mapping, Mapping):
        for status, values in mapping.items():
            status = normalize_key(status) if isinstance(status, str) else None
            if status in STATUSES and isinstance(values, (str, list, tuple)):
                own[status] = values
    return {**DEFAULT_LOOKUP, **_lookup_from(own)}


def normalize_status(value: Any, lookup: Mapping[str, str]) -> str | None:
    """One client value -> one of the five statuses, or None when it is unknown."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        return None
    return lookup.get(normalize_key(value))


def normalize_statuses(
    raw: Mapping[str, Any], lookup: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """Normalize every unit. Unknown values become `hidden` and are also returned."""
    statuses: dict[str, str] = {}
    unknown: list[str] = []
    for unit, value in raw.items():
        status = normalize_status(value, lookup)
        if status is None:
            unknown.append(value if isinstance(value, str) else json.dumps(value))
            status = "hidden"
        statuses[unit] = status
    return statuses, unknown


def _unit_id(value: Any) -> str:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    raise StatusParseError(f"unit id of type {type(value).__name__} is not usable")


def _scalar_status(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        raise StatusParseError(f"status of type {type(value).__name__} is not a value")
    return value


def extract_unit_statuses(document: Any, _depth: int = 0) -> dict[str, Any]:
    """Unit -> raw status value from any of the response shapes the SPEC allows.

    1. a flat object `{"A101": "open", ...}`
    2. a list of objects with a unit key (`unit`, `unit_id`, ...) and a status key
       (`status`, `state`, `availability`)
    3. either of those under `units`, `data`, `items`, `results` or `statuses`
    Anything else raises StatusParseError.
    """
    if isinstance(document, dict):
        for key in WRAPPER_KEYS:
            inner = document.get(key)
            if isinstance(inner, (dict, list)) and _depth < MAX_WRAPPING:
                return extract_unit_statuses(inner, _depth + 1)
        return {_unit_id(unit): _scalar_status(value) for unit, value in document.items()}
    if isinstance(document, list):
        statuses: dict[str, Any] = {}
        for position, item in enumerate(document):
            if not isinstance(item, dict):
                raise StatusParseError(f"item {position} of the list is not an object")
            unit_key = next((k for k in UNIT_KEYS if item.get(k) is not None), None)
            status_key = next((k for k in STATUS_KEYS if k in item), None)
            if unit_key is None or status_key is None:
                raise StatusParseError(f"item {position} has no unit or no status key")
            statuses[_unit_id(item[unit_key])] = _scalar_status(item[status_key])
        return statuses
    raise StatusParseError(f"a JSON {type(document).__name__} is not a status document")


def decode_status_body(body: bytes) -> dict[str, Any]:
    """Raw bytes of a client API response -> unit -> raw status value."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise StatusParseError("the body is not JSON") from None
    return extract_unit_statuses(document)


def parse_statuses(body: bytes, lookup: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """A client API's body -> (unit -> one of the five statuses, unknown values)."""
    return normalize_statuses(decode_status_body(body), lookup)


def prepare_fetch(body: bytes, lookup: Mapping[str, str], base: Snapshot | None) -> Fetched:
    """A client API's body, parsed, normalized, encoded and compared with `base`."""
    return Fetched.over(base, *parse_statuses(body, lookup))


def diff_statuses(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, str]:
    """Units whose visible status changed; a unit that disappeared is sent as hidden."""
    updates = {unit: status for unit, status in new.items() if old.get(unit) != status}
    for unit, status in old.items():
        if unit not in new and status != "hidden":
            updates[unit] = "hidden"
    return updates


def backoff_delay(failures: int, interval: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after the n-th failure in a row: capped exponential, with jitter.

    Between 1 and 2 intervals after the first failure, doubling, never more than
    8 intervals; the random half keeps many pollers from retrying in step.
    """
    ceiling = interval * 2 ** min(failures, 3)
    return ceiling * (0.5 + 0.5 * rand())


# --------------------------------------------------------------------------- database

PROJECT_SQL = """
SELECT ic.api_base_url, ic.status_endpoint, ic.auth_type, ic.auth_credentials::text,
       ic.timeout_seconds, ic.status_mapping::text, ic.polling_interval_seconds
  FROM projects p
  JOIN integration_configs ic ON ic.project_id = p.id
 WHERE p.slug = %s AND p.is_active
 LIMIT 1
"""


def _json_column(value: str | None, name: str, problems: list[str]) -> Any:
    """A json/jsonb/text column read as text -> Python (text may hold JSON twice-encoded);
    None, and why in `problems`, if it is not JSON or nests too deep to be settings."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
        if isinstance(parsed, str) and parsed.strip()[:1] in ("{", "["):
            parsed = json.loads(parsed)
    except (ValueError, RecursionError):
        problems.append(f"{name} is not JSON (or nests too deep)")
        return None
    return parsed


def _seconds(value: Any, name: str, default: float, problems: list[str]) -> float:
    """A numeric column as seconds: NULL or <= 0 is the default; NaN, infinity or a value
    that is no number makes the config unusable (`problems`)."""
    if value is None:
        return default
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds):
        problems.append(f"{name} is not a finite number")
        return default
    return seconds if seconds > 0 else default


def project_from_row(slug: str, row: tuple, default_poll_interval: float,
                     min_poll_interval: float = 0.0) -> Project:
    """A row of PROJECT_SQL -> Project. Whatever the row holds, a bad setting makes a
    project that fails to fetch (`config_error` says why), never an exception."""
    base, endpoint, auth_type, raw_credentials, timeout, raw_mapping, interval = row
    problems: list[str] = []
    url, userinfo = split_userinfo(join_status_url(base, endpoint))
    timeout = _seconds(timeout, "timeout_seconds", DEFAULT_TIMEOUT_SECONDS, problems)
    interval = _seconds(interval, "polling_interval_seconds", default_poll_interval, problems)
    credentials = _json_column(raw_credentials, "auth_credentials", problems)
    mapping = _json_column(raw_mapping, "status_mapping", problems)
    if mapping is not None and not (isinstance(mapping, dict) and all(
            isinstance(values, (str, list)) for values in mapping.values())):
        problems.append("status_mapping is not an object of statuses to values")
        mapping = None
    headers: dict[str, str] = {}
    if not problems:
        try:
            headers = auth_headers(auth_type, credentials, userinfo)
        except ValueError as exc:
            problems.append(str(exc))
    if any(not HEADER_VALUE.fullmatch(value) for value in headers.values()):
        problems.append("a credential holds characters not allowed in an HTTP header")
        headers = {}
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        problems.append("api_base_url and status_endpoint do not make an http(s) URL")
    return Project(slug, url, min(timeout, MAX_TIMEOUT_SECONDS), max(interval, min_poll_interval),
                   headers, build_status_lookup(mapping),
                   _secret_strings(credentials, userinfo, headers), "; ".join(problems) or None)


class ConnectionPool:
    """At most `size` open connections; a caller waits for a free one, DatabaseBusy if
    none frees up in time (psycopg2's own pools raise at once instead, and keep no idle
    connections above `minconn`). A connection that raised is closed, never reused."""

    def __init__(self, connect: Callable[[], Any], size: int, wait: float):
        self._connect = connect
        self._idle: list = []
        self._slots = gevent.lock.BoundedSemaphore(size)
        self._wait = wait

    @contextmanager
    def connection(self, fresh: bool = False):
        """A connection for one use; `fresh` drops the idle ones and opens a new one."""
        if not self._slots.acquire(timeout=self._wait):
            raise DatabaseBusy("no pooled connection came free")
        try:
            if fresh:
                self.discard_idle()
            conn = self._idle.pop() if self._idle else self._connect()
            try:
                yield conn
            except BaseException:
                conn.close()
                raise
            if not conn.closed:
                self._idle.append(conn)
        finally:
            self._slots.release()

    def discard_idle(self) -> None:
        while self._idle:
            self._idle.pop().close()


class Database:
    """Read-only access to the shared database: a pool of cooperative connections."""

    def __init__(self, url: str, pool_size: int, timeout: float):
        self._timeout = timeout
        self._params = _connection_params(url, timeout)
        self._pool = ConnectionPool(self._connect, pool_size, wait=timeout)
        self.password: str | None = self._params.get("password")

    def __repr__(self) -> str:
        return f"<Database {self._params.get('host', 'local')}/{self._params.get('dbname', '')}>"

    def _connect(self):
        conn = psycopg2.connect(**self._params)
        conn.autocommit = True  # one statement per use; never an idle open transaction
        return conn

    def fetch_one(self, sql: str, params: tuple = ()) -> tuple | None:
        """Run one SELECT; DatabaseUnavailable for anything that goes wrong with it, and
        DatabaseBusy when no pooled connection came free within DB_TIMEOUT."""
        try:
            try:
                return self._execute(sql, params)
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                # The pool may have handed out a connection the server had dropped. A
                # restart or an idle-connection kill drops them all at once: open a new
                # one and try once more.
                return self._execute(sql, params, fresh=True)
        except psycopg2.Error as exc:
            raise DatabaseUnavailable(f"{type(exc).__name__} ({exc.pgcode or 'no code'})") from exc

    def _execute(self, sql: str, params: tuple, fresh: bool = False) -> tuple | None:
        """The query alone is timed, not the wait for a connection (a crowd is no outage)."""
        with self._pool.connection(fresh) as conn, conn.cursor() as cursor, gevent.Timeout(
                self._timeout, DatabaseUnavailable("the database timed out")):
            cursor.execute(sql, params)
            return cursor.fetchone()

    def close(self) -> None:
        self._pool.discard_idle()


def _connection_params(url: str, timeout: float) -> dict[str, Any]:
    """Connection keywords from DATABASE_URL, with read-only sessions and timeouts added
    to whatever `options` the URL already carries."""
    params: dict[str, Any] = psycopg2.extensions.parse_dsn(url)
    statement_ms = max(1, int(timeout * 1000))
    options = " ".join(filter(None, [
        params.get("options"),
        "-c default_transaction_read_only=on",
        f"-c statement_timeout={statement_ms}",
        f"-c idle_in_transaction_session_timeout={statement_ms}",
    ]))
    params.update(
        options=options,
        connect_timeout=max(2, math.ceil(timeout)),  # libpq's minimum is 2 seconds
        application_name=params.get("application_name", "public-status"),
        keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
    )
    return params


class ProjectDirectory:
    """Project settings by slug, cached for PROJECT_CACHE_TTL, unknown slugs included.

    Known projects and unknown slugs are kept apart, each bounded and least recently
    used first out, so that a flood of made-up slugs evicts only other made-up slugs.
    While the database is unreachable (or busy), projects already known are served from
    the cache however old; a slug never seen raises DatabaseUnavailable (DatabaseBusy).
    """

    def __init__(self, db: Database, config: Config, metrics: Metrics, redactor: SecretRedactor,
                 clock: Callable[[], float] = time.monotonic,
                 bounds: tuple[int, int] = (KNOWN_PROJECTS, UNKNOWN_SLUGS)):
        self._db = db
        self._bounds = bounds
        self._ttl = config.project_cache_ttl
        self._intervals = (config.default_poll_interval, config.min_poll_interval)
        self._metrics = metrics
        self._redactor = redactor
        self._clock = clock
        self._known: OrderedDict[str, tuple[Project, float]] = OrderedDict()  # -> (row, expiry)
        self._unknown: OrderedDict[str, float] = OrderedDict()                # -> expiry
        self._lookups = SingleFlight()       # concurrent lookups of one slug, one query
        self._retry_db_at = -math.inf
        self._db_failing = False
        self._config_errors: dict[str, str] = {}  # the last one logged, per slug

    def cached(self, slug: str) -> Project | None:
        """The project if its row is cached and fresh; never touches the database."""
        project, expires_at = self._known.get(slug, (None, -math.inf))
        if self._clock() >= expires_at:
            return None
        self._known.move_to_end(slug)
        return project

    def get(self, slug: str) -> Project | None:
        project = self.cached(slug)
        if project is not None:
            return project
        now = self._clock()
        if now < self._unknown.get(slug, -math.inf):
            self._unknown.move_to_end(slug)
            return None
        try:
            if now < self._retry_db_at:
                raise DatabaseUnavailable("the database failed moments ago")
            project = self._lookups.join(slug, lambda: self._load(slug))
            if isinstance(project, PublicStatusError):
                raise project
        except (DatabaseUnavailable, DatabaseBusy):
            if slug in self._known:
                return self._known[slug][0]
            raise
        expires_at = self._clock() + self._ttl
        if project is None:
            self._known.pop(slug, None)
            _remember(self._unknown, slug, expires_at, self._bounds[1])
        else:
            self._unknown.pop(slug, None)
            _remember(self._known, slug, (project, expires_at), self._bounds[0])
        return project

    def _load(self, slug: str) -> Project | PublicStatusError | None:
        try:
            row = self._db.fetch_one(PROJECT_SQL, (slug,))
        except DatabaseBusy as exc:
            return exc
        except DatabaseUnavailable as exc:
            self._metrics.db_errors.inc()
            self._retry_db_at = self._clock() + DB_RETRY_SECONDS
            if not self._db_failing:
                self._db_failing = True
                log.error("database unavailable (%s); serving known projects from cache", exc,
                          extra={"event": "db_unavailable"})
            return exc
        if self._db_failing:
            self._db_failing = False
            log.warning("database reachable again", extra={"event": "db_recovered"})
        if row is None:
            return None
        project = project_from_row(slug, row, *self._intervals)
        self._redactor.add(project.secrets)
        if project.config_error and self._config_errors.get(slug) != project.config_error:
            log.error("project %s: integration config unusable: %s", slug, project.config_error,
                      extra={"project": slug, "event": "config_error"})
        if project.config_error:
            self._config_errors[slug] = project.config_error
        else:
            self._config_errors.pop(slug, None)
        return project


def _remember(entries: OrderedDict, key: str, value: Any, bound: int) -> None:
    """Put `key` last (most recently used); drop the least recently used beyond `bound`."""
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > bound:
        entries.popitem(last=False)


# --------------------------------------------------------------------------- upstream client

HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HEADER_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")


def join_status_url(base: str | None, endpoint: str | None) -> str:
    """`api_base_url` + `status_endpoint` with exactly one `/` between them."""
    endpoint = (endpoint or "").strip()
    if urlsplit(endpoint).scheme in ("http", "https"):
        return endpoint
    base = (base or "").strip()
    if not endpoint:
        return base
    return base.rstrip("/") + "/" + endpoint.lstrip("/")


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """Remove `user:pass@` from a URL; return the clean URL and the pair, if any."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return clean, (parts.username or "", parts.password or "")


def auth_headers(
    auth_type: str | None, credentials: Any, userinfo: tuple[str, str] | None
) -> dict[str, str]:
    """Request headers for `auth_type` and `auth_credentials`; ValueError if unusable.

    The messages never contain a credential.
    """
    kind = (auth_type or "").strip().lower()
    if kind in ("", "none"):
        if userinfo:  # https://user:pass@host with no auth_type: what the URL asks for
            return {"Authorization": _basic(*userinfo)}
        return {}
    if not isinstance(credentials, Mapping):
        raise ValueError(f"auth_type {kind!r} needs auth_credentials as a JSON object")

    def credential(*names: str) -> str | None:
        """The first of `names` that is set: a string, or a number as written."""
        for name in names:
            value = credentials.get(name)
            if value in (None, ""):
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise ValueError(f"{kind} auth: {name!r} is not a string")
            return str(value)
        return None

    if kind == "bearer":
        if (token := credential("token")) is None:
            raise ValueError("bearer auth needs a 'token'")
        return {"Authorization": f"Bearer {token}"}
    if kind == "api_key":
        name = credentials.get("header") or credentials.get("header_name") or "X-API-Key"
        if (key := credential("key", "api_key")) is None:
            raise ValueError("api_key auth needs a 'key'")
        if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
            raise ValueError("api_key auth has an invalid header name")
        return {name: key}
    if kind == "basic":
        if (username := credential("username")) is None:
            raise ValueError("basic auth needs a 'username'")
        return {"Authorization": _basic(username, credential("password") or "")}
    raise ValueError(f"unknown auth_type {kind!r}")


def _basic(username: str, password: str) -> str:
    pair = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _secret_strings(credentials: Any, userinfo: tuple[str, str] | None, headers: Mapping[str, str]) -> tuple[str, ...]:
    found: list[str] = []
    if isinstance(credentials, Mapping):
        found += [str(value) for key, value in credentials.items()
                  if key not in ("header", "header_name") and isinstance(value, (str, int, float))]
    if userinfo:
        found += list(userinfo)
    for value in headers.values():
        found.append(value)
        if value.startswith(("Basic ", "Bearer ")):
            found.append(value.split(" ", 1)[1])
    return tuple(sorted({s for s in found if s}, key=len, reverse=True))


class HeaderAuth(requests.auth.AuthBase):
    """Sets the credential headers. Passing an auth object also keeps requests from
    reading ~/.netrc, which would replace our Authorization header."""

    def __init__(self, headers: Mapping[str, str]):
        self._headers = headers

    def __call__(self, prepared):
        prepared.headers.update(self._headers)
        return prepared

    def __repr__(self) -> str:
        return f"<HeaderAuth {sorted(self._headers)}>"


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Keep no cookie: client APIs share hosts, and a jar would carry one project's cookie
    to another's API, and grow with every answer that sets a new one."""

    def set_ok(self, cookie, request) -> bool:
        return False

    def return_ok(self, cookie, request) -> bool:
        return False


class UpstreamClient:
    """Gets the body of a project's status document from its client API.

    The whole fetch is bounded by the project's timeout (requests' own timeout bounds
    each socket read only, so a body trickling in forever would never end) and the
    body by MAX_UPSTREAM_BYTES. Redirects are not followed: requests would carry a
    custom API-key header along to whatever host the redirect names. One session (its
    connection pool), and nothing else, is shared by the projects: no cookie is kept.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.session = requests.Session()
        self.session.headers.update({"Accept": "application/json", "User-Agent": "public-status"})
        self.session.cookies.set_policy(_NoCookies())

    def get(self, project: Project) -> bytes:
        if project.config_error:
            raise UpstreamError("config", project.config_error)
        deadline = gevent.Timeout(project.timeout)
        try:
            with deadline, self.session.get(
                project.status_url,
                auth=HeaderAuth(project.auth_headers),
                timeout=project.timeout,
                allow_redirects=False,
                stream=True,
            ) as response:
                if not 200 <= response.status_code < 300:
                    raise UpstreamError("http_error", f"HTTP {response.status_code}")
                return _read_capped(response, self.max_bytes)
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            raise UpstreamError("timeout", f"no complete answer within {project.timeout:g}s") from None
        except requests.exceptions.Timeout:
            raise UpstreamError("timeout", f"no answer within {project.timeout:g}s") from None
        except requests.exceptions.SSLError as exc:
            raise UpstreamError("tls", _root_cause(exc)) from None
        except requests.exceptions.ConnectionError as exc:
            raise UpstreamError("connection", _root_cause(exc)) from None
        except requests.exceptions.RequestException as exc:
            raise UpstreamError("connection", type(exc).__name__) from None


def _read_capped(response: requests.Response, limit: int) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UpstreamError("too_large", f"body of {declared} bytes is over {limit}")
    chunks, size = [], 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise UpstreamError("too_large", f"body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _root_cause(exc: BaseException) -> str:
    """The innermost exception's class name: says what failed without a URL in it."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "reason", None) or exc.__cause__ or exc.__context__
        if not isinstance(inner, BaseException):
            if exc.args and isinstance(exc.args[0], BaseException):
                inner = exc.args[0]
            else:
                break
        exc = inner
    return type(exc).__name__


# --------------------------------------------------------------------------- cache and pollers

class Store(Protocol):
    """Where snapshots live, and who may fetch or poll a project: the one seam for sharing
    state between workers. Given at construction the callback that hears of each snapshot
    it makes current, `on_change(snapshot, updates, base)`: `updates`, the units changed
    since `base`, the (epoch, version) they step from (the version before, or the shared
    version a worker alone left); None when it is no step (a first one, a new line)."""

    shared: bool          # True while the state is shared with other workers (Redis)
    renew_every: float    # seconds between renewals of a poll lease while polling

    # Snapshots: this worker's latest and its age (inf if none), without I/O; before a
    # miss fetches, take what another worker committed meanwhile; record a fetch (a new
    # version, published, only if anything changed).
    def read(self, slug: str) -> tuple[Snapshot | None, float]: ...
    def sync(self, slug: str) -> None: ...
    def commit(self, slug: str, fetched: Fetched) -> Snapshot: ...

    # Resume: the units changed since a version of the current epoch, each with its
    # current status ({} for the current version); None when the history cannot tell.
    def changes_since(self, slug: str, epoch: str, version: int) -> dict[str, str] | None: ...

    # Fetches: run `do_fetch` as the deployment's one fetch of the project, or join the
    # one under way elsewhere; 0 if a forced refresh may fetch now, else seconds to wait.
    def fetch(self, slug: str, timeout: float, do_fetch: Callable[[], Snapshot | UpstreamError]
              ) -> Snapshot | UpstreamError: ...
    def claim_refresh(self, slug: str, min_interval: float, timeout: float) -> float: ...

    # Polling: 0 if this worker polls the project now, else seconds until it may; stop
    # polling it (another worker may take over at once); give everything back.
    def poll_turn(self, slug: str) -> float: ...
    def release_poll(self, slug: str) -> None: ...
    def close(self) -> None: ...


class LocalStore(Store):
    """The Store of a worker alone, in its memory: every fetch and poll is its own, and
    nothing is elsewhere (`sync`, `release_poll` and `close`: the protocol's no-ops).

    Its epoch is its own, made when it is: versions start again at 1 after a restart,
    and so do ids, under another epoch. It keeps each project's history, the units each
    of its last versions changed, bounded by `history` entries and HISTORY_BYTES.
    """

    shared = False
    renew_every = math.inf

    def __init__(self, on_change: Callable[..., None], clock: Callable[[], float] = time.monotonic,
                 history: int = 100):
        self._on_change = on_change
        self._clock = clock
        self._history_bound = history
        self.epoch = f"{random.getrandbits(40):010x}"
        self._stored: dict[str, tuple[Snapshot, float]] = {}  # slug -> (latest, fetched at)
        self._history: dict[str, History] = {}
        self._refreshed_at: dict[str, float] = {}

    def read(self, slug: str) -> tuple[Snapshot | None, float]:
        snapshot, fetched_at = self._stored.get(slug, (None, -math.inf))
        return snapshot, self._clock() - fetched_at

    def slugs(self) -> list[str]:
        return list(self._stored)

    def commit(self, slug: str, fetched: Fetched) -> Snapshot:
        previous, _ = self.read(slug)
        if fetched.base is not previous:      # another commit came in between: compare again
            fetched = Fetched.over(previous, fetched.statuses, fetched.unknown)
        if fetched.unchanged:
            self.touch(slug, self._clock())
            return previous
        own_line = previous is not None and previous.epoch == self.epoch
        # A change to a shared line while this worker is alone starts a line of its own,
        # as a step from the shared version: its streams get the change, not everything.
        snapshot = Snapshot.build(slug, self.epoch, previous.version + 1 if own_line else 1,
                                  fetched.statuses, fetched.encoded)
        self.install(snapshot, self._clock(), fetched.updates,
                     base=(previous.epoch, previous.version) if previous else None)
        return snapshot

    def install(self, snapshot: Snapshot, fetched_at: float, updates: dict[str, str] | None,
                history: list[tuple[int, list[str]]] = (), base: tuple[str, int] | None = None
                ) -> None:
        """Make `snapshot` the latest and tell the subscribers (see Store): `updates` step
        from `base`, by default the version before. A step within the epoch adds to the
        history; anything else starts it again, from `history` if given (a shared one's
        entries, oldest first)."""
        base = base or (snapshot.epoch, snapshot.version - 1)
        self._stored[snapshot.slug] = (snapshot, fetched_at)
        in_line = updates is not None and base == (snapshot.epoch, snapshot.version - 1)
        kept = self._history.get(snapshot.slug)
        if not in_line or kept is None:
            kept = self._history[snapshot.slug] = History(self._history_bound)
            for version, units in history:
                kept.add(version, units)
        if in_line:
            kept.add(snapshot.version, updates)
        self._on_change(snapshot, updates, base)

    def touch(self, slug: str, fetched_at: float) -> None:
        """The latest snapshot was fetched again, unchanged."""
        if slug in self._stored:
            snapshot, before = self._stored[slug]
            self._stored[slug] = (snapshot, max(before, fetched_at))

    def changes_since(self, slug: str, epoch: str, version: int) -> dict[str, str] | None:
        snapshot = self.read(slug)[0]
        if snapshot is None or snapshot.epoch != epoch or version > snapshot.version:
            return None
        units = self._history[slug].since(version, snapshot.version)
        if units is None:
            return None
        return {unit: snapshot.statuses.get(unit, "hidden") for unit in units}

    def claim_refresh(self, slug: str, min_interval: float, timeout: float) -> float:
        now = self._clock()
        wait = self._refreshed_at.get(slug, -math.inf) + min_interval - now
        if wait > 0:
            return wait
        self._refreshed_at[slug] = now
        return 0.0

    def fetch(self, slug, timeout, do_fetch):
        return do_fetch()

    def poll_turn(self, slug: str) -> float:
        return 0.0


class History:
    """The units each of a project's last versions changed, oldest first: bounded by a
    count and by HISTORY_BYTES (each entry weighed as its JSON), so that resuming costs
    a union of a few sets, and never a fetch."""

    __slots__ = ("_bound", "_bytes", "_entries")

    def __init__(self, bound: int):
        self._bound = bound
        self._entries: deque[tuple[int, frozenset[str], int]] = deque()
        self._bytes = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def add(self, version: int, units: Iterable[str]) -> None:
        if self._entries and version != self._entries[-1][0] + 1:
            self.clear()                      # not a step from the last one: no line to keep
        units = frozenset(units)
        weight = 16 + sum(len(unit) + 4 for unit in units)
        self._entries.append((version, units, weight))
        self._bytes += weight
        while self._entries and (len(self._entries) > self._bound or self._bytes > HISTORY_BYTES):
            self._bytes -= self._entries.popleft()[2]

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def since(self, version: int, current: int) -> set[str] | None:
        """The units changed after `version` up to `current`; None if the history does
        not reach back that far."""
        if version == current:
            return set()
        if not self._entries or self._entries[0][0] > version + 1 or self._entries[-1][0] != current:
            return None
        return set().union(*(units for kept, units, _ in self._entries if kept > version))


REDIS_PREFIX = "public-status:"
CHANGES_CHANNEL = REDIS_PREFIX + "changes"
REDIS_RETRY_SECONDS = 1.0      # while Redis is away, how often to try it again
REDIS_CONNECTIONS = 50         # per worker; the follower's subscription holds one
SNAPSHOT_KEY_TTL = 86_400      # a project nobody fetches for a day leaves Redis

# Commit one fetch: a new version only when the statuses changed (compared by digest),
# then tell every worker, in commit order. A project's first commit (or the first after
# its key expired, or Redis lost it) starts a new epoch, ARGV[7]. A step from the version
# the worker compared against (ARGV[8], ARGV[9]) adds its changed units (ARGV[10]) to the
# capped history list; anything else starts the list again. The statuses JSON is
# spliced in as text, so its unit order survives. Returns {epoch, version, changed};
# changed is 2 when the statuses were left out (the worker thought them unchanged) but
# the digest differs: send them.
COMMIT_SCRIPT = """
local old = redis.call('HMGET', KEYS[1], 'epoch', 'version', 'digest')
local epoch, version = old[1], tonumber(old[2]) or 0
local changed = old[3] ~= ARGV[1]
if changed and ARGV[2] == '' then return {epoch or '', version, 2} end
if not epoch then
  epoch, version = ARGV[7], 0
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'history_bytes', 0)
end
if changed then
  version = version + 1
  if ARGV[8] == epoch and tonumber(ARGV[9]) == version - 1 then
    local entry = '[' .. version .. ', ' .. ARGV[10] .. ']'
    redis.call('RPUSH', KEYS[2], entry)
    local size = redis.call('HINCRBY', KEYS[1], 'history_bytes', #entry)
    while redis.call('LLEN', KEYS[2]) > 0 and (redis.call('LLEN', KEYS[2]) > tonumber(ARGV[11])
                                                or size > tonumber(ARGV[12])) do
      size = redis.call('HINCRBY', KEYS[1], 'history_bytes', -#redis.call('LPOP', KEYS[2]))
    end
  else
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'history_bytes', 0)
  end
  redis.call('HSET', KEYS[1], 'version', version, 'digest', ARGV[1], 'statuses', ARGV[2],
             'fetched_at', ARGV[3])
else
  redis.call('HSET', KEYS[1], 'fetched_at', ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
local message = '{"slug": ' .. ARGV[6] .. ', "epoch": "' .. epoch .. '", "version": ' .. version
  .. ', "fetched_at": ' .. ARGV[3] .. ', "digest": "' .. ARGV[1] .. '"'
if changed then message = message .. ', "statuses": ' .. ARGV[2] end
redis.call('PUBLISH', ARGV[5], message .. '}')
return {epoch, version, changed and 1 or 0}
"""

# Take or renew a lease (a poller's, or a fetch lock): 0 if it is (now) ours, else the
# milliseconds it has left.
LEASE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 0
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 0
end
return redis.call('PTTL', KEYS[1])
"""

# Claim a forced refresh: join a fetch under way (0); refuse one too soon after the last
# (milliseconds left); or take the claim and the fetch lock together (0).
REFRESH_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local left = redis.call('PTTL', KEYS[1])
if left > 0 then return left end
if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
return 0
"""

# Delete a key only if this worker holds it.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _redis_key(kind: str, slug: str) -> str:
    return f"{REDIS_PREFIX}{kind}:{slug}"


class RedisLink:
    """This worker's connection to Redis, its mode, and its one subscription (every
    worker's commits, to `on_message`). Shared while Redis answers; alone from the first
    Redis error (logged once) until it answers again: then `on_return`, and shared."""

    def __init__(self, url: str, on_message: Callable[[dict], None], on_return: Callable[[], None]):
        # A burst (a launch's viewers, each asking for a snapshot at once) waits for a
        # connection rather than failing as if Redis were away.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=REDIS_CONNECTIONS, timeout=2, socket_timeout=2,
            socket_connect_timeout=1, health_check_interval=10)
        self.client = redis.Redis(connection_pool=pool)
        self.me = f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
        self.shared = True
        self._on_message = on_message
        self._on_return = on_return
        self._closed = False
        self._follower = gevent.spawn(self._follow)

    def run(self, operation: Callable[[], Any], alone: Callable[[], Any]) -> Any:
        """`operation()` through Redis; `alone()` if Redis is away or fails now."""
        if self.shared:
            try:
                return operation()
            except redis.RedisError as exc:
                self._lose(exc)
        return alone()

    def close(self) -> None:
        self._closed = True
        self._follower.kill(timeout=1)   # before its connection closes under it
        self.client.close()

    def _lose(self, exc: Exception) -> None:
        if self.shared:
            self.shared = False
            log.error("Redis unavailable (%s): this worker polls and serves on its own until "
                      "it is back", type(exc).__name__, extra={"event": "redis_unavailable"})

    def _follow(self) -> None:
        while not self._closed:
            if not self.shared:
                gevent.sleep(REDIS_RETRY_SECONDS)
                try:
                    self.client.ping()
                    self._on_return()
                except redis.RedisError:
                    continue
                self.shared = True
                log.warning("Redis reachable again: pollers and snapshots are shared again",
                            extra={"event": "redis_recovered"})
            try:
                self._listen()
            except redis.RedisError as exc:
                self._lose(exc)

    def _listen(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(CHANGES_CHANNEL)
            while self.shared and not self._closed:
                message = pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                try:
                    self._on_message(json.loads(message["data"]))
                except (ValueError, KeyError, TypeError):  # anyone may publish on a channel
                    log.warning("ignored a malformed message on %s", CHANGES_CHANNEL)
        finally:
            pubsub.close()


class RedisLeases:
    """Who polls or fetches a project: poll leases, fetch locks and refresh claims, each
    a key holding the owning worker's id `me`, taken and given back by Lua scripts."""

    def __init__(self, client: redis.Redis, me: str, lease_ttl: float):
        self._client = client
        self._me = me
        self._lease_ms = max(1, int(lease_ttl * 1000))
        self._take = self._client.register_script(LEASE_SCRIPT)
        self._claim = self._client.register_script(REFRESH_SCRIPT)
        self._release = self._client.register_script(RELEASE_SCRIPT)
        self._held: set[str] = set()          # projects whose poll lease is ours

    def claim_refresh(self, slug: str, min_interval: float, timeout: float) -> float:
        keys = [_redis_key("refreshed", slug), _redis_key("fetching", slug)]
        return self._claim(keys=keys, args=[self._me, int(min_interval * 1000),
                                            self._fetch_lock_ms(timeout)]) / 1000

    def begin_fetch(self, slug: str, timeout: float) -> bool:
        return self._take(keys=[_redis_key("fetching", slug)],
                          args=[self._me, self._fetch_lock_ms(timeout)]) == 0

    @staticmethod
    def _fetch_lock_ms(timeout: float) -> int:
        return int((timeout + 1) * 1000)  # a worker that dies mid-fetch lets go by itself

    def end_fetch(self, slug: str, failed: bool) -> None:
        self._release(keys=[_redis_key("fetching", slug)], args=[self._me])
        if failed:  # those waiting for it hear at once
            self._client.publish(CHANGES_CHANNEL, json.dumps({"slug": slug, "failed": True}))

    def fetching(self, slug: str) -> bool:
        return bool(self._client.exists(_redis_key("fetching", slug)))

    def poll_turn(self, slug: str) -> float:
        left_ms = self._take(keys=[_redis_key("lease", slug)], args=[self._me, self._lease_ms])
        if left_ms == 0:
            self._held.add(slug)
            return 0.0
        self._held.discard(slug)
        return max(left_ms, 20) / 1000

    def release_poll(self, slug: str) -> None:
        if slug in self._held:
            self._held.discard(slug)
            self._release(keys=[_redis_key("lease", slug)], args=[self._me])

    def release_all(self) -> None:
        for slug in list(self._held):
            self.release_poll(slug)


class RedisStore(Store):
    """The Store of a whole deployment, through Redis (REDIS_URL): only statuses,
    versions, times and worker ids go there, never a credential.

    Reads are served by this worker's mirror (a LocalStore), brought up to each version
    the follower hears of; a commit is a Lua script that bumps the version only on
    change and publishes it, in order; leases decide who polls and who fetches. While
    Redis is away each operation takes its worker-alone way, the mirror carrying on as
    without REDIS_URL; when Redis is back, the mirror takes the shared snapshots again.
    """

    def __init__(self, url: str, on_change: Callable[..., None], lease_ttl: float,
                 history: int = 100):
        # The mirror, on wall time (shared by machines); its own epoch is this worker's
        # line while Redis is away.
        self._local = LocalStore(on_change, time.time, history)
        self._history_bound = history
        self._waiters: dict[str, gevent.event.AsyncResult] = {}  # for another worker's fetch
        self._digests: dict[str, str] = {}    # of each mirrored snapshot, as committed
        self._syncs = SingleFlight()
        self._link = RedisLink(url, self._on_message, self._rejoin)
        self._leases = RedisLeases(self._link.client, self._link.me, lease_ttl)
        self._commit = self._link.client.register_script(COMMIT_SCRIPT)
        self.renew_every = lease_ttl / 3

    def __repr__(self) -> str:
        return f"<RedisStore {'shared' if self.shared else 'alone'} as {self._link.me}>"

    @property
    def shared(self) -> bool:
        return self._link.shared

    def read(self, slug: str) -> tuple[Snapshot | None, float]:
        return self._local.read(slug)

    def sync(self, slug: str) -> None:
        # A burst of streams new to a project asks Redis once, not once each.
        self._syncs.join(slug, lambda: self._link.run(lambda: self._load(slug), lambda: None))

    def commit(self, slug: str, fetched: Fetched) -> Snapshot:
        def shared():
            current = self._local.read(slug)[0]
            now = fetched if fetched.base is current else Fetched.over(
                current, fetched.statuses, fetched.unknown)
            changed = 2
            if now.unchanged and slug in self._digests:  # Redis checks it, without the JSON
                digest, encoded = self._digests[slug], ""
                epoch, version, changed, fetched_at = self._commit_script(slug, digest, encoded, now)
            if changed == 2:
                encoded = now.encoded if now.encoded is not None else json.dumps(now.statuses)
                digest = hashlib.sha1(encoded.encode()).hexdigest()
                epoch, version, changed, fetched_at = self._commit_script(slug, digest, encoded, now)
            self._adopt(slug, epoch, version, fetched_at, now.statuses if changed else None,
                        prepared=now, digest=digest)
            return self._local.read(slug)[0]
        return self._link.run(shared, lambda: self._local.commit(slug, fetched))

    def _commit_script(self, slug: str, digest: str, encoded: str,
                       fetched: Fetched) -> tuple[str, int, int, float]:
        """Run COMMIT_SCRIPT: (epoch, version, changed, fetched_at)."""
        fetched_at = time.time()
        base = fetched.base if fetched.updates is not None else None
        epoch, version, changed = self._commit(
            keys=[_redis_key("snapshot", slug), _redis_key("history", slug)],
            args=[digest, encoded, repr(fetched_at), SNAPSHOT_KEY_TTL, CHANGES_CHANNEL,
                  json.dumps(slug), f"{random.getrandbits(40):010x}",
                  base.epoch if base else "", base.version if base else -1,
                  json.dumps(list(fetched.updates or ())), self._history_bound, HISTORY_BYTES])
        return epoch.decode(), int(version), int(changed), fetched_at

    def changes_since(self, slug: str, epoch: str, version: int) -> dict[str, str] | None:
        return self._local.changes_since(slug, epoch, version)

    def fetch(self, slug, timeout, do_fetch):
        if self._link.run(lambda: self._leases.begin_fetch(slug, timeout), lambda: True):
            outcome = do_fetch()
            failed = isinstance(outcome, UpstreamError)
            # Given back in a greenlet of its own: this fetch must end as soon as its
            # outcome is made, before a stream writes it and a refresh could join it.
            gevent.spawn(self._link.run, lambda: self._leases.end_fetch(slug, failed), lambda: None)
            return outcome
        waiter = self._waiters.setdefault(slug, gevent.event.AsyncResult())
        if not self._link.run(lambda: self._leases.fetching(slug), lambda: False):
            self._waiters.pop(slug, None)  # it ended before we began to wait
            self.sync(slug)
            return self.read(slug)[0] or UpstreamError("remote", "no snapshot in Redis")
        return waiter.wait(timeout + 1) or UpstreamError("remote", "another worker's fetch failed")

    def claim_refresh(self, slug: str, min_interval: float, timeout: float) -> float:
        return self._link.run(lambda: self._leases.claim_refresh(slug, min_interval, timeout),
                              lambda: self._local.claim_refresh(slug, min_interval, timeout))

    def poll_turn(self, slug: str) -> float:
        return self._link.run(lambda: self._leases.poll_turn(slug), lambda: 0.0)

    def release_poll(self, slug: str) -> None:
        self._link.run(lambda: self._leases.release_poll(slug), lambda: None)

    def close(self) -> None:
        self._link.run(self._leases.release_all, lambda: None)
        self._link.close()

    # ---- keeping the mirror

    def _on_message(self, message: dict) -> None:
        slug = message["slug"]
        if not message.get("failed"):
            self._adopt(slug, message["epoch"], message["version"], message["fetched_at"],
                        message.get("statuses"), digest=message.get("digest"))
        waiter = self._waiters.pop(slug, None)
        if waiter is not None:
            waiter.set(None if message.get("failed") else self._local.read(slug)[0])

    def _rejoin(self) -> None:
        """Redis is back: take the shared snapshots (their epochs, their histories) as
        they are there, whatever this worker committed in its own line meanwhile. A
        project Redis lost gets a new shared epoch at its next commit."""
        for slug in self._local.slugs():
            self._load(slug)

    def _load(self, slug: str) -> None:
        """Adopt the project's snapshot and history as Redis has them, if it has them."""
        pipe = self._link.client.pipeline(transaction=False)
        pipe.hgetall(_redis_key("snapshot", slug))
        pipe.lrange(_redis_key("history", slug), 0, -1)
        stored, entries = pipe.execute()
        if b"epoch" not in stored or b"statuses" not in stored:
            return
        epoch, version = stored[b"epoch"].decode(), int(stored[b"version"])
        current = self._local.read(slug)[0]
        if current is not None and (current.epoch, current.version) == (epoch, version):
            self._local.touch(slug, float(stored[b"fetched_at"]))
            return
        self._digests[slug] = stored[b"digest"].decode()
        history = [(entry[0], entry[1] if isinstance(entry[1], list) else [])
                   for entry in map(json.loads, entries)]
        self._local.install(Snapshot.build(slug, epoch, version, json.loads(stored[b"statuses"])),
                            float(stored[b"fetched_at"]), None, history)

    def _adopt(self, slug: str, epoch: str, version: int, fetched_at: float,
               statuses: dict[str, str] | None, prepared: Fetched | None = None,
               digest: str | None = None) -> None:
        """Bring the mirror up to a committed version (`digest`, if told, is its
        statuses'); `statuses` None: unchanged. `prepared`: this worker's own fetch, its
        diff and JSON made already."""
        current, _ = self._local.read(slug)
        line = current is not None and current.epoch == epoch
        if line and version <= current.version:
            if version == current.version:
                self._local.touch(slug, fetched_at)
            return
        in_step = line and version == current.version + 1
        if statuses is None or not (in_step or version == 1):
            self._load(slug)  # a change this worker missed, or the middle of another line
            return
        if digest is not None:
            self._digests[slug] = digest
        own = prepared is not None and prepared.base is current
        updates = None
        if in_step:
            updates = prepared.updates if own else diff_statuses(current.statuses, statuses)
        self._local.install(Snapshot.build(slug, epoch, version, statuses,
                                           prepared.encoded if own else None), fetched_at, updates)


def make_store(config: Config, on_change: Callable[..., None],
               clock: Callable[[], float] = time.monotonic) -> Store:
    if config.redis_url:
        return RedisStore(config.redis_url, on_change, config.poll_lease_ttl, config.sse_history)
    return LocalStore(on_change, clock, config.sse_history)


@dataclass
class _FetchState:
    """This worker's bookkeeping of one project's fetches."""

    failures: int = 0                 # failed fetches in a row
    parsed: tuple = ()                # (body digest, status lookup) of `committed`
    committed: Snapshot | None = None # what this worker's last successful fetch made
    retry_at: float = -math.inf       # after a failure, GETs wait for this before fetching
    poll_due_at: float = -math.inf    # when the poller fetches next
    unknown_logged: set = field(default_factory=set)


MAX_UNKNOWN_LOGGED = 100  # distinct unknown values logged per project


class StatusService:
    """The cache's rules (one fetch at a time, stale on failure, rate-limited refresh)
    and each project's poller; it commits into the store and never talks to streams."""

    def __init__(self, config: Config, directory: ProjectDirectory, client: UpstreamClient,
                 store: Store, metrics: Metrics, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = gevent.sleep):
        self.config = config
        self.directory = directory
        self.client = client
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self._sleep = sleep  # the poller's waits: tests drive them with a fake clock
        self._states: defaultdict[str, _FetchState] = defaultdict(_FetchState)
        self._fetches = SingleFlight()

    def status(self, project: Project) -> Snapshot:
        """What a GET serves: the snapshot if fresh, else a fetch, else the stale one."""
        ttl = self.config.status_cache_ttl
        snapshot, age = self.store.read(project.slug)
        if age >= ttl:
            self.store.sync(project.slug)  # perhaps another worker fetched it meanwhile
            snapshot, age = self.store.read(project.slug)
            if age >= ttl:
                return self._fetch_or_stale(project, snapshot)
        self.metrics.cache_hits.inc()
        return snapshot

    def _fetch_or_stale(self, project: Project, snapshot: Snapshot | None) -> Snapshot:
        """A miss: fetch, unless a failure moments ago says not yet; on failure the stale
        snapshot, or NoSnapshot when there is none."""
        now = self.clock()
        state = self._states[project.slug]
        if project.slug not in self._fetches and now < state.retry_at:
            return self._stale(snapshot, state)
        try:
            fetched = self._fetch_once(project)
        except UpstreamError:
            return self._stale(snapshot, state)
        self.metrics.cache.labels("miss").inc()
        return fetched

    def refresh(self, project: Project) -> Snapshot:
        """Fetch now, bypassing the cache. A refresh that arrives while a fetch of the
        project is under way (a poll, a miss, another refresh) joins it: that costs the
        client API nothing, so it is not counted against REFRESH_MIN_INTERVAL."""
        state = self._states[project.slug]
        if project.slug not in self._fetches:
            wait = self.store.claim_refresh(project.slug, self.config.refresh_min_interval,
                                            project.timeout)
            if wait > 0:
                self.metrics.refresh_limited.inc()
                raise RefreshLimited(wait)
        try:
            return self._fetch_once(project)
        except UpstreamError:
            return self._stale(self.store.read(project.slug)[0], state)

    def _stale(self, snapshot: Snapshot | None, state: _FetchState) -> Snapshot:
        if snapshot is None:
            raise NoSnapshot(max(state.retry_at - self.clock(), 1.0))
        self.metrics.cache.labels("stale").inc()
        return snapshot

    def _fetch_once(self, project: Project) -> Snapshot:
        """One fetch per project at a time, in this worker and (the store's `fetch`) in
        the deployment: everyone who asks meanwhile joins it."""
        state = self._states[project.slug]
        outcome = self._fetches.join(project.slug, lambda: self.store.fetch(
            project.slug, project.timeout, lambda: self._fetch_here(project, state)))
        if isinstance(outcome, UpstreamError):
            raise outcome
        return outcome

    def _fetch_here(self, project: Project, state: _FetchState) -> Snapshot | UpstreamError:
        started = self.clock()
        try:
            fetched, parsed = self._prepare(project, state, self.client.get(project))
        except UpstreamError as exc:
            error = exc
        except Exception as exc:  # a bug of ours: log it, keep serving what we have
            log.exception("project %s: fetch crashed", project.slug, extra={"project": project.slug})
            error = UpstreamError("error", type(exc).__name__)
        else:
            snapshot = self._record_success(project, state, fetched, started)
            state.parsed, state.committed = parsed, snapshot
            return snapshot
        self._record_failure(project, state, error, started)
        return error

    def _prepare(self, project: Project, state: _FetchState, body: bytes) -> tuple[Fetched, tuple]:
        """The fetched statuses, and what they were parsed from. The body this worker's
        last snapshot came from costs no parse; a big one is parsed, encoded and compared
        in a thread, so that the worker serves on meanwhile (sharing the GIL)."""
        parsed = (hashlib.blake2b(body, digest_size=16).digest(), project.status_lookup)
        current = self.store.read(project.slug)[0]
        if parsed == state.parsed and current is not None and current is state.committed:
            return Fetched(current.statuses, [], current, {}, True), parsed
        try:
            if len(body) < PARSE_IN_THREAD_BYTES:
                return prepare_fetch(body, project.status_lookup, current), parsed
            return gevent.get_hub().threadpool.apply(
                prepare_fetch, (body, project.status_lookup, current)), parsed
        except StatusParseError as exc:
            raise UpstreamError("bad_body", str(exc)) from None

    def _record_success(self, project: Project, state: _FetchState, fetched: Fetched,
                        started: float) -> Snapshot:
        now = self.clock()
        self.metrics.upstream_requests.labels("ok").inc()
        self.metrics.upstream_seconds.observe(now - started)
        self._log_unknown(project.slug, state, fetched.unknown)
        if state.failures:
            log.warning("project %s: client API recovered after %d failed fetches",
                        project.slug, state.failures,
                        extra={"project": project.slug, "event": "upstream_recovered"})
        state.failures = 0
        state.poll_due_at = -math.inf  # no backoff: the snapshot's age says when to poll
        return self.store.commit(project.slug, fetched)

    def _record_failure(self, project: Project, state: _FetchState, error: UpstreamError,
                        started: float) -> None:
        now = self.clock()
        self.metrics.upstream_requests.labels(error.outcome).inc()
        self.metrics.upstream_seconds.observe(now - started)
        state.failures += 1
        delay = backoff_delay(state.failures, project.poll_interval)
        state.poll_due_at = now + delay
        state.retry_at = now + min(delay, self.config.status_cache_ttl)
        if state.failures == 1:
            fallback = ("the last good snapshot" if self.store.read(project.slug)[0]
                        else "503 (no snapshot yet)")
            log.warning("project %s: client API fetch failed (%s); serving %s",
                        project.slug, error, fallback,
                        extra={"project": project.slug, "event": "upstream_failed",
                               "duration": round(now - started, 3)})
        else:
            log.debug("project %s: fetch failed again (%d in a row): %s",
                      project.slug, state.failures, error)

    def _log_unknown(self, slug: str, state: _FetchState, unknown: list[str]) -> None:
        for value in unknown:
            if value in state.unknown_logged or len(state.unknown_logged) >= MAX_UNKNOWN_LOGGED:
                continue
            state.unknown_logged.add(value)
            log.warning("project %s: unknown status value %r shown as hidden", slug, value[:100],
                        extra={"project": slug, "event": "unknown_status"})

    def poll(self, slug: str) -> None:
        """The poller of one project: fetches at its interval while this worker holds the
        project's poll lease (always, without Redis); returns when the project is gone.
        The fanout runs it while the project has subscribers, and kills it after."""
        settings = None
        try:
            while True:
                try:
                    project = self.directory.get(slug)
                except (DatabaseUnavailable, DatabaseBusy):
                    self._sleep(DB_RETRY_SECONDS)  # the directory logs it; streams stay open
                    continue
                if project is None:
                    log.info("project %s is gone; closing its streams", slug, extra={"project": slug})
                    return
                if settings is not None and project != settings:
                    self._states[slug].poll_due_at = -math.inf  # fixed, say: try it now
                settings = project
                turn = self.store.poll_turn(slug)
                if turn > 0:  # another worker polls it; ask again when it may have let
                    self._sleep(min(turn, project.poll_interval))  # go, or its lease lapsed
                    continue
                age = self.store.read(slug)[1]
                wait = max(self._states[slug].poll_due_at - self.clock(), project.poll_interval - age)
                if wait > 0:
                    self._sleep(min(wait, self.store.renew_every))
                    continue
                try:
                    self._fetch_once(project)
                except UpstreamError:
                    pass  # logged by _fetch; poll_due_at now holds the backoff
        finally:
            self.store.release_poll(slug)


# --------------------------------------------------------------------------- SSE

# What the fanout hands a stream, one case each. A stream writes them in order and
# keeps the (epoch, version) it last sent, so each case knows what to write.

@dataclass(frozen=True, slots=True)
class Ping:
    message: Wire           # a keep-alive, the same bytes for every stream of the worker


@dataclass(frozen=True, slots=True)
class Delta:
    snapshot: Snapshot      # the step to this version from `base`, an (epoch, version):
    message: Wire | None    # its bulk_update (None if nothing visible changed)
    base: tuple[str, int]


@dataclass(frozen=True, slots=True)
class Full:
    snapshot: Snapshot      # no step from the version before: sent whole, if newer or of
                            # another epoch (a new line replaces whatever the stream held)


Delivery = Ping | Delta | Full


def parse_event_id(text: str | None) -> tuple[str, int] | None:
    """`<epoch>-<version>` -> (epoch, version); None for anything else."""
    epoch, _, version = (text or "").strip().rpartition("-")
    if not (epoch.isalnum() and version.isdecimal() and (epoch + version).isascii()):
        return None
    return epoch, int(version)


def retry_message(retry_ms: int, spread_ms: int, rand: Callable[[], float] = random.random) -> bytes:
    """A `retry:` of its own for a stream sent away, drawn from [retry, retry + spread],
    so that a crowd sent away together does not come back together."""
    return SSEMessage(retry=retry_ms + int(spread_ms * rand())).encode()


class Stream:
    """One open stream: the response body, `connected`, then the full snapshot, or for a
    client resuming from `last_event_id` what it missed (one merged bulk_update, or
    nothing if it is current), then changes and pings. The WSGI server gets it as it is
    (`direct_passthrough`) and calls `close()` at the end.

    A stream waiting for news, its socket's buffer empty of what it wrote, takes a
    delivery by writing it to the socket there and then (the fanout's greenlet, one
    `send` of bytes all its streams share): waking 10,000 greenlets to write one change
    costs more than the writes. Otherwise the delivery waits in a bounded mailbox (a
    list and an Event: a tenth of a gevent Queue's memory, emptied in one write), and so
    does the rest of a write the socket did not take whole, for the stream's own
    greenlet to write when the client reads again."""

    __slots__ = ("_chunked", "_crc", "_fanout", "_gzip", "_held", "_last_event_id", "_parked",
                 "_pending", "_ready", "_sent", "_socket", "_store", "_unsent", "_watcher",
                 "closed", "slug", "written")

    def __init__(self, fanout: Fanout, store: Store, slug: str, sock: socket.socket | None,
                 last_event_id: str | None = None, gzip: bool = False, chunked: bool = True):
        self.slug = slug
        self.closed = False
        self._fanout = fanout
        self._store = store
        self._pending: list[Delivery] = []
        self._ready = gevent.event.Event()
        self._socket = sock
        self._chunked = chunked       # HTTP/1.1: the body goes as chunks
        self._watcher = None
        self._last_event_id = last_event_id
        self._held: tuple[str, int] | None = None  # the (epoch, version) the client holds
        self._parked = False          # waiting for news, everything written
        self._unsent: memoryview | None = None
        self.written = 0              # bytes this stream wrote itself, not the server
        self._gzip = gzip             # then what it sent so far: its CRC-32 and length
        self._crc = self._sent = 0

    def offer(self, delivery: Delivery) -> bool:
        """Take a delivery; False if the mailbox is full (the reader fell behind)."""
        if self.closed:
            return True
        if self._parked and not self._pending and self._socket is not None:
            if (message := self._step(delivery)) is not None:
                self._write_now(message)
            return True
        if len(self._pending) >= STREAM_QUEUE_SIZE:
            return False
        self._pending.append(delivery)
        self._ready.set()
        return True

    def _write_now(self, message: Wire) -> None:
        """Write one message from the fanout's greenlet, without waiting: what the socket
        does not take is left for this stream's greenlet, woken for it."""
        if self._gzip:
            self._count_sent(message)
        if self._chunked:
            data = message.chunk(self._gzip)
        else:
            data = message.piece if self._gzip else message.plain
        try:
            sent = self._socket.send(data, 0, timeout=0.0)
        except BlockingIOError:
            sent = 0
        except OSError:               # the client is gone
            self.end()
            return
        self.written += sent
        if sent < len(data):
            self._unsent = memoryview(data)[sent:]
            self._parked = False
            self._ready.set()

    def _take(self) -> list[Delivery] | None:
        """Every delivery not yet taken, waiting for one; None once the stream must end.
        What a write left is written first, before anything that came meanwhile, and
        before the stream's last words if it ends (on a hang-up, the write fails)."""
        while True:
            if self._unsent is not None:
                unsent, self._unsent = self._unsent, None
                try:
                    self._socket.sendall(unsent)
                except OSError:
                    self.end()
                    return None
                self.written += len(unsent)
            if self._pending or self.closed:
                break
            self._ready.clear()
            self._parked = True
            try:
                self._ready.wait()
            finally:
                self._parked = False
        if self.closed:
            return None
        taken, self._pending = self._pending, []
        return taken

    def __iter__(self) -> Iterator[bytes]:
        snapshot = self._store.read(self.slug)[0]
        resumed = parse_event_id(self._last_event_id)
        changes = self._store.changes_since(self.slug, *resumed) if resumed and snapshot else None
        self._last_event_id = None
        connected = self._encode([self._fanout.connected_message(self.slug, changes is not None)])
        yield GZIP_HEADER + connected if self._gzip else connected
        self._watch_disconnect()
        if snapshot is not None:
            if changes is None:              # written as it is: the bytes all streams share
                yield self._encode([snapshot.event])
            elif resumed[1] != snapshot.version:
                yield self._encode([Wire(_bulk_update(changes, snapshot.id))])
            self._held = (snapshot.epoch, snapshot.version)
        while (deliveries := self._take()) is not None:
            if messages := self._messages(deliveries):
                yield self._encode(messages)
        if self._fanout.closing:             # shutting down: come back, but not all at once
            yield self._encode([self._fanout.sent_away()])
        if self._gzip:
            yield gzip_end(self._crc, self._sent)

    def _messages(self, deliveries: list[Delivery]) -> list[Wire]:
        return [message for delivery in deliveries if (message := self._step(delivery)) is not None]

    def _step(self, delivery: Delivery) -> Wire | None:
        """What a delivery sends to a client holding `_held`, which it moves on; None if
        nothing."""
        match delivery:
            case Ping(message):
                return message
            case Delta(snapshot, message, base) if self._held == base:
                self._held = (snapshot.epoch, snapshot.version)
                return message
            case Delta(snapshot) | Full(snapshot) if (
                    self._held is None or self._held[0] != snapshot.epoch
                    or snapshot.version > self._held[1]):
                self._held = (snapshot.epoch, snapshot.version)
                return snapshot.event
        return None

    def _encode(self, messages: list[Wire]) -> bytes:
        """What the server writes: the messages as they are, or their shared deflate
        pieces (this stream only adds them to its CRC and length). One message is
        written as the object all its streams share, not a copy: the server keeps the
        last chunk it wrote while the stream waits, and a copy would cost every stream."""
        if not self._gzip:
            return b"".join([message.plain for message in messages])
        for message in messages:
            self._count_sent(message)
        return b"".join([message.piece for message in messages])

    def _count_sent(self, message: Wire) -> None:
        self._crc = zlib.crc32(message.plain, self._crc)
        self._sent += len(message.plain)

    def _watch_disconnect(self) -> None:
        """End as soon as the client hangs up, not at the next failed write: an I/O
        watcher, not a greenlet. Readable with nothing to read means the peer closed (an
        SSE client sends nothing after its request); if it sends bytes, writes will tell."""
        if self._socket is None or self.closed:
            return
        self._watcher = gevent.get_hub().loop.io(self._socket.fileno(), 1)
        self._watcher.start(self._on_readable)

    def _on_readable(self) -> None:
        pending = struct.unpack("i", fcntl.ioctl(self._socket.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        if pending == 0:
            self.end()
        else:
            self._stop_watching()

    def _stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None

    def end(self, hang_up: bool = False) -> None:
        """Unsubscribe now and wake the body, which ends. `hang_up` also shuts the socket
        down, so that a write stuck on a reader that never reads fails now, or a client
        reconnects elsewhere rather than reuse this connection. Idempotent."""
        if not self.closed:
            self.closed = True
            self._stop_watching()
            self._fanout.remove(self)
            self._ready.set()
        if hang_up and self._socket is not None:
            try:
                self._socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone

    def close(self) -> None:
        """The response is over; while the worker shuts down, hang up too."""
        self.end(hang_up=self._fanout.closing)


@dataclass(eq=False)
class _Channel:
    subscribers: set = field(default_factory=set)
    poller: gevent.Greenlet | None = None


class Fanout:
    """This worker's streams by project, a poller per watched project (`poll(slug)`, which
    returns when the project is gone, ending its streams), and the ping clock."""

    def __init__(self, config: Config, metrics: Metrics, poll: Callable[[str], None],
                 wall_clock: Callable[[], float] = time.time):
        self._config = config
        self._metrics = metrics
        self._poll = poll
        self._wall_clock = wall_clock
        self._channels: dict[str, _Channel] = {}
        self._pinger: gevent.Greenlet | None = None
        self.stream_count = 0
        self.closing = False

    @property
    def watched_projects(self) -> int:
        return len(self._channels)

    @property
    def poller_count(self) -> int:
        return sum(1 for c in self._channels.values() if c.poller is not None and not c.poller.dead)

    def subscribe(self, stream: Stream) -> None:
        """Add a stream to its project's channel; StreamsFull at MAX_STREAMS, or while
        shutting down."""
        if self.closing or self.stream_count >= self._config.max_streams:
            if not self.closing:
                self._metrics.streams_rejected.inc()
            raise StreamsFull()
        slug = stream.slug
        channel = self._channels.get(slug)
        if channel is None:
            channel = self._channels[slug] = _Channel()
        channel.subscribers.add(stream)
        self.stream_count += 1
        if channel.poller is None or channel.poller.dead:
            channel.poller = gevent.spawn(self._run_poller, slug)
        if self._pinger is None or self._pinger.dead:
            self._pinger = gevent.spawn(self._ping_forever)

    def remove(self, stream: Stream) -> None:
        """Forget a stream; the project's poller stops with its last one."""
        channel = self._channels.get(stream.slug)
        if channel is None or stream not in channel.subscribers:
            return
        channel.subscribers.discard(stream)
        self.stream_count -= 1
        if not channel.subscribers:
            del self._channels[stream.slug]
            if channel.poller is not None:
                channel.poller.kill(block=False)

    def publish(self, snapshot: Snapshot, updates: dict[str, str] | None,
                base: tuple[str, int]) -> None:
        """Fan a new snapshot version out to the project's streams, encoded once."""
        channel = self._channels.get(snapshot.slug)
        if channel is None:
            return
        if updates is None:
            delivery: Delivery = Full(snapshot)
        else:
            delivery = Delta(snapshot, Wire(_bulk_update(updates, snapshot.id)) if updates else None,
                             base)
        self._offer(channel, delivery)

    def connected_message(self, slug: str, resumed: bool) -> Wire:
        return Wire(SSEMessage(event="connected", data=json.dumps({"project": slug, "resumed": resumed}),
                               retry=self._config.sse_retry_ms).encode(), stored=True)

    def sent_away(self) -> Wire:
        return Wire(retry_message(self._config.sse_retry_ms, self._config.sse_reconnect_spread_ms),
                    stored=True)

    def _offer(self, channel: _Channel, delivery: Delivery) -> None:
        for stream in tuple(channel.subscribers):
            if not stream.offer(delivery):
                log.info("project %s: dropping a stream that fell %d messages behind",
                         stream.slug, STREAM_QUEUE_SIZE, extra={"project": stream.slug})
                self._metrics.streams_dropped.inc()
                stream.end(hang_up=True)

    def close_project(self, slug: str) -> None:
        channel = self._channels.get(slug)
        for stream in tuple(channel.subscribers if channel else ()):
            stream.end()

    def _run_poller(self, slug: str) -> None:
        """The project's poller while it has streams, supervised: started again after a
        crash (a bug of ours, logged); when it returns, the project is gone."""
        while slug in self._channels:
            try:
                self._poll(slug)
            except Exception:
                log.exception("project %s: poller crashed; starting it again", slug,
                              extra={"project": slug, "event": "poller_crashed"})
                gevent.sleep(POLLER_RESTART_SECONDS)
                continue
            self.close_project(slug)
            return

    def _ping_forever(self) -> None:
        while self._channels:
            gevent.sleep(self._config.sse_ping_interval)
            ping = Ping(Wire(SSEMessage(event="ping", data=json.dumps({"time": int(self._wall_clock())})).encode()))
            for channel in tuple(self._channels.values()):
                self._offer(channel, ping)

    def close(self) -> None:
        """Shutting down: end every stream (their clients reconnect elsewhere); their
        pollers stop with them."""
        self.closing = True
        for slug in tuple(self._channels):
            self.close_project(slug)
        if self._pinger is not None:
            self._pinger.kill(block=False)


def _bulk_update(updates: Mapping[str, str], event_id: str) -> bytes:
    return SSEMessage(event="bulk_update", data=json.dumps({"updates": updates}), id=event_id).encode()


def come_back_later(config: Config) -> Response:
    """A stream answer that ends at once and makes EventSource reconnect, jittered."""
    response = Response(retry_message(config.sse_retry_ms, config.sse_reconnect_spread_ms), 200,
                        content_type="text/event-stream")
    response.headers["Connection"] = "close"  # and free the connection for someone else
    return response


# --------------------------------------------------------------------------- routes

routes = Blueprint("public_status", __name__)


def _public() -> PublicStatus:
    return current_app.extensions["public_status"]


@routes.before_app_request
def refuse_bodies():
    """No route reads a request body: a declared large one is refused before any byte of
    it is read, and a connection that sent one unread (chunked) is not reused."""
    if (request.content_length or 0) > REQUEST_BODY_LIMIT:
        return json_error(413, "request body too large")
    return None


@routes.after_app_request
def public_headers(response: Response) -> Response:
    """Every answer is public and live: any origin may read it (the board may be served
    from elsewhere), and no cache may keep it, error answers included."""
    for name, value in _public().public_headers:
        response.headers.setdefault(name, value)
    if request.content_length or "chunked" in request.headers.get("Transfer-Encoding", ""):
        response.headers["Connection"] = "close"
    return response


def json_error(status: int, message: str, retry_after: float | None = None) -> Response:
    response = Response(json.dumps({"error": message}), status, content_type="application/json")
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


def _find_project(slug: str) -> Project:
    """The project; ProjectNotFound for a malformed slug (the database is not asked) or
    an unknown one, DatabaseUnavailable when it cannot be told."""
    if not SLUG_PATTERN.fullmatch(slug):
        raise ProjectNotFound(slug)
    project = _public().directory.get(slug)
    if project is None:
        raise ProjectNotFound(slug)
    return project


# What the public sees of the service's own errors that reach a view.
PUBLIC_ERRORS: Mapping[type, tuple[int, str]] = {
    ProjectNotFound: (404, "project not found"),
    DatabaseUnavailable: (503, "service temporarily unavailable"),
    DatabaseBusy: (503, "service busy"),
    NoSnapshot: (503, "statuses not available yet"),
    RefreshLimited: (429, "refreshed too recently"),
}


@routes.errorhandler(PublicStatusError)
def public_error(exc: PublicStatusError):
    return json_error(*PUBLIC_ERRORS[type(exc)], exc.retry_after)


# The headers of a compressed answer; Cache-Control keeps proxies from transforming it.
GZIP_HEADERS = (("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding"),
                ("Cache-Control", "no-store, no-transform"))


def _gzip_wanted() -> bool:
    return _public().config.compression and accepts_gzip(request.headers.get("Accept-Encoding"))


def _snapshot_response(snapshot: Snapshot) -> Response:
    if _gzip_wanted():
        response = Response(snapshot.gzip_body, 200, content_type="application/json")
        response.headers.extend(GZIP_HEADERS)
    else:
        response = Response(snapshot.body, 200, content_type="application/json")
        if _public().config.compression:
            response.headers["Vary"] = "Accept-Encoding"
    return response


@routes.get("/api/public/<slug>/status")
def get_status(slug: str):
    return _snapshot_response(_public().service.status(_find_project(slug)))


@routes.post("/api/public/<slug>/status/refresh")
def refresh_status(slug: str):
    return _snapshot_response(_public().service.refresh(_find_project(slug)))


@routes.get("/api/public/<slug>/status/stream")
def stream_status(slug: str):
    public = _public()
    try:
        project = _find_project(slug)
        if public.store.read(slug)[0] is None:
            public.store.sync(slug)  # a project new to this worker may be known elsewhere
        if project.config_error and public.store.read(slug)[0] is None:
            raise StreamsFull()  # nothing to show until its config is fixed: come back
        gzip_wanted = _gzip_wanted()
        # An HTTP/1.0 body ends when the connection does: no chunks, no keep-alive.
        http_1_0 = request.environ.get("SERVER_PROTOCOL") == "HTTP/1.0"
        stream: Any = iter(())   # a HEAD asks whether a stream would open, and opens none
        if request.method != "HEAD":
            # EventSource sends the last id it saw when it reconnects; a page that kept
            # its statuses may pass one on its first connect. The header wins.
            last_event_id = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
            stream = Stream(public.fanout, public.store, project.slug,
                            _client_socket(request.environ), last_event_id, gzip_wanted,
                            chunked=not http_1_0)
            request.environ[STREAM_ENVIRON_KEY] = stream  # for the access line's byte count
            public.fanout.subscribe(stream)
    except (DatabaseUnavailable, DatabaseBusy, StreamsFull):
        return come_back_later(public.config)
    response = Response(stream, 200, content_type="text/event-stream", direct_passthrough=True)
    if gzip_wanted:
        response.headers.extend(GZIP_HEADERS)
    elif public.config.compression:
        response.headers["Vary"] = "Accept-Encoding"
    # The SPEC's keep-alive, but for HTTP/1.0.
    response.headers["Connection"] = "close" if http_1_0 else "keep-alive"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _client_socket(environ: Mapping[str, Any]) -> socket.socket | None:
    """The socket a stream may watch: gunicorn's gevent worker names it `gunicorn.socket`,
    its gevent_pywsgi worker `gunicorn.sock`; none from other servers, nor where several
    streams share the connection (HTTP/2)."""
    if environ.get("HTTP_VERSION") == "2" or environ.get("SERVER_PROTOCOL", "").startswith("HTTP/2"):
        return None
    sock = environ.get("gunicorn.socket") or environ.get("gunicorn.sock")
    return sock if hasattr(sock, "fileno") else None


@routes.get("/")
def board():
    """The live status board (board.html), on public-status.js."""
    return _static("board.html", "text/html; charset=utf-8")


@routes.get("/public-status.js")
def client_script():
    """The client for any page: EventSource, resumed and reopened (public-status.js)."""
    return _static("public-status.js", "text/javascript; charset=utf-8")


def _static(name: str, content_type: str) -> Response:
    """A file that changes with a deploy: browsers keep it and revalidate (a 304)."""
    body = _public().static_files[name]
    response = Response(body, 200, content_type=content_type)
    response.headers["Cache-Control"] = "no-cache"
    response.set_etag(hashlib.sha1(body).hexdigest()[:16])
    return response.make_conditional(request)


@routes.get("/healthz")
def healthz():
    return Response(json.dumps({"status": "ok"}), 200, content_type="application/json")


@routes.get("/readyz")
def readyz():
    try:
        _public().db.fetch_one("SELECT 1")
    except DatabaseBusy:
        pass  # every connection is answering queries: the database is there
    except DatabaseUnavailable:
        return json_error(503, "database unavailable")
    return Response(json.dumps({"status": "ready"}), 200, content_type="application/json")


@routes.get("/metrics")
def metrics():
    return Response(generate_latest(_public().metrics.registry), 200, content_type=CONTENT_TYPE_LATEST)


@routes.app_errorhandler(HTTPException)
def http_error(exc: HTTPException):
    if 300 <= (exc.code or 500) < 400:  # a routing redirect: never answer with a 3xx
        return json_error(404, "not found")
    response = json_error(exc.code or 500, (exc.name or "error").lower())
    if exc.code == 405 and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


@routes.app_errorhandler(Exception)
def unexpected_error(exc: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return json_error(500, "internal error")


class WarmStatusFastPath:
    """WSGI middleware: a GET of a warm project's status (its row and its snapshot both
    fresh here) answered from the pre-encoded body without Flask. Anything else goes on
    to Flask, which gives the same answer the long way, headers in the same order."""

    PREFIX, SUFFIX = "/api/public/", "/status"

    def __init__(self, wsgi_app, public: PublicStatus):
        self._wsgi_app = wsgi_app
        self._directory = public.directory
        self._store = public.store
        self._ttl = public.config.status_cache_ttl
        self._cache_hits = public.metrics.cache_hits
        self._compression = public.config.compression
        vary = [("Vary", "Accept-Encoding")] if self._compression else []
        self._headers = [*vary, *public.public_headers]
        self._gzip_headers = [*GZIP_HEADERS, *(h for h in public.public_headers if h[0] != "Cache-Control")]

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if (environ["REQUEST_METHOD"] == "GET" and path.startswith(self.PREFIX)
                and path.endswith(self.SUFFIX) and environ.get("CONTENT_LENGTH") in (None, "", "0")
                and "HTTP_TRANSFER_ENCODING" not in environ):
            slug = path[len(self.PREFIX):-len(self.SUFFIX)]
            if self._directory.cached(slug) is not None:
                snapshot, age = self._store.read(slug)
                if age < self._ttl:
                    self._cache_hits.inc()
                    if (self._compression and "HTTP_ACCEPT_ENCODING" in environ
                            and accepts_gzip(environ["HTTP_ACCEPT_ENCODING"])):
                        body, headers = snapshot.gzip_body, self._gzip_headers
                    else:
                        body, headers = snapshot.body, self._headers
                    start_response("200 OK", [("Content-Type", "application/json"),
                                              ("Content-Length", str(len(body))), *headers])
                    return [body]
        return self._wsgi_app(environ, start_response)


class ClientTooSlow(OSError):
    """A client kept a connection idle, or sent its request head, for too long. An
    OSError, so that pywsgi ends the connection quietly, as if the client had left."""


class RequestRefused(PublicStatusError):
    """A request head over its bounds, or a body too large: answered, then closed."""

    REASONS = {413: "Content Too Large", 414: "URI Too Long",
               431: "Request Header Fields Too Large"}

    def __init__(self, status: int):
        super().__init__(f"{status} {self.REASONS[status]}")
        body = json.dumps({"error": self.REASONS[status].lower()}).encode()
        self.status = str(status)
        self.response = (f"HTTP/1.1 {status} {self.REASONS[status]}\r\nConnection: close\r\n"
                         f"Content-Type: application/json\r\nCache-Control: no-store\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class _BoundedInput(gevent.pywsgi.Input):
    """A request body, of which what the app left unread is read, to keep the connection,
    only up to REQUEST_BODY_LIMIT: past it the connection is dropped, not read forever."""

    __slots__ = ()

    def _discard(self):
        if self._chunked_input_error or not (
                self.chunked_input or self.position < (self.content_length or 0)):
            return
        left = REQUEST_BODY_LIMIT
        while left > 0:
            data = self.read(min(left, 16384))
            if not data:
                return
            left -= len(data)
        raise ClientTooSlow(errno.ECONNRESET, "request body left unread")


class ConnectionGuard:
    """The edge of a worker exposed to anyone, on gevent's pywsgi (the Procfile's worker),
    which has none of it: a head or idle time limit, bounds on the request head, or a stop
    to reading an unwanted body. gunicorn.conf.py gives the worker `handler_class()`.

    A connection is *waiting* from its accept, or the end of its last response, until its
    next request head is in: *idle* until the first byte of it comes, then *reading*. The
    head must be in within HEADER_TIMEOUT (of the accept for the first request, of its
    first byte for the next ones), and an idle keep-alive connection lasts
    KEEPALIVE_TIMEOUT. Near the worker's connection cap, each new connection evicts the
    longest idle one, never a stream or a request in progress; at shutdown every waiting
    connection is let go at once.

    Idle connections are timed by one sweeper per worker, not a timer per wait: a socket
    timeout would start and cancel a timer on every keep-alive request (a tenth of a
    warm GET's cost). So a connection may outlive its limit by one sweep, a quarter of
    the shorter limit at most (and never more than a second).
    """

    def __init__(self, config: Config):
        self._header_timeout = config.header_timeout
        self._keepalive_timeout = config.keepalive_timeout
        self._sweep_every = min(1.0, max(0.05, min(config.header_timeout, config.keepalive_timeout) / 4))
        self._sweeper: gevent.Greenlet | None = None
        # Idle handlers -> since when, longest idle first: before a first request (timed
        # by HEADER_TIMEOUT), and between requests (KEEPALIVE_TIMEOUT).
        self._idle_new: OrderedDict[Any, float] = OrderedDict()
        self._idle_kept: OrderedDict[Any, float] = OrderedDict()
        self._reading: set = set()
        self.closing = False

    def handler_class(self, base: type) -> type:
        """A subclass of pywsgi's handler (gunicorn's, `base`) that keeps the edge. It
        wraps no method a stream stays in: a parked stream's stack is saved whole."""
        guard = self

        class GuardedHandler(base):
            # No attribute of its own but on a refusal: a handler's __dict__ already holds
            # about forty, and one more key grows it by more than a kilobyte per stream.
            refused: RequestRefused | None = None

            def read_requestline(self):
                return guard._read_head(self)

            def MessageClass(self, fp, *args):
                return self.headers  # parsed with the head, in _read_bounded_head

            def read_request(self, raw_requestline):
                if self.refused is None:
                    super().read_request(raw_requestline)
                    if (self.content_length or 0) > REQUEST_BODY_LIMIT:
                        self.refused = RequestRefused(413)
                if self.refused is not None:
                    raise self.refused
                return True

            def _handle_client_error(self, ex):
                if isinstance(ex, RequestRefused):
                    return ex.status, ex.response
                return super()._handle_client_error(ex)

            def get_environ(self):
                environ = super().get_environ()
                self.wsgi_input.__class__ = _BoundedInput
                return environ

            def _sendall(self, data):
                # gevent's sendall asks the kernel for SO_SNDBUF before every write, a
                # syscall as dear as the send itself (a third of a fan-out's time); one
                # send takes a message whole unless the socket's buffer is full.
                try:
                    sent = self.socket.send(data)
                except OSError:
                    sent = 0  # pywsgi's own sendall raises it again, and records it
                self.response_length += sent
                if sent < len(data):
                    super()._sendall(memoryview(data)[sent:])

            def finalize_headers(self):
                super().finalize_headers()
                if self.command == "HEAD":
                    self.response_use_chunked = False  # no body, not even its last chunk

            def log_request(self):
                if self.environ is None:  # refused before a request was read
                    address = self.client_address
                    self.environ = {"REQUEST_METHOD": "-", "RAW_URI": "-", "SERVER_PROTOCOL": "-",
                                    "REMOTE_ADDR": address[0] if isinstance(address, tuple) else "-"}
                    self.response_headers = self.response_headers or []
                stream = self.environ.get(STREAM_ENVIRON_KEY)
                if stream is not None:  # what it wrote itself, not through this handler
                    self.response_length += stream.written
                super().log_request()

        return GuardedHandler

    def _read_head(self, handler) -> str:
        """Wait for the next request and read its head; its request line, or "" to close.
        A head over its bounds is refused once read (`read_request`)."""
        first = handler.requestline is None  # pywsgi's, set from what this returns
        if self.closing:
            return ""
        if first:
            self._make_room(handler.server)
        if self._sweeper is None:
            self._sweeper = gevent.spawn(self._sweep_forever)
        started = time.monotonic()
        idle = self._idle_new if first else self._idle_kept
        idle[handler] = started
        try:  # one read; the sweeper hangs up on it when it waits too long
            arrived = handler.rfile.peek(1)
        finally:
            idle.pop(handler, None)
        if not arrived or self.closing:
            return ""
        if b"\r\n\r\n" in arrived or b"\n\n" in arrived:
            return self._read_bounded_head(handler)  # in whole already: no read will wait
        self._reading.add(handler)
        try:
            left = (started if first else time.monotonic()) + self._header_timeout - time.monotonic()
            with gevent.Timeout(max(left, 0.001), ClientTooSlow()):
                return self._read_bounded_head(handler)
        finally:
            self._reading.discard(handler)

    def _make_room(self, server) -> None:
        """Near the cap of the server's connection pool (the worker's connections), close
        the longest idle connection for the new one."""
        pool = getattr(server, "pool", None)
        if pool is None or pool.free_count() >= max(10, pool.size // 100):
            return
        fronts = [idle for idle in (self._idle_new, self._idle_kept) if idle]
        if fronts:
            oldest = min(fronts, key=lambda idle: next(iter(idle.values())))
            self._hang_up(oldest.popitem(last=False)[0])

    def _sweep_forever(self) -> None:
        """Hang up on every connection idle past its limit (each dict is oldest first,
        so a sweep stops at the first one still in time)."""
        while not self.closing:
            gevent.sleep(self._sweep_every)
            now = time.monotonic()
            for idle, limit in ((self._idle_new, self._header_timeout),
                                (self._idle_kept, self._keepalive_timeout)):
                while idle and next(iter(idle.values())) + limit <= now:
                    self._hang_up(idle.popitem(last=False)[0])

    @staticmethod
    def _read_bounded_head(handler) -> str:
        line = handler.rfile.readline(REQUEST_LINE_LIMIT + 3)
        if not line.endswith(b"\n") or len(line.rstrip(b"\r\n")) > REQUEST_LINE_LIMIT:
            if len(line) <= REQUEST_LINE_LIMIT:
                return ""                              # the client left mid-line
            handler.refused = RequestRefused(414)
            return line[:REQUEST_LINE_LIMIT].decode("latin-1")
        fields = []
        while (field := handler.rfile.readline(HEADER_FIELD_LIMIT + 1)) not in (b"\r\n", b"\n"):
            if not field.endswith(b"\n"):
                if len(field) <= HEADER_FIELD_LIMIT:
                    return ""
                handler.refused = RequestRefused(431)
                break
            fields.append(field)
            if len(field.rstrip(b"\r\n")) + 2 > HEADER_FIELD_LIMIT or len(fields) > HEADER_FIELDS_LIMIT:
                handler.refused = RequestRefused(431)
                break
        # Parsed here as pywsgi would, without http.client's own bound (99 fields, where
        # gunicorn allows 100); `MessageClass` hands it over.
        handler.headers = email.parser.Parser(_class=gevent.pywsgi.OldMessage).parsestr(
            b"".join(fields).decode("iso-8859-1"))
        return line.decode("latin-1")

    def _hang_up(self, handler) -> None:
        try:
            handler.socket.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass  # already gone

    def let_go(self) -> None:
        """Shutting down: end every waiting connection now; busy ones finish first."""
        self.closing = True
        for handler in [*self._idle_new, *self._idle_kept, *self._reading]:
            self._hang_up(handler)


# --------------------------------------------------------------------------- app factory

@dataclass(eq=False)
class PublicStatus:
    """Everything one app instance holds; hangs off `app.extensions["public_status"]`."""

    config: Config
    db: Database
    directory: ProjectDirectory
    store: Store
    service: StatusService
    fanout: Fanout
    metrics: Metrics
    redactor: SecretRedactor
    static_files: Mapping[str, bytes]
    public_headers: tuple[tuple[str, str], ...]
    connections: ConnectionGuard

    def shutdown(self) -> None:
        """SIGTERM: end every stream, stop the pollers and give back their leases, let
        waiting connections go."""
        self.fanout.close()
        self.store.close()
        self.connections.let_go()
        self.db.close()


def create_app(config: Config | Mapping[str, Any] | None = None) -> Flask:
    """Build the app. `config`: a Config, a mapping of environment-style names (tests),
    or None to read the process environment."""
    if not isinstance(config, Config):
        config = Config.from_env(os.environ if config is None else config)
    redactor = SecretRedactor()
    configure_logging(config, redactor)
    db = Database(config.database_url, config.db_pool_size, config.db_timeout)
    redactor.add([db.password or "", urlsplit(config.redis_url or "").password or ""])
    metrics = Metrics()
    directory = ProjectDirectory(db, config, metrics, redactor)
    # Changes flow store -> fanout -> streams, and the fanout runs the service's pollers;
    # so the fanout comes first, and its `poll` finds the service once it is built.
    fanout = Fanout(config, metrics, poll=lambda slug: service.poll(slug))
    store = make_store(config, fanout.publish)
    service = StatusService(config, directory, UpstreamClient(config.max_upstream_bytes),
                            store, metrics)
    metrics.watch(fanout, store)

    app = Flask(__name__)
    app.url_map.merge_slashes = False  # `/api//public/x/status` must not be a 308
    here = Path(__file__).parent
    static_files = {name: (here / name).read_bytes() for name in ("board.html", "public-status.js")}
    headers = (("Access-Control-Allow-Origin", config.cors_allow_origin),  # public_headers()
               ("Access-Control-Expose-Headers", "Retry-After"), ("Cache-Control", "no-store"))
    public = PublicStatus(config, db, directory, store, service, fanout, metrics, redactor,
                          static_files, headers, ConnectionGuard(config))
    app.extensions["public_status"] = public
    app.register_blueprint(routes)
    app.wsgi_app = WarmStatusFastPath(app.wsgi_app, public)
    return app
