"""`python bench/tabs.py`: a visitor with five tabs on three projects, as the service sees it.

Headless Chromium (tests/browser.py) opens five tabs of a page that embeds the client
(projects a, b, c, a, b; 240 units each) against the service under gunicorn, through a
proxy of ours that counts connections and the bytes the service sends down them. Three
clients in turn, each on a fresh service:
  - today's: public-status.js as it was before it shared a connection (taken from git),
  - sharing: today's public-status.js,
  - sharing, {share: false}: the same with a stream per instance (its fallback).
For each: the streams the service holds (its metric), the connections on the wire, and
for ten changes (one unit of one project, by a refresh): the bytes on the wire per
change (gzip, as Chromium asks for it) and the time until every tab of the project shows
it. A change costs one message per stream that carries its project: today's client
sends it once per tab of the project, the sharing one once; but a multiplexed message is
bigger (its id names every project's position, its data the project). Figures are
printed, raw ones saved in bench/results/. A minute or so.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from bench.run import (  # noqa: E402
    Server,
    add_projects,
    gunicorn,
    http,
    machine,
    prepare_database,
    save_results,
    start_client_api,
)
from browser import Browser  # noqa: E402

QUIET_LOCK = Path("/tmp/public-status-quiet.lock")
PROJECTS = ["tabs-a", "tabs-b", "tabs-c"]
TABS = ["tabs-a", "tabs-b", "tabs-c", "tabs-a", "tabs-b"]
CHANGES = 10
UNIT = "101"                        # the unit bench/upstream.py's /_flip changes

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>tab</title></head>
<body><script>
  const params = new URLSearchParams(location.search);
  const api = params.get("api");
  window.seen = {};
  const script = document.createElement("script");
  script.src = params.get("client") === "today" ? "/today/public-status.js" : `${api}/public-status.js`;
  script.onload = () => {
    window.lives = params.get("projects").split(",").map((slug) => {
      const seen = window.seen[slug] = { statuses: null, at: 0 };
      return new PublicStatus(slug, { api, share: params.get("share") !== "false",
        onupdate(statuses) { seen.statuses = statuses; seen.at = Date.now() / 1000; } });
    });
  };
  document.head.append(script);
</script></body></html>"""


