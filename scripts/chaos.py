"""`make chaos`: the deployment as people run it, real clients, a seeded nemesis, and a
checker over what every client saw (docs/chaos.md).

    python scripts/chaos.py run [--seconds 600] [--seed N] [--short] [--root DIR]
    python scripts/chaos.py plants        # each planted bug, in a copy, must turn it red

What runs:
- nginx with deploy/nginx.conf (its `upstream` given both instances) in front of two
  instances, each the Procfile's command with WEB_CONCURRENCY=2, on a redis-server of
  their own and a PostgreSQL cluster of their own (initdb, pg_ctl) read by a role that
  may only SELECT; three projects, each with a simulated client API on loopback that
  changes at random (seeded) and records every state it held and served;
- clients: raw-socket EventSource clients (two processes of `clients`, one of them in a
  network namespace behind loss, a rate limit and blackouts), npm `eventsource` clients,
  /public-status.js on the board in headless Chromium (several tabs, several projects,
  one shared connection), and a GET prober;
- the nemesis: seeded faults of every kind in `KINDS`, on one or more lanes at once;
- after the last fault heals, the client API holds still and the checker
  (scripts/chaos_check.py) reads every history. The last line says how it went.

The schedule (which fault, which target, how long, the gaps, every change of the client
APIs) is drawn from the seed; processes' own timings are not, so a seed replays the same
faults in the same order, not to the millisecond.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import http.client
import http.server
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(HERE)]

import chaos_check as check  # noqa: E402

from support import (  # noqa: E402
    Database,
    Dechunker,
    Nginx,
    RedisServer,
    Service,
    free_port,
    wait_for,
)

# Short intervals, so that a minute holds many polls, leases and reconnects.
SETTINGS = {
    "DEFAULT_POLL_INTERVAL": "0.5",
    "MIN_POLL_INTERVAL": "0.1",
    "POLL_LEASE_TTL": "1.5",
    "SSE_RETRY_MS": "500",
    "SSE_RECONNECT_SPREAD_MS": "500",
    "SSE_PING_INTERVAL": "2",
    "STATUS_CACHE_TTL": "0.5",
    "PROJECT_CACHE_TTL": "2",
    "REFRESH_MIN_INTERVAL": "1",
    "DB_TIMEOUT": "2",
    "WEB_CONCURRENCY": "2",
    "LOG_LEVEL": "WARNING",
}
POLL = float(SETTINGS["DEFAULT_POLL_INTERVAL"])
LEASE = float(SETTINGS["POLL_LEASE_TTL"])
RETRY_MAX = (int(SETTINGS["SSE_RETRY_MS"]) + int(SETTINGS["SSE_RECONNECT_SPREAD_MS"])) / 1000
UPSTREAM_TIMEOUT = 1.0          # each project's timeout_seconds
REDIS_RETRY = 1.0               # public_service.REDIS_RETRY_SECONDS
SLACK = 3.0

# The bound on convergence after the last heal: a lease that lapses, the poller's
# backoff at its cap (8 intervals) and one more interval, a reconnect's retry at its
# widest, Redis tried again, and slack for a loaded machine.
BOUND = LEASE + 8 * POLL + POLL + RETRY_MAX + REDIS_RETRY + SLACK
BOUND_TEXT = (f"lease {LEASE} + backoff cap 8x{POLL} + poll {POLL} + retry {RETRY_MAX} "
              f"+ Redis retry {REDIS_RETRY} + slack {SLACK} = {BOUND:.1f}s")
FRESHNESS = float(SETTINGS["STATUS_CACHE_TTL"]) + POLL + 1.0   # a healthy GET's oldest state
DELAY = BOUND                   # a change reaches a client that was connected within this
ERROR_SLACK = 4.0               # an error answer this long after a heal is still the fault's

KINDS = ("worker_kill", "instance_restart", "redis_stop", "redis_restart", "postgres_restart",
         "upstream_500", "upstream_timeout", "upstream_garbage", "nginx_reload", "blackout")

# Each project's client API speaks its own words and shape.
VOCABULARIES = {
    "chaos-tower": {"open": "available", "held": "reserved", "closed": "sold",
                    "disabled": "hidden", "coming_soon": "unreleased"},
    "chaos-marina": {"free": "available", "pending": "reserved", "purchased": "sold",
                     "inactive": "hidden", "future": "unreleased"},
    "chaos-garden": {"Vacant": "available", "On Hold": "reserved", "Contract Signed": "sold",
                     "Withdrawn": "hidden", "Coming Soon": "unreleased"},
}
MAPPING = {"available": ["Vacant"], "reserved": ["On Hold"], "sold": ["Contract Signed"],
           "hidden": ["Withdrawn"], "unreleased": ["Coming Soon"]}
UNITS = 12


def log(message: str) -> None:
    print(f"chaos {time.strftime('%H:%M:%S')} {message}", flush=True)


# --------------------------------------------------------------------------- the client APIs

class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A caller that hung up (a fetch that timed out, a worker killed) is no news."""


