"""public-status: live unit statuses of a real-estate project, for anyone's browser.

For each project the service reads the integration settings from the shared PostgreSQL
database (read-only, raw SQL), fetches the unit statuses from that project's own client
API, normalizes them to five statuses (available, reserved, sold, hidden, unreleased),
caches them, and streams every change to browsers over Server-Sent Events:

    GET  /api/public/<slug>/status              the current statuses, as JSON
    GET  /api/public/<slug>/status/stream       text/event-stream of changes
    GET  /api/public/status/stream?projects=a,b one stream for several projects
    POST /api/public/<slug>/status/refresh      fetch now (rate limited)
    GET  /healthz, /readyz, /metrics            for the operator

Run it with the Procfile's command (gunicorn, its gevent worker, `wsgi:app`); `wsgi.py`
monkey-patches first, and gunicorn.conf.py hands each connection to the service's own
edge. The contract is SPEC.md; the README and docs/ say the rest.

The file, in the order data flows, a section under each banner:

    config             Config, read once from the environment
    logs and metrics   Metrics, LogScrubber (credentials out, control bytes escaped)
    types              the error family (each knows its answer), Project, Position and
                       the one rule for versions (`succession`), SSEMessage, Wire (bytes
                       made once, plain and as a gzip piece), Snapshot, Change, Fetched
    normalization      pure: response shapes -> unit statuses -> the five statuses, diffs
    database           ProjectDirectory: project rows by slug, cached, over a small pool
    upstream client    a row -> Project; UpstreamClient: one project's document from its
                       client API, conditional, and its Retry-After
    cache and pollers  StatusService (fetch, refresh, poll) -> Store: LocalStore, or with
                       REDIS_URL a RedisLink between the SharedStore and this worker alone
    SSE                Fanout -> Stream (its lifecycle in one table) -> Transport, the one
                       writer of a stream's connection
    routes             the Flask views, and the warm-GET fast path
    the edge           Edge: the worker's HTTP/1.1 server (strict heads, time limits,
                       idle connections first out near the cap, streams handed over)
    app factory        create_app(): builds and wires all of the above

Data flows one way. The service fetches and commits into the store; the store tells the
fanout of each Change (a callback given at construction); the fanout offers it to the
project's streams, each of which steps it against what its client holds and hands the
message to its transport. Consumers are told by callbacks given at construction: the
fanout runs the service's `poll`, a stream tells its fanout's `remove` when it closes,
a transport tells its stream what happened on the wire. Ids are `<epoch>-<version>`
(a multiplexed stream's name every project's position), and a client that sends one
back is resumed from the store's history, never from the client API.

Choices a reader might otherwise "fix": one upstream request per project at a time
(misses, refreshes and the poller join it; `SingleFlight`, `Store.fetch`); a warm GET
never reaches Flask (`WarmStatusFastPath`); a failed fetch never reaches the public
(stale snapshot, else 503 + Retry-After); every message is encoded once for all its
streams, and compressed once too, as a deflate piece that stands on its own (`Wire`:
no compressor per stream); an idle stream holds no greenlet (the edge hands its
connection to a `SocketTransport`, whose writes never block; the event loop finishes
what a socket did not take, and hears a client hang up); the stream answers 404 only
for a truly unknown project, and 200 + `retry:` for transient trouble, as EventSource
gives up on anything else; credentials stay out of reprs and leave only as request
headers, and every log line is scrubbed of them (`LogScrubber`).
"""

from __future__ import annotations

import _socket
import base64
import datetime
import email.utils
import enum
import functools
import gzip
import hashlib
import http
import http.cookiejar
import io
import json
import logging
import math
import os
import random
import re
import resource
import socket
import struct
import sys
import threading
import time
import types
import zlib
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol
from urllib.parse import unquote, unquote_to_bytes, urlsplit, urlunsplit

import gevent
import gevent.event
import gevent.lock
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
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
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
    max_projects_per_stream: int = 20
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
        redis_url = env.get("REDIS_URL") or None
        if redis_url:
            _readable_url("REDIS_URL", str(redis_url), lambda url: (urlsplit(url).port, urlsplit(url).password))
        db_timeout = _env_number(env, "DB_TIMEOUT", 5.0)
        if db_timeout > MAX_DB_TIMEOUT:             # the database takes it in milliseconds, as an int32
            raise ConfigError(f"DB_TIMEOUT must be at most {MAX_DB_TIMEOUT:g}")
        log_level = str(env.get("LOG_LEVEL", "INFO")).upper()
        if not isinstance(logging.getLevelName(log_level), int):
            raise ConfigError(f"LOG_LEVEL must be a logging level name, got {log_level!r}")
        log_format = str(env.get("LOG_FORMAT", "text")).lower()
        if log_format not in ("text", "json"):
            raise ConfigError(f"LOG_FORMAT must be 'text' or 'json', got {log_format!r}")
        compression = str(env.get("COMPRESSION", "on")).lower()
        if compression not in ("on", "off"):
            raise ConfigError(f"COMPRESSION must be 'on' or 'off', got {compression!r}")
        # A multiplexed stream's first words (`connected`, a snapshot per project) wait in
        # its queue for its writer: they must fit, or it would end as it opens.
        max_projects = _env_number(env, "MAX_PROJECTS_PER_STREAM", 20, int, minimum=1)
        if max_projects > STREAM_QUEUE_SIZE - 1:
            raise ConfigError(f"MAX_PROJECTS_PER_STREAM must be at most {STREAM_QUEUE_SIZE - 1}")
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
            max_projects_per_stream=max_projects,
            redis_url=redis_url,
            poll_lease_ttl=_env_number(env, "POLL_LEASE_TTL", 10.0),
            min_poll_interval=_env_number(env, "MIN_POLL_INTERVAL", 1.0),
            header_timeout=_env_number(env, "HEADER_TIMEOUT", 10.0),
            keepalive_timeout=_env_number(env, "KEEPALIVE_TIMEOUT", 100.0),
            compression=compression == "on",
            db_pool_size=_env_number(env, "DB_POOL_SIZE", 5, int, minimum=1),
            db_timeout=db_timeout,
        )


MAX_DB_TIMEOUT = 3600.0


def _readable_url(name: str, url: str, read: Callable[[str], Any]) -> None:
    """ConfigError if `read` cannot read the URL; the message shows none of it (what a
    parser quotes of a URL may be its password)."""
    try:
        read(url)
    except (ValueError, psycopg2.Error):
        raise ConfigError(f"{name} cannot be read as a URL (its text is not shown: it may hold "
                          "a password)") from None


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

    UPSTREAM_OUTCOMES = ("ok", "not_modified", "rate_limited", "http_error", "timeout",
                         "connection", "tls", "too_large", "bad_body", "config", "error")

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        self.open_streams = Gauge("public_status_open_streams", "Open SSE streams (a multiplexed "
                                  "stream is one)", registry=r)
        self.watched_projects = Gauge("public_status_watched_projects",
                                      "Projects with at least one open stream", registry=r)
        self.pollers = Gauge("public_status_pollers", "Poller greenlets running", registry=r)
        self.snapshot_age = Gauge("public_status_snapshot_age_max_seconds",
                                  "Among the projects this worker streams, the longest time since "
                                  "one was last fetched successfully", registry=r)
        self.upstream_requests = Counter("public_status_upstream_requests",
                                         "Client API fetches by outcome", ["outcome"], registry=r)
        self.upstream_deferred = Counter("public_status_upstream_deferred",
                                         "Fetches not made: the client API's Retry-After was "
                                         "still in force", registry=r)
        self.upstream_seconds = Histogram("public_status_upstream_seconds",
                                          "Client API fetch duration", registry=r)
        self.cache = Counter("public_status_cache", "Status reads by cache result", ["result"],
                             registry=r)
        self.refresh_limited = Counter("public_status_refresh_limited",
                                       "Forced refreshes answered 429", registry=r)
        self.db_errors = Counter("public_status_db_errors", "Failed database queries", registry=r)
        self.database_up = Gauge("public_status_database_up",
                                 "1 when the last database query succeeded", registry=r)
        self.streams_rejected = Counter("public_status_streams_rejected",
                                        "Streams sent away because MAX_STREAMS was reached",
                                        registry=r)
        self.streams_dropped = Counter("public_status_streams_dropped",
                                       "Streams closed for falling too far behind", registry=r)
        self.connections = Gauge("public_status_connections",
                                 "Open HTTP connections other than streams", registry=r)
        self.connections_evicted = Counter("public_status_connections_evicted",
                                           "Idle connections closed to make room near the cap",
                                           registry=r)
        self.requests_refused = Counter("public_status_requests_refused",
                                        "Request heads refused at the edge", ["status"], registry=r)
        self.redis_configured = Gauge("public_status_redis_configured",
                                      "1 when REDIS_URL is set", registry=r)
        self.redis_shared = Gauge("public_status_redis_shared",
                                  "1 while snapshots and pollers are shared through Redis",
                                  registry=r)
        self.database_up.set(1)
        for outcome in self.UPSTREAM_OUTCOMES:
            self.upstream_requests.labels(outcome)
        for status in RequestRefused.PUBLIC:
            self.requests_refused.labels(str(status))
        for result in ("hit", "miss", "stale"):
            self.cache.labels(result)
        self.cache_hits = self.cache.labels("hit")  # the hot path's child, looked up once

    def watch(self, fanout: Fanout, store: Store, edge: Edge, redis_configured: bool) -> None:
        """Gauges read when scraped, and the streams' own counters."""
        self.open_streams.set_function(lambda: fanout.stream_count)
        self.watched_projects.set_function(lambda: fanout.watched_projects)
        self.pollers.set_function(lambda: fanout.poller_count)
        self.snapshot_age.set_function(lambda: max(
            (min(store.read(slug)[1], watched) for slug, watched in fanout.watched_for()), default=0.0))
        self.connections.set_function(lambda: edge.open_connections)
        self.redis_configured.set(int(redis_configured))
        self.redis_shared.set_function(lambda: int(store.shared))
        self.registry.register(_StreamCounters(fanout.stats))


class _StreamCounters:
    """What every stream's writer counts as it goes (StreamStats), as metrics: counting in
    the writers is two integer additions; a Counter per message per stream would cost a
    lock and a method call on the fan-out's hot path."""

    def __init__(self, stats: StreamStats):
        self._stats = stats

    def describe(self):
        return []

    def collect(self):
        yield CounterMetricFamily("public_status_deliveries", "Messages written to streams "
                                  "(one per message per stream)", value=self._stats.messages)
        yield GaugeMetricFamily("public_status_stream_buffered_bytes", "Bytes held for streams "
                                "whose sockets have not taken them yet", value=self._stats.buffered)


_CONTROL_BYTES = re.compile(r"[\x00-\x1f\x7f]")


def escape_controls(text: str) -> str:
    """No CR, LF or other control byte from a request reaches a log line raw: each is
    written as its escape (`\\x0a`), so one line stays one line."""
    return _CONTROL_BYTES.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


class LogScrubber(logging.Filter):
    """Every record, whoever logged it (tracebacks and library lines included): each known
    credential replaced by `***`, and control bytes in the message and in an access
    line's fields escaped (a request's bytes may hold any of them).

    Attached to the handlers, so it sees records of every library and of gunicorn.
    """

    MIN_LENGTH = 3  # shorter strings are no secret, and replacing them garbles every line

    def __init__(self):
        super().__init__()
        self._secrets: set[str] = set()
        self._longest_first: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, secrets) -> None:
        fresh = {s for s in secrets if s and len(s) >= self.MIN_LENGTH} - self._secrets
        if fresh:
            with self._lock:
                self._secrets |= fresh
                self._longest_first = tuple(sorted(self._secrets, key=len, reverse=True))

    def redact(self, text: str) -> str:
        """Each secret found replaced, the longest first (one that holds another goes
        whole). A substring search each, not one alternation of them all: that took
        0.4 ms a line and 220 ms to rebuild for each new one at 5,000 projects."""
        for secret in self._longest_first:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def scrub(self, text: str) -> str:
        return escape_controls(self.redact(text))

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.getMessage()
        except (TypeError, ValueError, KeyError):  # a caller's bug: a line that says so, scrubbed,
            record.msg, record.args = f"{record.msg} (its arguments did not fit)", None  # not a raise
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if isinstance(record.args, dict):    # gunicorn's access atoms: scrubbed where they
            for key, value in record.args.items():  # are, so that JSON lines keep fields
                if isinstance(value, str):
                    record.args[key] = self.scrub(value)
            # a value that is no string shows what its str() says, when formatted
            if self.redact(message := record.getMessage()) != message:
                record.msg, record.args = self.scrub(message), None
        else:
            record.msg, record.args = self.scrub(record.getMessage()), None
        if record.exc_text:                  # a traceback's lines are its own, not a request's
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


def configure_logging(config: Config, scrubber: LogScrubber) -> None:
    """Our handler on the root logger (so library lines are formatted and scrubbed too),
    the scrubber on gunicorn's handlers as well, Python's warnings and gevent's own error
    reports (a greenlet or a callback that raised) through logging, not printed."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "public_status", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.public_status = True
    if config.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(scrubber)
    root.addHandler(handler)
    root.setLevel(config.log_level)
    for name in ("gunicorn.error", "gunicorn.access"):
        for gunicorn_handler in logging.getLogger(name).handlers:
            gunicorn_handler.addFilter(scrubber)
    logging.captureWarnings(True)
    gevent.get_hub().handle_error = _log_hub_error


def _log_hub_error(context, kind, value, tb) -> None:
    """gevent's hub hook (`Hub.handle_error`): what it would print to stderr, as one log
    record. It must not raise; system errors (KeyboardInterrupt, SystemExit) still stop
    the worker, as gevent's own handler has them do."""
    hub = gevent.get_hub()
    # Neither a greenlet killed nor a system error is logged; system errors go on, a
    # SystemExit included (it is both, for gevent)
    if kind is None or not issubclass(kind, hub.NOT_ERROR + hub.SYSTEM_ERROR):
        # logging reports its own failures (Handler.handleError) and does not raise
        log.error("uncaught error in %s", type(context).__name__ if context is not None else "the hub",
                  exc_info=(kind, value, tb))
    if context is None or (kind is not None and issubclass(kind, hub.SYSTEM_ERROR)):
        hub.handle_system_error(kind, value, tb)
# --------------------------------------------------------------------------- types

STATUSES = ("available", "reserved", "sold", "hidden", "unreleased")

SLUG_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")


# The service's own errors. Each knows its public answer, as werkzeug's HTTPExceptions
# do: its status, the only words the public sees (`public`: never the exception's own
# text, which is for logs) and its Retry-After. One that reaches a view without a status
# of its own is a bug of ours, answered 500. `transient`: trouble that passes; a stream
# answers it with 200 and a `retry:` (EventSource gives up on anything else).

class PublicStatusError(Exception):
    status = 500
    public = "internal error"
    retry_after: float | None = None
    transient = False

    def answer(self) -> Response:
        return json_error(self.status, self.public, self.retry_after)


def json_error(status: int, message: str, retry_after: float | None = None) -> Response:
    response = Response(json.dumps({"error": message}), status, content_type="application/json")
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


class StatusParseError(PublicStatusError):
    """A client API answered with a body this service does not understand."""


class UpstreamError(PublicStatusError):
    """A fetch from a project's client API failed. `outcome` is a metrics label;
    `retry_after`, the seconds its API asked us to wait (429 or 503 with Retry-After)."""

    def __init__(self, outcome: str, detail: str, retry_after: float | None = None):
        super().__init__(f"{outcome}: {detail}")
        self.outcome = outcome
        self.detail = detail
        self.retry_after = retry_after


class DatabaseUnavailable(PublicStatusError):
    """The shared database did not answer (down, timed out, refused the query)."""

    status, public, retry_after, transient = 503, "service temporarily unavailable", 5, True


class DatabaseBusy(PublicStatusError):
    """Every pooled connection stayed in use: a crowd, not a failure of the database."""

    status, public, retry_after, transient = 503, "service busy", 1, True


class ProjectNotFound(PublicStatusError):
    """No active project with an integration config has this slug (or it is malformed)."""

    status, public = 404, "project not found"


class BadProjectList(PublicStatusError):
    """A multiplexed stream's `projects` list is missing, empty, malformed or too long."""

    status = 400

    def __init__(self, public: str):
        super().__init__(public)
        self.public = public


class StreamsFull(PublicStatusError):
    """This worker takes no more streams: it holds MAX_STREAMS, or is shutting down."""

    status, public, retry_after, transient = 503, "service busy", 1, True


