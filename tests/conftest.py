"""Fixtures: a fresh database with a SELECT-only role (`pg`), a real client API on
loopback (`upstream`), the slug of a fresh project it answers for (`slug`), the app
in-process (`app`; `make_app` for other settings; `client`, Flask's test client of
`app`) and the service under gunicorn (`start_service`). The pieces themselves are in
support.py, which the bench and the demo use too."""

from __future__ import annotations

import os

import pytest

import public_service
from support import MACHINE_POSTGRES, Database, Service, Upstream

ADMIN_URL = os.environ.get("TEST_DATABASE_ADMIN_URL", MACHINE_POSTGRES)
READER_PASSWORD = "reader-pw-Zq81x"  # distinctive, so tests can look for it in logs
TEXT_COLUMNS = """
CREATE SCHEMA textcols;
CREATE TABLE textcols.projects (LIKE public.projects INCLUDING DEFAULTS);
CREATE TABLE textcols.integration_configs (LIKE public.integration_configs INCLUDING DEFAULTS);
ALTER TABLE textcols.integration_configs
    ALTER COLUMN auth_credentials TYPE text, ALTER COLUMN status_mapping TYPE json;
"""


@pytest.fixture(scope="session")
def pg():
    """The test database (support.Database): written as its owner, read by the service
    as `pg.reader_url`. `textcols` holds the same two tables with the JSON columns as
    text and json, as some deployments have them."""
    database = Database.create(ADMIN_URL, f"public_status_test_{os.getpid()}",
                               f"public_status_reader_{os.getpid()}", password=READER_PASSWORD)
    database.execute(TEXT_COLUMNS)
    database.execute(f"GRANT USAGE ON SCHEMA textcols TO {database.role};"
                     f"GRANT SELECT ON textcols.projects, textcols.integration_configs TO {database.role}")
    yield database
    database.drop()


@pytest.fixture(scope="session")
def upstream():
    with Upstream() as server:
        yield server


@pytest.fixture
def slug(pg, upstream):
    """The slug of a fresh active project whose client API answers three units."""
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
def make_app():
    """`make_app(settings)`: the app in-process, built from a mapping of settings by
    their environment names (so create_app reads no environment variable). Each one
    made is shut down afterwards: its pollers, streams and database connections go."""
    made = []

    def make(settings: dict[str, str]):
        made.append(public_service.create_app(settings))
        return made[-1]

    yield make
    for app in made:
        app.extensions["public_status"].shutdown()


@pytest.fixture
def app(make_app, pg):
    """The app in-process on the test database, with FAST settings."""
    return make_app({"DATABASE_URL": pg.reader_url, **FAST})


@pytest.fixture
def client(app):
    """Flask's test client of `app`."""
    return app.test_client()


@pytest.fixture(scope="module")
def live(pg):
    """One service under gunicorn for a module's tests that read no worker-wide figure
    (a fresh one per module: a module's own tests may count what its service did)."""
    service = Service({"DATABASE_URL": pg.reader_url, **FAST})
    yield service
    service.stop()


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