class ClientAPI:
    """Three projects' client APIs on one loopback server. Each project's units change at
    random (drawn from the seed: which units, to what, after how long); every state is
    kept with the time it began (`truth`, normalized) and every status answered with the
    first time it was (`served`). `mode` makes every answer a 500, a timeout or garbage."""

    def __init__(self, seed: int):
        self.rng = random.Random(f"{seed}:client-api")
        self.lock = threading.Lock()
        self.raw: dict[str, dict[str, str]] = {}
        self.truth: dict[str, list[tuple[float, dict]]] = {}
        self.served: dict[tuple[str, str], dict[str, float]] = {}
        self.served_states: dict[str, dict[tuple, float]] = {slug: {} for slug in VOCABULARIES}
        self.mode = "ok"
        self.frozen = False
        now = time.time()
        for slug, words in VOCABULARIES.items():
            self.raw[slug] = {f"U{n:02d}": self.rng.choice(list(words)) for n in range(1, UNITS + 1)}
            self.truth[slug] = [(now, self.normalized(slug))]
        self._server = QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._stop = threading.Event()

    def normalized(self, slug: str) -> dict[str, str]:
        words = VOCABULARIES[slug]
        return {unit: words[value] for unit, value in self.raw[slug].items()}

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        threading.Thread(target=self._change_forever, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def freeze(self) -> None:
        with self.lock:
            self.frozen = True

    def _change_forever(self) -> None:
        due = {slug: time.monotonic() + self.rng.expovariate(1 / 1.5) for slug in self.raw}
        while not self._stop.is_set():
            slug = min(due, key=due.get)
            self._stop.wait(max(0.0, due[slug] - time.monotonic()))
            with self.lock:
                if self.frozen:
                    return
                words = list(VOCABULARIES[slug])
                for unit in self.rng.sample(sorted(self.raw[slug]), self.rng.randint(1, 3)):
                    self.raw[slug][unit] = self.rng.choice(words)
                state = self.normalized(slug)
                if state != self.truth[slug][-1][1]:
                    self.truth[slug].append((time.time(), state))
            due[slug] = time.monotonic() + self.rng.expovariate(1 / 1.5)

    def body(self, slug: str) -> bytes:
        raw = self.raw[slug]
        if slug == "chaos-tower":
            document = dict(raw)
        elif slug == "chaos-marina":
            document = [{"unit": unit, "status": value} for unit, value in raw.items()]
        else:
            document = {"data": [{"id": unit, "state": value} for unit, value in raw.items()]}
        return json.dumps(document).encode()

    def _handler(self):
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                slug = self.path.strip("/").split("?")[0]
                with api.lock:
                    mode = api.mode
                    known = slug in api.raw
                    if known and mode == "ok":
                        body = api.body(slug)
                        now = time.time()
                        state = api.normalized(slug)
                        for unit, status in state.items():
                            api.served.setdefault((slug, unit), {}).setdefault(status, now)
                        api.served_states[slug].setdefault(check.state_key(state), now)
                if not known:
                    return self._answer(404, b'{"error": "no such project"}')
                if mode == "500":
                    return self._answer(500, b'{"error": "internal"}')
                if mode == "garbage":
                    return self._answer(200, b'{"units": [{"unit": "U01", "stat')
                if mode == "timeout":
                    time.sleep(UPSTREAM_TIMEOUT + 0.5)
                    return self._answer(504, b"late")
                return self._answer(200, body)

            def _answer(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        return Handler


# --------------------------------------------------------------------------- the pieces

def run_as_postgres(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a PostgreSQL binary as `postgres` when we are root (initdb refuses root)."""
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()[-500:]}")
    return done


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb, pg_ctl) on a free loopback port, not the
    machine's shared one, so that restarting it disturbs nobody else."""

    def __init__(self, home: Path):
        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
        self.home = home / "postgres"
        home.chmod(0o755)                  # postgres must reach its own folder
        self.home.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.home, "postgres", "postgres")
        self.data = self.home / "data"
        self.port = free_port()
        run_as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                         "--no-sync", "-E", "UTF8"])
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.start()

    def _ctl(self, *args: str) -> None:
        run_as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.home / "log"),
                         "-w", "-t", "30", *args])

    def start(self) -> None:
        self._ctl("-o", f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 -c fsync=off "
                  "-c max_connections=200", "start")

    def restart(self) -> None:
        self._ctl("-m", "fast", "stop")
        self.start()

    def stop(self) -> None:
        try:
            self._ctl("-m", "immediate", "stop")
        except RuntimeError:
            pass


class BadNetwork:
    """A network namespace whose clients reach nginx over a veth pair with loss (iptables
    `statistic`, both ways), a rate limit (`tbf`, both ways) and, on demand, a blackout
    (the link taken down). Everything it makes is its own and removed by `close()`."""

    def __init__(self, tag: int, loss: float = 0.03, rate: str = "2mbit"):
        self.name = f"chaos{tag}"
        self.host_dev, self.inner_dev = f"chh{tag}", f"chc{tag}"
        octet = tag % 250 + 1
        self.host_ip, self.inner_ip = f"10.213.{octet}.1", f"10.213.{octet}.2"
        ns = ["ip", "netns", "exec", self.name]
        steps = [
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.host_dev, "type", "veth", "peer", "name", self.inner_dev],
            ["ip", "link", "set", self.inner_dev, "netns", self.name],
            ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_dev],
            ["ip", "link", "set", self.host_dev, "up"],
            [*ns, "ip", "addr", "add", f"{self.inner_ip}/30", "dev", self.inner_dev],
            [*ns, "ip", "link", "set", self.inner_dev, "up"],
            [*ns, "ip", "link", "set", "lo", "up"],
            [*ns, "iptables", "-A", "INPUT", "-m", "statistic", "--mode", "random",
             "--probability", str(loss), "-j", "DROP"],
            [*ns, "iptables", "-A", "OUTPUT", "-m", "statistic", "--mode", "random",
             "--probability", str(loss), "-j", "DROP"],
            [*ns, "tc", "qdisc", "add", "dev", self.inner_dev, "root", "tbf", "rate", rate,
             "burst", "32kbit", "latency", "400ms"],
            ["tc", "qdisc", "add", "dev", self.host_dev, "root", "tbf", "rate", rate,
             "burst", "32kbit", "latency", "400ms"],
        ]
        self.prefix = ns
        self.close()                       # what a run of the same tag left, if it crashed
        try:
            for step in steps:
                subprocess.run(step, check=True, capture_output=True)
        except (subprocess.CalledProcessError, FileNotFoundError):
            self.close()
            raise

    def link(self, up: bool) -> None:
        subprocess.run([*self.prefix, "ip", "link", "set", self.inner_dev, "up" if up else "down"],
                       check=True, capture_output=True)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_dev], capture_output=True)