class TryLater(PublicStatusError):
    """An answer that says "try again in `retry_after` seconds"."""

    def __init__(self, retry_after: float):
        super().__init__(f"{type(self).__name__}, retry after {retry_after:.1f}s")
        self.retry_after = retry_after


class NoSnapshot(TryLater):
    """There is no snapshot to serve yet (the client API failed, or holds us back, or the
    project's config cannot be fetched with)."""

    status, public, transient = 503, "statuses not available yet", True


class RefreshLimited(TryLater):
    """A forced refresh came too soon after the previous one."""

    status, public = 429, "refreshed too recently"


class RequestRefused(PublicStatusError):
    """A request head the edge will not serve: framing it cannot read one way only, bounds
    exceeded, a body too large. Answered before any route, then the connection closes."""

    PUBLIC = {400: "bad request", 413: "request body too large", 414: "request line too long",
              431: "request header fields too large", 501: "transfer coding not implemented",
              505: "http version not supported"}

    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status
        self.public = self.PUBLIC[status]


@dataclass(frozen=True)
class Project:
    """One active project's integration settings, ready to fetch with.

    Credentials only ever leave this object as request headers: they are excluded from
    repr, and `secrets` lists every string a log line must never show. `settings` names
    what the fetch depends on (URL, credentials, status mapping) by a digest: conditional
    requests are only made while it is the one their validators were given under.
    """

    slug: str
    status_url: str                                   # userinfo removed
    timeout: float
    poll_interval: float
    auth_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    status_lookup: Mapping[str, str] = field(default_factory=dict, repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)
    config_error: str | None = None                   # why it cannot be fetched, if so
    settings: str = field(default="", repr=False)


# ---- versions: the one rule

class Position(NamedTuple):
    """Where a project's statuses stand: a version within an epoch, one unbroken line of
    versions. `str()` is the id clients see, `<epoch>-<version>`."""

    epoch: str
    version: int

    def __str__(self) -> str:
        return f"{self.epoch}-{self.version}"


_NO_POSITION = object()     # held by no reader: what a judgement remembers before its first


class Succession(enum.Enum):
    """What a new snapshot is to the position a reader holds (a stream, a history, a
    worker's mirror of Redis)."""

    STEP = "step"     # its changes lead from the position held to it: apply them
    JUMP = "jump"     # newer, but no step from what is held: take it whole
    STALE = "stale"   # not newer than what is held: nothing


def succession(held: Position | None, new: Position, base: Position | None) -> Succession:
    """The one rule for versions, wherever a new version meets one held. `base`: the
    position the new version's changes lead from (None: no step from anything known).
    A step may cross epochs: a worker alone starts a line of its own from the shared
    version its streams hold."""
    if base is not None and held == base:
        return Succession.STEP
    if held is None or held.epoch != new.epoch or new.version > held.version:
        return Succession.JUMP
    return Succession.STALE


# ---- Server-Sent Events, encoded once

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
    """Bytes made once for all the streams that write them: a message (or, for a
    multiplexed stream, a message but its id) as it is, and the first time a compressed
    stream asks, as a self-contained piece of a deflate stream (`piece`; for bytes of one
    connection, a stored block: no compressor). Either as an HTTP/1.1 chunk too (`chunk`)."""

    __slots__ = ("_chunks", "_piece", "_stored", "_tails", "plain")

    TAILS = 256                       # distinct endings kept per Wire, at most

    def __init__(self, plain: bytes, stored: bool = False):
        self.plain = plain
        self._stored = stored
        self._piece: bytes | None = None
        self._chunks: list[bytes | None] = [None, None]  # plain, piece
        self._tails: dict[bytes, Wire] | None = None

    def with_tail(self, tail: bytes) -> Wire:
        """These bytes and `tail` (a multiplexed stream's own `id:` line), as a Wire of
        their own, made once for every stream whose id is the same: most streams of a
        project hold the same positions, so they share it, chunk and gzip piece too."""
        if self._tails is None:
            self._tails = {}
        wire = self._tails.get(tail)
        if wire is None:
            wire = Wire(self.plain + tail)
            if len(self._tails) < self.TAILS:
                self._tails[tail] = wire
        return wire

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


_Q_PARAM = re.compile(r";[ \t]*q[ \t]*=[ \t]*([0-9.]*)")
GZIP_CODINGS_LOOKED_AT = 64       # codings named gzip or * weighed, at most: a head may hold thousands


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header allows gzip (`gzip` or `*`, with a q above 0).
    Only the codings that matter are looked at, found by the string's own search: a head
    may hold hundreds of kilobytes of other tokens, which are never split or weighed."""
    value = (accept_encoding or "").lower()
    q_of: dict[str, float] = {}
    for name in ("gzip", "*"):
        start = value.find(name)
        for _ in range(GZIP_CODINGS_LOOKED_AT):
            if start < 0:
                break
            end = value.find(",", start)
            end = len(value) if end < 0 else end
            coding, _, params = value[value.rfind(",", 0, start) + 1:end].partition(";")
            coding = coding.strip(" \t")
            if coding in ("gzip", "x-gzip", "*"):
                q = _Q_PARAM.search(";" + params) if params else None
                try:
                    weight = float(q.group(1)) if q else 1.0
                except ValueError:
                    weight = 0.0
                q_of[coding] = max(q_of.get(coding, 0.0), weight)
            start = value.find(name, end)
    if "gzip" in q_of or "x-gzip" in q_of:
        return max(q_of.get("gzip", 0.0), q_of.get("x-gzip", 0.0)) > 0
    return q_of.get("*", 0.0) > 0


# ---- snapshots and changes

@dataclass(frozen=True, eq=False)
class Snapshot:
    """Statuses of one project at one position, with their encodings made once."""

    slug: str
    position: Position
    statuses: Mapping[str, str]
    body: bytes = field(repr=False)      # the GET /status response body
    event: Wire = field(repr=False)      # the `status_update` SSE message
    _statuses_at: tuple[int, int] = field(repr=False, default=(0, 0))  # their JSON in `body`

    @property
    def id(self) -> str:
        return str(self.position)

    @functools.cached_property
    def gzip_body(self) -> bytes:
        """The GET body gzipped, made once (for the first client that accepts gzip)."""
        return gzip.compress(self.body, compresslevel=6, mtime=0)

    @functools.cached_property
    def mux_event(self) -> Wire:
        """The `status_update` of a multiplexed stream, but its id (each stream's own)."""
        start, end = self._statuses_at
        return Wire(b'event: status_update\ndata: {"project": %s, "statuses": %s}\n'
                    % (json.dumps(self.slug).encode(), self.body[start:end]))

    @classmethod
    def build(cls, slug: str, position: Position, statuses: Mapping[str, str],
              encoded: str | None = None) -> Snapshot:
        """`encoded`: `json.dumps(statuses)`, if it is made already (for a big project,
        off the event loop). Both encodings splice it in: the same bytes as encoding
        each whole, at half the cost."""
        encoded = json.dumps(statuses) if encoded is None else encoded
        head = f'{{"project": {json.dumps(slug)}, "statuses": '.encode()
        statuses_json = encoded.encode()
        body = b'%s%s, "count": %d}' % (head, statuses_json, len(statuses))
        event = SSEMessage(event="status_update", data=f'{{"statuses": {encoded}}}',
                           id=str(position))
        return cls(slug, position, statuses, body, Wire(event.encode()),
                   (len(head), len(head) + len(statuses_json)))


@dataclass(frozen=True, eq=False)
class Change:
    """A project's snapshot made current: `updates` (the units whose visible status
    changed, None when not known) lead to it from `base`. Its bulk_update messages are
    made once, on first use, for all the streams it reaches."""

    snapshot: Snapshot
    base: Position | None
    updates: Mapping[str, str] | None
    _judged: list = field(default_factory=lambda: [_NO_POSITION, None], repr=False)

    def succession(self, held: Position | None) -> Succession:
        """The rule, applied once per position held: the streams of a project mostly
        hold the same Position object, and it is immutable."""
        judged = self._judged
        if held is not judged[0]:
            judged[:] = held, succession(held, self.snapshot.position,
                                         self.base if self.updates is not None else None)
        return judged[1]

    @functools.cached_property
    def message(self) -> Wire:
        """The single stream's bulk_update, id included."""
        return Wire(SSEMessage(event="bulk_update", data=json.dumps({"updates": self.updates}),
                               id=self.snapshot.id).encode())

    @functools.cached_property
    def mux_message(self) -> Wire:
        """A multiplexed stream's bulk_update, but its id."""
        return Wire(b'event: bulk_update\ndata: {"project": %s, "updates": %s}\n'
                    % (json.dumps(self.snapshot.slug).encode(), json.dumps(self.updates).encode()))


class Validators(NamedTuple):
    """What a client API said identifies the document it sent (ETag, Last-Modified), and
    the project settings it was fetched under (`Project.settings`)."""

    etag: str | None
    last_modified: str | None
    settings: str


@dataclass(frozen=True, eq=False)
class Fetched:
    """A successful fetch, its costly pure work done once (off the event loop for a big
    body): the statuses, their JSON, and how they differ from `base`, the snapshot that
    was current when the fetch began. `unchanged`: the same statuses as `base`'s."""

    statuses: Mapping[str, str]
    unknown: list[str]
    base: Snapshot | None
    updates: dict[str, str] | None = None     # None: no base to step from
    unchanged: bool = False
    encoded: str | None = field(default=None, repr=False)
    validators: Validators | None = None

    @classmethod
    def over(cls, base: Snapshot | None, statuses: Mapping[str, str], unknown: list[str],
             validators: Validators | None = None) -> Fetched:
        if base is not None and base.statuses == statuses:
            return cls.same(base, validators, unknown)
        updates = diff_statuses(base.statuses, statuses) if base is not None else None
        return cls(statuses, unknown, base, updates, False, json.dumps(statuses), validators)

    @classmethod
    def same(cls, snapshot: Snapshot, validators: Validators | None, unknown: list[str] = ()) -> Fetched:
        """A fetch of the statuses `snapshot` holds."""
        return cls(snapshot.statuses, list(unknown), snapshot, {}, True, validators=validators)

    def against(self, current: Snapshot | None) -> Fetched:
        """The same fetch compared with `current`, if another commit came in between."""
        if current is self.base:
            return self
        return Fetched.over(current, self.statuses, self.unknown, self.validators)


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


def prepare_fetch(body: bytes, lookup: Mapping[str, str], base: Snapshot | None,
                  validators: Validators | None = None) -> Fetched:
    """A client API's body, parsed, normalized, encoded and compared with `base`."""
    return Fetched.over(base, *parse_statuses(body, lookup), validators)


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

KNOWN_PROJECTS = 10_000           # project rows kept, least recently used dropped first
UNKNOWN_SLUGS = 10_000            # slugs remembered as unknown, apart: a flood evicts only them
DB_RETRY_SECONDS = 1.0            # after a database failure, serve from cache this long untried

PROJECT_SQL = """
SELECT ic.api_base_url, ic.status_endpoint, ic.auth_type, ic.auth_credentials::text,
       ic.timeout_seconds, ic.status_mapping::text, ic.polling_interval_seconds
  FROM projects p
  JOIN integration_configs ic ON ic.project_id = p.id
 WHERE p.slug = %s AND p.is_active
 LIMIT 1
"""


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
        # libpq's connect_timeout holds only for a blocking connect; under psycogreen's wait
        # callback (wsgi.py) a database that accepts and says nothing would hold it forever.
        with gevent.Timeout(self._params["connect_timeout"],
                            DatabaseUnavailable("connecting to the database timed out")):
            conn = psycopg2.connect(**self._params)
        conn.autocommit = True  # one statement per use; never an idle open transaction
        return conn

    def fetch_one(self, sql: str, params: tuple = ()) -> tuple | None:
        """Run one SELECT; DatabaseUnavailable for anything that goes wrong with it, and
        DatabaseBusy when no pooled connection came free within DB_TIMEOUT."""
        try:
            try:
                return self._execute(sql, params)
            except psycopg2.extensions.QueryCanceledError:
                raise                 # the database is there, and slow: another connection waits as long
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
    _readable_url("DATABASE_URL", url, psycopg2.extensions.parse_dsn)
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

    def __init__(self, db: Database, config: Config, metrics: Metrics, scrubber: LogScrubber,
                 clock: Callable[[], float] = time.monotonic,
                 bounds: tuple[int, int] = (KNOWN_PROJECTS, UNKNOWN_SLUGS)):
        self._db = db
        self._bounds = bounds
        self._ttl = config.project_cache_ttl
        # A row of PROJECT_SQL -> Project: how to fetch with it is the upstream client's.
        self._read_row = functools.partial(project_from_row,
                                           default_poll_interval=config.default_poll_interval,
                                           min_poll_interval=config.min_poll_interval)
        self._metrics = metrics
        self._scrubber = scrubber
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
            self._metrics.database_up.set(0)
            self._retry_db_at = self._clock() + DB_RETRY_SECONDS
            if not self._db_failing:
                self._db_failing = True
                log.error("database unavailable (%s); serving known projects from cache", exc,
                          extra={"event": "db_unavailable"})
            return exc
        self._metrics.database_up.set(1)
        if self._db_failing:
            self._db_failing = False
            log.warning("database reachable again", extra={"event": "db_recovered"})
        if row is None:
            return None
        project = self._read_row(slug, row)
        self._scrubber.add(project.secrets)
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

DEFAULT_TIMEOUT_SECONDS = 10.0
MAX_TIMEOUT_SECONDS = 120.0       # a misconfigured timeout must not pin a fetch for hours
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HEADER_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")
VALIDATOR_LENGTH = 1024           # a longer ETag or Last-Modified is not kept


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
    """A row of PROJECT_SQL (the database section) -> Project. Whatever the row holds, a
    bad setting makes a project that fails to fetch (`config_error` says why), never an
    exception."""
    base, endpoint, auth_type, raw_credentials, timeout, raw_mapping, interval = row
    problems: list[str] = []
    try:
        url, userinfo = split_userinfo(join_status_url(base, endpoint))
        is_http = urlsplit(url).scheme in ("http", "https") and bool(urlsplit(url).hostname)
    except ValueError:        # a bracket or a port no URL can have; its text may be a password
        url, userinfo, is_http = "", None, False
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
    if not is_http:
        problems.append("api_base_url and status_endpoint do not make an http(s) URL")
    lookup = build_status_lookup(mapping)
    settings = hashlib.blake2b(repr((url, sorted(headers.items()), sorted(lookup.items()))).encode(),
                               digest_size=12).hexdigest()
    return Project(slug, url, min(timeout, MAX_TIMEOUT_SECONDS), max(interval, min_poll_interval),
                   headers, lookup, _secret_strings(credentials, userinfo, headers),
                   "; ".join(problems) or None, settings)



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
    return clean, (unquote(parts.username or ""), unquote(parts.password or ""))


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


@dataclass(frozen=True, slots=True)
class Body:
    """A client API's answer: the status document, and the validators that name it."""

    content: bytes
    validators: Validators | None


@dataclass(frozen=True, slots=True)
class NotModified:
    """A client API's 304 to a conditional request: the document is the one we hold."""


class UpstreamClient:
    """Gets a project's status document from its client API, as Body or NotModified.

    The whole fetch is bounded by the project's timeout (requests' own timeout bounds
    each socket read only, so a body trickling in forever would never end) and the
    body by MAX_UPSTREAM_BYTES. Redirects are not followed: requests would carry a
    custom API-key header along to whatever host the redirect names. One session (its
    connection pool), and nothing else, is shared by the projects: no cookie is kept,
    and validators are the caller's, per project. A 429 or 503 with Retry-After is an
    error that says how long to wait, at most `hold_cap(project)` seconds.
    """

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.time):
        self.max_bytes = max_bytes
        self._clock = clock               # wall time, for a Retry-After given as a date
        self.session = requests.Session()
        self.session.headers.update({"Accept": "application/json", "User-Agent": "public-status"})
        self.session.cookies.set_policy(_NoCookies())

    def get(self, project: Project, validators: Validators | None = None) -> Body | NotModified:
        if project.config_error:
            raise UpstreamError("config", project.config_error)
        deadline = gevent.Timeout(project.timeout)
        try:
            with deadline, self.session.get(
                project.status_url,
                headers=_conditional_headers(validators),
                auth=HeaderAuth(project.auth_headers),
                timeout=project.timeout,
                allow_redirects=False,
                stream=True,
            ) as response:
                return self._answer(project, response, validators)
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

    def _answer(self, project: Project, response: requests.Response,
                validators: Validators | None) -> Body | NotModified:
        code = response.status_code
        if code == 304 and validators is not None:
            return NotModified()
        if code in (429, 503) and "Retry-After" in response.headers:
            wait = retry_after_seconds(response.headers["Retry-After"], self._clock(),
                                       hold_cap(project))
            raise UpstreamError("rate_limited", f"HTTP {code}, Retry-After {wait:g}s", retry_after=wait)
        if not 200 <= code < 300:
            raise UpstreamError("http_error", f"HTTP {code}")
        content = _read_capped(response, self.max_bytes)
        found = Validators(_validator(response.headers.get("ETag")),
                           _validator(response.headers.get("Last-Modified")), project.settings)
        return Body(content, found if found.etag or found.last_modified else None)


