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
`wsgi.py` monkey-patches first. The contract is SPEC.md; the README says how to run,
test, benchmark and deploy it.

Choices a reader might otherwise "fix":

- One upstream request per project at a time. Cache misses, forced refreshes and the
  poller of a project all wait on the same in-flight fetch (`StatusService._fetch_shared`).
- A GET of a warm project never reaches Flask: `WarmStatusFastPath` answers it from
  the snapshot's pre-encoded body, with the very headers Flask's path would send.
- A failed fetch never reaches the public: the last good snapshot is served (stale),
  and only when there has never been one is the answer 503 + Retry-After.
- Every message is encoded to bytes once and the same bytes go to every subscriber;
  a snapshot carries its pre-encoded GET body and `status_update` event.
- One ping clock per worker, not a timer per stream.
- The stream endpoint answers 404 only for a project that is truly unknown. For
  transient trouble it answers 200 `text/event-stream` with a `retry:` and closes,
  because a browser's EventSource gives up for good on any other answer.
- A closed client is noticed by watching its socket for EOF (an I/O watcher in the
  gevent hub), not at the next failed write, which can be a minute later.
- Credentials live in `Project` fields that are left out of its repr, are sent only in
  request headers, and are scrubbed from every log line by `SecretRedactor`, third-party
  debug lines included.