class Proxy(Nginx):
    """nginx with deploy/nginx.conf, its upstream naming both instances, listening on
    loopback (and on the bad network's address, if any)."""

    def __init__(self, ports: list[int], also: str | None):
        self._ports, self._also = ports, also
        super().__init__(ports[0], workers=2, connections=8192)

    def snippet(self, service_port: int) -> str:
        snippet = super().snippet(service_port).replace(
            f"server 127.0.0.1:{service_port};", " ".join(f"server 127.0.0.1:{port};" for port in self._ports))
        if self._also:
            snippet = snippet.replace(f"listen 127.0.0.1:{self.port};",
                                      f"listen 127.0.0.1:{self.port}; listen {self._also}:{self.port};")
        return snippet

    def reload(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.home, ignore_errors=True)


class Instance:
    """One instance: the Procfile's command on a fixed port, started again on the same
    port after a deploy."""

    def __init__(self, name: str, env: dict, root: Path):
        self.name, self.env, self.root = name, env, root
        self.port = free_port()
        self.service: Service | None = None
        self.lock = threading.Lock()
        self.start()

    def start(self) -> None:
        self.service = Service(self.env, port=self.port, root=self.root)

    def workers(self) -> list[int]:
        master = self.service.process.pid
        alive = []
        for pid in self.service.worker_pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                alive.append(pid)
        return alive

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.service is not None:
            self.service.stop(sig)


# --------------------------------------------------------------------------- raw clients

class RawClient:
    """A client by the EventSource rules over a raw socket: `retry:` sets its reconnect
    delay, the last id it saw goes back as Last-Event-ID, a stream that ends or breaks is
    opened again. Two habits of a page's own code on top: a stream silent for 8 s
    (four pings) is taken as dead, and after an answer EventSource gives up on (not 200,
    or not text/event-stream) it opens a new one a second later. It also leaves now and
    then (a phone asleep) and comes back with its last id."""

    def __init__(self, name: str, slug: str, host: str, port: int, rng: random.Random, gzip: bool):
        self.name, self.slug, self.host, self.port = name, slug, host, port
        self.rng, self.gzip = rng, gzip
        self.records: list[list] = []
        self.last_id: str | None = None
        self.retry_ms = 3000
        self.writer = None

    def note(self, kind: str, ident=None, payload=None) -> None:
        self.records.append([time.time(), kind, self.slug, ident, payload])

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.sleep(self.rng.uniform(0, 2))
        while not stop.is_set():
            leave_at = time.monotonic() + self.rng.expovariate(1 / 20)
            outcome = await self.once(stop, leave_at)
            if stop.is_set():
                break
            if outcome == "left":
                await asyncio.sleep(self.rng.uniform(0.2, 2.0))
            elif outcome == "failed":
                await asyncio.sleep(1.0)
            else:
                await asyncio.sleep(self.retry_ms / 1000)

    async def once(self, stop: asyncio.Event, leave_at: float) -> str:
        self.note("open")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 5)
        except (OSError, TimeoutError) as exc:
            self.note("closed", payload=f"connect: {type(exc).__name__}")
            return "broken"
        self.writer = writer
        lines = [f"GET /api/public/{self.slug}/status/stream HTTP/1.1", f"Host: {self.host}",
                 "Accept: text/event-stream", "Cache-Control: no-cache"]
        if self.gzip:
            lines.append("Accept-Encoding: gzip")
        if self.last_id is not None:
            lines.append(f"Last-Event-ID: {self.last_id}")
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split()[1])
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
            if status != 200 or not headers.get("content-type", "").startswith("text/event-stream"):
                self.note("error", payload=status)
                return "failed"
            dechunker = Dechunker() if headers.get("transfer-encoding") == "chunked" else None
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if headers.get("content-encoding") == "gzip" else None
            parser = EventParser(self)
            while not stop.is_set():
                left = leave_at - time.monotonic()
                if left <= 0:
                    self.note("closed", payload="left")
                    return "left"
                try:
                    data = await asyncio.wait_for(reader.read(65536), min(left, 8.0))
                except TimeoutError:
                    if time.monotonic() < leave_at:
                        self.note("closed", payload="silent")
                        return "broken"
                    continue
                if not data:
                    self.note("closed", payload="eof")
                    return "ended"
                if dechunker is not None:
                    data = dechunker.feed(data)
                if inflater is not None:
                    data = inflater.decompress(data)
                parser.feed(data.decode())
                if dechunker is not None and dechunker.ended:
                    self.note("closed", payload="end")
                    return "ended"
            return "stopped"
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, zlib.error) as exc:
            self.note("closed", payload=type(exc).__name__)
            return "broken"
        finally:
            writer.close()
            self.writer = None