def hold_cap(project: Project) -> float:
    """The longest a client API may hold us back: as long as the longest backoff."""
    return 8 * project.poll_interval


def retry_after_seconds(value: str, now: float, cap: float) -> float:
    """A Retry-After (delay-seconds, or an HTTP-date) as seconds from `now` (wall time),
    between 0 and `cap`; a value that cannot be read asks for the longest wait, `cap`."""
    value = value.strip()
    if value.isdigit() and value.isascii():
        return min(float(value[:12]), cap)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return cap
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return min(max(when.timestamp() - now, 0.0), cap)


def _conditional_headers(validators: Validators | None) -> dict[str, str]:
    if validators is None:
        return {}
    headers = {}
    if validators.etag:
        headers["If-None-Match"] = validators.etag
    if validators.last_modified:
        headers["If-Modified-Since"] = validators.last_modified
    return headers


def _validator(value: str | None) -> str | None:
    """A validator fit to send back: one header-safe line of reasonable length."""
    if value and len(value) <= VALIDATOR_LENGTH and HEADER_VALUE.fullmatch(value):
        return value
    return None


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

HISTORY_BYTES = 256 * 1024        # a project's history of changed units, at most (and SSE_HISTORY)
PARSE_IN_THREAD_BYTES = 256 * 1024  # bodies this large are parsed off the event loop
MAX_UNKNOWN_LOGGED = 100          # distinct unknown status values logged per project


class Store(Protocol):
    """Where snapshots live, and who may fetch or poll a project: the one seam for sharing
    state between workers. Given at construction the callback that hears of each
    snapshot it makes current, `on_change(change)` (a Change)."""

    shared: bool          # True while the state is shared with other workers (Redis)
    renew_every: float    # seconds between renewals of a poll lease while polling

    # Snapshots: this worker's latest and its age (inf if none), without I/O, and the
    # validators its client API gave it; before a miss fetches, take what another worker
    # committed meanwhile; record a fetch (a new version, published, only if anything
    # changed).
    def read(self, slug: str) -> tuple[Snapshot | None, float]: ...
    def validators(self, slug: str) -> Validators | None: ...
    def sync(self, slug: str) -> None: ...
    def commit(self, slug: str, fetched: Fetched) -> Snapshot: ...

    # Resume: the units changed since a position of the current epoch, each with its
    # current status ({} at the current position); None when the history cannot tell.
    # Whether a client holds a newer version of a line this worker did not make (another
    # worker was ahead of it, and Redis lost that commit or its message is on its way).
    def changes_since(self, slug: str, held: Position) -> dict[str, str] | None: ...
    def ahead(self, slug: str, held: Position) -> bool: ...

    # Fetches: run `do_fetch` as the deployment's one fetch of the project, or join the
    # one under way elsewhere; 0 if a forced refresh may fetch now, else seconds to wait;
    # a client API's Retry-After, kept for every fetch of the project (`held_for`: the
    # seconds left).
    def fetch(self, slug: str, timeout: float, do_fetch: Callable[[], Snapshot | UpstreamError]
              ) -> Snapshot | UpstreamError: ...
    def claim_refresh(self, slug: str, min_interval: float) -> float: ...
    def hold(self, slug: str, seconds: float) -> None: ...
    def held_for(self, slug: str) -> float: ...

    # Polling: 0 if this worker polls the project now, else seconds until it may; stop
    # polling it (another worker may take over at once); give everything back.
    def poll_turn(self, slug: str) -> float: ...
    def release_poll(self, slug: str) -> None: ...
    def close(self) -> None: ...


class History:
    """A project's last steps, oldest first, each with the units it changed: one line,
    each step from the position the one before reached (the rule: `succession`),
    bounded by a count and by HISTORY_BYTES (each entry weighed as its JSON), so that
    resuming costs a union of a few sets, and never a fetch."""

    __slots__ = ("_bound", "_bytes", "_entries")

    def __init__(self, bound: int):
        self._bound = bound
        self._entries: deque[tuple[Position, Position, frozenset[str], int]] = deque()
        self._bytes = 0

    @classmethod
    def of(cls, bound: int, steps: Iterable[tuple[Position | None, Position, Iterable[str]]]) -> History:
        history = cls(bound)
        for base, position, units in steps:
            history.add(base, position, units)
        return history

    @property
    def bytes(self) -> int:
        return self._bytes

    def add(self, base: Position | None, position: Position, units: Iterable[str]) -> None:
        """A new version, from `base` (None: no step): a step from the last one extends
        the line; anything else begins it again."""
        if self._entries and succession(self._entries[-1][1], position, base) is not Succession.STEP:
            self.clear()
        if base is None:
            self.clear()
            return
        units = frozenset(units)
        weight = 16 + sum(len(unit) + 4 for unit in units)
        self._entries.append((base, position, units, weight))
        self._bytes += weight
        while self._entries and (len(self._entries) > self._bound or self._bytes > HISTORY_BYTES):
            self._bytes -= self._entries.popleft()[3]

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def since(self, held: Position, current: Position) -> set[str] | None:
        """The units changed after `held` up to `current`; None if the line does not
        reach back to it."""
        if held == current:
            return set()
        if not self._entries or self._entries[-1][1] != current:
            return None
        units: set[str] = set()
        for base, _, changed, _ in reversed(self._entries):
            units |= changed
            if base == held:
                return units
        return None


@dataclass(slots=True)
class _Stored:
    snapshot: Snapshot
    fetched_at: float
    validators: Validators | None


class LocalStore(Store):
    """The Store of a worker alone, in its memory: every fetch and poll is its own, and
    nothing is elsewhere (`sync`, `release_poll` and `close`: the protocol's no-ops).

    Its epoch is its own, made when it is: versions start again at 1 after a restart,
    and so do ids, under another epoch. As a mirror of Redis, each spell alone starts a
    project's line of its own from the shared version, and a second one takes a new
    epoch, so that no id is given out twice (`made_here`). It keeps each project's
    History.
    """

    shared = False
    renew_every = math.inf

    def __init__(self, on_change: Callable[[Change], None],
                 clock: Callable[[], float] = time.monotonic, history: int = 100):
        self._on_change = on_change
        self._clock = clock
        self._history_bound = history
        self.epoch = f"{random.getrandbits(40):010x}"
        self._stored: dict[str, _Stored] = {}
        self._history: dict[str, History] = {}
        self._lines: dict[str, str] = {}       # the epoch of each project's last line of its own
        self._refreshed_at: dict[str, float] = {}
        self._held_until: dict[str, float] = {}

    def read(self, slug: str) -> tuple[Snapshot | None, float]:
        stored = self._stored.get(slug)
        if stored is None:
            return None, math.inf
        return stored.snapshot, self._clock() - stored.fetched_at

    def validators(self, slug: str) -> Validators | None:
        stored = self._stored.get(slug)
        return stored.validators if stored else None

    def slugs(self) -> list[str]:
        return list(self._stored)

    def sync(self, slug: str) -> None:
        pass

    def commit(self, slug: str, fetched: Fetched) -> Snapshot:
        previous = self.read(slug)[0]
        fetched = fetched.against(previous)
        if fetched.unchanged:
            self.touch(slug, self._clock(), fetched.validators)
            return previous
        # A change to a shared line while this worker is alone starts a line of its own,
        # as a step from the shared version: its streams get the change, not everything.
        # A project's second line of its own (a second spell alone) takes a new epoch:
        # its versions start at 1 again, and must not be the first line's ids.
        line = self._lines.get(slug, self.epoch)
        own_line = previous is not None and previous.position.epoch == line
        if not own_line:
            line = self._lines[slug] = self.epoch if slug not in self._lines else f"{random.getrandbits(40):010x}"
        position = Position(line, previous.position.version + 1 if own_line else 1)
        snapshot = Snapshot.build(slug, position, fetched.statuses, fetched.encoded)
        self.install(Change(snapshot, previous.position if previous else None, fetched.updates),
                     self._clock(), fetched.validators)
        return snapshot

    def install(self, change: Change, fetched_at: float, validators: Validators | None,
                history: History | None = None) -> None:
        """Make the change's snapshot the latest and tell the subscribers. Its step goes
        into the project's history, or `history` (a shared one's) replaces it."""
        snapshot = change.snapshot
        self._stored[snapshot.slug] = _Stored(snapshot, fetched_at, validators)
        if history is not None:
            self._history[snapshot.slug] = history
        else:
            kept = self._history.setdefault(snapshot.slug, History(self._history_bound))
            kept.add(change.base if change.updates is not None else None, snapshot.position,
                     change.updates or ())
        self._on_change(change)

    def touch(self, slug: str, fetched_at: float, validators: Validators | None) -> None:
        """The latest snapshot was fetched again, unchanged."""
        stored = self._stored.get(slug)
        if stored is not None:
            stored.fetched_at = max(stored.fetched_at, fetched_at)
            stored.validators = validators

    def changes_since(self, slug: str, held: Position) -> dict[str, str] | None:
        snapshot = self.read(slug)[0]
        if snapshot is None or held.epoch != snapshot.position.epoch:
            return None                       # resume never crosses epochs (SPEC, Resume)
        units = self._history.get(slug, History(0)).since(held, snapshot.position)
        if units is None:
            return None
        return {unit: snapshot.statuses.get(unit, "hidden") for unit in units}

    def ahead(self, slug: str, held: Position) -> bool:
        """A newer id of this store's own line was never given out: it is garbage, and
        its client gets a first connect. Only a line made elsewhere (a mirror's of
        Redis) may be ahead of this worker."""
        snapshot = self.read(slug)[0]
        return (snapshot is not None and held.epoch == snapshot.position.epoch
                and held.version > snapshot.position.version
                and not self.made_here(slug, held))

    def made_here(self, slug: str, position: Position) -> bool:
        """Whether a position is of a line this store made for the project."""
        return position.epoch in (self.epoch, self._lines.get(slug))

    def fetch(self, slug, timeout, do_fetch):
        return do_fetch()

    def claim_refresh(self, slug: str, min_interval: float) -> float:
        now = self._clock()
        wait = self._refreshed_at.get(slug, -math.inf) + min_interval - now
        if wait > 0:
            return wait
        self._refreshed_at[slug] = now
        return 0.0

    def hold(self, slug: str, seconds: float) -> None:
        self._held_until[slug] = self._clock() + seconds

    def held_for(self, slug: str) -> float:
        return max(self._held_until.get(slug, -math.inf) - self._clock(), 0.0)

    def poll_turn(self, slug: str) -> float:
        return 0.0

    def release_poll(self, slug: str) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class _FetchState:
    """This worker's bookkeeping of one project's fetches."""

    failures: int = 0                 # failed fetches in a row
    parsed: tuple = ()                # (body digest, project settings) of `committed`
    committed: Snapshot | None = None # what this worker's last successful fetch made
    retry_at: float = -math.inf       # after a failure, GETs wait for this before fetching
    poll_due_at: float = -math.inf    # when the poller fetches next
    held_back: bool = False           # the last failure was a Retry-After (logged once a spell)
    unknown_logged: set = field(default_factory=set)


class StatusService:
    """The cache's rules (one fetch at a time, stale on failure, rate-limited refresh, a
    client API's Retry-After and validators) and each project's poller; it commits into
    the store and never talks to streams."""

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
        if project.slug not in self._fetches and self.clock() < self._states[project.slug].retry_at:
            return self._stale(project, snapshot)
        if project.slug not in self._fetches and self.store.held_for(project.slug) > 0:
            self.metrics.upstream_deferred.inc()   # the client API's Retry-After holds
            return self._stale(project, snapshot)
        try:
            fetched = self._fetch_once(project)
        except UpstreamError:
            return self._stale(project, snapshot)
        self.metrics.cache.labels("miss").inc()
        return fetched

    def refresh(self, project: Project) -> Snapshot:
        """Fetch now, bypassing the cache. A refresh that arrives while a fetch of the
        project is under way (a poll, a miss, another refresh) joins it: that costs the
        client API nothing, so it is not counted against REFRESH_MIN_INTERVAL. While the
        client API holds us back (Retry-After), it answers as a failed refresh does."""
        if project.slug not in self._fetches:
            if self.store.held_for(project.slug) > 0:
                self.metrics.upstream_deferred.inc()
                return self._stale(project, self.store.read(project.slug)[0])
            wait = self.store.claim_refresh(project.slug, self.config.refresh_min_interval)
            if wait > 0:
                self.metrics.refresh_limited.inc()
                raise RefreshLimited(wait)
        try:
            return self._fetch_once(project)
        except UpstreamError:
            return self._stale(project, self.store.read(project.slug)[0])

    def _stale(self, project: Project, snapshot: Snapshot | None) -> Snapshot:
        """The stale snapshot; with none, NoSnapshot saying when asking again may help:
        after the backoff, and never before the client API's Retry-After."""
        if snapshot is None:
            retry_at = self._states[project.slug].retry_at
            raise NoSnapshot(max(retry_at - self.clock(), self.store.held_for(project.slug), 1.0))
        self.metrics.cache.labels("stale").inc()
        return snapshot

    def _fetch_once(self, project: Project) -> Snapshot:
        """One fetch per project at a time, in this worker and (the store's `fetch`) in
        the deployment: everyone who asks meanwhile joins it. Its callers have looked at
        the client API's Retry-After (`held_for`) first."""
        slug = project.slug
        state = self._states[slug]
        outcome = self._fetches.join(slug, lambda: self.store.fetch(
            slug, project.timeout, lambda: self._fetch_here(project, state)))
        if isinstance(outcome, UpstreamError):
            raise outcome
        return outcome

    def _fetch_here(self, project: Project, state: _FetchState) -> Snapshot | UpstreamError:
        started = self.clock()
        try:
            validators = self._validators_for(project)
            answer = self.client.get(project, validators)
            if isinstance(answer, NotModified):
                outcome, fetched, parsed = "not_modified", self._not_modified(project, validators), state.parsed
            else:
                outcome = "ok"
                fetched, parsed = self._prepare(project, state, answer)
        except UpstreamError as exc:
            error = exc
        except Exception as exc:  # a bug of ours: log it, keep serving what we have
            log.exception("project %s: fetch crashed", project.slug, extra={"project": project.slug})
            error = UpstreamError("error", type(exc).__name__)
        else:
            snapshot = self._record_success(project, state, fetched, started, outcome)
            state.parsed, state.committed = parsed, snapshot
            return snapshot
        self._record_failure(project, state, error, started)
        return error

    def _validators_for(self, project: Project) -> Validators | None:
        """The validators of the snapshot held, if it was fetched under these settings:
        a changed URL, credential or status mapping forgets them."""
        validators = self.store.validators(project.slug)   # kept beside a snapshot only
        return validators if validators is not None and validators.settings == project.settings else None

    def _not_modified(self, project: Project, validators: Validators) -> Fetched:
        """A 304: the snapshot held, fetched again; no parse, no change to tell anyone.
        (There is one: validators are sent only beside it, and stores never drop it.)"""
        return Fetched.same(self.store.read(project.slug)[0], validators)

    def _prepare(self, project: Project, state: _FetchState, answer: Body) -> tuple[Fetched, tuple]:
        """The fetched statuses, and what they were parsed from. The body this worker's
        last snapshot came from costs no parse; a big one is parsed, encoded and compared
        in a thread, so that the worker serves on meanwhile (sharing the GIL)."""
        body = answer.content
        parsed = (hashlib.blake2b(body, digest_size=16).digest(), project.settings)
        current = self.store.read(project.slug)[0]
        if parsed == state.parsed and current is not None and current is state.committed:
            return Fetched.same(current, answer.validators), parsed
        work = (body, project.status_lookup, current, answer.validators)
        try:
            if len(body) < PARSE_IN_THREAD_BYTES:
                return prepare_fetch(*work), parsed
            return gevent.get_hub().threadpool.apply(prepare_fetch, work), parsed
        except StatusParseError as exc:
            raise UpstreamError("bad_body", str(exc)) from None

    def _record_success(self, project: Project, state: _FetchState, fetched: Fetched,
                        started: float, outcome: str) -> Snapshot:
        now = self.clock()
        self.metrics.upstream_requests.labels(outcome).inc()
        self.metrics.upstream_seconds.observe(now - started)
        self._log_unknown(project.slug, state, fetched.unknown)
        if state.failures:
            log.warning("project %s: client API recovered after %d failed fetches",
                        project.slug, state.failures,
                        extra={"project": project.slug, "event": "upstream_recovered"})
        state.failures = 0
        state.held_back = False
        state.poll_due_at = -math.inf  # no backoff: the snapshot's age says when to poll
        return self.store.commit(project.slug, fetched)

    def _record_failure(self, project: Project, state: _FetchState, error: UpstreamError,
                        started: float) -> None:
        now = self.clock()
        self.metrics.upstream_requests.labels(error.outcome).inc()
        self.metrics.upstream_seconds.observe(now - started)
        state.failures += 1
        # The backoff, whatever the client API says; a Retry-After is a hold on top of it,
        # which every fetch of the project honours (at least that long: no licence to
        # come back sooner than the backoff).
        delay = backoff_delay(state.failures, project.poll_interval)
        if error.retry_after is not None:
            self.store.hold(project.slug, error.retry_after)
        state.poll_due_at = now + delay
        state.retry_at = now + min(delay, self.config.status_cache_ttl)
        fallback = "the last good snapshot" if self.store.read(project.slug)[0] else "503 (no snapshot yet)"
        extra = {"project": project.slug, "duration": round(now - started, 3)}
        if error.retry_after is not None and not state.held_back:
            log.warning("project %s: client API asks us to wait %.1fs (%s); serving %s",
                        project.slug, error.retry_after, error.detail, fallback,
                        extra={**extra, "event": "upstream_held_back"})
        elif state.failures == 1:
            log.warning("project %s: client API fetch failed (%s); serving %s",
                        project.slug, error, fallback, extra={**extra, "event": "upstream_failed"})
        else:
            log.debug("project %s: fetch failed again (%d in a row): %s",
                      project.slug, state.failures, error)
        state.held_back = error.retry_after is not None

    def _log_unknown(self, slug: str, state: _FetchState, unknown: list[str]) -> None:
        for value in unknown:
            if value in state.unknown_logged or len(state.unknown_logged) >= MAX_UNKNOWN_LOGGED:
                continue
            state.unknown_logged.add(value)
            log.warning("project %s: unknown status value %r shown as hidden", slug, value[:100],
                        extra={"project": slug, "event": "unknown_status"})

    def poll(self, slug: str) -> None:
        """The poller of one project: fetches at its interval while this worker holds the
        project's poll lease (always, without Redis), and never while its client API's
        Retry-After holds; returns when the project is gone. The fanout runs it while the
        project has subscribers, and kills it after."""
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
                wait = max(self._states[slug].poll_due_at - self.clock(), project.poll_interval - age,
                           self.store.held_for(slug))
                if wait > 0:
                    self._sleep(min(wait, self.store.renew_every))
                    continue
                try:
                    self._fetch_once(project)
                except UpstreamError:
                    pass  # logged by _fetch_here; poll_due_at now holds the backoff
        finally:
            self.store.release_poll(slug)

