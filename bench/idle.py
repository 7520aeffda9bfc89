"""`make idle`: what an idle viewer costs (issue "A viewer costs almost nothing").

In one run, one worker pinned to core 0, the load generator on core 1:

1. Held streams, for ours (this checkout), the peer (the code before: a checkout of
   `--peer`, by default the commit before the edge), the floor (bench/floor.py's bare
   gevent broadcast on gunicorn's gevent worker) and one send a stream (bench/sendfloor.py:
   a bare epoll loop, the least a fan-out of one send() per stream can take), at 10,000
   and at 19,000 streams (this machine lets a process hold 20,000 files): the worker's
   RSS growth per stream, then one change to all of them (p50 / p99 of its arrival,
   delivered; the median of CHANGES changes) and the worker's CPU per delivered message.
2. Warm GETs (wrk) and the first status_update's latency, ours and the peer's, in turn.
3. Launch day (bench/shapes.py's launch phase: 10,000 streams, 1,000 units, 5 changes a
   second, 1% reconnecting a second), ours and the peer's.
4. Where an idle stream's bytes go: our app in a process of this script's own, its
   allocations traced (tracemalloc) while N streams open, grouped by where they were made.

Figures print as tables (docs/benchmark.md keeps the latest); raw ones land in bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import (
    ROOT,
    LoadGenerator,
    Server,
    bench_command,
    http,
    machine,
    prepare_database,
    raise_open_files_limit,
    save_results,
    start_client_api,
    wrk,
)
from bench.shapes import launch_phase
from support import free_port

PEER = "2cc24f6"          # main before the edge: streams on pywsgi, a greenlet each
COUNTS = (10_000, 19_000)
CHANGES = 5               # changes fanned out to each count's streams: their median is the figure
STREAM = "/api/public/bench-get/status/stream"
TRIGGER = ("POST", "/api/public/bench-get/status/refresh")


def peer_checkout(commit: str) -> Path:
    """A worktree of `commit`, made for this run (git keeps the history)."""
    path = Path(tempfile.mkdtemp(prefix="peer-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(path), commit],
                   check=True)
    return path


def start(name: str, env: dict, root: Path = ROOT, app: str = "wsgi:app", floor: bool = False) -> Server:
    port = free_port()
    extra = ["--worker-connections", "20000"] + (["--worker-class", "gevent"] if floor else [])
    server = Server(name, bench_command(port, app, extra, root=root), port, env, root=root)
    if not floor:
        http("GET", f"http://127.0.0.1:{port}/api/public/bench-get/status")      # warm
    return server


def start_send_floor() -> Server:
    """bench/sendfloor.py: one send() per stream and nothing else, the least any fan-out
    that writes each stream's message with a send of its own can cost."""
    port = free_port()
    return Server("one send a stream", [sys.executable, str(ROOT / "bench" / "sendfloor.py"), str(port)], port)


def held_phase(server: Server, load: LoadGenerator, count: int, upstream_url: str, floor: bool) -> dict:
    """RSS growth per stream once `count` are open, then one change to all of them."""
    path, marker = ("/stream", "connected") if floor else (STREAM, "status_update")
    time.sleep(0.5)
    baseline = server.rss_kb()
    opened = load("open", port=server.port, path=path, count=count, marker=marker)
    time.sleep(2)
    grown_kb = server.rss_kb() - baseline
    runs, cpu = [], 0.0
    for _ in range(CHANGES):
        if not floor:
            http("GET", f"{upstream_url}/_flip?path=/bench-get")
        cpu_before = server.cpu_seconds()
        runs.append(load("deliver", port=server.port, method="POST",
                         path="/trigger" if floor else TRIGGER[1], marker="bulk_update", timeout=30))
        time.sleep(0.5)
        cpu += server.cpu_seconds() - cpu_before
    load("close_all")
    delivered = sum(run["delivered"] for run in runs)
    return {"opened": opened["ready"], "errors": opened["errors"],
            "kb_per_stream": grown_kb / max(1, opened["ready"]), "baseline_mb": baseline / 1024,
            "p50_ms": statistics.median(run["p50_ms"] for run in runs),
            "p99_ms": statistics.median(run["p99_ms"] for run in runs),
            "p99_range_ms": (min(run["p99_ms"] for run in runs), max(run["p99_ms"] for run in runs)),
            "delivered": delivered, "expected": sum(run["expected"] for run in runs),
            "cpu_us_per_message": 1e6 * cpu / max(1, delivered)}


