"""`make attack`: the edge findings, probed as an attacker would, with their figures.

Each probe of the "Hold the edge" issue runs against the Procfile's command (one
worker, loopback), and prints what it measured. Run it on two checkouts to compare:

    python bench/attack.py                 # this checkout
    python bench/attack.py --root ../old   # another one (its public_service, wsgi, Procfile)
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
import support  # noqa: E402
from support import MACHINE_POSTGRES, Database, Upstream, metric  # noqa: E402

DATABASE, ROLE = "public_status_attack", "public_status_attack_reader"


class Service(support.Service):
    """The Procfile's command from the checkout at `root`, on a free loopback port,
    without the access log; `stop()` says how long SIGTERM took."""

    def __init__(self, root: Path, env: dict, extra: list[str] = ()):
        super().__init__(env, extra_args=list(extra), root=root, access_log=False)

    @property
    def lines(self) -> list[str]:
        return self.logs().splitlines()

    def rss_kb(self) -> int:
        status = Path(f"/proc/{self.worker_pids()[-1]}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))

    def stop(self) -> float:
        started = time.monotonic()
        super().stop(timeout=60)
        return time.monotonic() - started


def timed_get(url: str, timeout: float = 10, method: str = "GET") -> tuple[float, str]:
    started = time.monotonic()
    try:
        status = str(requests.request(method, url, timeout=timeout).status_code)
    except requests.RequestException as exc:
        status = type(exc).__name__
    return time.monotonic() - started, status


def connections(port: int, count: int, first_bytes: bytes = b"") -> list[socket.socket]:
    socks = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            break
        if first_bytes:
            sock.sendall(first_bytes)
        socks.append(sock)
    return socks


def still_open(socks: list[socket.socket]) -> int:
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    closed = set()
    for key, _ in selector.select(timeout=0.2):
        try:                              # past any answer not read yet, to the end, if any
            while data := key.fileobj.recv(65536):
                del data
            closed.add(key.fileobj)
        except BlockingIOError:
            pass
        except OSError:
            closed.add(key.fileobj)
    selector.close()
    return len(socks) - len(closed)


def close_all(socks):
    for sock in socks:
        sock.close()


# --------------------------------------------------------------------------- probes

def probe_idle_flood(root, env, slug):
    service = Service(root, env)
    requests.get(f"{service.url}/api/public/{slug}/status", timeout=5)
    idle = connections(service.port, 12_005)
    time.sleep(1)
    healthz = timed_get(service.url + "/healthz", timeout=5)
    get = timed_get(f"{service.url}/api/public/{slug}/status", timeout=5)
    close_all(idle)
    service.stop()
    return {"idle connections opened": len(idle),
            "/healthz with them open": f"{healthz[1]} in {healthz[0] * 1000:.0f} ms",
            "warm GET with them open": f"{get[1]} in {get[0] * 1000:.0f} ms"}


def probe_owed_bodies(root, env, slug):
    """12,010 connections that declare a body and never send it (HEADER_TIMEOUT 3 s,
    KEEPALIVE_TIMEOUT 5 s, as the issue found them): the service's answers meanwhile, and
    how many are still held after 8 s."""
    service = Service(root, {**env, "HEADER_TIMEOUT": "3", "KEEPALIVE_TIMEOUT": "5"})
    requests.get(f"{service.url}/api/public/{slug}/status", timeout=5)
    owing = connections(service.port, 12_010,
                        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 16000\r\n\r\n")
    time.sleep(1)
    healthz = timed_get(service.url + "/healthz", timeout=5)
    get = timed_get(f"{service.url}/api/public/{slug}/status", timeout=5)
    time.sleep(7)
    held = still_open(owing)
    close_all(owing)
    service.stop()
    return {"connections owing a body": len(owing),
            "/healthz with them open": f"{healthz[1]} in {healthz[0] * 1000:.0f} ms",
            "warm GET with them open": f"{get[1]} in {get[0] * 1000:.0f} ms",
            "still held 8 s later": held}


def probe_accept_encoding(root, env, slug):
    """The worker's CPU for a GET whose head holds 97 lines of Accept-Encoding tokens,
    against a head of the same size under another name."""
    service = Service(root, env)
    requests.get(f"{service.url}/api/public/{slug}/status", timeout=5)
    tokens = "identity;q=0.5, " * 500

    def cpu_ms_per_request(name: str) -> float:
        lines = "".join(f"{name}: {tokens}\r\n" for _ in range(97))
        data = f"GET /api/public/{slug}/status HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode()
        before = service_cpu(service)
        for _ in range(20):
            raw(service.port, data, wait=5)
        return (service_cpu(service) - before) * 1000 / 20

    figures = {"CPU per request, 97 lines of Accept-Encoding tokens":
               f"{cpu_ms_per_request('Accept-Encoding'):.1f} ms",
               "CPU per request, the same lines under X-Padding": f"{cpu_ms_per_request('X-Padding'):.1f} ms"}
    service.stop()
    return figures


def service_cpu(service) -> float:
    fields = Path(f"/proc/{service.worker_pids()[-1]}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


SMUGGLED = {
    "two Content-Lengths": b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 35\r\n\r\n",
    "Content-Length and Transfer-Encoding: Chunked":
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n",
    "a bare CR": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\rContent-Length: 0\r\n\r\n",
    "a space before a colon": b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length : 35\r\n\r\n",
    "a NUL in a header name": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX\x00A: 1\r\n\r\n",
    "Transfer-Encoding: gzip": b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    "no Host": b"GET /healthz HTTP/1.1\r\n\r\n",
    "two Hosts": b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "a Content-Length with 19 leading zeros":
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 000000000000000000033\r\n\r\n",
}


def probe_smuggling(root, env):
    """Each framing a front end could read another way, with a request hidden behind it:
    how many answers came (2: the hidden request was served)."""
    service = Service(root, env)
    hidden = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
    figures = {}
    for name, head in SMUGGLED.items():
        answer = raw(service.port, head + hidden, wait=2)
        served = len(re.findall(rb"HTTP/1\.[01] \d{3} ", answer))
        figures[name] = f"{served} answer(s), hidden request {'SERVED' if b'ready' in answer else 'not served'}"
    service.stop()
    return figures


def probe_backtracking_heads(root, env):
    """The worker's CPU for a head whose one header line is spaces up to the field's bound
    then a control byte (a regex that backtracks tries every split of the spaces),
    against the same line ending in a letter."""
    service = Service(root, env)
    spaces = b" " * 8180

    def cpu_ms_per_request(last: bytes) -> float:
        data = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX:" + spaces + last + b"\r\nConnection: close\r\n\r\n"
        before = service_cpu(service)
        for _ in range(10):
            raw(service.port, data, wait=5)
        return (service_cpu(service) - before) * 1000 / 10

    hostile, plain = cpu_ms_per_request(b"\x01"), cpu_ms_per_request(b"a")
    figures = {"CPU per request, a line of spaces ending in \\x01": f"{hostile:.1f} ms",
               "CPU per request, the same line ending in a letter": f"{plain:.1f} ms"}
    service.stop()
    return figures


def probe_one_byte_heads(root, env):
    """Near the cap (200 connections a worker), 300 connections that each sent one byte
    of a head: how long a newcomer's GET /healthz takes."""
    service = Service(root, {**env, "HEADER_TIMEOUT": "30"}, extra=["--worker-connections", "200"])
    begun = connections(service.port, 300, b"G")
    time.sleep(0.5)
    took, status = timed_get(f"{service.url}/healthz", timeout=5)
    close_all(begun)
    service.stop()
    return {"GET /healthz beside 300 one-byte heads, cap 200": f"{status} in {took * 1000:.0f} ms"}