- Snapshots and their publication sit behind one seam, `LocalStore`. `RedisStore` is
  the shared one (REDIS_URL): one poller and one version per project for the whole
  deployment, falling back to a LocalStore of its own while Redis is away.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
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
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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
        return cls(
            database_url=str(database_url),
            port=_env_number(env, "PORT", 8000, int, minimum=0),
            status_cache_ttl=_env_number(env, "STATUS_CACHE_TTL", 30.0),
            sse_ping_interval=_env_number(env, "SSE_PING_INTERVAL", 30.0),
            sse_retry_ms=_env_number(env, "SSE_RETRY_MS", 3000, int, minimum=0),
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


# --------------------------------------------------------------------------- types

STATUSES = ("available", "reserved", "sold", "hidden", "unreleased")

SLUG_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")

DEFAULT_TIMEOUT_SECONDS = 10.0
MAX_TIMEOUT_SECONDS = 120.0       # a misconfigured timeout must not pin a fetch for hours
SUBSCRIBER_QUEUE_SIZE = 64        # messages a slow reader may fall behind before it is dropped
DB_RETRY_SECONDS = 1.0            # after a database failure, serve from cache this long untried
DB_RETRY_AFTER = 5                # Retry-After (s) on a 503 caused by the database
PROJECT_CACHE_ENTRIES = 10_000    # slugs (known or not) whose lookup is remembered


class PublicStatusError(Exception):
    """Base of the service's own errors. Their messages are safe to log, never shown."""


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


class NoSnapshot(PublicStatusError):
    """There is no snapshot to serve yet; try again in `retry_after` seconds."""

    def __init__(self, retry_after: float):
        super().__init__(f"no snapshot, retry after {retry_after:.1f}s")
        self.retry_after = retry_after


class StreamsFull(PublicStatusError):
    """This worker holds MAX_STREAMS streams already."""


class RefreshLimited(PublicStatusError):
    """A forced refresh came too soon after the previous one."""

    def __init__(self, retry_after: float):
        super().__init__(f"refresh limited, retry after {retry_after:.1f}s")
        self.retry_after = retry_after


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


@dataclass(frozen=True, eq=False)
class Snapshot:
    """Statuses of one project at one version, with their encodings made once."""

    slug: str
    version: int
    statuses: Mapping[str, str]
    body: bytes = field(repr=False)      # the GET /status response body
    event: bytes = field(repr=False)     # the `status_update` SSE message

    @classmethod
    def build(cls, slug: str, version: int, statuses: Mapping[str, str]) -> Snapshot:
        body = json.dumps({"project": slug, "statuses": statuses, "count": len(statuses)})
        event = SSEMessage(
            event="status_update", data=json.dumps({"statuses": statuses}), id=version
        )
        return cls(slug, version, statuses, body.encode(), event.encode())


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
    ceiling = interval * min(2 ** min(failures, 3), 8)
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

HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HEADER_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")


def _json_column(value: str | None) -> Any:
    """A json/jsonb/text column read as text -> Python; text may hold JSON twice-encoded."""
    if value is None:
        return None
    parsed = json.loads(value)
    if isinstance(parsed, str) and parsed.strip()[:1] in ("{", "["):
        parsed = json.loads(parsed)
    return parsed


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
    if kind == "bearer":
        token = credentials.get("token")
        if token in (None, ""):
            raise ValueError("bearer auth needs a 'token'")
        return {"Authorization": f"Bearer {token}"}
    if kind == "api_key":
        name = credentials.get("header") or credentials.get("header_name") or "X-API-Key"
        key = credentials.get("key", credentials.get("api_key"))
        if key in (None, ""):
            raise ValueError("api_key auth needs a 'key'")
        if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
            raise ValueError("api_key auth has an invalid header name")
        return {name: str(key)}
    if kind == "basic":
        username = credentials.get("username")
        if username in (None, ""):
            raise ValueError("basic auth needs a 'username'")
        return {"Authorization": _basic(str(username), str(credentials.get("password") or ""))}
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


def project_from_row(slug: str, row: tuple, default_poll_interval: float) -> Project:
    """A row of PROJECT_SQL -> Project. A bad setting makes a project that fails to fetch
    (with `config_error` saying why), rather than one that does not exist."""
    base, endpoint, auth_type, raw_credentials, timeout, raw_mapping, interval = row
    url, userinfo = split_userinfo(join_status_url(base, endpoint))
    timeout = float(timeout) if timeout is not None and timeout > 0 else DEFAULT_TIMEOUT_SECONDS
    interval = float(interval) if interval is not None and interval > 0 else default_poll_interval
    headers: dict[str, str] = {}
    credentials: Any = None
    problems = []
    try:
        credentials = _json_column(raw_credentials)
    except ValueError:
        problems.append("auth_credentials is not JSON")
    try:
        mapping = _json_column(raw_mapping)
    except ValueError:
        problems.append("status_mapping is not JSON")
        mapping = None
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
    return Project(
        slug=slug,
        status_url=url,
        timeout=min(timeout, MAX_TIMEOUT_SECONDS),
        poll_interval=interval,
        auth_headers=headers,
        status_lookup=build_status_lookup(mapping),
        secrets=_secret_strings(credentials, userinfo, headers),
        config_error="; ".join(problems) or None,
    )


class ConnectionPool:
    """At most `size` open connections; a caller waits for a free one.

    psycopg2's own pools raise instead of waiting, and keep no idle connections
    above `minconn`. A connection that raised is closed, never handed out again.
    """

    def __init__(self, connect: Callable[[], Any], size: int):
        self._connect = connect
        self._idle: list = []
        self._slots = gevent.lock.BoundedSemaphore(size)

    @contextmanager
    def connection(self, fresh: bool = False):
        """A connection for one use; `fresh` drops the idle ones and opens a new one."""
        with self._slots:
            if fresh:
                self.discard_idle()
            conn = self._idle.pop() if self._idle else self._connect()
            try:
                yield conn
            except BaseException:
                conn.close()
                raise
            if conn.closed:
                return
            self._idle.append(conn)

    def discard_idle(self) -> int:
        """Close every idle connection; how many there were."""
        count = len(self._idle)
        while self._idle:
            self._idle.pop().close()
        return count


class Database:
    """Read-only access to the shared database: a pool of cooperative connections."""

    def __init__(self, url: str, pool_size: int, timeout: float):
        self._timeout = timeout
        self._params = _connection_params(url, timeout)
        self._pool = ConnectionPool(self._connect, pool_size)

    def __repr__(self) -> str:
        return f"<Database {self._params.get('host', 'local')}/{self._params.get('dbname', '')}>"

    def _connect(self):
        conn = psycopg2.connect(**self._params)
        conn.autocommit = True  # one statement per use; never an idle open transaction
        return conn

    @property
    def password(self) -> str | None:
        return self._params.get("password")

    def fetch_one(self, sql: str, params: tuple = ()) -> tuple | None:
        """Run one SELECT; DatabaseUnavailable for anything that goes wrong."""
        try:
            with gevent.Timeout(self._timeout, DatabaseUnavailable("the database timed out")):
                try:
                    return self._execute(sql, params)
                except (psycopg2.OperationalError, psycopg2.InterfaceError):
                    # The pool may have handed out a connection the server had dropped.
                    # A restart or an idle-connection kill drops them all at once: open
                    # a new one and try once more.
                    return self._execute(sql, params, fresh=True)
        except psycopg2.Error as exc:
            raise DatabaseUnavailable(f"{type(exc).__name__} ({exc.pgcode or 'no code'})") from exc

    def _execute(self, sql: str, params: tuple, fresh: bool = False) -> tuple | None:
        with self._pool.connection(fresh) as conn, conn.cursor() as cursor:
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


@dataclass
class _DirectoryEntry:
    project: Project | None          # None: no such active project with a config
    expires_at: float


class ProjectDirectory:
    """Project settings by slug, cached for PROJECT_CACHE_TTL, unknown slugs included.

    While the database is unreachable, projects already known are served from the
    cache however old; a slug never seen raises DatabaseUnavailable.
    """

    def __init__(self, db: Database, config: Config, metrics: Metrics, redactor: SecretRedactor,
                 clock: Callable[[], float] = time.monotonic):
        self._db = db
        self._ttl = config.project_cache_ttl
        self._default_interval = config.default_poll_interval
        self._metrics = metrics
        self._redactor = redactor
        self._clock = clock
        self._entries: OrderedDict[str, _DirectoryEntry] = OrderedDict()
        self._loading: dict[str, gevent.Greenlet] = {}
        self._retry_db_at = -math.inf
        self._db_failing = False
        self._config_errors: dict[str, str] = {}  # the last one logged, per slug

    def cached(self, slug: str) -> Project | None:
        """The project if its row is cached and fresh; never touches the database."""
        entry = self._entries.get(slug)
        if entry is not None and self._clock() < entry.expires_at:
            return entry.project
        return None

    def get(self, slug: str) -> Project | None:
        now = self._clock()
        entry = self._entries.get(slug)
        if entry is not None and now < entry.expires_at:
            return entry.project
        try:
            project = self._load_shared(slug, now)
        except DatabaseUnavailable:
            if entry is not None and entry.project is not None:
                return entry.project
            raise
        self._entries[slug] = _DirectoryEntry(project, self._clock() + self._ttl)
        self._entries.move_to_end(slug)
        while len(self._entries) > PROJECT_CACHE_ENTRIES:
            self._entries.popitem(last=False)
        return project

    def _load_shared(self, slug: str, now: float) -> Project | None:
        """Concurrent lookups of one slug share one query."""
        if now < self._retry_db_at:
            raise DatabaseUnavailable("the database failed moments ago")
        loader = self._loading.get(slug)
        if loader is None:
            loader = self._loading[slug] = gevent.spawn(self._load, slug)
            loader.link(lambda _: self._loading.pop(slug, None))
        result = loader.get()
        if isinstance(result, DatabaseUnavailable):
            raise result
        return result

    def _load(self, slug: str) -> Project | DatabaseUnavailable | None:
        try:
            row = self._db.fetch_one(PROJECT_SQL, (slug,))
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
        project = project_from_row(slug, row, self._default_interval)
        self._redactor.add(project.secrets)
        if project.config_error and self._config_errors.get(slug) != project.config_error:
            log.error("project %s: integration config unusable: %s", slug, project.config_error,
                      extra={"project": slug, "event": "config_error"})
        if project.config_error:
            self._config_errors[slug] = project.config_error
        else:
            self._config_errors.pop(slug, None)
        return project


# --------------------------------------------------------------------------- upstream client

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


class UpstreamClient:
    """Fetches a project's raw unit statuses from its client API.

    The whole fetch is bounded by the project's timeout (requests' own timeout bounds
    each socket read only, so a body trickling in forever would never end) and the
    body by MAX_UPSTREAM_BYTES. Redirects are not followed: requests would carry a
    custom API-key header along to whatever host the redirect names.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.session = requests.Session()
        self.session.headers.update({"Accept": "application/json", "User-Agent": "public-status"})

    def fetch(self, project: Project) -> dict[str, Any]:
        if project.config_error:
            raise UpstreamError("config", project.config_error)
        body = self._get(project)
        try:
            return decode_status_body(body)
        except StatusParseError as exc:
            raise UpstreamError("bad_body", str(exc)) from None

    def _get(self, project: Project) -> bytes:
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

@dataclass
class _Stored:
    snapshot: Snapshot
    fetched_at: float


class LocalStore:
    """Where snapshots live and how their changes are published: this worker's memory.

    This is the one seam for sharing state between workers. `RedisStore` keeps the same
    methods over Redis, for the whole deployment; here each is the trivial case, this
    worker being the whole deployment (a fetch lock nobody else wants, a poll lease
    always ours). Times come from `clock`; callers only ever see ages.
    """

    renew_every = math.inf  # how often a poll lease must be renewed: never, here

    def __init__(self, on_change: Callable[..., None], clock: Callable[[], float] = time.monotonic):
        self._on_change = on_change
        self._clock = clock
        self._stored: dict[str, _Stored] = {}
        self._refreshed_at: dict[str, float] = {}

    def get(self, slug: str) -> tuple[Snapshot | None, float]:
        """The latest snapshot here and its age in seconds (inf if none). No I/O."""
        stored = self._stored.get(slug)
        if stored is None:
            return None, math.inf
        return stored.snapshot, self._clock() - stored.fetched_at

    def latest(self, slug: str) -> tuple[Snapshot | None, float]:
        """Like get(), but a shared store also looks for a newer one elsewhere."""
        return self.get(slug)

    def slugs(self) -> list[str]:
        return list(self._stored)

    def commit(self, slug: str, statuses: dict[str, str]) -> Snapshot:
        """Record a successful fetch: a new version, published, only if anything changed."""
        stored = self._stored.get(slug)
        if stored is not None and stored.snapshot.statuses == statuses:
            stored.fetched_at = self._clock()
            return stored.snapshot
        previous = stored.snapshot if stored else None
        snapshot = Snapshot.build(slug, previous.version + 1 if previous else 1, statuses)
        updates = diff_statuses(previous.statuses, statuses) if previous else None
        self.install(snapshot, self._clock(), updates)
        return snapshot

    def install(self, snapshot: Snapshot, fetched_at: float, updates: dict[str, str] | None,
                resync: bool = False) -> None:
        """Make `snapshot` the latest and tell the subscribers: `updates` are the changed
        units (None: send everything); `resync` replaces whatever version they hold."""
        self._stored[snapshot.slug] = _Stored(snapshot, fetched_at)
        self._on_change(snapshot, updates, resync)

    def touch(self, slug: str, fetched_at: float) -> None:
        """The latest snapshot was fetched again, unchanged."""
        stored = self._stored.get(slug)
        if stored is not None:
            stored.fetched_at = max(stored.fetched_at, fetched_at)

    def claim_refresh(self, slug: str, min_interval: float, timeout: float) -> float:
        """0: go ahead (a fetch under way elsewhere is joined, not refused); else the
        seconds until a refresh is allowed. A shared store takes the fetch lock with the
        claim (held `timeout` at most), so no other worker can slip in between."""
        now = self._clock()
        wait = self._refreshed_at.get(slug, -math.inf) + min_interval - now
        if wait > 0:
            return wait
        self._refreshed_at[slug] = now
        return 0.0

    def begin_fetch(self, slug: str, timeout: float) -> bool:
        """Take the project's fetch for this worker; False if another worker has it."""
        return True

    def end_fetch(self, slug: str, failed: bool) -> None:
        """Give the fetch back; `failed` tells those waiting for it."""

    def await_fetch(self, slug: str, timeout: float) -> Snapshot | None:
        """Wait for another worker's fetch: its snapshot, or None if it failed."""
        return None

    def poll_turn(self, slug: str) -> float:
        """0 if this worker is the project's poller now, else seconds until it may be."""
        return 0.0

    def release_poll(self, slug: str) -> None:
        """This worker stops polling the project; let another take over at once."""

    def close(self) -> None:
        """Shutting down: give back what this worker holds."""


REDIS_PREFIX = "public-status:"
CHANGES_CHANNEL = REDIS_PREFIX + "changes"
REDIS_RETRY_SECONDS = 1.0      # while Redis is away, how often to try it again
SNAPSHOT_KEY_TTL = 86_400      # a project nobody fetches for a day leaves Redis

# Commit one fetch: a new version only when the statuses changed (compared by digest),
# then tell every worker, in commit order. The statuses JSON is spliced in as text, so
# its unit order survives. Returns {version, changed}.
COMMIT_SCRIPT = """
local old = redis.call('HMGET', KEYS[1], 'version', 'digest')
local version = tonumber(old[1]) or 0
local changed = old[2] ~= ARGV[1]
if changed then
  version = version + 1
  redis.call('HSET', KEYS[1], 'version', version, 'digest', ARGV[1], 'statuses', ARGV[2],
             'fetched_at', ARGV[3])
else
  redis.call('HSET', KEYS[1], 'fetched_at', ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
local message = '{"slug": ' .. ARGV[6] .. ', "version": ' .. version .. ', "fetched_at": ' .. ARGV[3]
if changed then message = message .. ', "statuses": ' .. ARGV[2] end
redis.call('PUBLISH', ARGV[5], message .. '}')
return {version, changed and 1 or 0}
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


class RedisStore:
    """The LocalStore's methods for a whole deployment, through Redis (REDIS_URL).

    Only statuses, versions, times and worker ids go to Redis, never a credential.
    Each worker keeps a mirror (a LocalStore) that serves every read without a round
    trip; one pub/sub subscription per worker keeps it current, and every commit is a
    Lua script that bumps the version only on change and publishes it, in order. One
    worker at a time polls a project: the one holding its lease (renewed while it
    polls, given back when it stops). While Redis is unreachable the mirror carries on
    alone, exactly as without REDIS_URL; when Redis answers again every mirror is
    resynchronised and its streams get a full snapshot of the shared version.
    """

    def __init__(self, url: str, on_change: Callable[..., None], lease_ttl: float):
        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1,
                                           health_check_interval=10)
        self.local = LocalStore(on_change, clock=time.time)  # wall time: shared by machines
        self.renew_every = lease_ttl / 3
        self._lease_ms = max(1, int(lease_ttl * 1000))
        self._me = f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
        self._commit = self._redis.register_script(COMMIT_SCRIPT)
        self._lease = self._redis.register_script(LEASE_SCRIPT)
        self._claim = self._redis.register_script(REFRESH_SCRIPT)
        self._release = self._redis.register_script(RELEASE_SCRIPT)
        self._held: set[str] = set()          # projects whose poll lease is ours
        self._waiters: dict[str, gevent.event.AsyncResult] = {}
        self._unsynced: set[str] = set()      # mirrored while Redis was away
        self._closed = False
        self.shared = True
        self._subscription = gevent.spawn(self._follow)

    def __repr__(self) -> str:
        return f"<RedisStore {'shared' if self.shared else 'local'} as {self._me}>"

    @staticmethod
    def _key(kind: str, slug: str) -> str:
        return f"{REDIS_PREFIX}{kind}:{slug}"

    def _shared(self, operation: Callable[[], Any], fallback: Callable[[], Any]) -> Any:
        """Do it through Redis; if Redis fails, switch this worker to local mode."""
        if self.shared:
            try:
                return operation()
            except redis.RedisError as exc:
                self._lose(exc)
        return fallback()

    def _lose(self, exc: Exception) -> None:
        if self.shared:
            self.shared = False
            self._held.clear()
            log.error("Redis unavailable (%s): this worker polls and serves on its own until "
                      "it is back", type(exc).__name__, extra={"event": "redis_unavailable"})

    # ---- the seam

    def get(self, slug: str) -> tuple[Snapshot | None, float]:
        return self.local.get(slug)

    def latest(self, slug: str) -> tuple[Snapshot | None, float]:
        def shared():
            self._load(slug)
            return self.local.get(slug)
        return self._shared(shared, lambda: self.local.get(slug))

    def commit(self, slug: str, statuses: dict[str, str]) -> Snapshot:
        def shared():
            fetched_at = time.time()
            digest = hashlib.sha1(json.dumps(statuses, sort_keys=True).encode()).hexdigest()
            version, changed = self._commit(
                keys=[self._key("snapshot", slug)],
                args=[digest, json.dumps(statuses), repr(fetched_at), SNAPSHOT_KEY_TTL,
                      CHANGES_CHANNEL, json.dumps(slug)])
            self._adopt(slug, int(version), fetched_at, statuses if changed else None)
            return self.local.get(slug)[0]
        return self._shared(shared, lambda: self.local.commit(slug, statuses))

    def claim_refresh(self, slug: str, min_interval: float, timeout: float) -> float:
        def shared():
            left_ms = self._claim(
                keys=[self._key("refreshed", slug), self._key("fetching", slug)],
                args=[self._me, int(min_interval * 1000), self._fetch_lock_ms(timeout)])
            return left_ms / 1000
        return self._shared(shared, lambda: self.local.claim_refresh(slug, min_interval, timeout))

    def begin_fetch(self, slug: str, timeout: float) -> bool:
        return self._shared(
            lambda: self._lease(keys=[self._key("fetching", slug)],
                                args=[self._me, self._fetch_lock_ms(timeout)]) == 0,
            lambda: True)

    @staticmethod
    def _fetch_lock_ms(timeout: float) -> int:
        return int((timeout + 1) * 1000)  # a worker that dies mid-fetch lets go by itself

    def end_fetch(self, slug: str, failed: bool) -> None:
        def shared():
            self._release(keys=[self._key("fetching", slug)], args=[self._me])
            if failed:
                self._redis.publish(CHANGES_CHANNEL, json.dumps({"slug": slug, "failed": True}))
        self._shared(shared, lambda: None)

    def await_fetch(self, slug: str, timeout: float) -> Snapshot | None:
        if not self.shared:
            return None
        waiter = self._waiters.setdefault(slug, gevent.event.AsyncResult())
        if not self._shared(lambda: self._redis.exists(self._key("fetching", slug)), lambda: 0):
            self._waiters.pop(slug, None)  # it ended before we began to wait
            return self.latest(slug)[0]
        return waiter.wait(timeout)

    def poll_turn(self, slug: str) -> float:
        def shared():
            left_ms = self._lease(keys=[self._key("lease", slug)], args=[self._me, self._lease_ms])
            if left_ms == 0:
                self._held.add(slug)
                return 0.0
            self._held.discard(slug)
            return max(left_ms, 20) / 1000
        return self._shared(shared, lambda: 0.0)

    def release_poll(self, slug: str) -> None:
        if slug in self._held:
            self._held.discard(slug)
            self._shared(lambda: self._release(keys=[self._key("lease", slug)], args=[self._me]),
                         lambda: None)

    def close(self) -> None:
        self._closed = True
        for slug in list(self._held):
            self.release_poll(slug)
        self._subscription.kill(block=False)
        self._redis.close()

    # ---- keeping the mirror

    def _follow(self) -> None:
        """This worker's one subscription; while Redis is away, wait for it to return."""
        while not self._closed:
            if not self.shared:
                gevent.sleep(REDIS_RETRY_SECONDS)
                try:
                    self._redis.ping()
                    self._rejoin()
                except redis.RedisError:
                    continue
            try:
                self._listen()
            except redis.RedisError as exc:
                self._lose(exc)

    def _listen(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
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

    def _on_message(self, message: dict) -> None:
        slug = message["slug"]
        if not message.get("failed"):
            self._adopt(slug, message["version"], message["fetched_at"], message.get("statuses"))
        waiter = self._waiters.pop(slug, None)
        if waiter is not None:
            waiter.set(None if message.get("failed") else self.local.get(slug)[0])

    def _rejoin(self) -> None:
        """Redis is back: take the shared snapshots as they are there, whatever versions
        this worker counted on its own meanwhile."""
        for slug in self.local.slugs():
            if not self._load(slug, force=True):
                self._unsynced.add(slug)  # the first shared commit will do it
        self.shared = True
        log.warning("Redis reachable again: pollers and snapshots are shared again",
                    extra={"event": "redis_recovered"})

    def _load(self, slug: str, force: bool = False) -> bool:
        """Adopt the project's snapshot as Redis has it; False if Redis has none."""
        stored = self._redis.hgetall(self._key("snapshot", slug))
        if not stored:
            return False
        self._adopt(slug, int(stored[b"version"]), float(stored[b"fetched_at"]),
                    json.loads(stored[b"statuses"]), force)
        return True

    def _adopt(self, slug: str, version: int, fetched_at: float,
               statuses: dict[str, str] | None, force: bool = False) -> None:
        """Bring the mirror up to a committed version; `statuses` None: unchanged."""
        current, _ = self.local.get(slug)
        force = force or slug in self._unsynced
        if statuses is None:
            if current is not None and current.version == version and not force:
                self.local.touch(slug, fetched_at)
            elif force or current is None or version > current.version:
                self._load(slug, force)  # a change this worker missed
            return
        if current is not None and not force and version <= current.version:
            if version == current.version:
                self.local.touch(slug, fetched_at)
            return
        self._unsynced.discard(slug)
        in_step = current is not None and not force and version == current.version + 1
        updates = diff_statuses(current.statuses, statuses) if in_step else None
        self.local.install(Snapshot.build(slug, version, statuses), fetched_at, updates,
                           resync=force and current is not None)


def make_store(config: Config, on_change: Callable[..., None],
               clock: Callable[[], float]) -> LocalStore | RedisStore:
    if config.redis_url:
        return RedisStore(config.redis_url, on_change, config.poll_lease_ttl)
    return LocalStore(on_change, clock)


@dataclass
class _FetchState:
    """This worker's bookkeeping of one project's fetches."""

    inflight: gevent.Greenlet | None = None
    failures: int = 0                 # failed fetches in a row
    retry_at: float = -math.inf       # after a failure, GETs wait for this before fetching
    poll_due_at: float = -math.inf    # when the poller fetches next
    unknown_logged: set = field(default_factory=set)


MAX_UNKNOWN_LOGGED = 100  # distinct unknown values logged per project


class StatusService:
    """Snapshot cache, single-flight fetching, rate-limited refresh and the pollers."""

    def __init__(self, config: Config, directory: ProjectDirectory, client: UpstreamClient,
                 metrics: Metrics, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        self.config = config
        self.directory = directory
        self.client = client
        self.metrics = metrics
        self.clock = clock
        self.hub = Hub(self, config, metrics, wall_clock)
        self.store = make_store(config, self.hub.deliver, clock)
        self._states: dict[str, _FetchState] = {}

    def _state(self, slug: str) -> _FetchState:
        state = self._states.get(slug)
        if state is None:
            state = self._states[slug] = _FetchState()
        return state

    def snapshot(self, slug: str) -> Snapshot | None:
        return self.store.get(slug)[0]

    def fresh(self, slug: str) -> Snapshot | None:
        """The snapshot if it is younger than STATUS_CACHE_TTL, else None."""
        snapshot, age = self.store.get(slug)
        return snapshot if age < self.config.status_cache_ttl else None

    def current(self, project: Project) -> Snapshot:
        """The snapshot a GET serves: fresh from cache, fetched, or stale on failure."""
        snapshot = self.fresh(project.slug)
        if snapshot is None:  # perhaps another worker fetched it meanwhile
            snapshot, age = self.store.latest(project.slug)
            if age >= self.config.status_cache_ttl:
                return self._fetch_or_stale(project, snapshot)
        self.metrics.cache_hits.inc()
        return snapshot

    def _fetch_or_stale(self, project: Project, snapshot: Snapshot | None) -> Snapshot:
        """A miss: fetch, unless a failure moments ago says not yet; on failure the stale
        snapshot, or NoSnapshot when there is none."""
        now = self.clock()
        state = self._state(project.slug)
        if state.inflight is None and now < state.retry_at:
            return self._stale(snapshot, state)
        try:
            fetched = self._fetch_shared(project)
        except UpstreamError:
            return self._stale(snapshot, state)
        self.metrics.cache.labels("miss").inc()
        return fetched

    def refresh(self, project: Project) -> Snapshot:
        """Fetch now, bypassing the cache; joins a fetch already in flight."""
        state = self._state(project.slug)
        if state.inflight is None:
            wait = self.store.claim_refresh(project.slug, self.config.refresh_min_interval,
                                            project.timeout)
            if wait > 0:
                self.metrics.refresh_limited.inc()
                raise RefreshLimited(wait)
        try:
            return self._fetch_shared(project)
        except UpstreamError:
            return self._stale(self.snapshot(project.slug), state)

    def _stale(self, snapshot: Snapshot | None, state: _FetchState) -> Snapshot:
        if snapshot is None:
            raise NoSnapshot(max(state.retry_at - self.clock(), 1.0))
        self.metrics.cache.labels("stale").inc()
        return snapshot

    def _fetch_shared(self, project: Project) -> Snapshot:
        """One fetch per project at a time, in the deployment (the store's fetch lock)
        and in this worker (one greenlet): everyone who asks meanwhile shares it."""
        state = self._state(project.slug)
        if state.inflight is None:
            state.inflight = gevent.spawn(self._fetch, project, state)
        outcome = state.inflight.get()
        if isinstance(outcome, UpstreamError):
            raise outcome
        return outcome

    def _fetch(self, project: Project, state: _FetchState) -> Snapshot | UpstreamError:
        """Runs in its own greenlet, so a waiter that goes away cannot cancel it. Returns
        the error rather than raising it: gevent would print an uncaught one."""
        try:
            if not self.store.begin_fetch(project.slug, project.timeout):
                snapshot = self.store.await_fetch(project.slug, project.timeout + 1)
                return snapshot or UpstreamError("remote", "another worker's fetch failed")
            outcome = self._fetch_here(project, state)
            self.store.end_fetch(project.slug, failed=isinstance(outcome, UpstreamError))
            return outcome
        finally:
            state.inflight = None

    def _fetch_here(self, project: Project, state: _FetchState) -> Snapshot | UpstreamError:
        started = self.clock()
        try:
            statuses, unknown = normalize_statuses(self.client.fetch(project), project.status_lookup)
        except UpstreamError as exc:
            error = exc
        except Exception as exc:  # a bug of ours: log it, keep serving what we have
            log.exception("project %s: fetch crashed", project.slug, extra={"project": project.slug})
            error = UpstreamError("error", type(exc).__name__)
        else:
            return self._record_success(project, state, statuses, unknown, started)
        self._record_failure(project, state, error, started)
        return error

    def _record_success(self, project: Project, state: _FetchState, statuses: dict[str, str],
                        unknown: list[str], started: float) -> Snapshot:
        now = self.clock()
        self.metrics.upstream_requests.labels("ok").inc()
        self.metrics.upstream_seconds.observe(now - started)
        self._log_unknown(project.slug, state, unknown)
        if state.failures:
            log.warning("project %s: client API recovered after %d failed fetches",
                        project.slug, state.failures,
                        extra={"project": project.slug, "event": "upstream_recovered"})
        state.failures = 0
        state.retry_at = -math.inf
        state.poll_due_at = now + project.poll_interval
        return self.store.commit(project.slug, statuses)

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
            fallback = "the last good snapshot" if self.snapshot(project.slug) else "503 (no snapshot yet)"
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

    def poll_forever(self, slug: str) -> None:
        """The poller of one project: runs while the project has subscribers here, and
        fetches while this worker holds the project's poll lease (always, without Redis)."""
        try:
            while True:
                try:
                    project = self.directory.get(slug)
                except DatabaseUnavailable:
                    gevent.sleep(DB_RETRY_SECONDS)  # the directory logs it; streams stay open
                    continue
                if project is None:
                    log.info("project %s is gone; closing its streams", slug, extra={"project": slug})
                    self.hub.close_channel(slug)
                    return
                turn = self.store.poll_turn(slug)
                if turn > 0:  # another worker polls it; ask again when its lease may lapse
                    gevent.sleep(turn)
                    continue
                age = self.store.get(slug)[1]
                wait = max(self._state(slug).poll_due_at - self.clock(), project.poll_interval - age)
                if wait > 0:
                    gevent.sleep(min(wait, self.store.renew_every))
                    continue
                try:
                    self._fetch_shared(project)
                except UpstreamError:
                    pass  # logged by _fetch; poll_due_at now holds the backoff
        finally:
            self.store.release_poll(slug)


# --------------------------------------------------------------------------- SSE

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


RESYNC = -1  # a delivery's version meaning: send the full snapshot, whatever was sent


class Subscriber:
    """One open stream in this worker: a bounded mailbox of (version, bytes) deliveries.

    A delivery with version None is a ping; with bytes None it asks for the full
    snapshot; with b"" it only moves the version on (nothing visible changed); with
    version RESYNC it replaces whatever the stream sent before (the versions of a
    shared store may restart when Redis comes back).
    The mailbox is a list and an Event, not a gevent Queue: a tenth of the memory, and
    the stream takes everything that arrived at once, in one write.
    """

    __slots__ = ("_hub", "_pending", "_ready", "_socket", "_watcher", "closed", "slug")

    def __init__(self, hub: Hub, slug: str, sock: socket.socket | None):
        self.slug = slug
        self.closed = False
        self._hub = hub
        self._pending: list[tuple] = []
        self._ready = gevent.event.Event()
        self._socket = sock
        self._watcher = None

    def offer(self, delivery: tuple) -> None:
        if self.closed:
            return
        if len(self._pending) >= SUBSCRIBER_QUEUE_SIZE:
            log.info("project %s: dropping a stream that fell %d messages behind",
                     self.slug, SUBSCRIBER_QUEUE_SIZE, extra={"project": self.slug})
            self._hub.metrics.streams_dropped.inc()
            self.abort()
            return
        self._pending.append(delivery)
        self._ready.set()

    def take(self) -> list[tuple] | None:
        """Every delivery not yet taken, waiting for one; None once the stream must end."""
        while not self._pending and not self.closed:
            self._ready.clear()
            self._ready.wait()
        if self.closed:
            return None
        taken, self._pending = self._pending, []
        return taken

    def watch_disconnect(self) -> None:
        """Close as soon as the client hangs up, rather than at the next failed write.

        An I/O watcher in the hub, not a greenlet: when the socket turns readable with
        nothing to read, the peer has closed (an SSE client sends nothing after its
        request). If it does send bytes, stop watching: writes will tell.
        """
        if self._socket is None or self.closed:
            return
        self._watcher = gevent.get_hub().loop.io(self._socket.fileno(), 1)
        self._watcher.start(self._on_readable)

    def _on_readable(self) -> None:
        pending = struct.unpack("i", fcntl.ioctl(self._socket.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        if pending == 0:
            self.close()
        else:
            self._stop_watching()

    def _stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None

    def close(self) -> None:
        """End the stream: unsubscribe now and wake its greenlet. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._stop_watching()
        self._hub.remove(self)
        self._ready.set()

    def abort(self) -> None:
        """Close, and shut the socket down so a write stuck on a reader that never reads
        fails now."""
        self.close()
        self._hang_up()

    def finish(self) -> None:
        """The response is over. While the worker shuts down, also hang up, so the
        client reconnects to another worker instead of reusing this connection."""
        self.close()
        if self._hub.shutting_down:
            self._hang_up()

    def _hang_up(self) -> None:
        if self._socket is not None:
            try:
                self._socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone


@dataclass(eq=False)
class _Channel:
    subscribers: set = field(default_factory=set)
    poller: gevent.Greenlet | None = None


class Hub:
    """This worker's subscribers by project, their pollers, and the ping clock."""

    def __init__(self, service: StatusService, config: Config, metrics: Metrics,
                 wall_clock: Callable[[], float]):
        self._service = service
        self._config = config
        self.metrics = metrics
        self._wall_clock = wall_clock
        self._channels: dict[str, _Channel] = {}
        self._pinger: gevent.Greenlet | None = None
        self.stream_count = 0
        self.shutting_down = False

    @property
    def watched_projects(self) -> int:
        return len(self._channels)

    @property
    def poller_count(self) -> int:
        return sum(1 for c in self._channels.values() if c.poller is not None and not c.poller.dead)

    def subscribe(self, slug: str, sock: socket.socket | None = None) -> Subscriber:
        if self.stream_count >= self._config.max_streams:
            raise StreamsFull()
        subscriber = Subscriber(self, slug, sock)
        channel = self._channels.get(slug)
        if channel is None:
            channel = self._channels[slug] = _Channel()
        channel.subscribers.add(subscriber)
        self.stream_count += 1
        if channel.poller is None or channel.poller.dead:
            channel.poller = gevent.spawn(self._service.poll_forever, slug)
        if self._pinger is None or self._pinger.dead:
            self._pinger = gevent.spawn(self._ping_forever)
        return subscriber

    def remove(self, subscriber: Subscriber) -> None:
        """Forget a subscriber; the project's poller stops with its last one."""
        channel = self._channels.get(subscriber.slug)
        if channel is None or subscriber not in channel.subscribers:
            return
        channel.subscribers.discard(subscriber)
        self.stream_count -= 1
        if not channel.subscribers:
            del self._channels[subscriber.slug]
            if channel.poller is not None:
                channel.poller.kill(block=False)

    def deliver(self, snapshot: Snapshot, updates: dict[str, str] | None,
                resync: bool = False) -> None:
        """Fan a new snapshot version out to the project's subscribers, encoded once."""
        channel = self._channels.get(snapshot.slug)
        if channel is None:
            return
        if resync:
            delivery = (RESYNC, None)
        elif updates is None:
            delivery = (snapshot.version, None)
        elif updates:
            delivery = (snapshot.version, SSEMessage(
                event="bulk_update", data=json.dumps({"updates": updates}), id=snapshot.version).encode())
        else:
            delivery = (snapshot.version, b"")
        for subscriber in tuple(channel.subscribers):
            subscriber.offer(delivery)

    def close_channel(self, slug: str) -> None:
        channel = self._channels.get(slug)
        for subscriber in tuple(channel.subscribers if channel else ()):
            subscriber.close()

    def _ping_forever(self) -> None:
        while self._channels:
            gevent.sleep(self._config.sse_ping_interval)
            ping = (None, SSEMessage(event="ping", data=json.dumps({"time": int(self._wall_clock())})).encode())
            for channel in tuple(self._channels.values()):
                for subscriber in tuple(channel.subscribers):
                    subscriber.offer(ping)

    def shutdown(self) -> None:
        """End every stream (their clients reconnect elsewhere) and stop the pollers."""
        self.shutting_down = True
        for slug in tuple(self._channels):
            self.close_channel(slug)
        if self._pinger is not None:
            self._pinger.kill(block=False)


class EventStream:
    """The body of one stream: `connected`, the full snapshot, then changes and pings.

    An iterable with `close()`, handed to the WSGI server as it is (Werkzeug's
    `direct_passthrough`): the server calls `close()` when the response ends or the
    client is gone, and Werkzeug does for a HEAD request that never iterates.
    """

    def __init__(self, service: StatusService, subscriber: Subscriber, retry_ms: int):
        self._service = service
        self._subscriber = subscriber
        self._retry_ms = retry_ms

    def __iter__(self) -> Iterator[bytes]:
        slug = self._subscriber.slug
        yield SSEMessage(event="connected", data=json.dumps({"project": slug}),
                         retry=self._retry_ms).encode()
        self._subscriber.watch_disconnect()
        sent = 0
        snapshot = self._service.snapshot(slug)
        if snapshot is not None:
            yield snapshot.event
            sent = snapshot.version
        while (deliveries := self._subscriber.take()) is not None:
            chunks = []
            for version, payload in deliveries:
                if version is None:
                    chunks.append(payload)
                elif version == sent + 1 and payload is not None:
                    chunks.append(payload)
                    sent = version
                elif version > sent or version == RESYNC:
                    snapshot = self._service.snapshot(slug)
                    chunks.append(snapshot.event)
                    sent = snapshot.version
            if any(chunks):
                yield b"".join(chunks)

    def close(self) -> None:
        self._subscriber.finish()


def come_back_later(retry_ms: int) -> Response:
    """A stream answer that ends at once and makes EventSource reconnect, with jitter so
    that clients sent away together do not all come back together."""
    retry = int(retry_ms * (1 + random.random()))
    response = Response(SSEMessage(retry=retry).encode(), 200, content_type="text/event-stream")
    response.headers["Connection"] = "close"  # and free the connection for someone else
    return response


# --------------------------------------------------------------------------- routes

routes = Blueprint("public_status", __name__)


def _app() -> PublicStatus:
    return current_app.extensions["public_status"]


def json_error(status: int, message: str, retry_after: float | None = None) -> Response:
    response = Response(json.dumps({"error": message}), status, content_type="application/json")
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


def _lookup(slug: str) -> Project | Response:
    """The project, or the error response the public sees instead."""
    if not SLUG_PATTERN.fullmatch(slug):
        return json_error(404, "project not found")
    try:
        project = _app().directory.get(slug)
    except DatabaseUnavailable:
        return json_error(503, "service temporarily unavailable", DB_RETRY_AFTER)
    return project if project is not None else json_error(404, "project not found")


def _snapshot_response(snapshot: Snapshot) -> Response:
    return Response(snapshot.body, 200, content_type="application/json")


@routes.get("/api/public/<slug>/status")
def get_status(slug: str):
    project = _lookup(slug)
    if isinstance(project, Response):
        return project
    try:
        return _snapshot_response(_app().service.current(project))
    except NoSnapshot as exc:
        return json_error(503, "statuses not available yet", exc.retry_after)


@routes.post("/api/public/<slug>/status/refresh")
def refresh_status(slug: str):
    project = _lookup(slug)
    if isinstance(project, Response):
        return project
    try:
        return _snapshot_response(_app().service.refresh(project))
    except RefreshLimited as exc:
        return json_error(429, "refreshed too recently", exc.retry_after)
    except NoSnapshot as exc:
        return json_error(503, "statuses not available yet", exc.retry_after)


@routes.get("/api/public/<slug>/status/stream")
def stream_status(slug: str):
    public = _app()
    retry_ms = public.config.sse_retry_ms
    if not SLUG_PATTERN.fullmatch(slug):
        return json_error(404, "project not found")
    if public.service.hub.shutting_down:
        return come_back_later(retry_ms)
    try:
        project = public.directory.get(slug)
    except DatabaseUnavailable:
        return come_back_later(retry_ms)
    if project is None:
        return json_error(404, "project not found")
    try:
        subscriber = public.service.hub.subscribe(slug, _client_socket(request.environ))
    except StreamsFull:
        public.metrics.streams_rejected.inc()
        return come_back_later(retry_ms)
    response = Response(EventStream(public.service, subscriber, retry_ms), 200,
                        content_type="text/event-stream", direct_passthrough=True)
    # The SPEC's keep-alive; an HTTP/1.0 body ends when the connection does.
    http_1_0 = request.environ.get("SERVER_PROTOCOL") == "HTTP/1.0"
    response.headers["Connection"] = "close" if http_1_0 else "keep-alive"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _connection(environ: Mapping[str, Any]) -> socket.socket | None:
    """The request's client socket: gunicorn's gevent worker names it `gunicorn.socket`,
    its gevent_pywsgi worker `gunicorn.sock`; other servers give none."""
    sock = environ.get("gunicorn.socket") or environ.get("gunicorn.sock")
    return sock if hasattr(sock, "fileno") else None


def _client_socket(environ: Mapping[str, Any]) -> socket.socket | None:
    """The socket a stream may watch: none where the connection is shared by several
    streams (HTTP/2)."""
    if environ.get("HTTP_VERSION") == "2" or environ.get("SERVER_PROTOCOL", "").startswith("HTTP/2"):
        return None
    return _connection(environ)


@routes.get("/")
def board():
    """The live status board (board.html): static, so browsers may keep it, revalidating."""
    response = Response(_app().board_page, 200, content_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-cache"
    return response


@routes.get("/healthz")
def healthz():
    return Response(json.dumps({"status": "ok"}), 200, content_type="application/json")


@routes.get("/readyz")
def readyz():
    try:
        _app().db.fetch_one("SELECT 1")
    except DatabaseUnavailable:
        return json_error(503, "database unavailable")
    return Response(json.dumps({"status": "ready"}), 200, content_type="application/json")


@routes.get("/metrics")
def metrics():
    return Response(generate_latest(_app().metrics.registry), 200, content_type=CONTENT_TYPE_LATEST)


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


@routes.after_app_request
def public_headers(response: Response) -> Response:
    """Every answer is public and live: any origin may read it (the board may be served
    from elsewhere), and no cache may keep it, error answers included."""
    response.headers["Access-Control-Allow-Origin"] = _app().config.cors_allow_origin
    response.headers["Access-Control-Expose-Headers"] = "Retry-After"
    if "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"
    return response


class WarmStatusFastPath:
    """WSGI middleware: a GET of a warm project's status, answered from its pre-encoded
    body without Flask (no request object, no routing, no hooks).

    Warm means the project's row and its snapshot are both fresh in this worker's
    cache; anything else, or any other request, goes on to Flask, which gives the same
    answer the long way. The headers are those Flask's path produces, in its order.
    """

    PREFIX, SUFFIX = "/api/public/", "/status"

    def __init__(self, wsgi_app, public: PublicStatus):
        self._wsgi_app = wsgi_app
        self._public = public
        self._headers = [("Access-Control-Allow-Origin", public.config.cors_allow_origin),
                         ("Access-Control-Expose-Headers", "Retry-After"),
                         ("Cache-Control", "no-store")]

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if (environ["REQUEST_METHOD"] == "GET" and path.startswith(self.PREFIX)
                and path.endswith(self.SUFFIX)):
            slug = path[len(self.PREFIX):-len(self.SUFFIX)]
            if self._public.directory.cached(slug) is not None:
                snapshot = self._public.service.fresh(slug)
                if snapshot is not None:
                    self._public.metrics.cache_hits.inc()
                    start_response("200 OK", [("Content-Type", "application/json"),
                                              ("Content-Length", str(len(snapshot.body))),
                                              *self._headers])
                    return [snapshot.body]
        return self._wsgi_app(environ, start_response)


class ConnectionTracker:
    """WSGI middleware remembering (weakly) every client connection this worker serves,
    so that shutdown can end the idle ones at once.

    gevent's pywsgi (the Procfile's worker) never times out an idle keep-alive
    connection, and a stopping worker waits for every connection to close: one idle
    browser would hold it until gunicorn's graceful timeout. Shutting down the read side
    ends an idle connection at once and lets a busy one finish its response first.
    """

    def __init__(self, wsgi_app):
        self._wsgi_app = wsgi_app
        self._connections: weakref.WeakSet = weakref.WeakSet()

    def __call__(self, environ, start_response):
        sock = _connection(environ)
        if sock is not None:
            self._connections.add(sock)
        return self._wsgi_app(environ, start_response)

    def end_idle_connections(self) -> None:
        for sock in list(self._connections):
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass  # already closed


# --------------------------------------------------------------------------- app factory

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

    def watch(self, service: StatusService) -> None:
        hub, store = service.hub, service.store
        self.open_streams.set_function(lambda: hub.stream_count)
        self.watched_projects.set_function(lambda: hub.watched_projects)
        self.pollers.set_function(lambda: hub.poller_count)
        self.redis_shared.set_function(lambda: int(getattr(store, "shared", False)))


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
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = self.redact(message), None
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


@dataclass(eq=False)
class PublicStatus:
    """Everything one app instance holds; hangs off `app.extensions["public_status"]`."""

    config: Config
    db: Database
    directory: ProjectDirectory
    service: StatusService
    metrics: Metrics
    redactor: SecretRedactor
    board_page: bytes
    connections: ConnectionTracker | None = None

    def shutdown(self) -> None:
        """SIGTERM: end every stream, stop the pollers and give back their leases, let
        idle connections go."""
        self.service.hub.shutdown()
        self.service.store.close()
        if self.connections is not None:
            self.connections.end_idle_connections()
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
    service = StatusService(config, directory, UpstreamClient(config.max_upstream_bytes), metrics)
    metrics.watch(service)

    app = Flask(__name__)
    app.url_map.merge_slashes = False  # `/api//public/x/status` must not be a 308
    board_page = Path(__file__).with_name("board.html").read_bytes()
    public = PublicStatus(config, db, directory, service, metrics, redactor, board_page)
    app.extensions["public_status"] = public
    app.register_blueprint(routes)
    public.connections = ConnectionTracker(WarmStatusFastPath(app.wsgi_app, public))
    app.wsgi_app = public.connections
    return app
