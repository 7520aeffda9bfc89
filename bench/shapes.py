"""`make shapes` (and the second half of `make bench-full`): the shapes people deploy.

1. Workers: the Procfile's command with 1 and with 2 workers on the machine's 2 cores,
   without REDIS_URL and with it: warm GET requests/s (wrk, on the two in turn, the
   median of three rounds: the VM's speed drifts), one change to 5,000
   streams spread over the workers by the kernel (p99, delivered within 5 s), and the
   client API requests per poll interval.
2. Instances on Redis: 2 instances of 1 worker, 2,500 streams on each, both on core 0
   (the same CPU as one instance alone; Redis and the load on core 1): fan-out p99 of
   one change to all 5,000, against one instance without Redis holding 5,000 in the
   same run; the first `status_update` p99 on the instance that did not fetch.
3. Launch day, one worker: 10,000 streams on one project of 1,000 units, 5 units change
   a second, 1% of the viewers drop and reconnect (with their last id) every second, 20
   forced refreshes a second (REFRESH_MIN_INTERVAL at its default, 10 s): delivery of
   each change to every stream (from the client API's first answer holding it), CPU,
   memory, client API requests, errors.

Figures print as a table; raw ones land in bench/results/.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import (
    LOAD_CORE,
    ROOT,
    SERVER_CORE,
    LoadGenerator,
    Server,
    add_projects,
    bench_command,
    http,
    machine,
    prepare_database,
    raise_open_files_limit,
    save_results,
    served,
    start_client_api,
    wrk,
)
from support import RedisServer, free_port

BOTH_CORES = "0,1"
STREAMS = int(os.environ.get("SHAPES_STREAMS", "5000"))   # smaller only to try the script
LAUNCH = {"streams": int(os.environ.get("SHAPES_LAUNCH_STREAMS", "10000")), "units": 1000,
          "changes_per_second": 5, "reconnects_per_second": 100, "refreshes_per_second": 20,
          "refresh_min_interval": 10.0}


def service(name: str, env: dict, workers: int = 1, core: str = SERVER_CORE, root: Path = ROOT) -> Server:
    """The Procfile's command of the checkout at `root` (another one: the code before)."""
    port = free_port()
    server = Server(name, bench_command(port, extra=["--workers", str(workers)], root=root), port, env,
                    core=core, root=root)
    server.wait_for_workers(workers)
    return server


# --------------------------------------------------------------------------- phases

def gets_in_turn(servers: dict[int, Server], seconds: int, rounds: int = 3) -> dict[int, dict]:
    """Warm GETs on each server (by worker count) in turn, `rounds` times, and the
    median round of each: whatever the VM's speed does meanwhile falls on all alike."""
    for server in servers.values():
        wrk(server.port, 1)                                    # every worker warm
    runs = {workers: [] for workers in servers}
    for _ in range(rounds):
        for workers, server in servers.items():
            runs[workers].append(wrk(server.port, seconds))
    return {workers: {"get_rps": statistics.median(r["rps"] for r in results),
                      "get_rounds": [r["rps"] for r in results],
                      "get_non_2xx": sum(r["non_2xx"] for r in results)}
            for workers, results in runs.items()}


def streams_phase(server: Server, load: LoadGenerator, upstream_url: str) -> dict:
    """One worker count in one mode: a change to 5,000 streams, polls per interval."""
    port = server.port
    opened = load("open", port=port, path="/api/public/bench-poll/status/stream", count=STREAMS,
                  marker="status_update")
    time.sleep(1)
    changes = fanout(load, port, upstream_url, "bench-poll", changes=3, timeout=5)
    before, started = served(upstream_url, "/bench-poll"), time.monotonic()
    time.sleep(6)
    per_interval = (served(upstream_url, "/bench-poll") - before) / (
        time.monotonic() - started)                            # its interval is 1 s
    load("close_all")
    return {"opened": opened["ready"], "open_errors": opened["errors"],
            "fanout_p50_ms": changes["p50_ms"], "fanout_p99_ms": changes["p99_ms"],
            "delivered": changes["delivered"], "expected": changes["expected"],
            "upstream_per_interval": per_interval}


def workers_phase(env: dict, load: LoadGenerator, upstream_url: str, seconds: int) -> list[dict]:
    """1 and 2 workers in one mode, both started: GETs in turn, then each one's streams."""
    servers = {workers: service(f"{workers} worker(s)", env, workers, core=BOTH_CORES)
               for workers in (1, 2)}
    try:
        gets = gets_in_turn(servers, seconds)
        return [{"workers": workers, **gets[workers], **streams_phase(server, load, upstream_url)}
                for workers, server in servers.items()]
    finally:
        for server in servers.values():
            server.stop()