def probe_sigterm_lingering(root, env, database, upstream):
    """SIGTERM while a refresh that declared a body (which never comes) is in progress:
    how long until the worker has exited (gunicorn's graceful timeout is 20 s)."""
    slug = database.add_project(database.unique_slug("linger"), base_url=upstream.url)
    upstream.set_statuses(f"/{slug}", {"A1": "open"}, delay=1.5)
    service = Service(root, {**env, "HEADER_TIMEOUT": "1", "DEFAULT_POLL_INTERVAL": "60"})
    sock = socket.create_connection(("127.0.0.1", service.port))
    sock.sendall(f"POST /api/public/{slug}/status/refresh HTTP/1.1\r\nHost: x\r\n"
                 "Content-Length: 5\r\n\r\n".encode())
    time.sleep(0.3)
    took = service.stop()
    sock.close()
    return {"SIGTERM to exit, one lingering close in progress": f"{took:.1f} s"}


def probe_slow_heads(root, env):
    service = Service(root, env)
    rss = service.rss_kb()
    slow = connections(service.port, 1000, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    for _ in range(6):                       # a header byte every 2 s, for 12 s
        for sock in slow:
            try:
                sock.sendall(b"X")
            except OSError:
                pass
        time.sleep(2)
    open_after = still_open(slow)
    grown = service.rss_kb() - rss
    close_all(slow)
    service.stop()
    return {"slow-head connections still open after 12 s (of 1,000)": open_after,
            "memory they held": f"{grown / 1000:.1f} KB each"}


def probe_sigterm_half_sent(root, env):
    service = Service(root, env)
    half = connections(service.port, 3000, b"GET /api/public/x/status HTTP/1.1\r\nHost: x\r\n")
    time.sleep(1)
    took = service.stop()
    close_all(half)
    return {"SIGTERM to exit, 3,000 half-sent requests open": f"{took:.1f} s"}


def flood(port, paths, concurrency=3000):
    statuses, latencies = [], []
    selector = selectors.DefaultSelector()
    started = {}
    for path in paths[:concurrency]:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, b"")
        started[sock] = time.monotonic()
    deadline = time.monotonic() + 60
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1):
            try:
                data = key.fileobj.recv(65536)
            except OSError:
                data = b""
            buffer = key.data + data
            if data and b"\r\n\r\n" not in buffer:
                selector.modify(key.fileobj, selectors.EVENT_READ, buffer)
                continue
            statuses.append(buffer.split()[1].decode() if buffer else "closed")
            latencies.append(time.monotonic() - started[key.fileobj])
            selector.unregister(key.fileobj)
            key.fileobj.close()
    return statuses, latencies


