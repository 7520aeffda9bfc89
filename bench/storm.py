"""`make storm`: a deploy, as the viewers live through it.

5,000 streams on five projects are open on instance A; instance B is up beside it; A gets
SIGTERM. Every stream is sent away with a `retry:` of its own, and the load generator
(bench/load.py, on the other core) brings each back to B after that delay, as an
EventSource would, with the last id it saw as Last-Event-ID. Three runs: without
REDIS_URL (B is a new epoch: every viewer downloads the whole snapshot again), with it
(B shares the epoch and the history: a viewer that was current gets nothing but
`connected`), and with it but clients that send no id (what resume saves).

Printed: how the reconnects spread over time (per 100 ms), the time until 99% are back
and current, the bytes per reconnect, the client API requests the storm caused, errors.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import (
    LOAD_CORE,
    LoadGenerator,
    Server,
    add_projects,
    gunicorn,
    http,
    prepare_database,
    raise_open_files_limit,
    save_results,
    served_counts,
    start_client_api,
)
from support import RedisServer

STREAMS, PROJECTS = int(os.environ.get("STORM_STREAMS", "5000")), 5


def run(mode: str, env: dict, slugs: list[str], upstream_url: str, resume: bool) -> dict:
    load = LoadGenerator()
    a = gunicorn("instance A", "wsgi:app", env)
    b = gunicorn("instance B", "wsgi:app", env)
    for slug in slugs:                      # A warm, as after a while of serving; B new
        http("GET", f"http://127.0.0.1:{a.port}/api/public/{slug}/status")
    paths = [f"/api/public/{slug}/status/stream" for slug in slugs]
    opened = load("storm_open", port=a.port, paths=paths, count=STREAMS)
    before = served_counts(upstream_url)
    a.process.terminate()
    followed = load("storm_follow", port=b.port, resume=resume)
    after = served_counts(upstream_url)
    b.stop()
    a.stop()
    load("quit")
    results = followed["results"]
    reconnected = sorted(r["reconnected"] for r in results)
    current = sorted(r["current"] for r in results)
    spread = [0] * 100
    for t in reconnected:
        spread[min(99, int(t * 10))] += 1
    busy = [n for n in spread if n]
    return {
        "mode": mode, "opened": opened, "errors": followed["errors"], "lost": followed["lost"],
        "back": len(results),
        "first_reconnect_s": reconnected[0] if reconnected else None,
        "last_reconnect_s": reconnected[-1] if reconnected else None,
        "reconnects_per_100ms_max": max(busy) if busy else 0,
        "reconnects_per_100ms_median": statistics.median(busy) if busy else 0,
        "spread_per_100ms": spread,
        "p99_current_s": current[int(len(current) * 0.99) - 1] if current else None,
        "p99_reconnect_to_current_ms": 1000 * sorted(r["current"] - r["reconnected"] for r in results)[
            int(len(results) * 0.99) - 1] if results else None,
        "bytes_per_reconnect": statistics.mean(r["bytes"] for r in results) if results else None,
        "resumed": sum(r["resumed"] for r in results),
        "upstream_requests": sum(after.get(f"/{s}", 0) - before.get(f"/{s}", 0) for s in slugs),
    }


def main() -> None:
    raise_open_files_limit()
    upstream_url = start_client_api()
    database = prepare_database(upstream_url)
    slugs = add_projects(database, upstream_url, [f"storm-{n}" for n in range(1, PROJECTS + 1)], 30)
    base = {"DATABASE_URL": database.reader_url, "LOG_LEVEL": "WARNING", "MAX_STREAMS": "20000",
            "SSE_PING_INTERVAL": "30"}
    redis = RedisServer(core=LOAD_CORE)
    redis_url = redis.url
    reports = []
    try:
        reports.append(run("local (no REDIS_URL)", base, slugs, upstream_url, resume=True))
        shared = {**base, "REDIS_URL": redis_url}
        reports.append(run("REDIS_URL, resume", shared, slugs, upstream_url, resume=True))
        reports.append(run("REDIS_URL, no Last-Event-ID", shared, slugs, upstream_url, resume=False))
    finally:
        for server in Server.started:
            server.stop()
        redis.stop()
    save_results(reports, "storm")
    print(f"storm: {STREAMS:,} streams on {PROJECTS} projects, SIGTERM to A, all back on B "
          f"({os.cpu_count()} cores)\n")
    print("| run | back / opened | errors | 99% current after | reconnect to current, p99 "
          "| reconnects: first-last, max (median) per 100 ms | bytes per reconnect | resumed "
          "| client API requests |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in reports:
        print(f"| {r['mode']} | {r['back']:,} / {r['opened']['ready']:,} | {r['errors'] + r['lost']} "
              f"| {r['p99_current_s']:.2f} s | {r['p99_reconnect_to_current_ms']:.1f} ms "
              f"| {r['first_reconnect_s']:.1f}-{r['last_reconnect_s']:.1f} s, "
              f"{r['reconnects_per_100ms_max']} ({r['reconnects_per_100ms_median']:.0f}) "
              f"| {r['bytes_per_reconnect']:,.0f} | {r['resumed']:,} | {r['upstream_requests']} |")


if __name__ == "__main__":
    main()