# ---- the shared store (REDIS_URL)

REDIS_PREFIX = "public-status:"
CHANGES_CHANNEL = REDIS_PREFIX + "changes"
REDIS_RETRY_SECONDS = 1.0      # while Redis is away, how often to try it again
REDIS_CONNECTIONS = 50         # per worker; the follower's subscription holds one
SNAPSHOT_KEY_TTL = 86_400      # a project nobody fetches for a day leaves Redis

# Commit one fetch, atomically: a new version only when the statuses changed (compared
# by digest), its history entry appended (ARGV[8]: "<base>, <units>", as the worker
# made it; readers judge entries by `succession`), then tell every worker, in commit
# order. A project's first commit (or the first after its key expired, or Redis lost
# it) starts a new epoch, ARGV[7], and history. The statuses JSON is spliced in as
# text, so its unit order survives. Returns {kind, epoch, version}: kind "unchanged",
# "changed", or "behind" (the worker sent no statuses, taking them to be unchanged, but
# the digest differs: its mirror is behind).
COMMIT_SCRIPT = """
local old = redis.call('HMGET', KEYS[1], 'epoch', 'version', 'digest')
local epoch, version = old[1], tonumber(old[2]) or 0
local kind = 'unchanged'
if old[3] ~= ARGV[1] then
  if ARGV[2] == '' then return {'behind', '', 0} end
  kind = 'changed'
  if not epoch then
    epoch, version = ARGV[7], 0
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'epoch', epoch, 'history_bytes', 0)
  end
  version = version + 1
  local entry = '[' .. version .. ', ' .. ARGV[8] .. ']'
  redis.call('RPUSH', KEYS[2], entry)
  local size = redis.call('HINCRBY', KEYS[1], 'history_bytes', #entry)
  while redis.call('LLEN', KEYS[2]) > tonumber(ARGV[9]) or size > tonumber(ARGV[10]) do
    size = redis.call('HINCRBY', KEYS[1], 'history_bytes', -#redis.call('LPOP', KEYS[2]))
  end
  redis.call('HSET', KEYS[1], 'version', version, 'digest', ARGV[1], 'statuses', ARGV[2])
end
redis.call('HSET', KEYS[1], 'fetched_at', ARGV[3], 'validators', ARGV[11])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
local message = '{"kind": "commit", "slug": ' .. ARGV[6] .. ', "epoch": "' .. epoch .. '", "version": '
  .. version .. ', "fetched_at": ' .. ARGV[3] .. ', "digest": "' .. ARGV[1] .. '", "validators": ' .. ARGV[11]
if kind == 'changed' then message = message .. ', "statuses": ' .. ARGV[2] end
redis.call('PUBLISH', ARGV[5], message .. '}')
return {kind, epoch, version}
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

# Extend a lease only if this worker still holds it: 1 if it did, else 0.
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# Delete a key only if this worker holds it.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _redis_key(kind: str, slug: str) -> str:
    return f"{REDIS_PREFIX}{kind}:{slug}"


class CommitKind(enum.Enum):
    UNCHANGED = "unchanged"   # the statuses Redis holds: only the time (and validators) moved on
    CHANGED = "changed"       # a new version
    BEHIND = "behind"         # sent without statuses, but Redis holds others: send them


class SharedStore(Store):
    """The Store of a whole deployment, through Redis: only statuses, versions,
    validators, times and worker ids go there, never a credential.

    Reads are served by this worker's mirror (a LocalStore), kept up to each version
    committed anywhere: the link hands it every commit message (`on_message`). A
    commit is a Lua script that bumps the version only on change and publishes it, in
    order. One fetch per project in the deployment: its fetch lease; a worker that finds
    it taken waits for the project's next message on the channel, which every fetch
    ends with (a commit, or "failed"). Poll leases decide who polls; a Retry-After is a
    key with that lifetime. Every operation may raise redis.RedisError (see RedisLink).
    """

    shared = True

    def __init__(self, client: redis.Redis, me: str, mirror: LocalStore, lease_ttl: float,
                 history: int):
        self._client = client
        self._me = me
        self._mirror = mirror
        self._history_bound = history
        self._lease_ms = max(1, int(lease_ttl * 1000))
        self.renew_every = lease_ttl / 3
        self._commit = client.register_script(COMMIT_SCRIPT)
        self._take = client.register_script(LEASE_SCRIPT)
        self._claim = client.register_script(REFRESH_SCRIPT)
        self._renew = client.register_script(RENEW_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)
        self._polling: set[str] = set()       # projects whose poll lease is ours
        self._digests: dict[str, str] = {}    # of each mirrored snapshot's statuses, as committed
        self._arrivals: dict[str, gevent.event.AsyncResult] = {}  # a fetch elsewhere: its end
        self._loads = SingleFlight()
        self.read, self.validators, self.changes_since, self.ahead = (
            mirror.read, mirror.validators, mirror.changes_since, mirror.ahead)

    def __repr__(self) -> str:
        return f"<SharedStore as {self._me}>"

    # ---- snapshots (read, validators, changes_since and ahead: the mirror's, bound in __init__)

    def sync(self, slug: str) -> None:
        # A burst of streams new to a project asks Redis once, not once each.
        outcome = self._loads.join(slug, lambda: _returned(self.load, slug))
        if isinstance(outcome, redis.RedisError):
            raise outcome

    def commit(self, slug: str, fetched: Fetched) -> Snapshot:
        for attempt in range(3):
            current = self._mirror.read(slug)[0]
            now = fetched.against(current)
            # Unchanged here, Redis checks it by digest, without the statuses; the last
            # attempt sends them whatever happens.
            statuses = "" if now.unchanged and slug in self._digests and attempt < 2 else None
            kind, position, digest = self._run_commit(slug, now, statuses)
            if kind is CommitKind.BEHIND:
                self.load(slug)
                continue
            # The follower may have brought the commit in already (its message comes with
            # the script's answer). Else the mirror takes it from what this worker holds:
            # no more I/O, so that this fetch ends with its outcome made public, and no
            # refresh joins a fetch whose result its client has seen.
            held = self._mirror.read(slug)[0]
            if held is not None and held.position == position:
                self._mirror.touch(slug, time.time(), now.validators)
            elif kind is CommitKind.CHANGED and (position.version == 1 or (
                    held is current and current is not None
                    and current.position == Position(position.epoch, position.version - 1))):
                self._digests[slug] = digest
                step = now.updates is not None and current is not None and held is current
                self._mirror.install(Change(Snapshot.build(slug, position, now.statuses, now.encoded),
                                            current.position if step else None,
                                            now.updates if step else None), time.time(), now.validators)
            else:                                 # Redis was elsewhere: take what it holds
                self.load(slug)
            return self._mirror.read(slug)[0]
        raise redis.RedisError("no commit after three attempts")

    def _run_commit(self, slug: str, fetched: Fetched, statuses: str | None
                    ) -> tuple[CommitKind, Position, str]:
        if statuses == "":                # Redis checks it by the digest of what it holds
            encoded, digest = "", self._digests[slug]
        else:
            encoded = fetched.encoded if fetched.encoded is not None else json.dumps(fetched.statuses)
            digest = hashlib.sha1(encoded.encode()).hexdigest()
        base = fetched.base.position if fetched.base is not None and fetched.updates is not None else None
        entry = f"{json.dumps(str(base) if base else None)}, {json.dumps(sorted(fetched.updates or ()))}"
        validators = json.dumps(list(fetched.validators) if fetched.validators else None)
        kind, epoch, version = self._commit(
            keys=[_redis_key("snapshot", slug), _redis_key("history", slug)],
            args=[digest, encoded, repr(time.time()),
                  SNAPSHOT_KEY_TTL, CHANGES_CHANNEL, json.dumps(slug),
                  f"{random.getrandbits(40):010x}", entry, self._history_bound, HISTORY_BYTES,
                  validators])
        return CommitKind(kind.decode()), Position(epoch.decode(), int(version)), digest

    def forget(self, slug: str) -> None:
        """The mirror moved on alone: what Redis holds is no longer known to be the same."""
        self._digests.pop(slug, None)

    def on_message(self, message: dict) -> None:
        """A commit anywhere in the deployment (or a fetch that failed): the mirror takes
        it, and whoever waited for that fetch hears of it."""
        slug = message["slug"]
        committed = message["kind"] == "commit"
        if committed:
            self._adopt(slug, Position(message["epoch"], message["version"]), message["fetched_at"],
                        message.get("statuses"), message["digest"], _validators(message.get("validators")))
        arrival = self._arrivals.pop(slug, None)
        if arrival is not None:
            arrival.set(committed)

    def _adopt(self, slug: str, position: Position, fetched_at: float,
               statuses: dict[str, str] | None, digest: str, validators: Validators | None) -> None:
        """Bring the mirror to a committed version; `statuses` None: it is unchanged."""
        current = self._mirror.read(slug)[0]
        held = current.position if current is not None else None
        before = Position(position.epoch, position.version - 1) if position.version > 1 else None
        match succession(held, position, before if statuses is not None else None):
            case Succession.STEP:
                self._digests[slug] = digest
                snapshot = Snapshot.build(slug, position, statuses)
                self._mirror.install(Change(snapshot, held, diff_statuses(current.statuses, statuses)),
                                     fetched_at, validators)
            case Succession.JUMP if statuses is not None and before is None:
                self._digests[slug] = digest      # a new line: nothing came before it
                self._mirror.install(Change(Snapshot.build(slug, position, statuses), None, None),
                                     fetched_at, validators)
            case Succession.JUMP:
                self.load(slug)       # a change this worker missed, or the middle of a line
            case Succession.STALE if held == position:
                self._mirror.touch(slug, fetched_at, validators)

    def rejoin(self, slug: str) -> None:
        """Back from a spell alone: what this worker fetched alone, if it is newer than
        what Redis holds, becomes the shared version; else Redis's is taken. (Taking
        Redis's older one would send this worker's streams back in time.)"""
        mine, age = self._mirror.read(slug)
        if mine is not None and self._mirror.made_here(slug, mine.position):
            stored_at = self._client.hget(_redis_key("snapshot", slug), "fetched_at")
            if stored_at is None or float(stored_at) < time.time() - age:
                self._digests.pop(slug, None)     # Redis's digest is another line's: send all
                self.commit(slug, Fetched.same(mine, self._mirror.validators(slug)))
                return
        self.load(slug)

    def load(self, slug: str) -> None:
        """Take the project's snapshot and history as Redis has them, if it has them. The
        mirror's streams get the difference from what they held."""
        pipe = self._client.pipeline(transaction=False)
        pipe.hgetall(_redis_key("snapshot", slug))
        pipe.lrange(_redis_key("history", slug), 0, -1)
        stored, entries = pipe.execute()
        if b"epoch" not in stored or b"statuses" not in stored:
            self._digests.pop(slug, None)        # Redis lost it: the next commit sends all
            return
        position = Position(stored[b"epoch"].decode(), int(stored[b"version"]))
        fetched_at = float(stored[b"fetched_at"])
        validators = _validators(json.loads(stored.get(b"validators") or b"null"))
        current = self._mirror.read(slug)[0]
        self._digests[slug] = stored[b"digest"].decode()
        if current is not None and current.position == position:
            self._mirror.touch(slug, fetched_at, validators)
            return
        encoded = stored[b"statuses"].decode()
        statuses = json.loads(encoded)
        history = History.of(self._history_bound, (
            (parse_event_id(base), Position(position.epoch, version), units)
            for version, base, units in map(json.loads, entries)))
        change = Change(Snapshot.build(slug, position, statuses, encoded),
                        current.position if current else None,
                        diff_statuses(current.statuses, statuses) if current else None)
        self._mirror.install(change, fetched_at, validators, history)

    # ---- fetches, refreshes, Retry-After

    def fetch(self, slug, timeout, do_fetch):
        # The fetch lock is a lease its holder renews while it fetches: a worker killed
        # mid-fetch lets go within POLL_LEASE_TTL, not after the project's whole timeout.
        # Whoever finds it taken waits for the word every fetch ends with, listening from
        # before it asks, so that a fetch ending meanwhile is not missed.
        lock = _redis_key("fetching", slug)
        arrival = self._arrivals.setdefault(slug, gevent.event.AsyncResult())
        if self._take(keys=[lock], args=[self._me, self._lease_ms]) == 0:
            self._stop_waiting(slug, arrival)
            fetched = gevent.event.Event()
            gevent.spawn(self._renew_while, lock, fetched)
            try:
                outcome = do_fetch()
            finally:
                fetched.set()
            # Given back in a greenlet of its own: this fetch must end as soon as its
            # outcome is made, before a stream writes it and a refresh could join it.
            gevent.spawn(self._end_fetch, slug, isinstance(outcome, UpstreamError))
            return outcome
        give_up = time.monotonic() + timeout + 1
        while not arrival.ready():
            left_ms = self._client.pttl(lock)
            if left_ms < 0:                       # it ended unheard, or its holder died
                self._stop_waiting(slug, arrival)
                self.sync(slug)
                return self.read(slug)[0] or UpstreamError("remote", "no snapshot in Redis")
            if time.monotonic() > give_up:
                return UpstreamError("remote", "another worker's fetch did not end in time")
            arrival.wait(min(max(left_ms, 20) / 1000, self.renew_every))
        return (arrival.value and self.read(slug)[0]) or UpstreamError("remote", "another worker's fetch failed")

    def _stop_waiting(self, slug: str, arrival: gevent.event.AsyncResult) -> None:
        if self._arrivals.get(slug) is arrival:
            del self._arrivals[slug]

    def _renew_while(self, lock: str, fetched: gevent.event.Event) -> None:
        try:
            while not fetched.wait(self.renew_every):
                self._renew(keys=[lock], args=[self._me, self._lease_ms])
        except redis.RedisError as exc:           # the fetch goes on; its commit will say
            log.debug("fetch lock %s not renewed (%s)", lock, type(exc).__name__)

    def _end_fetch(self, slug: str, failed: bool) -> None:
        try:
            self._release(keys=[_redis_key("fetching", slug)], args=[self._me])
            if failed:                            # a commit told everyone already
                self._client.publish(CHANGES_CHANNEL, json.dumps({"kind": "failed", "slug": slug}))
        except redis.RedisError as exc:           # the lock lapses by itself
            log.debug("project %s: fetch lock not given back (%s)", slug, type(exc).__name__)

    def claim_refresh(self, slug: str, min_interval: float) -> float:
        keys = [_redis_key("refreshed", slug), _redis_key("fetching", slug)]
        return self._claim(keys=keys, args=[self._me, int(min_interval * 1000),
                                            self._lease_ms]) / 1000

    def hold(self, slug: str, seconds: float) -> None:
        if seconds > 0:
            self._client.set(_redis_key("held", slug), self._me, px=max(1, int(seconds * 1000)))

    def held_for(self, slug: str) -> float:
        return max(self._client.pttl(_redis_key("held", slug)), 0) / 1000

    # ---- polling

    def poll_turn(self, slug: str) -> float:
        left_ms = self._take(keys=[_redis_key("lease", slug)], args=[self._me, self._lease_ms])
        if left_ms == 0:
            self._polling.add(slug)
            return 0.0
        self._polling.discard(slug)
        return max(left_ms, 20) / 1000

    def release_poll(self, slug: str) -> None:
        if slug in self._polling:
            self._polling.discard(slug)
            self._release(keys=[_redis_key("lease", slug)], args=[self._me])

    def close(self) -> None:
        for slug in list(self._polling):
            self.release_poll(slug)