def instances_phase(base_env: dict, redis_url: str, load: LoadGenerator, upstream_url: str) -> dict:
    """2 instances on Redis against 1 without it, the same 5,000 streams, core 0 each."""
    results = {}
    single = service("one instance, no Redis", base_env)
    try:
        load("open", port=single.port, path="/api/public/bench-get/status/stream", count=STREAMS,
             marker="status_update")
        results["local"] = fanout(load, single.port, upstream_url)
        load("close_all")
    finally:
        single.stop()
    shared = {**base_env, "REDIS_URL": redis_url}
    a, b = service("instance A", shared), service("instance B", shared)
    try:
        http("GET", f"http://127.0.0.1:{a.port}/api/public/bench-get/status")   # A fetches
        for server in (a, b):
            load("open", port=server.port, path="/api/public/bench-get/status/stream", count=STREAMS // 2,
                 marker="status_update")
        results["redis"] = fanout(load, a.port, upstream_url)
        load("close_all")
        time.sleep(1)              # B done with its 2,500 hang-ups: a warm, idle instance
        results["first_event_b"] = load("first_event", port=b.port, count=300, marker="status_update",
                                        path="/api/public/bench-get/status/stream")
    finally:
        a.stop()
        b.stop()
    return results


def fanout(load: LoadGenerator, trigger_port: int, upstream_url: str, slug: str = "bench-get",
           changes: int = 5, timeout: float = 15) -> dict:
    """`changes` times: change one unit at the client API and force a refresh through
    `trigger_port`; the median p50 and p99 of its delivery to every open stream."""
    runs = []
    for _ in range(changes):
        http("GET", f"{upstream_url}/_flip?path=/{slug}")
        runs.append(load("deliver", port=trigger_port, method="POST",
                         path=f"/api/public/{slug}/status/refresh", marker="bulk_update",
                         timeout=timeout))
        time.sleep(0.5)
    median = lambda key: statistics.median(r[key] if r[key] is not None else math.inf for r in runs)  # noqa: E731
    return {"p50_ms": median("p50_ms"), "p99_ms": median("p99_ms"),
            "delivered": sum(r["delivered"] for r in runs), "expected": sum(r["expected"] for r in runs)}


def launch_phase(env: dict, load: LoadGenerator, upstream_url: str, upstream_port: int,
                 seconds: int, root: Path = ROOT) -> dict:
    server = service("launch day", {**env, "REFRESH_MIN_INTERVAL": str(LAUNCH["refresh_min_interval"]),
                                    "MAX_STREAMS": "20000"}, root=root)
    try:
        baseline_mb = server.rss_kb() / 1024
        cpu_before, before = server.cpu_seconds(), served(upstream_url, "/launch")
        called = time.monotonic()
        result = load("launch", port=server.port, path="/api/public/launch/status/stream",
                      count=LAUNCH["streams"], seconds=seconds,
                      reconnects_per_second=LAUNCH["reconnects_per_second"],
                      refreshes_per_second=LAUNCH["refreshes_per_second"],
                      refresh_path="/api/public/launch/status/refresh", units=LAUNCH["units"],
                      per_generation=LAUNCH["changes_per_second"], upstream_port=upstream_port)
        result["watched_seconds"] = time.monotonic() - called     # streams open, polls going
        result["cpu_seconds"] = server.cpu_seconds() - cpu_before
        result["rss_mb"], result["baseline_mb"] = server.rss_kb() / 1024, baseline_mb
        result["upstream_requests"] = served(upstream_url, "/launch") - before
    finally:
        server.stop()
    result["seconds"] = seconds
    return result


# --------------------------------------------------------------------------- report