def multiplexed_phase(env: dict, load: LoadGenerator, upstream_url: str, count: int) -> dict:
    """One change to `count` streams: single streams of one project, then (a fresh
    worker) multiplexed streams of three, the changed project among them."""
    figures = {}
    for kind, path in (("single", STREAM), ("multiplexed", "/api/public/status/stream?projects="
                                                          "bench-get,bench-mux-2,bench-mux-3")):
        server = start(kind, env)
        load("open", port=server.port, path=path, count=count, marker="status_update")
        time.sleep(1)
        runs = []
        for _ in range(5):
            http("GET", f"{upstream_url}/_flip?path=/bench-get")
            runs.append(load("deliver", port=server.port, method="POST", path=TRIGGER[1],
                             marker="bulk_update", timeout=30))
            time.sleep(0.5)
        load("close_all")
        server.stop()
        figures[kind] = {"p50_ms": statistics.median(r["p50_ms"] for r in runs),
                         "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                         "bytes_per_stream": statistics.median(r["bytes_per_stream"] for r in runs),
                         "delivered": sum(r["delivered"] for r in runs),
                         "expected": sum(r["expected"] for r in runs)}
    return figures


def polls_phase(env: dict, load: LoadGenerator, upstream_url: str, root: Path, seconds: int = 30) -> dict:
    """A 5,000-unit project whose document does not change, watched by one stream and
    polled every 0.5 s: the client API's bytes and the worker's CPU per poll."""
    path = "/bench-units"
    http("GET", f"{upstream_url}/_units?path={path}&units=5000")
    http("GET", f"{upstream_url}/_etag?path={path}")
    server = start("polls", env, root)
    load("open", port=server.port, path="/api/public/bench-units/status/stream", count=1,
         marker="status_update")
    time.sleep(2)
    served = lambda kind: json.loads(http("GET", f"{upstream_url}/_{kind}")).get(path, 0)  # noqa: E731
    requests_before, bytes_before, cpu_before = served("count"), served("bytes"), server.cpu_seconds()
    time.sleep(seconds)
    polls = served("count") - requests_before
    figures = {"polls": polls, "bytes_per_poll": (served("bytes") - bytes_before) / max(1, polls),
               "cpu_ms_per_poll": 1000 * (server.cpu_seconds() - cpu_before) / max(1, polls)}
    load("close_all")
    server.stop()
    return figures


def first_event(server: Server, load: LoadGenerator) -> dict:
    return load("first_event", port=server.port, path=STREAM, count=500, marker="status_update")


# --------------------------------------------------------------------------- itemized

def itemize(count: int) -> list[tuple[str, float]]:
    """Our app in a worker of this script's own (gevent patched first, as wsgi.py does;
    the edge serving a gevent StreamServer, as gunicorn's gevent worker would), its
    allocations traced while `count` streams open: bytes per stream by where they were
    made, the largest first."""
    upstream_url = start_client_api()
    database = prepare_database(upstream_url)
    port = free_port()
    worker = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, __file__, "--traced-worker", str(port), str(count)],
        cwd=ROOT, env={**os.environ, "DATABASE_URL": database.reader_url, "STATUS_CACHE_TTL": "3600",
                       "SSE_PING_INTERVAL": "3600", "PROJECT_CACHE_TTL": "3600", "LOG_LEVEL": "WARNING",
                       "MAX_STREAMS": "20000"},
        stdout=subprocess.PIPE, text=True)
    assert worker.stdout.readline().strip() == "ready"
    load = LoadGenerator()
    load("open", port=port, path=STREAM, count=count, marker="status_update")
    http("GET", f"http://127.0.0.1:{port}/_traced")          # the worker takes its snapshot
    sites = json.loads(worker.stdout.readline())
    load("quit")
    worker.terminate()
    worker.wait(10)
    return sites