def _validators(kept: list | None) -> Validators | None:
    return Validators(*kept) if kept else None


def _returned(work: Callable[[str], Any], slug: str) -> Any:
    """`work(slug)`, its Redis error returned rather than raised (see SingleFlight)."""
    try:
        return work(slug)
    except redis.RedisError as exc:
        return exc


class RedisLink(Store):
    """The Store with REDIS_URL: the shared store while Redis answers, and from the first
    Redis error (logged once) until it answers again, this worker's mirror alone, as
    without REDIS_URL; then, the shared snapshots taken back, shared again. An operation
    that fails on the shared store is done again on the mirror. The follower greenlet
    holds the one subscription (every worker's commits) and tries Redis while away."""

    def __init__(self, url: str, on_change: Callable[[Change], None], lease_ttl: float,
                 history: int = 100):
        # A burst (a launch's viewers, each asking for a snapshot at once) waits for a
        # connection rather than failing as if Redis were away.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=REDIS_CONNECTIONS, timeout=2, socket_timeout=2,
            socket_connect_timeout=1, health_check_interval=10)
        self.client = redis.Redis(connection_pool=pool)
        self.me = f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
        # The mirror, on wall time (shared by machines); its own epoch is this worker's
        # line while Redis is away.
        self.alone = LocalStore(on_change, time.time, history)
        self.together = SharedStore(self.client, self.me, self.alone, lease_ttl, history)
        self.current: Store = self.together
        # Reads are the mirror's, shared or alone: no I/O either way.
        self.read, self.validators, self.changes_since, self.ahead = (
            self.alone.read, self.alone.validators, self.alone.changes_since, self.alone.ahead)
        self._closed = False
        self._follower = gevent.spawn(self._follow)

    def __repr__(self) -> str:
        return f"<RedisLink {'shared' if self.shared else 'alone'} as {self.me}>"

    @property
    def shared(self) -> bool:
        return self.current is self.together

    @property
    def renew_every(self) -> float:
        return self.current.renew_every

    def _run(self, operation: Callable[[Store], Any]) -> Any:
        store = self.current
        if store is self.together:
            try:
                return operation(store)
            except redis.RedisError as exc:
                self._lose(exc)
        return operation(self.alone)

    def sync(self, slug):
        return self._run(lambda store: store.sync(slug))

    def commit(self, slug, fetched):
        def commit_on(store: Store) -> Snapshot:
            if store is self.alone:           # a line of this worker's own: Redis's digest
                self.together.forget(slug)    # is another line's, so the next shared commit
            return store.commit(slug, fetched)  # sends its statuses, not "unchanged"
        return self._run(commit_on)

    def fetch(self, slug, timeout, do_fetch):
        return self._run(lambda store: store.fetch(slug, timeout, do_fetch))

    def claim_refresh(self, slug, min_interval):
        return self._run(lambda store: store.claim_refresh(slug, min_interval))

    def hold(self, slug, seconds):
        return self._run(lambda store: store.hold(slug, seconds))

    def held_for(self, slug):
        return self._run(lambda store: store.held_for(slug))

    def poll_turn(self, slug):
        return self._run(lambda store: store.poll_turn(slug))

    def release_poll(self, slug):
        return self._run(lambda store: store.release_poll(slug))

    def close(self) -> None:
        self._run(lambda store: store.close())
        self._closed = True
        self._follower.kill(timeout=1)   # before its connection closes under it
        self.client.close()

    def _lose(self, exc: Exception) -> None:
        if self.current is self.together:
            self.current = self.alone
            log.error("Redis unavailable (%s): this worker polls and serves on its own until "
                      "it is back", type(exc).__name__, extra={"event": "redis_unavailable"})

    def _follow(self) -> None:
        while not self._closed:
            if self.current is not self.together:
                gevent.sleep(REDIS_RETRY_SECONDS)
                try:
                    self.client.ping()
                    for slug in self.alone.slugs():
                        self.together.rejoin(slug)
                except redis.RedisError:
                    continue
                self.current = self.together
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
            while self.current is self.together and not self._closed:
                message = pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                try:
                    taken = json.loads(message["data"])
                except ValueError:
                    taken = None
                if not _channel_message_ok(taken):      # anyone may publish on a channel
                    log.warning("ignored a malformed message on %s", CHANGES_CHANNEL)
                    continue
                try:
                    self.together.on_message(taken)
                except redis.RedisError:
                    raise
                except Exception:                       # a bug of ours: the follower goes on
                    log.exception("a message on %s was not taken", CHANGES_CHANNEL)
        finally:
            pubsub.close()


def _channel_message_ok(message: Any) -> bool:
    """Whether a message on the changes channel has the shape the workers publish."""
    if not isinstance(message, dict) or message.get("kind") not in ("commit", "failed"):
        return False
    if not isinstance(message.get("slug"), str) or not SLUG_PATTERN.fullmatch(message["slug"]):
        return False
    if message["kind"] == "failed":
        return True
    statuses, validators = message.get("statuses"), message.get("validators")
    return (parse_event_id(f"{message.get('epoch')}-{message.get('version')}") is not None
            and isinstance(message.get("version"), int)
            and isinstance(message.get("fetched_at"), (int, float)) and math.isfinite(message["fetched_at"])
            and isinstance(message.get("digest"), str)
            and (statuses is None or (isinstance(statuses, dict) and all(
                isinstance(unit, str) and status in STATUSES for unit, status in statuses.items())))
            and (validators is None or (isinstance(validators, list) and len(validators) == 3)))


def make_store(config: Config, on_change: Callable[[Change], None]) -> Store:
    if config.redis_url:
        return RedisLink(config.redis_url, on_change, config.poll_lease_ttl, config.sse_history)
    return LocalStore(on_change, time.monotonic, config.sse_history)
# --------------------------------------------------------------------------- SSE

STREAM_QUEUE_SIZE = 64            # messages a slow reader may fall behind before it is dropped
STRAY_BYTES_LIMIT = 64 * 1024     # an EventSource sends nothing after its request; past this, drop it
ENDING_SECONDS = 2.0              # a stream's last words not taken within this: hang up
POLLER_RESTART_SECONDS = 1.0      # a poller that crashed (a bug of ours) starts again after this
MUX_ID_LIMIT = 4096               # characters of a multiplexed id looked at, at most


@dataclass(frozen=True, slots=True)
class Ping:
    message: Wire           # a keep-alive, the same bytes for every stream of the worker


Delivery = Ping | Change   # what the fanout hands a stream, one case each


def parse_event_id(text: str | None) -> Position | None:
    """`<epoch>-<version>` -> Position; None for anything else, however long."""
    epoch, _, version = (text or "").strip().rpartition("-")
    if not (0 < len(epoch) <= 32 and 0 < len(version) <= 18 and epoch.isalnum()
            and version.isdecimal() and (epoch + version).isascii()):
        return None
    return Position(epoch, int(version))


@functools.lru_cache(maxsize=16_384)
def project_tag(slug: str) -> str:
    """A project's name in a multiplexed id: 8 characters of a digest of its slug (40
    bits: two projects of one stream never share one)."""
    return base64.b32encode(hashlib.blake2b(slug.encode(), digest_size=5).digest()).decode().lower()


def mux_event_id(held: Mapping[str, Position | None]) -> str:
    """The id of a multiplexed stream's message: every project's position, by tag, each
    epoch said once (`~<epoch>`, then `<tag><version>` for each project in it): projects
    of one worker, or of one Redis, mostly share one."""
    parts, epoch = [], None
    for slug, position in sorted(((slug, position) for slug, position in held.items() if position),
                                 key=lambda item: item[1].epoch):
        if position.epoch != epoch:
            epoch = position.epoch
            parts.append(f"~{epoch}")
        parts.append(f"{project_tag(slug)}{position.version}")
    return ".".join(parts)


@functools.lru_cache(maxsize=4096)
def _id_line(held: tuple[tuple[str, Position | None], ...]) -> bytes:
    """A multiplexed stream's `id:` line for the positions it holds: one bytes object for
    all the streams that hold the same (its hash made once, for `Wire.with_tail`)."""
    return b"id: %s\n\n" % mux_event_id(dict(held)).encode()


def parse_mux_event_id(text: str | None) -> dict[str, Position]:
    """A multiplexed id -> tag -> Position; what cannot be read is left out."""
    found: dict[str, Position] = {}
    epoch = None
    for part in (text or "")[:MUX_ID_LIMIT].strip().split("."):
        if part.startswith("~"):
            epoch = part[1:]                  # judged with each version, by parse_event_id
        elif epoch is not None and (position := parse_event_id(f"{epoch}-{part[8:]}")) is not None:
            found[part[:8]] = position
    return found


def retry_message(retry_ms: int, spread_ms: int, rand: Callable[[], float] = random.random) -> bytes:
    """A `retry:` of its own for a stream sent away, drawn from [retry, retry + spread],
    so that a crowd sent away together does not come back together."""
    return SSEMessage(retry=retry_ms + int(spread_ms * rand())).encode()


class StreamStats:
    """What every stream's writer counts, for the metrics: messages written (one per
    message per stream) and bytes held that sockets have not taken yet."""

    __slots__ = ("buffered", "messages")

    def __init__(self):
        self.messages = 0
        self.buffered = 0


# ---- a stream's lifecycle: every state and transition, here and nowhere else

class StreamState(enum.Enum):
    OPENING = "opening"       # answered, not yet writing: messages wait for the writer
    LIVE = "live"             # every message handed over is written, or being written
    BACKED_UP = "backed up"   # the socket did not take everything: the writer holds the rest
    ENDING = "ending"         # its last words are going out; then the connection closes
    CLOSED = "closed"         # unsubscribed; the connection is closed or handed back


class StreamEvent(enum.Enum):
    ATTACHED = "attached"         # a writer took the connection
    SHORT_WRITE = "short write"   # a write left bytes the socket did not take
    DRAINED = "drained"           # the writer wrote everything it held
    OVERFLOW = "overflow"         # STREAM_QUEUE_SIZE messages behind: dropped
    END = "end"                   # the service ends the stream (shutdown, project gone)
    FLUSHED = "flushed"           # the last words are written
    LOST = "lost"                 # the client hung up, or the connection failed


S, E = StreamState, StreamEvent
STREAM_TRANSITIONS: Mapping[StreamState, Mapping[StreamEvent, StreamState]] = {
    S.OPENING: {E.ATTACHED: S.LIVE, E.OVERFLOW: S.CLOSED, E.END: S.ENDING, E.LOST: S.CLOSED},
    S.LIVE: {E.SHORT_WRITE: S.BACKED_UP, E.END: S.ENDING, E.LOST: S.CLOSED},
    S.BACKED_UP: {E.SHORT_WRITE: S.BACKED_UP, E.DRAINED: S.LIVE, E.OVERFLOW: S.CLOSED,
                  E.END: S.ENDING, E.LOST: S.CLOSED},
    S.ENDING: {E.ATTACHED: S.ENDING, E.SHORT_WRITE: S.ENDING, E.DRAINED: S.ENDING,
               E.END: S.ENDING, E.FLUSHED: S.CLOSED, E.LOST: S.CLOSED},
    S.CLOSED: dict.fromkeys(StreamEvent, S.CLOSED),         # late news changes nothing
}
del S, E


class StreamStateError(RuntimeError):
    """An event the lifecycle table does not allow in the stream's state: a bug of ours."""


# ---- writers: the one writer of a stream's connection

class Transport(Protocol):
    """Writes one stream's body: frames it, compresses it (gzip pieces, CRC and length),
    counts it, and holds what its client has not taken yet (`backlog`, in messages). It
    tells its stream what happens through `on_event` (SHORT_WRITE, DRAINED, FLUSHED,
    LOST)."""

    __slots__ = ()                        # else every writer, of every stream, has a __dict__

    backlog: int

    def start(self, on_event: Callable[[StreamEvent], None]) -> None: ...
    def write(self, message: Wire) -> int: ...      # the backlog after it
    def end(self, last_words: bytes | None) -> None: ...
    def abort(self) -> None: ...