def todays_client() -> tuple[str, bytes]:
    """The last public-status.js of the git history that kept a stream per instance."""
    commits = subprocess.run(["git", "log", "--format=%H", "--", "public-status.js"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    for commit in commits:
        text = subprocess.run(["git", "show", f"{commit}:public-status.js"], cwd=ROOT,
                              capture_output=True, check=True).stdout
        if b"BroadcastChannel" not in text:
            return commit[:10], text
    raise SystemExit("no public-status.js without sharing in the history")


class CountingProxy:
    """127.0.0.1:<port> forwarded to the service; counts connections and the bytes the
    service sends down them (what a visitor's line carries)."""

    def __init__(self, target_port: int):
        self._target = target_port
        self._lock = threading.Lock()
        self.down = 0
        self.connections = 0
        self.open = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target))
            with self._lock:
                self.connections += 1
                self.open += 1
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, down: bool) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
                if down:
                    with self._lock:
                        self.down += len(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if down:
            with self._lock:
                self.open -= 1

    def stop(self) -> None:
        self._listener.close()


def serve_pages(today: bytes) -> str:
    """The embedding site: the page, and today's client for the run that uses it."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body, kind = ((today, "text/javascript") if self.path.startswith("/today/")
                          else (PAGE.encode(), "text/html; charset=utf-8"))
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def open_streams(port: int) -> int:
    text = http("GET", f"http://127.0.0.1:{port}/metrics").decode()
    return int(float(next(line.split()[-1] for line in text.splitlines()
                          if line.startswith("public_status_open_streams "))))


def visit(name: str, query: str, shared: bool, env: dict, site: str, upstream_url: str) -> dict:
    service = gunicorn("public-status", "wsgi:app", env)
    proxy = CountingProxy(service.port)
    try:
        with Browser() as browser:
            tabs = [browser.page] + [browser.new_tab() for _ in TABS[1:]]
            for tab, project in zip(tabs, TABS, strict=True):
                tab.goto(f"{site}/?api={proxy.url}&projects={project}&{query}")
            try:
                for tab in tabs:
                    tab.wait_for("window.lives && lives[0].state === 'live' && "
                                 "Object.keys(seen[lives[0].project].statuses || {}).length === 240", 20)
            except AssertionError:
                shown = [tab.evaluate("JSON.stringify(window.lives && lives.map((l) => [l.project, "
                                      "l.state, l.stats]))") for tab in tabs]
                raise SystemExit(f"{name}: not every tab went live: {shown}") from None
            time.sleep(1)                         # streams reopened while tabs came, let go of
            held = {"streams": open_streams(service.port), "connections": proxy.open}
            per_change, per_message, reach = [], [], []
            for n in range(CHANGES):
                project = PROJECTS[n % len(PROJECTS)]
                mine = [tab for tab, p in zip(tabs, TABS, strict=True) if p == project]
                before = mine[0].evaluate(f"seen['{project}'].statuses['{UNIT}']")
                down = proxy.down
                http("GET", f"{upstream_url}/_flip?path=/{project}")
                changed_at = time.time()
                http("POST", f"http://127.0.0.1:{service.port}/api/public/{project}/status/refresh")
                for tab in mine:
                    tab.wait_for(f"seen['{project}'].statuses['{UNIT}'] !== '{before}'", 5)
                time.sleep(0.3)                   # every byte of it, to every tab
                per_change.append(proxy.down - down)
                per_message.append(per_change[-1] / (1 if shared else len(mine)))   # one per stream
                reach.append(max(tab.evaluate(f"seen['{project}'].at") for tab in mine) - changed_at)
    finally:
        proxy.stop()
        service.stop()
    return {"client": name, **held, "bytes_per_change": sum(per_change) / len(per_change),
            "bytes_per_change_each": per_change,
            "bytes_per_message": sum(per_message) / len(per_message),
            "reach_ms_max": max(reach) * 1000, "reach_ms_median": sorted(reach)[len(reach) // 2] * 1000}


def wait_for_quiet() -> None:
    while QUIET_LOCK.exists():
        print(f"{QUIET_LOCK} exists: someone is timing things; waiting", flush=True)
        time.sleep(30)


def main() -> None:
    wait_for_quiet()
    commit, today = todays_client()
    upstream_url = start_client_api()
    database = prepare_database(upstream_url)
    add_projects(database, upstream_url, PROJECTS, interval=3600)
    env = {"DATABASE_URL": database.reader_url, "STATUS_CACHE_TTL": "3600", "SSE_PING_INTERVAL": "3600",
           "REFRESH_MIN_INTERVAL": "0", "PROJECT_CACHE_TTL": "3600", "LOG_LEVEL": "WARNING"}
    site = serve_pages(today)
    runs = [(f"today's ({commit})", "client=today", False), ("sharing", "client=new", True),
            ("sharing, {share: false}", "client=new&share=false", False)]
    results = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "tabs": TABS, "runs": []}
    try:
        for name, query, shared in runs:
            results["runs"].append(visit(name, query, shared, env, site, upstream_url))
    finally:
        for server in Server.started:
            server.stop()
    save_results(results, "tabs")
    print(f"\nA visitor with {len(TABS)} tabs on {len(PROJECTS)} projects (240 units each), "
          f"{CHANGES} changes of one unit ({machine()}):\n")
    print(f"{'client':<28}{'streams':>8}{'conns':>7}{'bytes/change':>14}{'bytes/message':>15}"
          f"{'reach ms (median/max)':>24}")
    for run in results["runs"]:
        print(f"{run['client']:<28}{run['streams']:>8}{run['connections']:>7}"
              f"{run['bytes_per_change']:>14.0f}{run['bytes_per_message']:>15.0f}"
              f"{run['reach_ms_median']:>14.1f} / {run['reach_ms_max']:.1f}")
    print("\n(streams: the service's metric; conns: connections open through the counting proxy,"
          "\n a stream each and any idle keep-alive; a change reaches every tab of its project)")


if __name__ == "__main__":
    main()