class EventParser:
    """The WHATWG event-stream parser, as far as a client of this service needs."""

    def __init__(self, client: RawClient):
        self.client = client
        self.buffer = ""
        self.event, self.data, self.id = "", [], client.last_id

    def feed(self, text: str) -> None:
        self.buffer += text
        *lines, self.buffer = re.split(r"\r\n|\r|\n", self.buffer)
        for line in lines:
            if line == "":
                self.dispatch()
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    self.event = value
                elif name == "data":
                    self.data.append(value)
                elif name == "id" and "\0" not in value:
                    self.id = value
                elif name == "retry" and value.isdigit():
                    self.client.retry_ms = int(value)

    def dispatch(self) -> None:
        client = self.client
        client.last_id = self.id
        event, data = self.event or "message", "\n".join(self.data)
        self.event, self.data = "", []
        if not data:
            return
        body = json.loads(data)
        if event == "connected":
            client.note("connected", payload=body.get("resumed"))
        elif event == "status_update":
            client.note("full", self.id, body["statuses"])
        elif event == "bulk_update":
            client.note("delta", self.id, body["updates"])


def run_clients(args) -> None:
    """The `clients` command: raw clients until SIGTERM, then their records as JSON."""
    slugs = args.slugs.split(",")
    rng = random.Random(f"{args.seed}:{args.prefix}")
    clients = [RawClient(f"{args.prefix}{n}", slugs[n % len(slugs)], args.host, args.port,
                         random.Random(rng.random()), gzip=n % 3 == 0) for n in range(args.count)]

    async def main():
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        tasks = [asyncio.create_task(client.run(stop)) for client in clients]
        await stop.wait()
        ended = time.time()
        for client in clients:
            if client.writer is not None:
                client.writer.close()
        await asyncio.wait(tasks, timeout=5)
        Path(args.out).write_text(json.dumps(
            {"ended": ended, "clients": [{"name": c.name, "records": c.records} for c in clients]}))

    asyncio.run(main())


# --------------------------------------------------------------------------- other clients

BROWSER_HOOK = """
(() => {
  window.__chaos = [];
  const say = (kind, slug, payload) => window.__chaos.push([Date.now() / 1000, kind, slug, payload]);
  let real;
  Object.defineProperty(window, "PublicStatus", {configurable: true, get: () => real, set(Class) {
    real = class extends Class {
      constructor(slug, options = {}) {
        super(slug, {...options,
          onupdate(statuses, changed, full) {
            say("board", slug, {...statuses});
            if (options.onupdate) return options.onupdate(statuses, changed, full);
          },
          onstate(state) {
            say(state === "live" ? "connected" : "closed", slug, state);
            if (options.onstate) return options.onstate(state);
          }});
      }
    };
  }});
})();
"""