class SocketTransport(Transport):
    """The writer of a stream the edge handed over, after its head: it owns the socket
    (non-blocking), what the socket did not take yet, the body's framing (HTTP/1.1
    chunks, raw for HTTP/1.0), a gzip body's CRC-32 and length, and the count of bytes
    written. It never blocks, and holds no greenlet: a write is tried at once; what the
    socket does not take waits in its backlog, which a write watcher on the event loop
    finishes (asyncio's socket transport has this shape). A read watcher hears the
    client hang up (an SSE client sends nothing after its request; stray bytes are
    discarded, up to STRAY_BYTES_LIMIT). `on_closed(bytes)` is told once, at the end.

    A message is written as the bytes all its streams share: a chunk framed once, or its
    gzip piece, in one send."""

    __slots__ = (
        "_backlog",
        "_chunked",
        "_crc",
        "_ending",
        "_gzip",
        "_head",
        "_on_closed",
        "_on_event",
        "_reader",
        "_size",
        "_sock",
        "_stats",
        "_stray",
        "_timer",
        "_writer",
        "written",
    )

    def __init__(self, sock: socket.socket, head: bytes, chunked: bool, gzip: bool,
                 stats: StreamStats, on_closed: Callable[[int], None] | None = None):
        self._sock = sock
        self._head: bytes | None = head + (b"%x\r\n%s\r\n" % (len(GZIP_HEADER), GZIP_HEADER)
                                          if gzip and chunked else GZIP_HEADER if gzip else b"")
        self._chunked = chunked
        self._gzip = gzip
        self._stats = stats
        self._on_closed = on_closed
        self._on_event: Callable[[StreamEvent], None] | None = None
        self._backlog: list[list] | None = None  # made when needed: most streams never need one
        self._crc = self._size = self._stray = self.written = 0
        self._ending = False
        self._reader = self._writer = self._timer = None

    @property
    def backlog(self) -> int:
        return len(self._backlog) if self._backlog else 0

    def start(self, on_event: Callable[[StreamEvent], None]) -> None:
        self._on_event = on_event
        self._reader = gevent.get_hub().loop.io(self._sock.fileno(), 1)
        self._reader.start(self._on_readable)

    def write(self, message: Wire) -> int:
        sock = self._sock
        if sock is None or self._ending:
            return 0
        if self._gzip:
            self._crc = zlib.crc32(message.plain, self._crc)
            self._size += len(message.plain)
            data = message.chunk(True) if self._chunked else message.piece
        else:
            data = message.chunk(False) if self._chunked else message.plain
        self._stats.messages += 1
        if self._backlog or self._head is not None:
            self._put([data])
            return self.backlog
        # The fan-out's common case, `_put`'s way without its lists: straight out to a
        # socket that holds nothing back.
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(StreamEvent.LOST)
            return 0
        self.written += sent
        if sent == len(data):
            return 0
        self._held_back([memoryview(data)[sent:]])
        return 1

    def end(self, last_words: bytes | None) -> None:
        """The last words (a `retry:`), the end of the gzip stream and of the body; the
        connection closes once they are written, or after ENDING_SECONDS."""
        if self._sock is None or self._ending:
            return
        if last_words:
            self.write(Wire(last_words, stored=True))
        body_end = gzip_end(self._crc, self._size) if self._gzip else b""
        self._put(self._framed([body_end] if body_end else []) + ([b"0\r\n\r\n"] if self._chunked else []))
        if self._sock is None:                # the connection failed meanwhile
            return
        self._ending = True
        if self._backlog:
            self._timer = gevent.get_hub().loop.timer(ENDING_SECONDS)
            self._timer.start(self.abort)
        else:
            self._close(StreamEvent.FLUSHED)

    def abort(self) -> None:
        """Hang up now: shut the socket down, so that the client sees the end at once."""
        if self._sock is not None:
            hang_up(self._sock)
            self._close(StreamEvent.LOST)

    def _framed(self, body: list) -> list:
        """`body` as a chunk of the chunked body (or as it is, raw)."""
        if self._chunked and body:
            body = [b"%x\r\n" % sum(map(len, body)), *body, b"\r\n"]
        return body

    def _put(self, parts: list) -> None:
        if self._sock is None:                # the connection failed: nothing more goes out
            return
        if self._head is not None:
            parts = [self._head, *parts]
            self._head = None
        if not parts:
            return
        if self._backlog:
            self._hold(parts)
            return
        sent = self._send(parts)
        if sent is not None and sent < sum(map(len, parts)):
            self._held_back(_rest(parts, sent))

    def _held_back(self, rest: list) -> None:
        """A write the socket did not take whole: the rest waits for the write watcher."""
        self._hold(rest)
        self._writer = gevent.get_hub().loop.io(self._sock.fileno(), 2)
        self._writer.start(self._on_writable)
        self._event(StreamEvent.SHORT_WRITE)

    def _hold(self, parts: list) -> None:
        if self._backlog is None:
            self._backlog = []
        self._backlog.append(parts)
        self._stats.buffered += sum(map(len, parts))

    def _send(self, parts: list) -> int | None:
        """Bytes the socket took now; None if the connection failed (it is closed)."""
        try:
            sent = self._sock.send(parts[0]) if len(parts) == 1 else self._sock.sendmsg(parts)
        except BlockingIOError:
            return 0
        except OSError:
            self._close(StreamEvent.LOST)
            return None
        self.written += sent
        return sent

    def _on_writable(self) -> None:
        while self._backlog:
            parts = self._backlog[0]
            sent = self._send(parts)
            if sent is None:
                return
            self._stats.buffered -= sent
            if sent < sum(map(len, parts)):
                self._backlog[0] = _rest(parts, sent)
                return
            del self._backlog[0]
        self._writer.close()                  # (close stops it first)
        self._writer = None
        if self._ending:
            self._close(StreamEvent.FLUSHED)
        else:
            self._event(StreamEvent.DRAINED)

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self._stray += len(data)
        if not data or self._stray > STRAY_BYTES_LIMIT:
            self.abort()

    def _close(self, event: StreamEvent) -> None:
        for watcher in (self._reader, self._writer, self._timer):
            if watcher is not None:
                watcher.close()
        self._reader = self._writer = self._timer = None
        self._stats.buffered -= sum(sum(map(len, parts)) for parts in self._backlog or ())
        self._backlog = None
        self._sock.close()
        self._sock = None
        if self._on_closed is not None:
            self._on_closed(self.written)
        self._event(event)
        self._on_event = self._on_closed = None   # no cycle left with the stream

    def _event(self, event: StreamEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)


def hang_up(sock) -> None:
    """Shut a socket down both ways: a read or write stuck on it ends now, and its peer
    sees the end at once."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already gone


def _rest(parts: list, sent: int) -> list:
    """What is left of `parts` once `sent` bytes of them went out."""
    for index, part in enumerate(parts):
        if sent < len(part):
            return [memoryview(part)[sent:], *parts[index + 1:]]
        sent -= len(part)
    return []


class QueueTransport(Transport):
    """The writer of a stream served by a WSGI server other than the edge (or a test
    client): that server iterates the stream and writes what it yields, framing it
    itself. What it has not taken yet waits here, counted as a socket's backlog is; the
    iterating greenlet is the only one such a stream holds."""

    __slots__ = ("_crc", "_done", "_gzip", "_on_event", "_pending", "_ready", "_size", "_stats")

    def __init__(self, gzip: bool, stats: StreamStats):
        self._gzip = gzip
        self._stats = stats
        self._pending: list[bytes] = []
        self._ready = gevent.event.Event()
        self._done = False
        self._crc = self._size = 0
        self._on_event: Callable[[StreamEvent], None] | None = None

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def start(self, on_event: Callable[[StreamEvent], None]) -> None:
        self._on_event = on_event

    def write(self, message: Wire) -> int:
        if self._done:
            return 0
        if self._gzip:
            self._crc = zlib.crc32(message.plain, self._crc)
            self._size += len(message.plain)
            data = message.piece
        else:
            data = message.plain
        self._stats.messages += 1
        self._add(data)
        self._on_event(StreamEvent.SHORT_WRITE)  # not taken until the server asks again
        return len(self._pending)

    def end(self, last_words: bytes | None) -> None:
        if self._done:
            return
        if last_words:
            self.write(Wire(last_words, stored=True))
        if self._gzip:
            self._add(gzip_end(self._crc, self._size))
        self._done = True
        self._ready.set()

    def abort(self) -> None:
        """The server is done with it: what it did not take is let go (last words too)."""
        self._done = True
        self._stats.buffered -= sum(map(len, self._pending))
        self._pending.clear()
        self._ready.set()

    def _add(self, data: bytes) -> None:
        self._pending.append(data)
        self._stats.buffered += len(data)
        self._ready.set()

    def __iter__(self) -> Iterator[bytes]:
        head = GZIP_HEADER if self._gzip else b""  # the body's first bytes, and no message
        while True:
            while not self._pending and not self._done:
                self._ready.clear()
                self._ready.wait()
            if self._pending:
                data = b"".join(self._pending)
                self._pending.clear()
                self._stats.buffered -= len(data)
                if not self._done:
                    self._on_event(StreamEvent.DRAINED)
                yield head + data
                head = b""
            elif self._done:
                if self._on_event is not None:
                    self._on_event(StreamEvent.FLUSHED)
                return


# ---- streams

class Stream:
    """One open stream, of one project or (multiplexed) of several: what its client holds
    of each (`held`: a Position, or None before its first snapshot), and where it is in
    its lifecycle (STREAM_TRANSITIONS). The fanout offers it every delivery; it steps
    each by the one rule (`Change.succession`) against what its client holds and hands
    the message to its writer (a Transport), the only thing that touches the
    connection. So an idle stream is this object, its writer and the socket: no
    greenlet, no request, no buffer.

    Under the edge, the writer is attached as soon as the head is answered; under
    another WSGI server, when that server begins to iterate it (`__iter__`). Messages
    handed over before then wait (OPENING), as many as a backlog may hold.
    `unsubscribe(stream)` is told once, when it closes."""

    __slots__ = ("_early", "_last_words", "_mux", "_tail", "_transport", "_unsubscribe",
                 "gzip", "held", "state", "stats")

    def __init__(self, slugs: Iterable[str], unsubscribe: Callable[[Stream], None],
                 stats: StreamStats, gzip: bool = False, mux: bool = False):
        self.held: dict[str, Position | None] = dict.fromkeys(slugs)
        self.state = StreamState.OPENING
        self.gzip = gzip
        self._mux = mux
        self._unsubscribe = unsubscribe
        self.stats = stats                    # what its writer counts, with every other's
        self._transport: Transport | None = None
        self._early: list[Wire] | None = []
        self._last_words: bytes | None = None
        self._tail: bytes | None = None       # a multiplexed stream's `id:` line, as it stands

    @property
    def slugs(self) -> Iterable[str]:
        return self.held.keys()

    # ---- what its client gets

    def offer(self, delivery: Delivery) -> bool:
        """Take a delivery; False if it fell too far behind and was dropped just now."""
        if type(delivery) is Ping:
            return self.say(delivery.message)
        snapshot = delivery.snapshot
        slug = snapshot.slug
        case = delivery.succession(self.held.get(slug, snapshot.position))
        if case is Succession.STALE:
            return True
        self.held[slug] = snapshot.position       # (`hold`, inline: the fan-out's hot path)
        step = case is Succession.STEP
        if step and not delivery.updates:         # nothing its client can see
            self._tail = None
            return True
        if not self._mux:
            return self.say(delivery.message if step else snapshot.event)
        self._tail = None
        return self.say_status(delivery.mux_message if step else snapshot.mux_event)

    def hold(self, slug: str, position: Position | None) -> None:
        """What the client holds of a project from now on (as its next message will say)."""
        self.held[slug] = position
        self._tail = None

    def say_status(self, message: Wire) -> bool:
        """A status message: a multiplexed stream's ends with its own id, the positions
        it holds now (the same bytes for every stream that holds the same)."""
        if not self._mux:
            return self.say(message)
        if self._tail is None:
            self._tail = _id_line(tuple(self.held.items()))
        return self.say(message.with_tail(self._tail))

    def say(self, message: Wire) -> bool:
        """A message as it is (`connected`, a ping, a single stream's status); False if
        the stream fell too far behind and was dropped just now."""
        state = self.state
        if state is StreamState.LIVE or state is StreamState.BACKED_UP:
            if self._transport.write(message) <= STREAM_QUEUE_SIZE:
                return True
        elif state is StreamState.OPENING:
            self._early.append(message)
            if len(self._early) <= STREAM_QUEUE_SIZE:
                return True
        else:
            return True
        self.event(StreamEvent.OVERFLOW)
        return False

    # ---- its lifecycle

    def attach(self, transport: Transport) -> None:
        """A writer takes the connection: what waited is written, in order."""
        self._transport = transport
        transport.start(self.event)
        self.event(StreamEvent.ATTACHED)
        if self.state is StreamState.CLOSED:
            transport.abort()
            return
        early, self._early = self._early, None
        for message in early:
            transport.write(message)
        if self.state is StreamState.ENDING:
            transport.end(self._last_words)

    def end(self, last_words: bytes | None = None) -> None:
        """The service ends it: its last words (a `retry:`), then the body's end."""
        if self.state in (StreamState.ENDING, StreamState.CLOSED):
            return
        self.event(StreamEvent.END)
        if self._transport is None:
            self._last_words = last_words
        else:
            self._transport.end(last_words)

    def abort(self) -> None:
        """Hang up now (the client reconnects, elsewhere if the worker is going)."""
        if self._transport is not None:
            self._transport.abort()
        self.event(StreamEvent.LOST)

    def __iter__(self) -> Iterator[bytes]:
        """Served by a WSGI server other than the edge: it writes what this yields."""
        transport = QueueTransport(self.gzip, self.stats)
        self.attach(transport)
        return iter(transport)

    close = abort                         # WSGI's end of a response: the server is done with it

    def event(self, event: StreamEvent) -> None:
        """What happened, as its writer (or the service) tells it: the lifecycle moves
        by STREAM_TRANSITIONS, and an event the table does not name is a bug."""
        try:
            state = STREAM_TRANSITIONS[self.state][event]
        except KeyError:
            raise StreamStateError(f"{event.value} while {self.state.value}") from None
        before, self.state = self.state, state
        if state is StreamState.CLOSED and before is not StreamState.CLOSED:
            if event is StreamEvent.OVERFLOW and self._transport is not None:
                self._transport.abort()
            self._unsubscribe(self)


def open_stream(fanout: Fanout, store: Store, slugs: list[str], last_event_id: str | None,
                gzip: bool, unknown: Iterable[str] = (), mux: bool = False) -> Stream:
    """A new stream, its first messages said, subscribed: `connected`, then per project
    its snapshot, or for a client resuming from `last_event_id` what it missed (one
    bulk_update, possibly empty, or nothing if it is current, or ahead of this worker in
    the shared line: it keeps what it has until this worker has news). StreamsFull when
    the worker takes no more.
    Read and subscribed without a pause between: no change can fall between the two."""
    stream = Stream(slugs, fanout.remove, fanout.stats, gzip, mux)
    claimed = ({slug: position for slug in slugs
                if (position := parse_mux_event_id(last_event_id).get(project_tag(slug)))}
               if mux else {slugs[0]: parse_event_id(last_event_id)})
    said: list[tuple[str, Wire | None, Position]] = []
    resumed: dict[str, bool] = {}
    for slug in slugs:
        snapshot = store.read(slug)[0]
        held = claimed.get(slug)
        changes = store.changes_since(slug, held) if held is not None and snapshot is not None else None
        resumed[slug] = changes is not None
        if snapshot is None:
            continue
        if changes is None and held is not None and store.ahead(slug, held):
            stream.hold(slug, held)              # ahead of this worker in a shared line: it is
            continue                             # never sent back in time
        if changes is None:
            said.append((slug, snapshot.mux_event if mux else snapshot.event, snapshot.position))
        elif held != snapshot.position:          # behind: what changed since, with the current id
            change = Change(snapshot, held, changes)
            said.append((slug, change.mux_message if mux else change.message, snapshot.position))
        else:
            stream.hold(slug, held)              # current: nothing to say
    if mux:
        connected = {"projects": slugs, "unknown": list(unknown), "resumed": resumed}
    else:
        connected = {"project": slugs[0], "resumed": resumed[slugs[0]]}
    stream.say(Wire(SSEMessage(event="connected", data=json.dumps(connected),
                               retry=fanout.retry_ms).encode(), stored=True))
    for slug, message, position in said:
        stream.hold(slug, position)
        stream.say_status(message)
    fanout.subscribe(stream)
    return stream


# ---- the fanout

@dataclass(eq=False)
class _Channel:
    subscribers: set = field(default_factory=set)
    poller: gevent.Greenlet | None = None
    since: float = 0.0                    # watched since (monotonic)


class Fanout:
    """This worker's streams, by project: each change, encoded once, to every stream that
    carries the project; a poller per watched project (`poll(slug)`, which returns when
    the project is gone, ending its streams); one ping clock for all streams."""

    def __init__(self, config: Config, metrics: Metrics, poll: Callable[[str], None]):
        self._config = config
        self._metrics = metrics
        self._poll = poll
        self._channels: dict[str, _Channel] = {}
        self._streams: set[Stream] = set()
        self._pinger: gevent.Greenlet | None = None
        self.stats = StreamStats()
        self.retry_ms = config.sse_retry_ms
        self.closing = False

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def watched_projects(self) -> int:
        return len(self._channels)

    @property
    def poller_count(self) -> int:
        return sum(1 for c in self._channels.values() if c.poller is not None and not c.poller.dead)

    def watched_for(self) -> Iterator[tuple[str, float]]:
        """Each watched project, and for how long it has been."""
        now = time.monotonic()
        return ((slug, now - channel.since) for slug, channel in self._channels.items())

    def subscribe(self, stream: Stream) -> None:
        """Add a stream to its projects' channels; StreamsFull at MAX_STREAMS, or while
        shutting down."""
        if self.closing or len(self._streams) >= self._config.max_streams:
            if not self.closing:
                self._metrics.streams_rejected.inc()
            raise StreamsFull()
        self._streams.add(stream)
        for slug in stream.slugs:
            channel = self._channels.get(slug)
            if channel is None:
                channel = self._channels[slug] = _Channel(since=time.monotonic())
            channel.subscribers.add(stream)
            if channel.poller is None or channel.poller.dead:
                channel.poller = gevent.spawn(self._run_poller, slug)
        if self._pinger is None or self._pinger.dead:
            self._pinger = gevent.spawn(self._ping_forever)

    def remove(self, stream: Stream) -> None:
        """Forget a stream; a project's poller stops with its last one."""
        if stream not in self._streams:
            return
        self._streams.discard(stream)
        for slug in stream.slugs:
            channel = self._channels.get(slug)
            if channel is None:
                continue
            channel.subscribers.discard(stream)
            if not channel.subscribers:
                del self._channels[slug]
                if channel.poller is not None:
                    channel.poller.kill(block=False)

    def publish(self, change: Change) -> None:
        """A project's new snapshot, to its streams (the store's on_change)."""
        channel = self._channels.get(change.snapshot.slug)
        if channel is not None:
            self._deliver(tuple(channel.subscribers), change)

    def _deliver(self, streams: tuple[Stream, ...], delivery: Delivery) -> None:
        dropped = 0
        for stream in streams:
            if not stream.offer(delivery):
                dropped += 1
        if dropped:
            self._metrics.streams_dropped.inc(dropped)
            log.info("dropped %d stream(s) that fell %d messages behind", dropped, STREAM_QUEUE_SIZE)

    def sent_away(self) -> bytes:
        return retry_message(self._config.sse_retry_ms, self._config.sse_reconnect_spread_ms)

    def close_project(self, slug: str) -> None:
        """The project is gone: its streams end (their clients come back and hear so)."""
        channel = self._channels.get(slug)
        for stream in tuple(channel.subscribers if channel else ()):
            stream.end(self.sent_away())

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
        while self._streams:
            gevent.sleep(self._config.sse_ping_interval)
            ping = Ping(Wire(SSEMessage(event="ping", data=json.dumps({"time": int(time.time())})).encode()))
            self._deliver(tuple(self._streams), ping)

    def close(self) -> None:
        """Shutting down: every stream ends with a `retry:` of its own (its client comes
        back elsewhere, not all at once); their pollers stop with them. Waits for their
        last words, ENDING_SECONDS at most."""
        self.closing = True
        if self._pinger is not None:
            self._pinger.kill(block=False)
        for stream in tuple(self._streams):
            stream.end(self.sent_away())
        deadline = time.monotonic() + ENDING_SECONDS
        while self._streams and time.monotonic() < deadline:
            gevent.sleep(0.02)
        for stream in tuple(self._streams):
            stream.abort()
# --------------------------------------------------------------------------- routes

routes = Blueprint("public_status", __name__)

# The board's page, its script and style, and the client for any page: files that change
# with a deploy, served with a policy that lets no script run but these, from here.
STATIC_FILES = {
    "board.html": "text/html; charset=utf-8",
    "board.js": "text/javascript; charset=utf-8",
    "board.css": "text/css; charset=utf-8",
    "public-status.js": "text/javascript; charset=utf-8",
}
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' data:; connect-src 'self' http: https:; "
                           "base-uri 'none'; form-action 'none'")
