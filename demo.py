"""`make run`: the service as deployed, with a live demo when no database is configured.

With DATABASE_URL set, this runs the Procfile's command against that database, and
nothing else.

Without it, it builds a small world to look at first:
- a database: the machine's own PostgreSQL if one answers at 127.0.0.1:5432 as
  `postgres`, else an embedded one (the `pgserver` package, data under `.data/`);
- the two tables, two demo projects of different sizes (so that the board shows one,
  or both: `/?project=harbour-view,marina-point`) and a role that may only SELECT them;
- a simulated client API per project on loopback, each behind its own bearer token,
  speaking its own status vocabulary ("Vacant", "On Hold", ...) that the project's
  status mapping translates, and changing a few units every few seconds;
- then the real service, with the real Procfile command, as that read-only role.

None of this is part of the service: it only writes rows the admin service would.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import random
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEMO_DB = os.environ.get("DEMO_DATABASE", "public_status_demo")   # other names: for tests
DEMO_ROLE = os.environ.get("DEMO_ROLE", "public_status_demo_reader")
CHANGE_EVERY = 3.0  # seconds between simulated sales


@dataclass(frozen=True)
class DemoProject:
    slug: str
    name: str
    floors: int
    units_per_floor: int
    seed: int            # the same first statuses on every run


# A tower, and a low-rise on the water beside it: one board shows both.
PROJECTS = (DemoProject("harbour-view", "Harbour View", 15, 16, 7),
            DemoProject("marina-point", "Marina Point", 6, 8, 11))

# The client's own words for the five statuses: the project's status_mapping.
CLIENT_VALUES = {
    "available": ["Vacant", "Open Listing"],
    "reserved": ["On Hold", "Deposit Taken"],
    "sold": ["Contract Signed", "Settled"],
    "hidden": ["Withdrawn"],
    "unreleased": ["Stage 2 Release"],
}


def log(message: str) -> None:
    print(f"demo: {message}", flush=True)


# --------------------------------------------------------------------------- database

def machine_postgres() -> str | None:
    """The admin URL of the machine's PostgreSQL, if one answers."""
    import psycopg2

    url = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        psycopg2.connect(url, connect_timeout=2).close()
    except psycopg2.OperationalError:
        return None
    return url


def embedded_postgres() -> tuple[str, object]:
    """Start the embedded PostgreSQL (installed on first use), data under .data/.

    Run as root, pgserver creates a `pgserver` system user to own the server and
    opens up the permissions of the data folder's parents for it.
    """
    if importlib.util.find_spec("pgserver") is None:
        log("installing the embedded PostgreSQL (pgserver, about 35 MB)")
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-r",
                               str(ROOT / "requirements-demo.txt")])
    data = ROOT / ".data"
    data.mkdir(exist_ok=True)
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(data / "pg", cleanup_mode="stop")
    return server.get_uri("postgres"), server


def with_database(url: str, name: str, user: str | None = None) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc.split("@")[-1]
    if user:
        netloc = f"{user}@{netloc}"
    elif "@" in parts.netloc:
        netloc = parts.netloc
    return urlunsplit((parts.scheme, netloc, f"/{name}", parts.query, ""))


def prepare_database(admin_url: str, apis: list[SimulatedClientAPI]) -> str:
    """Create (or refresh) the demo database, its projects (one per simulated client
    API) and the read-only role; return the URL the service connects with."""
    import psycopg2
    from psycopg2 import sql

    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DB,))
        if cursor.fetchone() is None:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DB)))
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DEMO_ROLE,))
        if cursor.fetchone() is None:
            cursor.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(DEMO_ROLE)))
    admin.close()

    conn = psycopg2.connect(with_database(admin_url, DEMO_DB))
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("SELECT to_regclass('public.projects')")
        if cursor.fetchone()[0] is None:
            cursor.execute((ROOT / "schema.sql").read_text())
        cursor.execute(sql.SQL("GRANT SELECT ON projects, integration_configs TO {}").format(
            sql.Identifier(DEMO_ROLE)))
        for api in apis:
            cursor.execute(
                "INSERT INTO projects (slug, name) VALUES (%s, %s) "
                "ON CONFLICT (slug) DO UPDATE SET is_active = true RETURNING id",
                (api.project.slug, api.project.name))
            [project_id] = cursor.fetchone()
            cursor.execute("DELETE FROM integration_configs WHERE project_id = %s", (project_id,))
            cursor.execute(
                "INSERT INTO integration_configs (project_id, api_base_url, status_endpoint, "
                "auth_type, auth_credentials, timeout_seconds, status_mapping, polling_interval_seconds) "
                "VALUES (%s, %s, '/v1/units', 'bearer', %s, 5, %s, 2)",
                (project_id, api.url, json.dumps({"token": api.token}), json.dumps(CLIENT_VALUES)))
    conn.close()
    return with_database(admin_url, DEMO_DB, user=DEMO_ROLE)


# --------------------------------------------------------------------------- client API

