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

import importlib.util
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from support import MACHINE_POSTGRES, Database, Upstream, gunicorn_command

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

    try:
        psycopg2.connect(MACHINE_POSTGRES, connect_timeout=2).close()
    except psycopg2.OperationalError:
        return None
    return MACHINE_POSTGRES


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


def prepare_database(admin_url: str, apis: list[SimulatedClientAPI]) -> str:
    """Create (or reuse) the demo database and its read-only role, and put the demo
    projects in it afresh (one per simulated client API); return the URL the service
    connects with."""
    database = Database.create(admin_url, DEMO_DB, DEMO_ROLE, fresh=False)
    for api in apis:
        database.remove_project(api.project.slug)
        database.add_project(api.project.slug, name=api.project.name, base_url=api.url,
                             endpoint="/v1/units", auth_type="bearer",
                             credentials={"token": api.token}, timeout=5, mapping=CLIENT_VALUES,
                             interval=2)
    database.close()
    return database.reader_url


# --------------------------------------------------------------------------- client API

class SimulatedClientAPI:
    """A demo project's own API: `GET /v1/units` behind a bearer token of its own,
    answering `{"data": [{"unit_number": ..., "state": ..., "floor": ...}, ...]}`; a few
    units move along every few seconds. Served by the tests' client API (support.Upstream)."""

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
        self.authorization = f"Bearer {self.token}"
        self.server = Upstream(keep_requests=False)
        self.url = self.server.url
        self._publish()

    def start(self) -> None:
        self.server.start()
        threading.Thread(target=self._sell, daemon=True).start()

    def _publish(self) -> None:
        units = [{"unit_number": u, "state": s, "floor": int(u[:-2])} for u, s in self.states.items()]
        body = json.dumps({"data": units, "meta": {"count": len(units)}}).encode()
        self.server.set("/v1/units", body, authorization=self.authorization)

    def _sell(self) -> None:
        """Every few seconds a few units move along: vacant -> on hold -> signed."""
        step = {"Vacant": "On Hold", "Open Listing": "Deposit Taken", "On Hold": "Contract Signed",
                "Deposit Taken": "Contract Signed", "Contract Signed": "Settled"}
        rng = random.Random()
        most = max(2, len(self.states) // 40)   # a tower sells faster than a low-rise
        while True:
            time.sleep(CHANGE_EVERY)
            movable = [u for u, s in self.states.items() if s in step]
            for unit in rng.sample(movable, min(len(movable), rng.randint(1, most))):
                self.states[unit] = step[self.states[unit]]
            if rng.random() < 0.3:  # and now and then a sale falls through
                signed = [u for u, s in self.states.items() if s == "Contract Signed"]
                if signed:
                    self.states[rng.choice(signed)] = "Vacant"
            self._publish()


# --------------------------------------------------------------------------- the service

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

    admin_url = machine_postgres()
    if admin_url:
        Database.drop_named(admin_url, DEMO_DB, DEMO_ROLE)
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
        command = gunicorn_command(f"0.0.0.0:{port}")
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
    service = subprocess.Popen(gunicorn_command(f"0.0.0.0:{port}"), env=env)
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
  Both, on one stream:     curl -N 'http://localhost:{port}/api/public/status/stream?projects={both}'
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