REQUEST_BODY_LIMIT = 16 * 1024    # no route reads a body: larger ones are refused, not read


def _public() -> PublicStatus:
    return current_app.extensions["public_status"]


@routes.before_app_request
def refuse_bodies():
    """No route reads a request body: a declared large one is refused before any of it is
    read (the edge refuses it sooner; this is for any other server)."""
    if (request.content_length or 0) > REQUEST_BODY_LIMIT:
        return json_error(413, "request body too large")
    return None


@routes.after_app_request
def public_headers(response: Response) -> Response:
    """Every answer is public and live: any origin may read it (the board may be served
    from elsewhere), and no cache may keep it, error answers included."""
    for name, value in _public().public_headers:
        response.headers.setdefault(name, value)
    return response


@routes.errorhandler(PublicStatusError)
def public_error(exc: PublicStatusError):
    if exc.status >= 500 and not exc.transient:   # one of ours reached a view: a bug
        log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.path)
    return exc.answer()


def encoding_headers(gzip_wanted: bool, compression: bool) -> list[tuple[str, str]]:
    """The headers of an answer that depends on Accept-Encoding, made here only: a
    compressed one also keeps proxies from transforming it."""
    if gzip_wanted:
        return [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding"),
                ("Cache-Control", "no-store, no-transform")]
    return [("Vary", "Accept-Encoding")] if compression else []


def _gzip_wanted() -> bool:
    return _public().config.compression and accepts_gzip(request.headers.get("Accept-Encoding"))


def _find_project(slug: str) -> Project:
    """The project; ProjectNotFound for a malformed slug (the database is not asked) or
    an unknown one, DatabaseUnavailable when it cannot be told."""
    if not SLUG_PATTERN.fullmatch(slug):
        raise ProjectNotFound(slug)
    project = _public().directory.get(slug)
    if project is None:
        raise ProjectNotFound(slug)
    return project


def _snapshot_response(snapshot: Snapshot) -> Response:
    gzip_wanted = _gzip_wanted()
    response = Response(snapshot.gzip_body if gzip_wanted else snapshot.body, 200,
                        content_type="application/json")
    response.headers.extend(encoding_headers(gzip_wanted, _public().config.compression))
    return response


@routes.get("/api/public/<slug>/status")
def get_status(slug: str):
    return _snapshot_response(_public().service.status(_find_project(slug)))


@routes.post("/api/public/<slug>/status/refresh")
def refresh_status(slug: str):
    return _snapshot_response(_public().service.refresh(_find_project(slug)))


@routes.get("/api/public/<slug>/status/stream")
def stream_status(slug: str):
    return _stream_answer(lambda: ([_find_project(slug)], [], False), mux=False)


@routes.get("/api/public/status/stream")
def stream_projects():
    """One stream for several projects (`?projects=a,b,c`)."""
    slugs = parse_project_list(request.args.get("projects"), _public().config.max_projects_per_stream)

    def projects() -> tuple[list[Project], list[str], bool]:
        known, unknown, untold = [], [], None
        for slug in slugs:
            try:
                known.append(_find_project(slug))
            except ProjectNotFound:
                unknown.append(slug)
            except (DatabaseUnavailable, DatabaseBusy) as exc:  # a project never seen, while
                untold = untold or exc                          # the database cannot say
        if not known:
            raise untold or ProjectNotFound(",".join(slugs))
        return known, unknown, untold is not None

    return _stream_answer(projects, mux=True)


def parse_project_list(value: str | None, limit: int) -> list[str]:
    """`a,b,c` -> the slugs, each once, in order; BadProjectList for anything else."""
    usage = f"projects: 1 to {limit} project slugs, comma-separated"
    # Bounded before it is split: as long as a request line may be, or `limit` slugs
    if not value or len(value) > max(limit * 129, REQUEST_LINE_LIMIT):  # (a slug twice is once)
        raise BadProjectList(usage)
    slugs = list(dict.fromkeys(value.split(",")))
    if len(slugs) > limit or not all(SLUG_PATTERN.fullmatch(slug) for slug in slugs):
        raise BadProjectList(usage)
    return slugs


def _stream_answer(find: Callable[[], tuple[list[Project], list[str], bool]], mux: bool) -> Response:
    """A stream's answer: 404 for a truly unknown project, and for trouble that passes
    (database down, MAX_STREAMS, shutting down, nothing to show yet) 200 with a `retry:`
    that ends at once, since EventSource gives up on anything else. A multiplexed stream
    some of whose projects could not be looked up (`find`'s third value) serves the
    others, and ends after about a `retry:` so that its client asks again. A HEAD asks
    whether a stream would open, and opens none."""
    public = _public()
    gzip_wanted = _gzip_wanted()
    # An HTTP/1.0 body ends when the connection does: no chunks, no keep-alive.
    http_1_0 = request.environ.get("SERVER_PROTOCOL") == "HTTP/1.0"
    try:
        known, unknown, untold = find()
        for project in known:
            if public.store.read(project.slug)[0] is None:
                public.store.sync(project.slug)  # a project new to this worker may be known elsewhere
        if not mux and known[0].config_error and public.store.read(known[0].slug)[0] is None:
            raise NoSnapshot(1)             # nothing to show until its config is fixed: come back
        body: Iterable[bytes] = iter(())
        if request.method != "HEAD":
            # EventSource sends the last id it saw when it reconnects; a page that kept
            # its statuses may pass one on its first connect. The header wins.
            last_event_id = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
            body = open_stream(public.fanout, public.store, [p.slug for p in known], last_event_id,
                               gzip_wanted, unknown, mux)
            if untold:
                config = public.config
                ask_again = (config.sse_retry_ms + config.sse_reconnect_spread_ms * random.random()) / 1000
                gevent.spawn_later(max(ask_again, DB_RETRY_SECONDS), body.end, public.fanout.sent_away())
    except PublicStatusError as exc:
        if exc.transient:
            return come_back_later(public.config)
        raise
    response = Response(body, 200, content_type="text/event-stream", direct_passthrough=True)
    response.headers.extend(encoding_headers(gzip_wanted, public.config.compression))
    response.headers["Connection"] = "close" if http_1_0 else "keep-alive"  # the SPEC's keep-alive
    response.headers["X-Accel-Buffering"] = "no"
    return response


def come_back_later(config: Config) -> Response:
    """A stream answer that ends at once and makes EventSource reconnect, jittered."""
    response = Response(retry_message(config.sse_retry_ms, config.sse_reconnect_spread_ms), 200,
                        content_type="text/event-stream")
    response.headers["Connection"] = "close"  # and free the connection for someone else
    return response


@routes.get("/")
def board():
    """The live status board (board.html), on public-status.js."""
    return _static("board.html")


@routes.get("/<any('board.js', 'board.css', 'public-status.js'):name>")
def static_file(name: str):
    """The board's script and style, and the client for any page (public-status.js)."""
    return _static(name)


def _static(name: str) -> Response:
    """A file that changes with a deploy: browsers keep it and revalidate (a 304)."""
    body = _public().static_files.get(name)
    if body is None:
        return json_error(404, "not found")
    response = Response(body, 200, content_type=STATIC_FILES[name])
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.set_etag(hashlib.sha1(body).hexdigest()[:16])
    return response.make_conditional(request)


@routes.get("/healthz")
def healthz():
    return Response(json.dumps({"status": "ok"}), 200, content_type="application/json")


@routes.get("/readyz")
def readyz():
    public = _public()
    try:
        public.db.fetch_one("SELECT 1")
    except DatabaseBusy:
        pass  # every connection is answering queries: the database is there
    except DatabaseUnavailable:
        public.metrics.database_up.set(0)
        return json_error(503, "database unavailable")
    public.metrics.database_up.set(1)
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
        self._headers = [*encoding_headers(False, self._compression), *public.public_headers]
        self._gzip_headers = [*encoding_headers(True, self._compression),
                              *(h for h in public.public_headers if h[0] != "Cache-Control")]

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
# --------------------------------------------------------------------------- the edge

