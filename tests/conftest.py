"""Fixtures: a fresh database with a SELECT-only role (`pg`), a real client API on
loopback (`upstream`), the app in-process (`app`, `client`) and under gunicorn
(`start_service`)."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import psycopg2
import pytest

import public_service
from helpers import Service, Upstream

ADMIN_URL = os.environ.get("TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
READER_PASSWORD = "reader-pw-Zq81x"  # distinctive, so tests can look for it in logs
SCHEMA = (Path(__file__).parent.parent / "schema.sql").read_text()
TEXT_COLUMNS = """
CREATE SCHEMA textcols;
CREATE TABLE textcols.projects (LIKE public.projects INCLUDING DEFAULTS);
CREATE TABLE textcols.integration_configs (LIKE public.integration_configs INCLUDING DEFAULTS);
ALTER TABLE textcols.integration_configs
    ALTER COLUMN auth_credentials TYPE text, ALTER COLUMN status_mapping TYPE json;
"""


class Database:
    """The test database, written through the admin role; the service reads it as
    `reader_url`, a role holding nothing but SELECT on the two tables."""

    def __init__(self, name: str, role: str):
        self.admin_url = _with_db(ADMIN_URL, name)
        self.reader_url = f"postgresql://{role}:{READER_PASSWORD}@127.0.0.1:5432/{name}"
        self.conn = psycopg2.connect(self.admin_url)
        self.conn.autocommit = True
        self._slugs = itertools.count(1)

    def execute(self, sql: str, params=()) -> list:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def unique_slug(self, prefix: str = "p") -> str:
        return f"{prefix}-{os.getpid()}-{next(self._slugs)}"

    def add_project(self, slug: str, *, base_url: str | None = None, endpoint: str | None = None,
                    auth_type=None, credentials=None, timeout=None, mapping=None, interval=None,
                    active: bool = True, config: bool = True, schema: str = "public") -> str:
        [(project_id,)] = self.execute(
            f"INSERT INTO {schema}.projects (slug, is_active) VALUES (%s, %s) RETURNING id",
            (slug, active),
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

    def update_config(self, slug: str, **columns) -> None:
        for column, value in columns.items():
            if column in ("auth_credentials", "status_mapping"):
                value = _json(value)
            self.execute(
                f"UPDATE integration_configs SET {column} = %s "
                "WHERE project_id = (SELECT id FROM projects WHERE slug = %s)", (value, slug))

    def set_active(self, slug: str, active: bool) -> None:
        self.execute("UPDATE projects SET is_active = %s WHERE slug = %s", (active, slug))


def _json(value):
    return None if value is None else (value if isinstance(value, str) else json.dumps(value))


def _with_db(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def pg():
    name = f"public_status_test_{os.getpid()}"
    role = f"public_status_reader_{os.getpid()}"
    admin = psycopg2.connect(ADMIN_URL)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cursor.execute(f"DROP ROLE IF EXISTS {role}")
        cursor.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (READER_PASSWORD,))
        cursor.execute(f"CREATE DATABASE {name}")
    database = Database(name, role)
    database.execute(SCHEMA)
    database.execute(TEXT_COLUMNS)
    database.execute(
        f"REVOKE ALL ON SCHEMA public FROM PUBLIC;"
        f"GRANT USAGE ON SCHEMA public, textcols TO {role};"
        f"GRANT SELECT ON public.projects, public.integration_configs,"
        f" textcols.projects, textcols.integration_configs TO {role}"
    )
    yield database
    database.conn.close()
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cursor.execute(f"DROP ROLE IF EXISTS {role}")
    admin.close()


@pytest.fixture(scope="session")
def upstream():
    with Upstream() as server:
        yield server


@pytest.fixture
def project(pg, upstream):
    """A fresh active project whose client API answers three units."""
    slug = pg.add_project(pg.unique_slug(), base_url=upstream.url)
    upstream.set_statuses(f"/{slug}", {"A101": "open", "A102": "held", "A103": "closed"})
    return slug


FAST = {
    "STATUS_CACHE_TTL": "0.5",
    "SSE_PING_INTERVAL": "0.5",
    "SSE_RETRY_MS": "250",
    "SSE_RECONNECT_SPREAD_MS": "250",
    "DEFAULT_POLL_INTERVAL": "0.2",
    "MIN_POLL_INTERVAL": "0.05",
    "REFRESH_MIN_INTERVAL": "1",
    "PROJECT_CACHE_TTL": "0.2",
    "DB_TIMEOUT": "2",
}


@pytest.fixture
def app(pg):
    """The app in-process; given a mapping, create_app reads no environment variable."""
    return public_service.create_app({"DATABASE_URL": pg.reader_url, **FAST})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def start_service(pg):
    """Start the real service under gunicorn; every one started is stopped afterwards."""
    started: list[Service] = []

    def start(port: int = 0, extra_args: list[str] | None = None, **env) -> Service:
        service = Service({"DATABASE_URL": pg.reader_url, **FAST, **env}, port=port,
                          extra_args=extra_args)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
