"""`make bench` (quick, under 3 minutes) and `make bench-full` (under 10).

Starts the service under gunicorn's gevent worker (1 worker, pinned to core 0) against
the machine's PostgreSQL and a fake client API, drives it from a load generator on
core 1 (wrk for GET, bench/load.py for streams), and does the same to the floor of our
stack (bench/floor.py: bare Flask on the same worker, and a bare gevent broadcast), so
that our figures print as ratios to the floor measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from support import MACHINE_POSTGRES, ROOT, Database, free_port, gunicorn_command

ADMIN_URL = os.environ.get("BENCH_DATABASE_ADMIN_URL", MACHINE_POSTGRES)
DATABASE, ROLE = "public_status_bench", "public_status_bench_reader"
SERVER_CORE, LOAD_CORE = "0", "1"


def http(method: str, url: str) -> bytes:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.read()


# --------------------------------------------------------------------------- set-up

def prepare_database(upstream_url: str) -> Database:
    """The bench's database, made anew, with the two projects every run polls: one
    that is read (polled hourly), one polled every second."""
    database = Database.create(ADMIN_URL, DATABASE, ROLE)
    add_projects(database, upstream_url, ["bench-get"], 3600)
    add_projects(database, upstream_url, ["bench-poll"], 1)
    return database


def add_projects(database: Database, upstream_url: str, slugs: list[str], interval: float) -> list[str]:
    """Projects whose client API is `upstream_url`/<slug>, polled every `interval`."""
    for slug in slugs:
        database.add_project(slug, base_url=upstream_url, interval=interval)
    return slugs


def bench_command(port: int, app: str = "wsgi:app", extra: list[str] | tuple = ()) -> list[str]:
    """The Procfile's command on 127.0.0.1:`port`, without the access log (off for us and
    the floor), serving `app`."""
    return gunicorn_command(f"127.0.0.1:{port}", access_log=False, app=app, extra=extra)


class Server:
    """A gunicorn (or other) process pinned to the server core. Every one started is in
    `Server.started`, so the run can stop them all whatever happens."""

    started: list[Server] = []

    def __init__(self, name: str, command: list[str], port: int, env: dict | None = None,
                 core: str = SERVER_CORE):
        self.name, self.port = name, port
        self.process = subprocess.Popen(
            ["taskset", "-c", core, *command], cwd=ROOT, env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        Server.started.append(self)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise SystemExit(f"{name} did not start: {self.process.stderr.read()}")
        time.sleep(0.3)

    def worker_pids(self) -> list[int]:
        """gunicorn's workers (the process itself when it has no children)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [int(pid) for pid in children] or [self.process.pid]

    def wait_for_workers(self, count: int) -> None:
        deadline = time.monotonic() + 30
        while len(self.worker_pids()) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)                  # each worker imports the app, then serves

    def rss_kb(self) -> int:
        """Resident memory of every worker, together."""
        return sum(int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))
                   for pid in self.worker_pids())

    def cpu_seconds(self) -> float:
        """CPU time of every worker, together."""
        total = 0.0
        for pid in self.worker_pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def gunicorn(name: str, app: str, env: dict | None = None, floor: bool = False) -> Server:
    """Our Procfile's flags; the floor always runs on gunicorn's default gevent worker,
    the one the targets are stated against."""
    port = free_port()
    command = bench_command(port, app, ["--worker-class", "gevent"] if floor else [])
    return Server(name, command, port, env)


def start_client_api() -> str:
    """The fake client API (bench/upstream.py) on the load core; its URL."""
    port = free_port()
    Server("client API", [sys.executable, str(ROOT / "bench" / "upstream.py"), str(port)], port,
           core=LOAD_CORE)
    return f"http://127.0.0.1:{port}"


def served_counts(upstream_url: str) -> dict[str, int]:
    """Requests the client API served, per path."""
    return json.loads(http("GET", f"{upstream_url}/_count"))


def served(upstream_url: str, path: str) -> int:
    """Requests the client API served on one path."""
    return served_counts(upstream_url).get(path, 0)


def machine() -> str:
    return (f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
            f"Python {platform.python_version()}")


def save_results(results, kind: str) -> None:
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}.json").write_text(json.dumps(results, indent=2))