# Request heads are bounded as gunicorn's defaults are, whatever the worker.
REQUEST_LINE_LIMIT = 4094         # bytes of the request line, its CRLF not counted
HEADER_FIELD_LIMIT = 8190         # bytes of a header line, its CRLF included
HEADER_FIELDS_LIMIT = 100         # header lines
HEAD_LIMIT = REQUEST_LINE_LIMIT + 2 + HEADER_FIELDS_LIMIT * HEADER_FIELD_LIMIT + 2
RECEIVE_SIZE = 16 * 1024          # bytes asked of a socket at a time
FD_RESERVE = 64                   # descriptors kept for the database, Redis, client APIs, logs

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) (HTTP/[0-9]\.[0-9])")
# The whitespace before a value is taken possessively: the value may hold spaces too, and
# a line of them ending in a control byte would otherwise be tried at every split.
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*+([^\x00-\x08\x0a-\x1f\x7f]*)")
_EDGE_WRITES = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade",
                "proxy-connection", "te", "trailer", "date"}   # hop by hop, and the Date


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request head read one way only (RFC 9112)."""

    method: str
    target: str                       # as sent
    path: str                         # percent-decoded, as WSGI wants it (latin-1)
    query: str
    version: str                      # "HTTP/1.1" or "HTTP/1.0"
    headers: list[tuple[str, str]]    # as sent, in order (values stripped of OWS)
    content_length: int               # 0 when none is declared
    chunked: bool
    keep_alive: bool

    @property
    def has_body(self) -> bool:
        return self.chunked or self.content_length > 0


def parse_head(head: bytes) -> RequestHead:
    """A request head (without its final empty line) -> RequestHead, or RequestRefused:
    whatever a front end and this service could read two ways is refused (400, or 501
    for a transfer coding it does not implement, 505 for another HTTP), as nginx and
    gunicorn's own parser refuse it: a bare CR or LF, a space before a colon, a control
    byte in a name or value, obs-folding, a missing or doubled Host, Content-Lengths
    that disagree, Transfer-Encoding with Content-Length or ending in anything but
    chunked. Bounds: RFC 9112's 414 and 431, at gunicorn's defaults."""
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        raise RequestRefused(400, "a bare CR or LF in the head")
    lines = head.split(b"\r\n")
    if len(lines[0]) > REQUEST_LINE_LIMIT:
        raise RequestRefused(414, "request line too long")
    if len(lines) - 1 > HEADER_FIELDS_LIMIT:
        raise RequestRefused(431, "too many header fields")
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if request_line is None:
        raise RequestRefused(400, "malformed request line")
    method, target, version = (part.decode("latin-1") for part in request_line.groups())
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise RequestRefused(505, f"{version} not supported")
    headers: list[tuple[str, str]] = []
    hosts, lengths, codings, connection, framed_by_codings = 0, set(), [], "", False
    for line in lines[1:]:
        if len(line) + 2 > HEADER_FIELD_LIMIT:
            raise RequestRefused(431, "header field too long")
        field_line = _FIELD_LINE.fullmatch(line)
        if field_line is None:
            raise RequestRefused(400, "malformed header field")
        name = field_line.group(1).decode("ascii")
        value = field_line.group(2).rstrip(b" \t").decode("latin-1")
        headers.append((name, value))
        lower = name.lower()
        if lower == "host":
            hosts += 1
        elif lower == "content-length":
            lengths.update(item.strip() for item in value.split(","))
        elif lower == "transfer-encoding":
            framed_by_codings = True
            codings += [item.strip().lower() for item in value.split(",") if item.strip()]
        elif lower == "connection":
            connection += "," + value.lower()
    if hosts > 1 or (hosts == 0 and version == "HTTP/1.1"):
        raise RequestRefused(400, "a request needs one Host")
    if lengths and (len(lengths) > 1 or not next(iter(lengths)).isdigit()
                    or not next(iter(lengths)).isascii()):
        raise RequestRefused(400, "unreadable Content-Length")
    digits = next(iter(lengths)).lstrip("0") if lengths else ""   # 00053 is 53
    content_length = int(digits[:19]) if digits else 0
    chunked = False
    if framed_by_codings:
        if version == "HTTP/1.0" or lengths or not codings or codings[-1] != "chunked" \
                or "chunked" in codings[:-1]:
            raise RequestRefused(400, "unreadable Transfer-Encoding")
        if len(codings) > 1:
            raise RequestRefused(501, "a transfer coding other than chunked")
        chunked = True
    path, query = _request_target(method, target)
    tokens = {token.strip() for token in connection.split(",")}
    keep_alive = version == "HTTP/1.1" and "close" not in tokens
    return RequestHead(method, target, path, query, version, headers, content_length, chunked,
                       keep_alive)


def _request_target(method: str, target: str) -> tuple[str, str]:
    """(PATH_INFO, QUERY_STRING) of an origin-form (`/a?b`) or absolute-form target."""
    if target.startswith("/"):
        raw_path, _, query = target.partition("?")
    elif target.startswith(("http://", "https://")):
        try:
            parts = urlsplit(target)
        except ValueError:                    # a bracket no host can have: http://[/a
            raise RequestRefused(400, "malformed request target") from None
        raw_path, query = parts.path or "/", parts.query
    elif target == "*" and method == "OPTIONS":
        raw_path, query = "*", ""
    else:
        raise RequestRefused(400, "malformed request target")
    if "#" in raw_path or "#" in query:
        raise RequestRefused(400, "a fragment in the request target")
    return unquote_to_bytes(raw_path).decode("latin-1"), query


class _Outcome(enum.Enum):
    KEEP = "keep"         # the connection waits for the next request
    CLOSE = "close"       # closed after the answer
    LINGER = "linger"     # closed after the answer, once what the client still sends is read
    TAKEN = "taken"       # a stream's writer has it now


class Edge:
    """The worker's HTTP/1.1 server, in place of gunicorn's handler on its gevent worker
    (gunicorn.conf.py hands it each connection: `serve_for`). Chosen by measurement:
    gunicorn's own parser is as strict as we need, but reads a head in 33 us where
    `parse_head` takes 5, of a warm GET's ~100; and a stream must leave the connection
    to its writer (an idle stream holds no greenlet), which no server's handler allows.

    A connection is *waiting* from its accept, or the end of its last response, until
    the first byte of its next request: before a first request for at most
    HEADER_TIMEOUT, between requests KEEPALIVE_TIMEOUT; then the rest of the head must
    be in within HEADER_TIMEOUT (of the accept, or of its first byte). A response must
    be taken by the client at a pace of a write per HEADER_TIMEOUT. No route reads a
    body: a request that declares one is answered, then the connection is closed once
    what the client still sends has been read and dropped (at most REQUEST_BODY_LIMIT,
    within HEADER_TIMEOUT: *lingering*, as nginx does, so that the answer is not lost
    to a reset). Waiting connections are timed by one sweeper, not a timer each (a
    lingering close, rare, has its own); near the worker's connection cap (or its file
    limit) each new connection closes the one that has waited longest, else the oldest
    head still coming in, never a stream or a request in progress; at shutdown every
    waiting connection is let go at once.
    """

    def __init__(self, config: Config, metrics: Metrics, streams: Callable[[], int]):
        self._header_timeout = config.header_timeout
        self._keepalive_timeout = config.keepalive_timeout
        self._every_answer = every_answer_headers(config)
        self._sweep_every = min(1.0, max(0.05, min(config.header_timeout, config.keepalive_timeout) / 4))
        self._metrics = metrics
        self._streams = streams           # how many streams the worker holds (their descriptors)
        self._app: Callable | None = None
        self._log = None                  # gunicorn's logger, when it keeps an access log
        self._cap = math.inf              # the worker's connections
        self._files = math.inf            # the process's descriptors
        self._servers: dict[int, tuple[str, str]] = {}
        # Waiting connections -> since when, longest waiting first: a first head or a
        # lingering close (HEADER_TIMEOUT), and between requests (KEEPALIVE_TIMEOUT).
        self._waiting_short: OrderedDict[Any, float] = OrderedDict()
        self._waiting_long: OrderedDict[Any, float] = OrderedDict()
        self._reading: OrderedDict[Any, float] = OrderedDict()  # heads coming in, since when
        self._sweeper: gevent.Greenlet | None = None
        self._date: tuple[int, str] = (0, "")
        self.open_connections = 0
        self.closing = False

    def serve_for(self, worker) -> None:
        """gunicorn's post_worker_init: this worker's connections are served here. Its
        gevent worker hands each to `handle` (AsyncWorker's entry point)."""
        self._app = worker.wsgi
        self._log = worker.log if worker.cfg.accesslog else None
        self._cap = worker.worker_connections
        self._files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        worker.handle = self.handle

    # ---- one connection

    def handle(self, listener, client, address) -> None:
        self.open_connections += 1
        taken = False
        try:
            if self.closing:
                # Accepted in the moment before gunicorn closes its listener: one answer
                # (a stream's is a `retry:`, as every stream gets), then close, rather
                # than a reset the client cannot tell from a crash.
                with gevent.Timeout(self._header_timeout, False):
                    head = self._next_head(client, bytearray(), True)
                    if head is not None:
                        taken = self._serve(listener, client, address, head) is _Outcome.TAKEN
                return
            self._make_room()
            if self._sweeper is None:
                self._sweeper = gevent.spawn(self._sweep_forever)
            received = bytearray()
            first = True
            while not self.closing:
                head = self._next_head(client, received, first)
                if head is None:
                    return
                first = False
                outcome = self._serve(listener, client, address, head)
                if outcome is _Outcome.TAKEN:
                    taken = True
                    return
                if outcome is _Outcome.LINGER:
                    self._linger(client)
                if outcome is not _Outcome.KEEP:
                    return
        except OSError:
            return                            # the client went: nothing to answer
        finally:
            self.open_connections -= 1
            if not taken:
                client.close()

    def _next_head(self, client, received: bytearray, first: bool) -> bytes | None:
        """Wait for the next request and read its head; None to close quietly (the client
        left, or was too slow). A head over its bounds is refused as soon as it shows."""
        started = time.monotonic()
        if not received:
            waiting = self._waiting_short if first else self._waiting_long
            waiting[client] = started
            try:              # one read; the sweeper hangs up on it when it waits too long
                data = client.recv(RECEIVE_SIZE)
            finally:
                waiting.pop(client, None)
            if not data or (self.closing and not first):
                return None
            received += data
            if not first:
                started = time.monotonic()    # a later head's time runs from its first byte
        end = received.find(b"\r\n\r\n")
        if end < 0:
            self._reading[client] = started
            try:
                with gevent.Timeout(max(started + self._header_timeout - time.monotonic(), 0.001),
                                    ClientTooSlow()):
                    head = PartialHead()
                    while end < 0:
                        head.check(received)
                        data = client.recv(RECEIVE_SIZE)
                        if not data:
                            return None
                        received += data
                        end = received.find(b"\r\n\r\n", max(len(received) - len(data) - 3, 0))
            except ClientTooSlow:
                return None
            except RequestRefused as refused:
                self._refuse(client, refused, head_only=received.startswith(b"HEAD "))
                self._linger(client)
                return None
            finally:
                self._reading.pop(client, None)
        head = bytes(received[:end])
        del received[:end + 4]
        return head

    def _serve(self, listener, client, address, head: bytes) -> _Outcome:
        started = time.monotonic()
        try:
            request = parse_head(head)
            if request.content_length > REQUEST_BODY_LIMIT:
                raise RequestRefused(413, "request body too large")
        except RequestRefused as refused:
            self._refuse(client, refused, head_only=head.startswith(b"HEAD "))
            return _Outcome.LINGER
        environ = self._environ(listener, address, request)
        answer: list = []

        def start_response(status, headers, exc_info=None):
            answer[:] = [status, headers]
            return _no_write

        try:
            body = self._app(environ, start_response)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            self._write_error(client, 500, "internal error", request.method == "HEAD")
            return _Outcome.CLOSE
        status, headers = answer
        if type(body) is Stream:
            self._take_over(client, request, environ, status, headers, body, started)
            return _Outcome.TAKEN
        close = (not request.keep_alive or request.has_body or self.closing
                 or any(name.lower() == "connection" and value.lower() == "close" for name, value in headers))
        try:
            data = b"".join(body)
        finally:
            if hasattr(body, "close"):
                body.close()
        # No body, and no length of its own, for a HEAD, a 1xx, a 204 or a 304 (RFC 9110)
        bodiless = request.method == "HEAD" or status[:3] in ("204", "304") or status[:1] == "1"
        length = None if bodiless else len(data)
        self._write(client, self._response_head(status, headers, length, close) + data)
        self._access(environ, request, status, headers, len(data), started)
        if close:
            return _Outcome.LINGER if request.has_body else _Outcome.CLOSE
        return _Outcome.KEEP

    def _take_over(self, client, request: RequestHead, environ: dict, status: str,
                   headers: list, stream: Stream, started: float) -> None:
        """The head answered, the connection is the stream's writer's from now on; the
        access line is written when the stream ends, with every byte it wrote."""
        chunked = request.version == "HTTP/1.1"
        head = self._response_head(status, headers, None, not chunked, chunked=chunked)
        sock = _socket.socket(fileno=client.detach())    # the real socket, not gevent's
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        on_closed = None
        if self._log is not None:
            def on_closed(written: int) -> None:
                self._access(environ, request, status, headers, written, started)
        stream.attach(SocketTransport(sock, head, chunked, stream.gzip, stream.stats, on_closed))

    def _linger(self, client) -> None:
        """Close once the client has been heard out: its answer is not lost to a reset of
        unread bytes. At most REQUEST_BODY_LIMIT, within HEADER_TIMEOUT: a timer of its
        own (lingering is rare, and goes on after shutdown, when the sweeper has stopped);
        near the cap it goes first, as a waiting connection."""
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:
            return
        self._waiting_short[client] = time.monotonic()
        try:
            with gevent.Timeout(self._header_timeout, False):
                left = REQUEST_BODY_LIMIT
                while left > 0 and (data := client.recv(RECEIVE_SIZE)):
                    left -= len(data)
        except OSError:
            pass                              # reset, or hung up on to make room: done
        finally:
            self._waiting_short.pop(client, None)

    def _refuse(self, client, refused: RequestRefused, head_only: bool) -> None:
        self._metrics.requests_refused.labels(str(refused.status)).inc()
        self._write_error(client, refused.status, refused.public, head_only)

    def _write_error(self, client, status: int, public: str, head_only: bool) -> None:
        """An answer of the edge's own, with the headers every answer has, the connection
        closing after it; to a HEAD, its head alone."""
        body = json.dumps({"error": public}).encode()
        head = self._response_head(f"{status} {http.HTTPStatus(status).phrase}", [
            ("Content-Type", "application/json"), *self._every_answer], len(body), True)
        self._write(client, head if head_only else head + body)

    def _write(self, client, data: bytes) -> None:
        """All of `data`; the client must take some of it every HEADER_TIMEOUT."""
        try:
            sent = client.send(data, 0, 0.0)   # at once, whenever the socket has room
        except BlockingIOError:
            sent = 0
        view = memoryview(data)[sent:]
        while view:
            with gevent.Timeout(self._header_timeout, ClientTooSlow()):
                view = view[client.send(view):]

    # ---- the WSGI side

    def _environ(self, listener, address, request: RequestHead) -> dict:
        server = self._servers.get(listener.fileno())
        if server is None:
            name = listener.getsockname()
            server = self._servers[listener.fileno()] = (
                (str(name[0]), str(name[1])) if isinstance(name, tuple) else (str(name), ""))
        environ = {
            "REQUEST_METHOD": request.method, "SCRIPT_NAME": "", "PATH_INFO": request.path,
            "QUERY_STRING": request.query, "RAW_URI": request.target,
            "SERVER_PROTOCOL": request.version, "SERVER_NAME": server[0], "SERVER_PORT": server[1],
            "REMOTE_ADDR": address[0] if isinstance(address, tuple) else "",
            "REMOTE_PORT": str(address[1]) if isinstance(address, tuple) else "",
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        repeated: dict[str, list[str]] = {}
        for name, value in request.headers:
            if "_" in name:
                continue                      # X_A would pass for X-A: dropped, as nginx does
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            if key in environ:
                repeated.setdefault(key, [environ[key]]).append(value)
            environ[key] = value
        for key, values in repeated.items():  # joined once: a head may repeat one 100 times
            environ[key] = ("; " if key == "HTTP_COOKIE" else ", ").join(values)
        return environ

    def _response_head(self, status: str, headers: list, length: int | None, close: bool,
                       chunked: bool = False) -> bytes:
        lines = [f"HTTP/1.1 {status}"]
        lines += [f"{name}: {value}" for name, value in headers if name.lower() not in _EDGE_WRITES
                  or (name.lower() == "content-length" and length is None and not chunked)]
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True))
        lines.append(f"Date: {self._date[1]}")
        if length is not None:
            lines.append(f"Content-Length: {length}")
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        lines.append("Connection: close" if close else "Connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _access(self, environ: dict, request: RequestHead, status: str, headers: list,
                sent: int, started: float) -> None:
        """gunicorn's access line. The client's own Authorization never reaches it (its
        Basic user name is an atom of gunicorn's: a credential, and any bytes at all)."""
        if self._log is None:
            return
        if "HTTP_AUTHORIZATION" in environ:
            environ = {key: value for key, value in environ.items() if key != "HTTP_AUTHORIZATION"}
        answer = types.SimpleNamespace(status=status, headers=headers, sent=sent)
        self._log.access(answer, [(name.upper(), value) for name, value in request.headers
                                  if name.lower() != "authorization"], environ,
                         datetime.timedelta(seconds=time.monotonic() - started))

    # ---- waiting connections

    def _make_room(self) -> None:
        """Near the cap of the worker's connections, or of the process's descriptors,
        close the connection that has waited longest for the new one."""
        margin = max(10, int(min(self._cap, self._files) // 100))
        if (self.open_connections + margin < self._cap
                and self.open_connections + self._streams() + FD_RESERVE + margin < self._files):
            return
        fronts = [waiting for waiting in (self._waiting_short, self._waiting_long) if waiting]
        if not fronts and self._reading:      # a head still coming in has cost nothing either:
            fronts = [self._reading]          # one byte a connection must not fill the worker
        if fronts:
            oldest = min(fronts, key=lambda waiting: next(iter(waiting.values())))
            hang_up(oldest.popitem(last=False)[0])
            self._metrics.connections_evicted.inc()

    def _sweep_forever(self) -> None:
        """Hang up on every connection waiting past its limit (each dict is oldest first,
        so a sweep stops at the first one still in time)."""
        while not self.closing:
            gevent.sleep(self._sweep_every)
            now = time.monotonic()
            for waiting, limit in ((self._waiting_short, self._header_timeout),
                                   (self._waiting_long, self._keepalive_timeout)):
                while waiting and next(iter(waiting.values())) + limit <= now:
                    hang_up(waiting.popitem(last=False)[0])

    def let_go(self) -> None:
        """Shutting down: end every waiting connection now; busy ones finish first."""
        self.closing = True
        for client in [*self._waiting_short, *self._waiting_long, *self._reading]:
            hang_up(client)


class PartialHead:
    """A head still coming in, checked as its bytes arrive (each byte looked at once): one
    already over its bounds is refused before it is complete, and so is one that ends its
    lines with a bare LF (it would never end, as this edge reads heads)."""

    __slots__ = ("checked", "last_line_end", "line_ends")

    def __init__(self):
        self.checked = 0            # bytes of the head checked so far
        self.line_ends = 0          # CRLFs among them
        self.last_line_end = -2     # where the last one is

    def check(self, received: bytearray) -> None:
        start = self.checked
        if start and received[start - 1] == 0x0D:  # a CRLF may straddle two reads
            start -= 1
        new = received[start:]
        crlf = new.count(b"\r\n")
        if new.count(b"\n") != crlf:
            raise RequestRefused(400, "a bare LF in the head")
        if crlf:
            self.line_ends += crlf
            self.last_line_end = start + new.rfind(b"\r\n")
        self.checked = len(received)
        if self.line_ends == 0:
            if len(received) > REQUEST_LINE_LIMIT + 1:
                raise RequestRefused(414, "request line too long")
        elif self.line_ends > HEADER_FIELDS_LIMIT + 1 or len(received) > HEAD_LIMIT:
            raise RequestRefused(431, "too many header fields")
        elif len(received) - (self.last_line_end + 2) > HEADER_FIELD_LIMIT:
            raise RequestRefused(431, "header field too long")


def _no_write(data: bytes) -> None:
    raise NotImplementedError("this server takes a response body as an iterable only")


class ClientTooSlow(OSError):
    """A client kept its head, or its part of our answer, waiting too long."""
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
    scrubber: LogScrubber
    static_files: Mapping[str, bytes]
    public_headers: tuple[tuple[str, str], ...]
    edge: Edge

    def shutdown(self) -> None:
        """SIGTERM: let waiting connections go, end every stream (each with its own
        `retry:`), stop the pollers and give back their leases."""
        self.edge.let_go()
        self.fanout.close()
        self.store.close()
        self.db.close()


def every_answer_headers(config: Config) -> tuple[tuple[str, str], ...]:
    """The headers of every answer, the edge's own refusals and errors included."""
    return (("Access-Control-Allow-Origin", config.cors_allow_origin),
            ("Access-Control-Expose-Headers", "Retry-After"), ("Cache-Control", "no-store"))


def create_app(config: Config | Mapping[str, Any] | None = None) -> Flask:
    """Build the app. `config`: a Config, a mapping of environment-style names (tests),
    or None to read the process environment."""
    if not isinstance(config, Config):
        config = Config.from_env(os.environ if config is None else config)
    scrubber = LogScrubber()
    configure_logging(config, scrubber)
    db = Database(config.database_url, config.db_pool_size, config.db_timeout)
    scrubber.add([db.password or "", urlsplit(config.redis_url or "").password or ""])
    metrics = Metrics()
    directory = ProjectDirectory(db, config, metrics, scrubber)
    # Changes flow store -> fanout -> streams, and the fanout runs the service's pollers;
    # so the fanout comes first, and its `poll` finds the service once it is built.
    fanout = Fanout(config, metrics, poll=lambda slug: service.poll(slug))
    store = make_store(config, fanout.publish)
    service = StatusService(config, directory, UpstreamClient(config.max_upstream_bytes),
                            store, metrics)
    edge = Edge(config, metrics, streams=lambda: fanout.stream_count)
    metrics.watch(fanout, store, edge, bool(config.redis_url))

    app = Flask(__name__)
    app.url_map.merge_slashes = False  # `/api//public/x/status` must not be a 308
    here = Path(__file__).parent
    static_files = {name: (here / name).read_bytes() for name in STATIC_FILES if (here / name).exists()}
    public = PublicStatus(config, db, directory, store, service, fanout, metrics, scrubber,
                          static_files, every_answer_headers(config), edge)
    app.extensions["public_status"] = public
    app.register_blueprint(routes)
    app.wsgi_app = WarmStatusFastPath(app.wsgi_app, public)
    return app