class Browsers:
    """One headless Chromium, a board tab per project pair: public-status.js shares one
    connection between them. A thread drains each tab's records twice a second."""

    def __init__(self, url: str, pages: list[str]):
        import browser as chromium

        for flag in ("--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                     "--disable-backgrounding-occluded-windows"):
            if flag not in chromium.FLAGS:
                chromium.FLAGS.append(flag)
        self.browser = chromium.Browser()
        self.tabs = []
        for n, projects in enumerate(pages):
            tab = self.browser.page if n == 0 else self.browser.new_tab()
            tab.call("Page.setBypassCSP", enabled=True)
            tab.add_init_script(BROWSER_HOOK)
            tab.goto(f"{url}/?project={projects}")
            self.tabs.append((f"tab{n}", tab))
        self.records: dict[str, list] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain_forever, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        for name, tab in self.tabs:
            try:
                got = tab.evaluate("JSON.stringify(window.__chaos ? window.__chaos.splice(0) : [])")
            except (RuntimeError, OSError):
                continue
            for t, kind, slug, payload in json.loads(got or "[]"):
                self.records.setdefault(f"{name}/{slug}", []).append(
                    [t, kind, slug, None, payload if kind == "board" else None])

    def _drain_forever(self) -> None:
        while not self._stop.wait(0.5):
            self._drain()

    def close(self) -> float:
        self._stop.set()
        self._thread.join(5)
        self._drain()
        ended = time.time()
        self.browser.close()
        return ended


class NodeClients:
    """npm `eventsource` clients (tests/node/chaos-client.mjs), one process each."""

    def __init__(self, url: str, slugs: list[str], home: Path):
        self.processes = []
        for n, slug in enumerate(slugs):
            out = open(home / f"node{n}.jsonl", "w")  # noqa: SIM115 - closed in close()
            process = subprocess.Popen(["node", "chaos-client.mjs", f"{url}/api/public/{slug}/status/stream"],
                                       cwd=ROOT / "tests" / "node", stdout=out, stderr=subprocess.DEVNULL)
            self.processes.append((f"node{n}", slug, process, out))

    def close(self) -> dict[str, list]:
        ended = time.time()
        records = {}
        for name, slug, process, out in self.processes:
            process.terminate()
            process.wait(10)
            out.close()
            mine = []
            for line in Path(out.name).read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                event, data = entry["event"], json.loads(entry["data"]) if entry.get("data") else {}
                if event == "connected":
                    mine.append([entry["t"], "connected", slug, None, data.get("resumed")])
                elif event == "status_update":
                    mine.append([entry["t"], "full", slug, entry["id"], data["statuses"]])
                elif event == "bulk_update":
                    mine.append([entry["t"], "delta", slug, entry["id"], data["updates"]])
                elif event in ("closed", "error"):
                    mine.append([entry["t"], event, slug, None, entry.get("status")])
            records[name] = mine
        return records, ended


class Prober:
    """GETs of every project through nginx, four a second: their answers are checked
    for freshness, phantoms and errors as the streams are."""

    def __init__(self, port: int, slugs: list[str]):
        self.port, self.slugs = port, slugs
        self.records: list[list] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(0.25):
            slug = self.slugs[n % len(self.slugs)]
            n += 1
            sent = time.time()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", f"/api/public/{slug}/status")
                answer = connection.getresponse()
                body = answer.read()
                connection.close()
            except (OSError, http.client.HTTPException):
                continue
            if answer.status == 200:
                self.records.append([sent, "get", slug, None, json.loads(body)["statuses"], time.time()])
            else:
                self.records.append([sent, "error", slug, None, answer.status, time.time()])

    def close(self) -> float:
        self._stop.set()
        self._thread.join(10)
        return time.time()


# --------------------------------------------------------------------------- the nemesis

@dataclass
class Deployment:
    api: ClientAPI
    postgres: PrivatePostgres
    redis: RedisServer
    instances: list[Instance]
    proxy: Proxy
    network: BadNetwork | None
    faults: list[check.Fault] = field(default_factory=list)
    locks: dict = field(default_factory=lambda: {name: threading.Lock() for name in
                                                 ("redis", "postgres", "upstream", "nginx", "network")})


def schedule(seed: int, count: int) -> list[str]:
    """The order of faults: rounds, each every kind once in a seeded order."""
    rng = random.Random(f"{seed}:nemesis")
    order = []
    while len(order) < count:
        round_ = list(KINDS)
        rng.shuffle(round_)
        order += round_
    return order[:count]


def inflict(deployment: Deployment, kind: str, rng: random.Random) -> check.Fault | None:
    """One fault, from its start to its heal (the heal: what it broke works again)."""
    d = deployment
    if kind in ("worker_kill", "instance_restart"):
        free = [i for i in d.instances if not i.lock.locked()]
        others_up = [i for i in d.instances if i.lock.locked()]
        if not free or (kind == "instance_restart" and others_up):
            return None                        # one instance is down already: never both
        instance = rng.choice(free)
        with instance.lock:
            start = time.time()
            if kind == "worker_kill":
                workers = instance.workers()
                if not workers:
                    return None
                booted = len(instance.service.worker_pids())
                os.kill(rng.choice(sorted(workers)), signal.SIGKILL)
                wait_for(lambda: len(instance.service.worker_pids()) > booted, timeout=30, interval=0.05)
                time.sleep(0.5)                # the new worker imports and binds its edge
            else:
                instance.stop(signal.SIGTERM)
                instance.start()
            return check.Fault(kind, start, time.time())
    lock = d.locks[{"redis_stop": "redis", "redis_restart": "redis", "postgres_restart": "postgres",
                    "nginx_reload": "nginx", "blackout": "network"}.get(kind, "upstream")]
    with lock:
        start = time.time()
        if kind == "redis_stop":
            d.redis.process.send_signal(signal.SIGSTOP)
            time.sleep(LEASE * rng.uniform(1.3, 2.0))
            d.redis.process.send_signal(signal.SIGCONT)
        elif kind == "redis_restart":
            d.redis.stop()
            d.redis.start()
        elif kind == "postgres_restart":
            d.postgres.restart()
        elif kind.startswith("upstream_"):
            with d.api.lock:
                d.api.mode = kind.removeprefix("upstream_")
            time.sleep(rng.uniform(1.5, 3.0))
            with d.api.lock:
                d.api.mode = "ok"
        elif kind == "nginx_reload":
            d.proxy.reload()
            time.sleep(0.3)
        elif kind == "blackout":
            if d.network is None:
                return None
            d.network.link(False)
            time.sleep(rng.uniform(1.0, 3.0))
            d.network.link(True)
        return check.Fault(kind, start, time.time())


def nemesis(deployment: Deployment, seed: int, seconds: float, lanes: int, gap: tuple[float, float]) -> None:
    """Faults on `lanes` lanes at once until `seconds` have passed, in the seeded order."""
    order = iter(schedule(seed, 100_000))
    order_lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def lane(number: int) -> None:
        rng = random.Random(f"{seed}:lane{number}")
        while time.monotonic() < deadline:
            with order_lock:
                kind = next(order)
            try:
                fault = inflict(deployment, kind, rng)
            except Exception as exc:  # a fault that could not be made is said, not hidden
                log(f"fault {kind} failed to run: {exc!r}")
                fault = None
            if fault is not None:
                deployment.faults.append(fault)
            time.sleep(rng.uniform(*gap))

    threads = [threading.Thread(target=lane, args=(n,)) for n in range(lanes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# --------------------------------------------------------------------------- leftovers

def worker_metrics(instance: Instance, tries: int = 60) -> dict[int, dict[str, float]]:
    """Each live worker's stream gauges: /metrics asked on fresh connections until every
    worker answered (a worker is told by its process start time)."""
    seen: dict[float, dict[str, float]] = {}
    for _ in range(tries):
        try:
            connection = http.client.HTTPConnection("127.0.0.1", instance.port, timeout=5)
            connection.request("GET", "/metrics", headers={"Connection": "close"})
            text = connection.getresponse().read().decode()
            connection.close()
        except (OSError, http.client.HTTPException):
            continue
        values = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in ("public_status_open_streams", "public_status_pollers",
                        "public_status_watched_projects", "process_start_time_seconds"):
                values[name] = float(value)
        seen[values.get("process_start_time_seconds", 0)] = values
        if len(seen) >= len(instance.workers()):
            break
    return seen


def client_sockets(pid: int, port: int) -> int:
    """Sockets a worker holds on its instance's port, but for the listener (a socket the
    kernel no longer lists, with its descriptor still open, counts too)."""
    states = {}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            states[fields[9]] = (int(fields[1].rsplit(":", 1)[1], 16), fields[3])
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            local, state = states.get(target[8:-1], (port, "closed"))
            count += local == port and state != "0A"
    return count


def process_figures(pid: int) -> tuple[int, int]:
    """Open descriptors, resident kilobytes."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return fds, rss


def leftovers(deployment: Deployment, baseline: dict) -> list[check.Violation]:
    """5. After every client left: no stream, poller or watched project on any worker, no
    poll lease in Redis, no client socket once nginx is gone, descriptors and memory
    near a fresh worker's."""
    after: dict[str, float] = {}
    deadline = time.monotonic() + 8
    while True:
        gauges = {}
        for instance in deployment.instances:
            for n, values in enumerate(worker_metrics(instance).values()):
                for name in ("public_status_open_streams", "public_status_pollers",
                             "public_status_watched_projects"):
                    gauges[f"{name.removeprefix('public_status_')}:{instance.name}/w{n}"] = values.get(name, 0)
        if not any(gauges.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    after.update(gauges)
    time.sleep(LEASE + 0.5)
    import redis

    leases = redis.Redis.from_url(deployment.redis.url).keys("public-status:lease:*")
    after["leases:redis"] = len(leases)
    deployment.proxy.stop()                    # its keep-alive connections go with it
    time.sleep(1.0)
    for instance in deployment.instances:
        for pid in instance.workers():
            fds, rss = process_figures(pid)
            after[f"sockets:{instance.name}/{pid}"] = client_sockets(pid, instance.port)
            after[f"fds:{instance.name}/{pid}"] = fds
            after[f"rss_kb:{instance.name}/{pid}"] = rss
            baseline.setdefault(f"fds:{instance.name}/{pid}", baseline["fresh_fds"])
            baseline.setdefault(f"rss_kb:{instance.name}/{pid}", baseline["fresh_rss_kb"])
    # Pools may keep what they opened: the database's (5), Redis's (50), the client APIs'.
    allowance = {"fds": (80, 1.0), "rss_kb": (40_000, 1.5)}
    worst = {kind: max((v for k, v in after.items() if k.startswith(kind + ":")), default=0)
             for kind in ("open_streams", "pollers", "watched_projects", "sockets", "fds", "rss_kb")}
    log(f"after every client left: {worst['open_streams']:g} streams, {worst['pollers']:g} pollers, "
        f"{worst['watched_projects']:g} watched projects, {after['leases:redis']:g} leases, "
        f"{worst['sockets']:g} client sockets at most per worker; descriptors {worst['fds']:g} "
        f"(a fresh worker {baseline['fresh_fds']}), memory {worst['rss_kb'] / 1024:.0f} MB "
        f"(a fresh worker {baseline['fresh_rss_kb'] / 1024:.0f} MB) at most")
    return check.check_leftovers(baseline, after, allowance)


# --------------------------------------------------------------------------- a run

def histories(raw_files: list[Path], node: dict, browsers: dict, prober: list, ends: dict
              ) -> list[check.Client]:
    clients = []
    for path in raw_files:
        kept = json.loads(path.read_text())
        kind = "lossy" if path.name.startswith("lossy") else "raw"
        for entry in kept["clients"]:
            clients.append(check.Client(entry["name"], kind, [check.Record(*r) for r in entry["records"]],
                                        kept["ended"]))
    for name, records in node.items():
        clients.append(check.Client(name, "node", [check.Record(*r) for r in records], ends["node"]))
    for name, records in browsers.items():
        clients.append(check.Client(name, "browser", [check.Record(*r) for r in records], ends["browser"]))
    clients.append(check.Client("get", "get", [check.Record(*r) for r in prober], ends["get"]))
    return clients


def run(args) -> int:
    seed = args.seed if args.seed is not None else random.randrange(1, 10**6)
    root = Path(args.root).resolve()
    short = args.short
    seconds = args.seconds
    raw_count, lossy_count = (120, 30) if short else (240, 60)
    lanes = args.lanes or (1 if short else 2)
    started = time.monotonic()
    log(f"seed {seed}; {seconds:.0f}s of faults on {lanes} lane(s); checkout {root}")
    log(f"convergence bound: {BOUND_TEXT}")
    home = Path(tempfile.mkdtemp(prefix="chaos-"))
    stack: list = []
    try:
        api = ClientAPI(seed)
        api.start()
        stack.append(api.stop)
        postgres = PrivatePostgres(home)
        stack.append(postgres.stop)
        database = Database.create(postgres.admin_url, "public_status_chaos", "public_status_chaos_reader",
                                   password="chaos-reader-pw")
        for slug in VOCABULARIES:
            database.add_project(slug, base_url=api.url, endpoint=f"/{slug}", timeout=UPSTREAM_TIMEOUT,
                                 mapping=MAPPING if slug == "chaos-garden" else None)
        database.close()
        redis_server = RedisServer()
        stack.append(redis_server.stop)
        network = None
        try:
            network = BadNetwork(os.getpid() % 10_000)
            stack.append(network.close)
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            log(f"no network namespace here ({exc}): the lossy clients run on loopback, "
                "and no blackout is made")
        env = {"DATABASE_URL": database.reader_url, "REDIS_URL": redis_server.url, **SETTINGS}
        instances: list[Instance] = []
        threads = [threading.Thread(target=lambda n=n: instances.append(Instance(f"i{n}", env, root)))
                   for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if len(instances) != 2:
            raise RuntimeError("an instance did not start")
        instances.sort(key=lambda i: i.name)
        stack.append(lambda: [i.stop() for i in instances])
        proxy = Proxy([i.port for i in instances], network.host_ip if network else None)
        stack.append(proxy.stop)
        deployment = Deployment(api, postgres, redis_server, instances, proxy, network)
        fresh = [process_figures(pid) for i in instances for pid in i.workers()]
        baseline = {"fresh_fds": max(f for f, _ in fresh), "fresh_rss_kb": max(r for _, r in fresh)}
        slugs = list(VOCABULARIES)

        # The clients.
        raw_files = [home / "raw.json", home / "lossy.json"]
        runners = []
        for out, count, prefix, host in ((raw_files[0], raw_count, "raw", "127.0.0.1"),
                                         (raw_files[1], lossy_count, "lossy",
                                          network.host_ip if network else "127.0.0.1")):
            command = [sys.executable, str(Path(__file__).resolve()), "clients", "--host", host,
                       "--port", str(proxy.port), "--slugs", ",".join(slugs), "--count", str(count),
                       "--seed", str(seed), "--prefix", prefix, "--out", str(out)]
            if prefix == "lossy" and network is not None:
                command = [*network.prefix, *command]
            runners.append(subprocess.Popen(command))
        node = NodeClients(f"http://127.0.0.1:{proxy.port}", slugs[:2], home)
        browsers = Browsers(f"http://127.0.0.1:{proxy.port}",
                            ["chaos-tower,chaos-marina", "chaos-marina,chaos-garden", "chaos-garden"])
        prober = Prober(proxy.port, slugs)
        time.sleep(4)                              # everyone connected and current
        log(f"deployment and {raw_count + lossy_count + 2 + 3} clients up after "
            f"{time.monotonic() - started:.0f}s; the nemesis begins")

        nemesis(deployment, seed, seconds, lanes, (0.2, 1.5) if short else (0.2, 1.0))
        api.freeze()                               # from the last heal (or now), no change
        heal = max([time.time(), *(f.end for f in deployment.faults)])
        log(f"{len(deployment.faults)} faults; the last healed; the client APIs hold still")
        time.sleep(BOUND)                          # every client must be current by then

        ends = {"get": prober.close()}
        for runner in runners:
            runner.send_signal(signal.SIGTERM)
        for runner in runners:
            runner.wait(30)
        ends["browser"] = browsers.close()
        node_records, ends["node"] = node.close()
        violations = leftovers(deployment, baseline)
        end = time.time()
        clients = histories(raw_files, node_records, browsers.records, prober.records, ends)
        found, figures = check.check_all(
            clients, api.truth, api.served, api.served_states, deployment.faults, poll=POLL, heal=heal, bound=BOUND,
            delay=DELAY, freshness=FRESHNESS, error_slack=ERROR_SLACK, end=end, lease=LEASE)
        found.sort(key=lambda violation: violation.t)   # the first in time first
        violations = found + violations
        if os.environ.get("CHAOS_KEEP"):           # every history, for a closer look
            keep = Path(os.environ["CHAOS_KEEP"])
            keep.write_text(json.dumps({
                "truth": api.truth, "faults": [[f.kind, f.start, f.end] for f in deployment.faults],
                "heal": heal, "clients": [[c.name, c.kind, [list(r.__dict__.values()) for r in c.records],
                                           c.ended_at] for c in clients]}))
        report(deployment.faults, clients, api, figures, violations, seed, home,
               time.monotonic() - started, short)
        print(f"chaos: {len(deployment.faults)} faults, {figures['events']} events checked, "
              f"{len(violations)} violations (seed {seed})", flush=True)
        return 0 if not violations else 1
    finally:
        for undo in reversed(stack):
            try:
                undo()
            except Exception as exc:  # cleanup goes on; say what failed
                log(f"cleanup: {exc!r}")
        shutil.rmtree(home, ignore_errors=True)


def report(faults, clients, api, figures, violations, seed, home, wall, short) -> None:
    counts = {}
    for fault in faults:
        counts[fault.kind] = counts.get(fault.kind, 0) + 1
    recovery = check.recovery_times(clients, api.truth, faults)
    # A fault is alone when no other began before every client was current again: its
    # figure is its own, not that of the faults after it.
    alone: dict[str, list[float]] = {}
    order = {kind: iter(times) for kind, times in recovery.items()}
    for fault in faults:
        took = next(order[fault.kind])
        if not any(other is not fault and fault.start <= other.start <= fault.end + took for other in faults):
            alone.setdefault(fault.kind, []).append(took)
    log("per fault kind: count; seconds until every client is current again p50 / p99 / max, "
        "of all of them and of those alone (how many)")
    summary = {}
    for kind in KINDS:
        p50, p99, top = check.percentiles(recovery.get(kind, []))
        a50, a99, atop = check.percentiles(alone.get(kind, []))
        summary[kind] = {"count": counts.get(kind, 0), "p50": p50, "p99": p99, "max": top,
                         "alone": len(alone.get(kind, [])), "alone_p50": a50, "alone_p99": a99,
                         "alone_max": atop}
        log(f"  {kind:<18} {counts.get(kind, 0):>4}   {p50:6.2f} {p99:6.2f} {top:6.2f}   "
            f"{a50:6.2f} {a99:6.2f} {atop:6.2f} ({len(alone.get(kind, []))})")
    took = list(figures["converged"].values())
    if took:
        p50, p99, top = check.percentiles(took)
        log(f"after the last heal, clients current within p50 {p50:.2f}s, p99 {p99:.2f}s, max {top:.2f}s "
            f"(bound {BOUND:.1f}s)")
    by_kind = {}
    for client in clients:
        by_kind[client.kind] = by_kind.get(client.kind, 0) + 1
    log(f"clients: {by_kind}; wall time {wall:.0f}s")
    for violation in violations[:8]:
        print(violation, flush=True)
    if len(violations) > 8:
        log(f"... and {len(violations) - 8} more violations")
    results = Path(os.environ.get("CHAOS_RESULTS", tempfile.gettempdir())) / f"chaos-{seed}.json"
    results.write_text(json.dumps({
        "seed": seed, "faults": len(faults), "events": figures["events"], "violations": len(violations),
        "by_kind": summary, "wall_seconds": wall, "bound": BOUND, "clients": by_kind,
        "fault_log": [[f.kind, f.start, f.end] for f in faults],
        "first_violations": [str(v) for v in violations[:20]]}, indent=1))
    log(f"figures written to {results}")


# --------------------------------------------------------------------------- planted bugs

PLANTS = [
    ("resume that skips a change",
     "        for base, _, changed, _ in reversed(self._entries):\n            units |= changed\n",
     "        for base, _, changed, _ in reversed(self._entries):\n"
     "            units |= changed if base != self._entries[-1][0] else set()\n"),
    ("an id reused after Redis comes back empty",
     '                  f"{random.getrandbits(40):010x}", entry, self._history_bound, HISTORY_BYTES,',
     '                  "0000000000", entry, self._history_bound, HISTORY_BYTES,'),
    ("a stale snapshot served as fresh after failover",
     '        fetched_at = float(stored[b"fetched_at"])\n',
     '        fetched_at = time.time() + 3600\n'),
    ("a bulk_update dropped by the fanout",
     "        for stream in streams:\n            if not stream.offer(delivery):",
     "        for stream in streams[1:] if type(delivery) is not Ping else streams:\n"
     "            if not stream.offer(delivery):"),
    ("a stream leaked on disconnect",
     "        self._streams.discard(stream)\n        for slug in stream.slugs:",
     "        for slug in stream.slugs:"),
    ("a status shown that the client API never said",
     '    "available": ("available", "open", "free", "for_sale"),\n'
     '    "reserved": ("reserved", "held", "pending"),',
     '    "available": ("available", "open", "free", "for_sale", "held"),\n'
     '    "reserved": ("reserved", "pending"),'),
]


def plant_copy(old: str, new: str) -> Path:
    """A copy of the checkout (its files, no .git, no virtualenv) with one textual change
    to public_service.py."""
    copy = Path(tempfile.mkdtemp(prefix="chaos-plant-"))
    shutil.copytree(ROOT, copy, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".git", ".venv", "node_modules", "__pycache__", "results"))
    source = (copy / "public_service.py").read_text()
    if source.count(old) != 1:
        raise AssertionError(f"the plant's text is not in public_service.py once: {old!r}")
    (copy / "public_service.py").write_text(source.replace(old, new))
    return copy


def plants(args) -> int:
    seed = args.seed if args.seed is not None else random.randrange(1, 10**6)
    rows = []
    for name, old, new in PLANTS:
        copy = plant_copy(old, new)
        log(f"plant: {name} (seed {seed}) in {copy}")
        try:
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "run", "--short",
                                   "--seconds", str(args.seconds), "--seed", str(seed), "--root", str(copy)],
                                  capture_output=True, text=True, timeout=600)
        finally:
            shutil.rmtree(copy, ignore_errors=True)
        lines = done.stdout.splitlines()
        last = lines[-1] if lines else "(no output)"
        caught = done.returncode != 0 and re.search(r"[1-9]\d* violations", last) is not None
        first = next((i for i, line in enumerate(lines) if re.match(r"\w+: \S+ at \d", line)), None)
        rows.append((name, caught, last))
        print(f"{'CAUGHT' if caught else 'MISSED'}: {name}: {last}")
        if first is not None:
            print("\n".join(lines[first:first + 8]))
        elif not caught:
            print(done.stdout[-3000:], done.stderr[-3000:])
    missed = [name for name, caught, _ in rows if not caught]
    print(f"chaos-plants: {len(rows) - len(missed)} of {len(rows)} planted bugs caught (seed {seed})")
    return 1 if missed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run")
    go.add_argument("--seconds", type=float, default=float(os.environ.get("CHAOS_SECONDS") or 600))
    go.add_argument("--seed", type=int, default=int(os.environ["CHAOS_SEED"]) if os.environ.get("CHAOS_SEED") else None)
    go.add_argument("--short", action="store_true", help="the CI run: fewer clients, one lane")
    go.add_argument("--lanes", type=int, default=0)
    go.add_argument("--root", default=str(ROOT), help="the checkout whose service runs")
    planted = sub.add_parser("plants")
    planted.add_argument("--seconds", type=float, default=40)
    planted.add_argument("--seed", type=int, default=int(os.environ["CHAOS_SEED"]) if os.environ.get("CHAOS_SEED") else None)
    clients = sub.add_parser("clients")
    for name in ("host", "slugs", "prefix", "out"):
        clients.add_argument(f"--{name}", required=True)
    for name in ("port", "count", "seed"):
        clients.add_argument(f"--{name}", type=int, required=True)
    args = parser.parse_args()
    if args.command == "clients":
        run_clients(args)
        return 0
    if args.command == "plants":
        return plants(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