class LoadGenerator:
    def __init__(self):
        self.process = subprocess.Popen(
            ["taskset", "-c", LOAD_CORE, sys.executable, str(ROOT / "bench" / "load.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, cmd: str, **args) -> dict:
        self.process.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())


# --------------------------------------------------------------------------- phases

def wrk(port: int, seconds: int) -> dict:
    output = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "wrk", "-t1", "-c50", f"-d{seconds}s",
         f"http://127.0.0.1:{port}/api/public/bench-get/status"],
        capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    mean = re.search(r"Latency\s+([\d.]+)(us|ms|s)", output)
    scale = {"us": 0.001, "ms": 1, "s": 1000}[mean.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {"rps": rate, "mean_ms": float(mean.group(1)) * scale,
            "non_2xx": int(errors.group(1)) if errors else 0}


def get_phase(ours: Server, floor: Server, seconds: int, rounds: int) -> dict:
    http("GET", f"http://127.0.0.1:{ours.port}/api/public/bench-get/status")  # warm
    runs = {"ours": [], "floor": []}
    for _ in range(rounds):
        runs["floor"].append(wrk(floor.port, seconds))
        runs["ours"].append(wrk(ours.port, seconds))
    return {who: {"rps": statistics.median(r["rps"] for r in results),
                  "mean_ms": statistics.median(r["mean_ms"] for r in results),
                  "non_2xx": sum(r["non_2xx"] for r in results)}
            for who, results in runs.items()}


def stream_phase(server: Server, load: LoadGenerator, path: str, initial: str, trigger: tuple,
                 count: int, changes: int, before_trigger=None, gzip: bool = False) -> dict:
    baseline = server.rss_kb()
    opened = load("open", port=server.port, path=path, count=count, marker=initial, gzip=gzip)
    time.sleep(1)
    held_kb = server.rss_kb() - baseline
    cpu_before = server.cpu_seconds()
    deliveries = []
    for _ in range(changes):
        if before_trigger:
            before_trigger()
        method, trigger_path = trigger
        deliveries.append(load("deliver", port=server.port, method=method, path=trigger_path,
                               marker="bulk_update"))
        time.sleep(0.5)
    cpu = server.cpu_seconds() - cpu_before
    load("close_all")
    latencies_p99 = [d["p99_ms"] for d in deliveries if d["p99_ms"] is not None]
    return {
        "opened": opened,
        "cpu_ms_per_change": 1000 * cpu / max(1, changes),
        "bytes_per_update": statistics.median(d["bytes_per_stream"] for d in deliveries),
        "kb_per_stream": held_kb / max(1, opened["ready"]),
        "delivered": sum(d["delivered"] for d in deliveries),
        "expected": sum(d["expected"] for d in deliveries),
        "p50_ms": statistics.median(d["p50_ms"] for d in deliveries),
        "p99_ms": statistics.median(latencies_p99) if latencies_p99 else None,
        "worst_p99_ms": max(latencies_p99) if latencies_p99 else None,
        "runs": deliveries,
    }


# --------------------------------------------------------------------------- report

def row(figure, ours, floor, ratio, target, met):
    return f"| {figure} | {ours} | {floor} | {ratio} | {target} | {'yes' if met else 'NO'} |"


def report(results: dict) -> str:
    get, fan, floor_fan = results["get"], results["fanout"], results["floor_fanout"]
    gz = results["fanout_gzip"]
    held, first, polls = results["held"], results["first_event"], results["polling"]
    rps_ratio = get["ours"]["rps"] / get["floor"]["rps"]
    p99_ratio = fan["p99_ms"] / floor_fan["p99_ms"]
    lines = [
        f"public-status benchmark, {results['mode']} mode, {results['date']}, {results['machine']}",
        "",
        "| figure | ours | floor | ratio | target | met |",
        "|---|---|---|---|---|---|",
        row("streams held in one worker", f"{held['opened']['ready']:,} ({held['opened']['errors']} errors)",
            "", "", "10,000 without errors",
            held["opened"]["ready"] >= 10_000 and held["opened"]["errors"] == 0),
        row(f"one change to {fan['opened']['ready']:,} subscribers, p99",
            f"{fan['p99_ms']:.0f} ms", f"{floor_fan['p99_ms']:.0f} ms", f"{p99_ratio:.2f}",
            "<= 1.3 x floor", p99_ratio <= 1.3),
        row("  delivered", f"{fan['delivered']}/{fan['expected']}",
            f"{floor_fan['delivered']}/{floor_fan['expected']}", "", "100%",
            fan["delivered"] == fan["expected"]),
        row("  p50 / worst p99", f"{fan['p50_ms']:.0f} / {fan['worst_p99_ms']:.0f} ms",
            f"{floor_fan['p50_ms']:.0f} / {floor_fan['worst_p99_ms']:.0f} ms", "", "", True),
        row(f"memory per idle stream ({held['opened']['ready']:,} / 5,000 streams)",
            f"{held['kb_per_stream']:.1f} / {fan['kb_per_stream']:.1f} KB",
            f"- / {floor_fan['kb_per_stream']:.1f} KB", f"{fan['kb_per_stream'] / floor_fan['kb_per_stream']:.2f}",
            "<= 30 KB", max(held["kb_per_stream"], fan["kb_per_stream"]) <= 30),
        row("first status_update, warm cache, p99", f"{first['p99_ms']:.2f} ms",
            "", "", "<= 5 ms", first["p99_ms"] <= 5),
        row(f"upstream requests, 1,000 subscribers, {polls['seconds']:.0f} s at 1 s",
            f"{polls['requests']}", "", "", f"{polls['expected']} +/- 1",
            abs(polls["requests"] - polls["expected"]) <= 1),
        row("GET /status warm, req/s at 50 connections", f"{get['ours']['rps']:,.0f}",
            f"{get['floor']['rps']:,.0f}", f"{rps_ratio:.2f}", ">= 2 x floor", rps_ratio >= 2),
        row("  mean latency", f"{get['ours']['mean_ms']:.2f} ms", f"{get['floor']['mean_ms']:.2f} ms",
            "", "", get["ours"]["non_2xx"] == 0),
        "",
        "Compression (5,000 streams, the same fan-out, plain vs Accept-Encoding: gzip):",
        "",
        "| figure | plain | gzip | ratio | target | met |",
        "|---|---|---|---|---|---|",
        row("bytes on the wire: head, connected and status_update",
            f"{fan['opened']['bytes_per_stream']:,.0f}", f"{gz['opened']['bytes_per_stream']:,.0f}",
            f"{gz['opened']['bytes_per_stream'] / fan['opened']['bytes_per_stream']:.2f}", "fewer", True),
        row("bytes on the wire per bulk_update", f"{fan['bytes_per_update']:,.0f}",
            f"{gz['bytes_per_update']:,.0f}", f"{gz['bytes_per_update'] / fan['bytes_per_update']:.2f}",
            "<= plain + 5 B (a small message alone does not shrink)",
            gz["bytes_per_update"] <= fan["bytes_per_update"] + 5),
        row("memory per idle stream", f"{fan['kb_per_stream']:.1f} KB", f"{gz['kb_per_stream']:.1f} KB",
            f"{gz['kb_per_stream'] / fan['kb_per_stream']:.2f}", "<= 30 KB", gz["kb_per_stream"] <= 30),
        row("one change to 5,000 subscribers, p99", f"{fan['p99_ms']:.0f} ms", f"{gz['p99_ms']:.0f} ms",
            f"{gz['p99_ms'] / fan['p99_ms']:.2f}", "no worse", gz["p99_ms"] <= fan["p99_ms"] * 1.1),
        row("  delivered", f"{fan['delivered']}/{fan['expected']}", f"{gz['delivered']}/{gz['expected']}",
            "", "100%", gz["delivered"] == gz["expected"]),
        row("worker CPU per change", f"{fan['cpu_ms_per_change']:.0f} ms", f"{gz['cpu_ms_per_change']:.0f} ms",
            f"{gz['cpu_ms_per_change'] / max(1, fan['cpu_ms_per_change']):.2f}", "", True),
        "",
        f"load generator CPU: {results['load_cpu']['cpu_seconds']:.1f} s of "
        f"{results['load_cpu']['wall_seconds']:.0f} s wall (streams); wrk ran on the same core",
    ]
    return "\n".join(lines)


def raise_open_files_limit() -> None:
    """Soft limit up to the hard one (10,000 streams need 10,000 descriptors a side)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="longer runs (under 10 minutes)")
    options = parser.parse_args()
    full = options.full
    raise_open_files_limit()
    started = time.monotonic()

    upstream_url = start_client_api()
    database = prepare_database(upstream_url)
    env = {"DATABASE_URL": database.reader_url, "STATUS_CACHE_TTL": "3600", "SSE_PING_INTERVAL": "3600",
           "REFRESH_MIN_INTERVAL": "0", "PROJECT_CACHE_TTL": "3600", "LOG_LEVEL": "WARNING",
           "MAX_STREAMS": "20000"}
    load = LoadGenerator()
    results = {"mode": "full" if full else "quick", "date": time.strftime("%Y-%m-%d"),
               "machine": machine()}
    try:
        ours = gunicorn("public-status", "wsgi:app", env)
        body = http("GET", f"http://127.0.0.1:{ours.port}/api/public/bench-get/status")
        floor = gunicorn("floor: bare Flask", "bench.floor:flask_app",
                         {"FLOOR_BODY_BYTES": str(len(body))}, floor=True)
        results["get"] = get_phase(ours, floor, 10 if full else 5, 3 if full else 1)
        floor.stop()
        ours.stop()

        # Streams on a fresh worker, so that its memory grows from a clean baseline.
        ours = gunicorn("public-status", "wsgi:app", env)
        http("GET", f"http://127.0.0.1:{ours.port}/api/public/bench-get/status")  # warm
        flip = lambda: http("GET", f"{upstream_url}/_flip?path=/bench-get")  # noqa: E731
        results["fanout"] = stream_phase(
            ours, load, "/api/public/bench-get/status/stream", "status_update",
            ("POST", "/api/public/bench-get/status/refresh"), 5000, 5 if full else 3, flip)
        results["first_event"] = load("first_event", port=ours.port, path="/api/public/bench-get/status/stream",
                                      count=1000 if full else 300, marker="status_update")
        ours.stop()

        # The same fan-out, every stream compressed (Accept-Encoding: gzip).
        ours = gunicorn("public-status", "wsgi:app", env)
        http("GET", f"http://127.0.0.1:{ours.port}/api/public/bench-get/status")  # warm
        results["fanout_gzip"] = stream_phase(
            ours, load, "/api/public/bench-get/status/stream", "status_update",
            ("POST", "/api/public/bench-get/status/refresh"), 5000, 5 if full else 3, flip, gzip=True)
        ours.stop()

        ours = gunicorn("public-status", "wsgi:app", env)
        http("GET", f"http://127.0.0.1:{ours.port}/api/public/bench-get/status")  # warm
        results["held"] = stream_phase(ours, load, "/api/public/bench-get/status/stream", "status_update",
                                       ("POST", "/api/public/bench-get/status/refresh"), 10_000, 1, flip)
        results["held"]["healthz_while_held"] = http("GET", f"http://127.0.0.1:{ours.port}/healthz").decode()

        load("open", port=ours.port, path="/api/public/bench-poll/status/stream", count=1000,
             marker="status_update")
        seconds = 10
        before = served(upstream_url, "/bench-poll")
        time.sleep(seconds)
        results["polling"] = {"seconds": seconds, "expected": seconds,
                              "requests": served(upstream_url, "/bench-poll") - before}
        load("close_all")
        ours.stop()

        broadcast = gunicorn("floor: bare gevent broadcast", "bench.floor:broadcast_app", floor=True)
        results["floor_fanout"] = stream_phase(broadcast, load, "/stream", "connected", ("POST", "/trigger"),
                                               5000, 5 if full else 3)
        broadcast.stop()
        results["load_cpu"] = load("quit")
    finally:
        for server in Server.started:
            server.stop()

    results["seconds"] = time.monotonic() - started
    save_results(results, results["mode"])
    print(report(results))
    print(f"\n(run took {results['seconds']:.0f} s; raw figures in bench/results/)")


if __name__ == "__main__":
    main()
