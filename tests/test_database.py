"""Project lookups against a real PostgreSQL, through a role that can only SELECT."""

import logging
import time

import psycopg2
import pytest

from public_service import (
    Config,
    Database,
    DatabaseBusy,
    DatabaseUnavailable,
    LogScrubber,
    Metrics,
    ProjectDirectory,
    _connection_params,
)
from support import FakeClock, TcpProxy


def directory_for(url, clock=None, bounds=None, metrics=None, redactor=None, **settings):
    """A ProjectDirectory on its own Database (returned too, to close), reporting to
    `metrics` and `redactor` if the test wants to read them."""
    config = Config.from_env({"DATABASE_URL": url, "PROJECT_CACHE_TTL": "30", "DB_TIMEOUT": "2",
                              **settings})
    db = Database(config.database_url, config.db_pool_size, config.db_timeout)
    bounded = {"bounds": bounds} if bounds else {}
    directory = ProjectDirectory(db, config, metrics or Metrics(), redactor or LogScrubber(),
                                 clock or FakeClock(), **bounded)
    return directory, db


def db_errors(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("public_status_db_errors_total")


def database_up(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("public_status_database_up")


@pytest.fixture
def cuttable(pg):
    """`cuttable(bounds=None, metrics=None)`: a directory on a fake clock whose database a
    test can take away and give back (`proxy.cut()`, `proxy.restore()`): (directory,
    proxy, clock)."""
    made = []

    def make(bounds=None, metrics=None):
        proxy, clock = TcpProxy(5432), FakeClock()
        url = pg.reader_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        directory, db = directory_for(url, clock, bounds, metrics)
        made.append((db, proxy))
        return directory, proxy, clock

    yield make
    for db, proxy in made:
        db.close()
        proxy.cut()


@pytest.fixture
def directory(pg):
    directory, db = directory_for(pg.reader_url)
    yield directory
    db.close()


def test_the_role_has_only_select(pg):
    conn = psycopg2.connect(pg.reader_url)
    conn.autocommit = True
    with conn.cursor() as cursor, pytest.raises(psycopg2.errors.InsufficientPrivilege):
        cursor.execute("INSERT INTO projects (slug) VALUES ('nope')")
    conn.close()


def test_sessions_are_read_only_bounded_and_named(pg):
    db = Database(pg.reader_url, 1, 2.5)
    assert db.fetch_one("SHOW default_transaction_read_only") == ("on",)
    assert db.fetch_one("SHOW statement_timeout") == ("2500ms",)
    assert db.fetch_one("SHOW idle_in_transaction_session_timeout") == ("2500ms",)
    assert db.fetch_one("SHOW application_name") == ("public-status",)
    with pytest.raises(DatabaseUnavailable):
        db.fetch_one("CREATE TEMP TABLE t (x int)")
    db.close()


def test_the_urls_own_application_name_is_kept(pg):
    db = Database(pg.reader_url + "?application_name=mine", 1, 2.0)
    assert db.fetch_one("SHOW application_name") == ("mine",)
    db.close()


def test_what_no_session_shows_connecting_and_keepalives():
    """The client side of a connection, which no SHOW tells: a connect timeout of the
    query's (rounded up, at least 2 s) and TCP keepalives."""
    params = _connection_params("postgresql://u@h/db?options=-c%20x%3D1", 2.5)
    assert params["options"] == ("-c x=1 -c default_transaction_read_only=on "
                                 "-c statement_timeout=2500 -c idle_in_transaction_session_timeout=2500")
    assert (params["connect_timeout"], params["application_name"]) == (3, "public-status")
    assert (params["keepalives"], params["keepalives_idle"], params["keepalives_interval"],
            params["keepalives_count"]) == (1, 10, 5, 3)
    assert _connection_params("postgresql://h/db", 0.5)["connect_timeout"] == 2


def test_known_project(pg, directory):
    slug = pg.add_project(pg.unique_slug(), base_url="https://c.example.com", endpoint="/s",
                          auth_type="bearer", credentials={"token": "t-1"}, timeout=3,
                          mapping={"sold": ["gone"]}, interval=12)
    project = directory.get(slug)
    assert project.slug == slug
    assert project.status_url == "https://c.example.com/s"
    assert project.auth_headers == {"Authorization": "Bearer t-1"}
    assert (project.timeout, project.poll_interval) == (3.0, 12.0)
    assert project.status_lookup["gone"] == "sold"
    assert project.config_error is None


def test_unknown_inactive_and_unconfigured_projects_are_none(pg, directory):
    inactive = pg.add_project(pg.unique_slug(), base_url="https://c.example.com", active=False)
    unconfigured = pg.add_project(pg.unique_slug(), config=False)
    assert directory.get("no-such-project") is None
    assert directory.get(inactive) is None
    assert directory.get(unconfigured) is None


def test_null_columns_take_defaults(pg, directory):
    slug = pg.add_project(pg.unique_slug(), base_url="https://c.example.com")
    project = directory.get(slug)
    assert (project.timeout, project.poll_interval, project.auth_headers) == (10.0, 30.0, {})


def test_json_columns_stored_as_text_and_json(pg):
    """`textcols` holds the same tables with auth_credentials as text and
    status_mapping as json; the service reads them the same."""
    slug = pg.add_project(pg.unique_slug(), base_url="https://c.example.com", schema="textcols",
                          auth_type="api_key", credentials={"header": "X-K", "key": "k-2"},
                          mapping={"reserved": "on hold"})
    url = pg.reader_url + "?options=-csearch_path%3Dtextcols"
    directory, db = directory_for(url)
    project = directory.get(slug)
    assert project.auth_headers == {"X-K": "k-2"}
    assert project.status_lookup["on_hold"] == "reserved"
    assert db.fetch_one("SHOW default_transaction_read_only") == ("on",)  # options merged
    db.close()


def test_rows_are_cached_for_the_ttl_unknown_slugs_included(pg):
    clock = FakeClock()
    directory, db = directory_for(pg.reader_url, clock)
    slug = pg.unique_slug()
    assert directory.get(slug) is None
    pg.add_project(slug, base_url="https://c.example.com")
    clock.now += 29
    assert directory.get(slug) is None          # the absence is cached too
    clock.now += 2
    assert directory.get(slug) is not None
    pg.set_active(slug, False)
    clock.now += 29
    assert directory.get(slug) is not None
    clock.now += 2
    assert directory.get(slug) is None
    db.close()


def test_config_changes_are_seen_after_the_ttl(pg):
    clock = FakeClock()
    directory, db = directory_for(pg.reader_url, clock)
    slug = pg.add_project(pg.unique_slug(), base_url="https://c.example.com", interval=5)
    assert directory.get(slug).poll_interval == 5
    pg.update_config(slug, polling_interval_seconds=9)
    clock.now += 31
    assert directory.get(slug).poll_interval == 9
    db.close()


def test_unreachable_database(pg):
    directory, db = directory_for("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(DatabaseUnavailable):
        directory.get("anything")
    db.close()


def test_known_projects_outlive_a_database_outage(pg, cuttable):
    metrics = Metrics()
    directory, proxy, clock = cuttable(metrics=metrics)
    known = pg.add_project(pg.unique_slug(), base_url="https://c.example.com")
    unknown = pg.unique_slug()
    other = pg.add_project(pg.unique_slug(), base_url="https://c.example.com")
    assert directory.get(known) is not None
    assert directory.get(unknown) is None
    assert database_up(metrics) == 1

    proxy.cut()
    clock.now += 31
    assert directory.get(known).slug == known        # stale row, however old
    with pytest.raises(DatabaseUnavailable):
        directory.get(other)                          # never seen
    with pytest.raises(DatabaseUnavailable):
        directory.get(unknown)                        # an expired "no such project" is not trusted
    assert db_errors(metrics) == 1                    # within a second: not asked again
    assert database_up(metrics) == 0

    proxy.restore()
    clock.now += 1
    assert directory.get(other).slug == other
    assert directory.get(unknown) is None
    assert database_up(metrics) == 1



def test_a_flood_of_unknown_slugs_evicts_no_known_project(pg, cuttable):
    """Known rows and unknown slugs are bounded apart, least recently used out first: a
    flood of made-up slugs cannot push out a project in use, which then outlives an
    outage of the database."""
    directory, proxy, clock = cuttable(bounds=(2, 5))
    used, idle, third = (pg.add_project(pg.unique_slug(), base_url="https://c.example.com")
                         for _ in range(3))
    assert directory.get(used) and directory.get(idle)
    for n in range(20):
        assert directory.get(f"made-up-{n}") is None
    clock.now += 10
    assert directory.cached(used) is not None          # a hit: now the most recently used
    assert directory.get(third) is not None            # one more known row: `idle` goes
    proxy.cut()
    clock.now += 31                                    # every row expired, the database away
    assert directory.get(used).slug == used
    assert directory.get(third).slug == third
    with pytest.raises(DatabaseUnavailable):
        directory.get(idle)                            # evicted, so never seen




def test_an_outage_and_a_recovery_are_each_logged_once(pg, cuttable, caplog):
    caplog.set_level(logging.WARNING, logger="public_service")
    directory, proxy, clock = cuttable()
    proxy.cut()
    for n in range(3):
        clock.now += 2                                        # past DB_RETRY_SECONDS each time
        with pytest.raises(DatabaseUnavailable):
            directory.get(f"slug-{n}")
    proxy.restore()
    clock.now += 2
    for n in range(3):
        assert directory.get(f"slug-{n}") is None
    messages = [r.getMessage() for r in caplog.records]
    assert sum("database unavailable" in m for m in messages) == 1
    assert sum("database reachable again" in m for m in messages) == 1


def test_a_projects_credentials_are_redacted_as_soon_as_it_is_looked_up(pg):
    redactor = LogScrubber()
    directory, db = directory_for(pg.reader_url, redactor=redactor)
    slug = pg.add_project(pg.unique_slug(), base_url="https://c.example.com", auth_type="bearer",
                          credentials={"token": "looked-up-Tq1"})
    directory.get(slug)
    assert redactor.redact("sent looked-up-Tq1") == "sent ***"
    db.close()


def test_an_unusable_config_is_logged_once_until_it_changes(pg, caplog):
    caplog.set_level(logging.ERROR, logger="public_service")
    clock = FakeClock()
    directory, db = directory_for(pg.reader_url, clock)
    slug = pg.add_project(pg.unique_slug(), base_url="https://c.example.com", auth_type="magic")

    def lines():
        return [r.getMessage() for r in caplog.records if f"project {slug}: integration" in r.getMessage()]

    for _ in range(3):
        clock.now += 31
        assert directory.get(slug).config_error
    assert len(lines()) == 1
    pg.update_config(slug, auth_type="bearer")               # another problem: told
    clock.now += 31
    directory.get(slug)
    pg.update_config(slug, auth_type=None)                   # fixed: nothing to tell
    clock.now += 31
    assert directory.get(slug).config_error is None
    pg.update_config(slug, auth_type="magic")                # broken again: told again
    clock.now += 31
    directory.get(slug)
    assert len(lines()) == 3
    db.close()


def test_a_row_is_fresh_until_its_ttl_and_not_at_it(pg):
    clock = FakeClock()
    directory, db = directory_for(pg.reader_url, clock)
    slug = pg.add_project(pg.unique_slug(), base_url="https://c.example.com")
    directory.get(slug)
    clock.now += 29.999
    assert directory.cached(slug) is not None
    clock.now += 0.001
    assert directory.cached(slug) is None
    db.close()


def test_unknown_slugs_are_forgotten_least_recently_used_first(pg):
    clock = FakeClock()
    directory, db = directory_for(pg.reader_url, clock, bounds=(5, 2))
    used, idle, third = (pg.unique_slug() for _ in range(3))
    assert directory.get(used) is None and directory.get(idle) is None
    assert directory.get(used) is None                 # a hit: now the most recently used
    assert directory.get(third) is None                # one more: `idle` goes
    for slug in (used, idle):
        pg.add_project(slug, base_url="https://c.example.com")
    assert directory.get(used) is None                 # still remembered: not asked
    assert directory.get(idle) is not None             # forgotten, so asked again
    clock.now += 29.999
    assert directory.get(used) is None
    clock.now += 0.001
    assert directory.get(used) is not None             # remembered until its TTL, not at it
    db.close()


def test_a_project_gone_is_not_served_from_its_old_row_while_the_database_is_away(pg, cuttable):
    directory, proxy, clock = cuttable()
    slug = pg.add_project(pg.unique_slug(), base_url="https://c.example.com")
    assert directory.get(slug) is not None
    pg.set_active(slug, False)
    clock.now += 31
    assert directory.get(slug) is None
    proxy.cut()
    clock.now += 31
    with pytest.raises(DatabaseUnavailable):
        directory.get(slug)                            # not the deactivated project's row



def test_a_row_looked_up_again_is_the_most_recently_used(pg, cuttable):
    directory, proxy, clock = cuttable(bounds=(2, 5))
    first, second, third = (pg.add_project(pg.unique_slug(), base_url="https://c.example.com")
                            for _ in range(3))
    assert directory.get(first) and directory.get(second)
    clock.now += 31
    assert directory.get(first) is not None            # expired, asked again: now the newest
    assert directory.get(third) is not None            # `second` goes
    proxy.cut()
    clock.now += 31
    assert directory.get(first).slug == first
    with pytest.raises(DatabaseUnavailable):
        directory.get(second)



def test_waiting_for_a_pooled_connection_is_busy_and_nothing_is_remembered(pg):
    metrics = Metrics()
    directory, db = directory_for(pg.reader_url, metrics=metrics, DB_POOL_SIZE="1", DB_TIMEOUT="0.2")
    slug = pg.add_project(pg.unique_slug(), base_url="https://c.example.com")
    with db._pool.connection():                        # the one connection, in use
        with pytest.raises(DatabaseBusy):
            directory.get(slug)
    assert directory.get(slug).slug == slug            # not taken for an unknown slug
    assert db_errors(metrics) == 0
    db.close()


def test_a_query_the_database_timed_out_is_not_tried_again(pg):
    """A statement timeout means the database is there, and slow: another connection
    would only wait as long again (and the idle ones would be dropped for nothing)."""
    db = Database(pg.reader_url, pool_size=2, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        db.fetch_one("SELECT pg_sleep(3)")
    assert time.monotonic() - started < 0.9               # one DB_TIMEOUT, not two
    db.close()