def traced_worker(port: int, count: int) -> None:
    from gevent import monkey

    monkey.patch_all()
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()
    import gc
    import linecache
    import tracemalloc

    import gevent.server

    import public_service

    app = public_service.create_app()
    edge = app.extensions["public_status"].edge
    traced = {}

    def probe(environ, start_response):
        if environ["PATH_INFO"] == "/_traced":
            gc.collect()
            after = tracemalloc.take_snapshot()
            stats = after.compare_to(traced["before"], "lineno")
            sites = []
            for stat in stats[:20]:
                if stat.size_diff > 0:
                    frame = stat.traceback[0]
                    code = linecache.getline(frame.filename, frame.lineno).strip()[:70]
                    sites.append((f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} `{code}`",
                                  stat.size_diff / count))
            sites.append(("all traced", sum(stat.size_diff for stat in stats) / count))
            print(json.dumps(sites), flush=True)
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        return app(environ, start_response)

    worker = types.SimpleNamespace(wsgi=probe, log=None, worker_connections=20000,
                                   cfg=types.SimpleNamespace(accesslog=None))
    edge.serve_for(worker)
    server = gevent.server.StreamServer(("127.0.0.1", port), lambda client, address:
                                        edge.handle(server.socket, client, address))
    server.start()
    http("GET", f"http://127.0.0.1:{port}/api/public/bench-get/status")          # warm
    gc.collect()
    tracemalloc.start(1)
    traced["before"] = tracemalloc.take_snapshot()
    print("ready", flush=True)
    gevent.wait()


# --------------------------------------------------------------------------- report