def probe_unknown_flood(root, env, slug, pool=None):
    service = Service(root, {**env, **(pool or {})})
    known = f"{service.url}/api/public/{slug}/status"
    requests.get(known, timeout=5)
    side, stop = {"known": [], "readyz": []}, threading.Event()

    def watch():
        while not stop.is_set():
            side["known"].append(timed_get(known))
            side["readyz"].append(timed_get(service.url + "/readyz"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    statuses, _ = flood(service.port, [f"/api/public/made-up-{n}/status" for n in range(3000)])
    stop.set()
    watcher.join()
    counts = {status: statuses.count(status) for status in sorted(set(statuses))}
    worst_known = max(side["known"])
    readyz = sorted(s for s, _ in side["readyz"])
    result = {"settings": pool or "defaults (5 connections, DB_TIMEOUT 5)",
              "3,000 unknown slugs answered": counts,
              "database errors counted": metric(service.url, "public_status_db_errors_total", default=0.0),
              "'database unavailable' logged": any("database unavailable" in x for x in service.lines),
              "/readyz during": {s: [r[1] for r in side["readyz"]].count(s) for s in {r[1] for r in side["readyz"]}},
              "/readyz p99": f"{readyz[int(len(readyz) * 0.99) - 1] * 1000:.0f} ms" if readyz else "-",
              "known project during": f"worst {worst_known[0] * 1000:.0f} ms, "
                                      f"{[k[1] for k in side['known']].count('200')}/{len(side['known'])} 200"}
    service.stop()
    return result


def probe_cookies(root, env, database, upstream):
    setter = database.add_project("cookie-setter", base_url=upstream.url)
    other = database.add_project("cookie-other", base_url=upstream.url)
    upstream.set_statuses(f"/{setter}", {"A1": "open"}, cookies_per_answer=95)
    upstream.set_statuses(f"/{other}", {"A1": "open"})
    service = Service(root, {**env, "REFRESH_MIN_INTERVAL": "0"})
    rss = service.rss_kb()
    for _ in range(47):
        requests.post(f"{service.url}/api/public/{setter}/status/refresh", timeout=30)
    requests.post(f"{service.url}/api/public/{other}/status/refresh", timeout=30)
    seen = [r for r in upstream.seen if r.path in (f"/{setter}", f"/{other}")]
    grown = service.rss_kb() - rss
    service.stop()
    return {"largest Cookie header sent to the setter's API": f"{max(len(r.headers.get('Cookie', '')) for r in seen):,} bytes",
            "cookies sent to the other project's API": len((seen[-1].headers.get("Cookie") or "").split(";")) if seen[-1].headers.get("Cookie") else 0,
            "worker memory grown": f"{grown / 1024:.0f} MB"}


def probe_hostile_config(root, env, database, upstream):
    slug = database.add_project("nan-interval", base_url=upstream.url, interval="NaN")
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    tiny = database.add_project("tiny-interval", base_url=upstream.url, interval=0.001)
    upstream.set_statuses(f"/{tiny}", {"A1": "open"})
    service = Service(root, env)
    get = timed_get(f"{service.url}/api/public/{slug}/status")
    stream = requests.get(f"{service.url}/api/public/{slug}/status/stream", timeout=5, stream=True)
    kind = f"{stream.status_code} {stream.headers.get('Content-Type')}"
    stream.close()
    watch = requests.get(f"{service.url}/api/public/{tiny}/status/stream", timeout=5, stream=True)
    before = upstream.count(f"/{tiny}")
    time.sleep(2)
    rate = (upstream.count(f"/{tiny}") - before) / 2
    watch.close()
    service.stop()
    return {"NaN polling interval: GET": get[1], "NaN polling interval: stream": kind,
            "0.001 s polling interval: requests/s to the client API": f"{rate:.0f}"}


def raw(port, data, wait=2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return answer


def probe_heads_and_bodies(root, env, slug):
    service = Service(root, env)
    big = raw(service.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: "
              + b"b" * 16_000 + b"\r\n\r\n")
    head = raw(service.port, f"HEAD /api/public/{slug}/status/stream HTTP/1.1\r\nHost: x\r\n\r\n"
               "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    stray = head.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1", 1)[0]
    sock = socket.create_connection(("127.0.0.1", service.port))
    sock.sendall(f"POST /api/public/{slug}/status/refresh HTTP/1.1\r\nHost: x\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    sent, started, latencies, stopped = 0, time.monotonic(), [], threading.Event()

    def probe():
        while not stopped.is_set():
            latencies.append(timed_get(service.url + "/healthz")[0])

    prober = threading.Thread(target=probe)
    prober.start()
    sock.settimeout(1)
    try:
        while time.monotonic() - started < 10:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    took = time.monotonic() - started
    stopped.set()
    prober.join()
    sock.close()
    latencies.sort()
    service.stop()
    return {"16 KB header line": big.split(b"\r\n", 1)[0].decode(),
            "bytes between a HEAD's headers and the next answer": repr(stray),
            "endless chunked POST": f"{sent / 1e6:,.1f} MB taken in {took:.1f} s",
            "/healthz p99 meanwhile": f"{latencies[int(len(latencies) * 0.99) - 1] * 1000:.0f} ms"}


def probe_large_document(root, env, database, upstream, warm):
    units = {f"U{n:06d}": "open" for n in range(460_000)}
    slug = database.add_project("large", base_url=upstream.url, timeout=60)
    upstream.set_statuses(f"/{slug}", units)
    service = Service(root, {**env, "REFRESH_MIN_INTERVAL": "0", "MAX_UPSTREAM_BYTES": "50000000"})
    requests.get(f"{service.url}/api/public/{warm}/status", timeout=5)
    results = {}
    for label, change in (("first fetch", False), ("unchanged", False), ("one unit changed", True)):
        if change:
            upstream.set_statuses(f"/{slug}", {**units, "U000000": "closed"})
        latencies, done = [], threading.Event()

        def probe(latencies=latencies, done=done):
            while not done.is_set():
                latencies.append(timed_get(f"{service.url}/api/public/{warm}/status")[0])

        prober = threading.Thread(target=probe)
        prober.start()
        took, status = timed_get(f"{service.url}/api/public/{slug}/status/refresh", 120, "POST")
        done.set()
        prober.join()
        worst = max(latencies, default=0) * 1000
        results[f"460,000 units, {label}"] = (f"{status} in {took:.2f} s; other project's GETs "
                                              f"meanwhile: {len(latencies)}, worst {worst:.0f} ms")
    service.stop()
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE, help="the checkout to probe")
    parser.add_argument("--only", help="comma-separated probe names")
    options = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    root = options.root.resolve()
    database = Database.create(MACHINE_POSTGRES, DATABASE, ROLE)
    env = {"DATABASE_URL": database.reader_url, "LOG_LEVEL": "WARNING", "PORT": "0"}
    report = {"checkout": str(root),
              "commit": subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True).stdout.strip()}
    with Upstream() as upstream:
        warm = database.add_project("warm", base_url=upstream.url)
        upstream.set_statuses(f"/{warm}", {f"{f}{u:02d}": "open" for f in range(1, 16) for u in range(1, 17)})
        probes = {
            "idle": lambda: probe_idle_flood(root, env, warm),
            "owed": lambda: probe_owed_bodies(root, env, warm),
            "tokens": lambda: probe_accept_encoding(root, env, warm),
            "smuggling": lambda: probe_smuggling(root, env),
            "slow": lambda: probe_slow_heads(root, env),
            "backtrack": lambda: probe_backtracking_heads(root, env),
            "one-byte": lambda: probe_one_byte_heads(root, env),
            "linger": lambda: probe_sigterm_lingering(root, env, database, upstream),
            "sigterm": lambda: probe_sigterm_half_sent(root, env),
            "flood": lambda: probe_unknown_flood(root, env, warm),
            "flood-tight-pool": lambda: probe_unknown_flood(
                root, env, warm, {"DB_POOL_SIZE": "1", "DB_TIMEOUT": "0.5"}),
            "cookies": lambda: probe_cookies(root, env, database, upstream),
            "config": lambda: probe_hostile_config(root, env, database, upstream),
            "heads": lambda: probe_heads_and_bodies(root, env, warm),
            "large": lambda: probe_large_document(root, env, database, upstream, warm),
        }
        chosen = options.only.split(",") if options.only else list(probes)
        for name in chosen:
            print(f"-- {name}", flush=True)
            figures = probes[name]()
            report[name] = figures
            for figure, value in figures.items():
                print(f"   {figure}: {value}", flush=True)
    out = HERE / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{time.strftime('%Y%m%d-%H%M%S')}-attack-{report['commit']}.json").write_text(
        json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