def report(results: dict) -> str:
    shapes = {(r["workers"], r["mode"]): r for r in results["workers"]}
    lines = [f"public-status deployment shapes, {results['date']}, {results['machine']}", "",
             "Workers (the Procfile's command, unpinned on both cores; wrk and the stream load "
             "on core 1):", "",
             f"| workers | REDIS_URL | warm GET req/s (median of 3, in turn) | ratio to 1 worker | one change to {STREAMS:,} "
             "streams: p50 / p99 | delivered within 5 s | client API requests per interval |",
             "|---|---|---|---|---|---|---|"]
    for (workers, mode), r in sorted(shapes.items()):
        one = shapes[(1, mode)]
        lines.append(
            f"| {workers} | {mode} | {r['get_rps']:,.0f} | {r['get_rps'] / one['get_rps']:.2f} "
            f"| {r['fanout_p50_ms']:.0f} / {r['fanout_p99_ms']:.0f} ms "
            f"| {r['delivered']:,} / {r['expected']:,} | {r['upstream_per_interval']:.2f} |")
    inst = results["instances"]
    ratio = inst["redis"]["p99_ms"] / inst["local"]["p99_ms"]
    lines += ["", "Instances (each 1 worker on core 0; Redis and the load on core 1):", "",
              "| figure | 1 instance, no Redis | 2 instances on Redis | ratio | target |",
              "|---|---|---|---|---|",
              f"| one change to {STREAMS:,} streams, p99 (median of 5) | {inst['local']['p99_ms']:.0f} ms "
              f"| {inst['redis']['p99_ms']:.0f} ms | {ratio:.2f} | <= 1.5 |",
              f"| delivered | {inst['local']['delivered']:,} / {inst['local']['expected']:,} "
              f"| {inst['redis']['delivered']:,} / {inst['redis']['expected']:,} | | 100% |",
              f"| first status_update on the instance that did not fetch, p99 | | "
              f"{inst['first_event_b']['p99_ms']:.2f} ms | | <= 5 ms |"]
    day = results["launch"]
    # Polls: one a second while the project is watched (opening the streams, the launch,
    # the settling); refreshes: one per REFRESH_MIN_INTERVAL of the launch, and the first.
    polls = math.ceil(day["watched_seconds"])
    allowed = math.ceil(day["seconds"] / LAUNCH["refresh_min_interval"]) + 1
    lines += ["", f"Launch day (one worker, {day['seconds']} s): {LAUNCH['streams']:,} streams, "
              f"{LAUNCH['units']:,} units, {LAUNCH['changes_per_second']} units change a second, "
              f"{LAUNCH['reconnects_per_second']} reconnects and {LAUNCH['refreshes_per_second']} "
              "refreshes a second:", "",
              "| figure | value | target |", "|---|---|---|",
              f"| streams opened | {day['opened']:,} | {LAUNCH['streams']:,} |",
              f"| changes delivered | {day['delivered']:,} / {day['expected']:,} "
              f"({day['changes']} changes) | 100% |",
              f"| delivery to open streams, p50 / p99 / worst | {day['live']['p50_ms']:.0f} / "
              f"{day['live']['p99_ms']:.0f} / {day['live']['max_ms']:.0f} ms | p99 <= 250 ms |",
              f"| a viewer back from a drop, current after: p50 / p99 | "
              f"{fmt_ms(day['catching_up']['p50_ms'])} / {fmt_ms(day['catching_up']['p99_ms'])} "
              f"({day['catching_up']['delivered']:,} changes caught up) | |",
              f"| reconnects: resumed / full snapshot | {day['resumed']:,} / {day['full_on_reconnect']:,} "
              f"(of {day['reconnects']:,}) | |",
              f"| forced refreshes answered | {day['refreshes']} | most 429 |",
              f"| client API requests | {day['upstream_requests']} | at most polls ({polls}) + "
              f"refreshes allowed ({allowed}) = {polls + allowed} |",
              f"| worker CPU | {100 * day['cpu_seconds'] / day['seconds']:.0f}% of a core | |",
              f"| worker memory | {day['rss_mb']:.0f} MB ({day['baseline_mb']:.0f} MB before the streams) | |",
              f"| errors | {sum(day['errors'].values())} {day['errors']} | none |"]
    return "\n".join(lines)


def fmt_ms(value) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="longer runs")
    options = parser.parse_args()
    raise_open_files_limit()
    started = time.monotonic()
    upstream_url = start_client_api()
    upstream_port = int(upstream_url.rsplit(":", 1)[1])
    database = prepare_database(upstream_url)
    add_projects(database, upstream_url, ["launch"], 1)
    env = {"DATABASE_URL": database.reader_url, "STATUS_CACHE_TTL": "3600", "SSE_PING_INTERVAL": "3600",
           "REFRESH_MIN_INTERVAL": "0", "PROJECT_CACHE_TTL": "3600", "LOG_LEVEL": "WARNING",
           "MAX_STREAMS": "20000"}
    redis = RedisServer(core=LOAD_CORE)
    redis_url = redis.url
    load = LoadGenerator()
    results = {"date": time.strftime("%Y-%m-%d"),
               "machine": machine(), "workers": []}
    try:
        for mode, extra in (("no", {}), ("yes", {"REDIS_URL": redis_url})):
            subprocess.run(["redis-cli", "-u", redis_url, "FLUSHALL"], capture_output=True)
            for shape in workers_phase({**env, **extra}, load, upstream_url, 5 if options.full else 3):
                results["workers"].append({"mode": mode, **shape})
        subprocess.run(["redis-cli", "-u", redis_url, "FLUSHALL"], capture_output=True)
        results["instances"] = instances_phase(env, redis_url, load, upstream_url)
        results["launch"] = launch_phase(env, load, upstream_url, upstream_port, 60 if options.full else 30)
        results["load_cpu"] = load("quit")
    finally:
        for server in Server.started:
            server.stop()
        redis.stop()
    results["seconds"] = time.monotonic() - started
    save_results(results, "shapes")
    print(report(results))
    print(f"\n(run took {results['seconds']:.0f} s; raw figures in bench/results/)")


if __name__ == "__main__":
    main()