def report(results: dict) -> str:
    lines = [f"What an idle viewer costs, {results['date']}, {results['machine']}", "",
             f"| streams | who | KB per stream (RSS) | one change: p50 / p99 (median of {CHANGES}) "
             "| p99 range | delivered | CPU per message |",
             "|---|---|---|---|---|---|---|"]
    for row in results["held"]:
        low, high = row.get("p99_range_ms", (row["p99_ms"], row["p99_ms"]))
        lines.append(f"| {row['count']:,} | {row['who']} | {row['kb_per_stream']:.2f} "
                     f"| {row['p50_ms']:.0f} / {row['p99_ms']:.0f} ms | {low:.0f}-{high:.0f} ms "
                     f"| {row['delivered']:,} / {row['expected']:,} | {row['cpu_us_per_message']:.1f} us |")
    gets = results["gets"]
    lines += ["", "| figure | ours | the peer | ratio |", "|---|---|---|---|",
              f"| warm GET, requests/s (median of 3, in turn) | {gets['ours']:,.0f} | {gets['peer']:,.0f} "
              f"| {gets['ours'] / gets['peer']:.2f} |",
              f"| first status_update, p50 / p99 (median of 3, in turn) | {results['first']['ours']['p50_ms']:.2f} / "
              f"{results['first']['ours']['p99_ms']:.2f} ms | {results['first']['peer']['p50_ms']:.2f} / "
              f"{results['first']['peer']['p99_ms']:.2f} ms | |"]
    for who, day in results["launch"].items():
        lines.append(f"| launch day ({who}): p50 / p99 / worst | {day['live']['p50_ms']:.0f} / "
                     f"{day['live']['p99_ms']:.0f} / {day['live']['max_ms']:.0f} ms, "
                     f"{day['delivered']:,} / {day['expected']:,} delivered, {day['rss_mb']:.0f} MB, "
                     f"{100 * day['cpu_seconds'] / day['seconds']:.0f}% CPU, errors {sum(day['errors'].values())} | | | |")
    mux = results["multiplexed"]
    lines += ["", "| one change to 5,000 streams | p50 / p99 | bytes per stream | delivered |",
              "|---|---|---|---|"]
    for kind, row in mux.items():
        lines.append(f"| {kind} | {row['p50_ms']:.0f} / {row['p99_ms']:.0f} ms | {row['bytes_per_stream']:.0f} "
                     f"| {row['delivered']:,} / {row['expected']:,} |")
    lines += ["", "| a 5,000-unit project, unchanged, polled every 0.5 s | client API bytes per poll "
              "| worker CPU per poll |", "|---|---|---|"]
    for who, row in results["polls"].items():
        lines.append(f"| {who} ({row['polls']} polls) | {row['bytes_per_poll']:,.0f} | {row['cpu_ms_per_poll']:.2f} ms |")
    lines += ["", f"Where an idle stream's bytes go (tracemalloc, {results['itemized_count']:,} streams):", "",
              "| allocated at | bytes per stream |", "|---|---|"]
    lines += [f"| {site} | {size:,.0f} |" for site, size in results["itemized"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", default=PEER, help="the commit to measure beside this checkout")
    parser.add_argument("--counts", default=",".join(map(str, COUNTS)))
    parser.add_argument("--launch-seconds", type=int, default=30)
    parser.add_argument("--traced-worker", nargs=2, type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.traced_worker:
        traced_worker(*options.traced_worker)
        return
    raise_open_files_limit()
    started = time.monotonic()
    counts = [int(count) for count in options.counts.split(",")]
    peer = peer_checkout(options.peer)
    upstream_url = start_client_api()
    upstream_port = int(upstream_url.rsplit(":", 1)[1])
    database = prepare_database(upstream_url)
    database.add_project("launch", base_url=upstream_url, interval=1)
    for slug in ("bench-mux-2", "bench-mux-3"):
        database.add_project(slug, base_url=upstream_url, interval=3600)
    database.add_project("bench-units", base_url=upstream_url, interval=0.5)
    env = {"DATABASE_URL": database.reader_url, "STATUS_CACHE_TTL": "3600", "SSE_PING_INTERVAL": "3600",
           "REFRESH_MIN_INTERVAL": "0", "PROJECT_CACHE_TTL": "3600", "LOG_LEVEL": "WARNING",
           "MAX_STREAMS": "20000"}
    load = LoadGenerator()
    results = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "peer": options.peer, "held": []}
    try:
        for count in counts:
            for who, root, app, floor in (("ours", ROOT, "wsgi:app", False), ("the peer", peer, "wsgi:app", False),
                                          ("the floor", ROOT, "bench.floor:broadcast_app", True),
                                          ("one send a stream", ROOT, None, True)):
                server = start_send_floor() if app is None else start(who, env, root, app, floor)
                print(f"{who}: {count} streams", file=sys.stderr, flush=True)
                results["held"].append({"count": count, "who": who,
                                        **held_phase(server, load, count, upstream_url, floor)})
                server.stop()
        ours, theirs = start("ours", env), start("the peer", env, peer)
        rounds = {"ours": [], "peer": []}
        for _ in range(3):
            rounds["ours"].append(wrk(ours.port, 5)["rps"])
            rounds["peer"].append(wrk(theirs.port, 5)["rps"])
        results["gets"] = {who: statistics.median(rps) for who, rps in rounds.items()}
        firsts = {"ours": [], "peer": []}
        for _ in range(3):                # in turn, so that the VM's drift falls on both
            firsts["ours"].append(first_event(ours, load))
            firsts["peer"].append(first_event(theirs, load))
        results["first"] = {who: {key: statistics.median(run[key] for run in runs)
                                  for key in ("p50_ms", "p99_ms")} for who, runs in firsts.items()}
        ours.stop()
        theirs.stop()
        results["multiplexed"] = multiplexed_phase(env, load, upstream_url, 5000)
        results["polls"] = {who: polls_phase(env, load, upstream_url, root)
                            for who, root in (("ours", ROOT), ("the peer", peer))}
        results["launch"] = {who: launch_phase(env, load, upstream_url, upstream_port,
                                               options.launch_seconds, root=root)
                             for who, root in (("ours", ROOT), ("the peer", peer))}
        load("quit")
    finally:
        for server in Server.started:
            server.stop()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(peer)], check=False)
    results["itemized_count"] = 5000
    results["itemized"] = itemize(results["itemized_count"])
    for server in Server.started:
        server.stop()
    results["seconds"] = time.monotonic() - started
    save_results(results, "idle")
    print(report(results))
    print(f"\n(run took {results['seconds']:.0f} s; raw figures in bench/results/)")


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    main()