class SimulatedClientAPI:
    """A demo project's own API: `GET /v1/units` behind a bearer token, answering
    `{"data": [{"unit_number": ..., "state": ..., "floor": ...}, ...]}`."""

    def __init__(self, project: DemoProject):
        self.project = project
        self.token = secrets.token_urlsafe(24)
        rng = random.Random(project.seed)
        self.states = {}
        for floor in range(1, project.floors + 1):
            for unit in range(1, project.units_per_floor + 1):
                top = floor > project.floors - 2
                status = "unreleased" if top else rng.choices(
                    ["available", "reserved", "sold", "hidden"], [55, 15, 28, 2])[0]
                self.states[f"{floor}{unit:02d}"] = rng.choice(CLIENT_VALUES[status])
        self._lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._sell, daemon=True).start()

    def _sell(self) -> None:
        """Every few seconds a few units move along: vacant -> on hold -> signed."""
        step = {"Vacant": "On Hold", "Open Listing": "Deposit Taken", "On Hold": "Contract Signed",
                "Deposit Taken": "Contract Signed", "Contract Signed": "Settled"}
        rng = random.Random()
        most = max(2, len(self.states) // 40)   # a tower sells faster than a low-rise
        while True:
            time.sleep(CHANGE_EVERY)
            with self._lock:
                movable = [u for u, s in self.states.items() if s in step]
                for unit in rng.sample(movable, min(len(movable), rng.randint(1, most))):
                    self.states[unit] = step[self.states[unit]]
                if rng.random() < 0.3:  # and now and then a sale falls through
                    signed = [u for u, s in self.states.items() if s == "Contract Signed"]
                    if signed:
                        self.states[rng.choice(signed)] = "Vacant"

    def _handler(self):
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.headers.get("Authorization") != f"Bearer {api.token}":
                    self.send_error(401)
                    return
                if self.path != "/v1/units":
                    self.send_error(404)
                    return
                with api._lock:
                    units = [{"unit_number": u, "state": s, "floor": int(u[:-2])}
                             for u, s in api.states.items()]
                body = json.dumps({"data": units, "meta": {"count": len(units)}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler


# --------------------------------------------------------------------------- the service

def procfile_command(port: str) -> list[str]:
    """The Procfile's `web:` command, its gunicorn run by this interpreter (whatever PATH)."""
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines()
                if line.startswith("web:"))
    command = shlex.split(line.removeprefix("web:").replace("$PORT", port))
    if command[0] == "gunicorn":
        command[:1] = [sys.executable, "-m", "gunicorn"]
    return command


def wait_healthy(port: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("demo: the service did not start; see its log above")


def shown(url: str) -> str:
    """A database URL fit to print: its password, if any, masked."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def clean() -> None:
    """`make demo-clean`: remove what `make run` left, the demo database and its role
    from the machine's PostgreSQL and the embedded one's data under .data/."""
    import shutil

    import psycopg2
    from psycopg2 import sql

    admin_url = machine_postgres()
    if admin_url:
        admin = psycopg2.connect(admin_url)
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DEMO_DB)))
            cursor.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(DEMO_ROLE)))
        admin.close()
        log(f"dropped database {DEMO_DB} and role {DEMO_ROLE} (if they were there) at 127.0.0.1:5432")
    else:
        log("no PostgreSQL answers at 127.0.0.1:5432: nothing to drop there")
    if (ROOT / ".data").exists():
        shutil.rmtree(ROOT / ".data")
        log(f"removed the embedded PostgreSQL's data, {ROOT / '.data'}")


def main() -> None:
    if sys.argv[1:] == ["--clean"]:
        clean()
        return
    port = os.environ.get("PORT", "8000")
    if os.environ.get("DATABASE_URL"):
        log(f"DATABASE_URL={shown(os.environ['DATABASE_URL'])}")
        command = procfile_command(port)
        os.execvp(command[0], command)

    embedded = None
    admin_url = machine_postgres()
    if admin_url:
        log("using the machine's PostgreSQL at 127.0.0.1:5432")
    else:
        admin_url, embedded = embedded_postgres()
        log(f"using an embedded PostgreSQL under {ROOT / '.data'}")

    apis = [SimulatedClientAPI(project) for project in PROJECTS]
    for api in apis:
        api.start()
    database_url = prepare_database(admin_url, apis)
    for api in apis:
        log(f"demo project '{api.project.slug}': {len(api.states)} units, client API at {api.url}")
    log(f"DATABASE_URL={database_url} (a passwordless role that may only SELECT; "
        "`make demo-clean` removes it and the database)")

    env = {**os.environ, "DATABASE_URL": database_url, "PORT": port}
    service = subprocess.Popen(procfile_command(port), env=env)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        wait_healthy(port, service)
        first, both = PROJECTS[0].slug, ",".join(project.slug for project in PROJECTS)
        print(f"""
  The live status board:   http://localhost:{port}/?project={first}
  Both projects on one:    http://localhost:{port}/?project={both}
  The stream:              curl -N http://localhost:{port}/api/public/{first}/status/stream
  The statuses:            curl -s http://localhost:{port}/api/public/{first}/status
  Metrics:                 curl -s http://localhost:{port}/metrics

  Units change every {CHANGE_EVERY:g} s. Ctrl-C stops everything.
""", flush=True)
        while not stop.is_set() and service.poll() is None:
            stop.wait(0.5)
    finally:
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
            service.wait(30)
        if embedded is not None:
            embedded.cleanup()


if __name__ == "__main__":
    main()
