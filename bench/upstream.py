"""The benchmark's client API: one status document per path, a way to change one unit,
a launch (units changing on a schedule), and a request counter. gevent's WSGI server,
so it is never the slow part."""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from urllib.parse import parse_qs  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

UNITS = [f"{floor}{unit:02d}" for floor in range(1, 16) for unit in range(1, 17)]  # 240
CYCLE = ("open", "held", "closed")
documents: dict[str, dict[str, str]] = {}
requests_by_path: dict[str, int] = {}
bytes_by_path: dict[str, int] = {}      # body bytes served
validated: set[str] = set()             # paths whose answers carry an ETag (and may be 304s)
# A launch: generation g (1, 2, ...) changes units 5g .. 5g+4 (launch_unit(n)); "served"
# holds the monotonic time (one clock for every process of the machine) at which a
# document holding g was first served.
launches: dict[str, dict] = {}


def launch_unit(n: int) -> str:
    return f"L{n:04d}"


def run_launch(path: str, units: int, per_second: int) -> None:
    launch = launches[path]
    statuses = documents[path]
    while launch["running"]:
        gevent.sleep(1.0)
        generation = launch["generation"] + 1
        for n in range(generation * per_second, (generation + 1) * per_second):
            unit = launch_unit(n % units)
            statuses[unit] = CYCLE[(CYCLE.index(statuses[unit]) + 1) % len(CYCLE)]
        launch["generation"] = generation


def app(environ, start_response):
    path = environ["PATH_INFO"]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/_flip":       # change the first unit of ?path=
        statuses = documents.setdefault(query["path"][0], {u: "open" for u in UNITS})
        statuses[UNITS[0]] = "closed" if statuses[UNITS[0]] == "open" else "open"
        body = b"{}"
    elif path == "/_count":    # requests served per path
        body = json.dumps(requests_by_path).encode()
    elif path == "/_bytes":    # body bytes served per path
        body = json.dumps(bytes_by_path).encode()
    elif path == "/_units":    # ?path=&units=5000: a document of that many units
        documents[query["path"][0]] = {f"U{n:05d}": "open" for n in range(int(query["units"][0]))}
        body = b"{}"
    elif path == "/_etag":     # ?path=: its answers carry an ETag, and a match gets a 304
        validated.add(query["path"][0])
        body = b"{}"
    elif path == "/_launch":   # ?path=&units=1000&per_second=5 sets it up, &go=1 starts
        target = query["path"][0]   # the changes, &stop=1 stops them: when each was served
        body = b"{}"
        if "stop" in query:
            launches[target]["running"] = False
            body = json.dumps(launches[target]["served"]).encode()
        elif "go" in query:
            launch = launches[target]
            launch["running"] = True
            gevent.spawn(run_launch, target, launch["units"], launch["per_second"])
        else:
            units, per_second = int(query["units"][0]), int(query["per_second"][0])
            documents[target] = {launch_unit(n): "open" for n in range(units)}
            launches[target] = {"generation": 0, "served": {}, "running": False,
                                "units": units, "per_second": per_second}
    else:
        requests_by_path[path] = requests_by_path.get(path, 0) + 1
        body = json.dumps(documents.setdefault(path, {u: "open" for u in UNITS})).encode()
        if path in validated:
            etag = f'"{hash(body) & 0xFFFFFFFFFFFF:x}"'
            if environ.get("HTTP_IF_NONE_MATCH") == etag:
                start_response("304 Not Modified", [("ETag", etag)])
                return [b""]
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body))), ("ETag", etag)])
            bytes_by_path[path] = bytes_by_path.get(path, 0) + len(body)
            return [body]
        bytes_by_path[path] = bytes_by_path.get(path, 0) + len(body)
        launch = launches.get(path)
        if launch is not None:      # every generation this document holds for the first time
            now = time.monotonic()
            for generation in range(len(launch["served"]) + 1, launch["generation"] + 1):
                launch["served"][generation] = now
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


if __name__ == "__main__":
    server = WSGIServer(("127.0.0.1", int(sys.argv[1])), app, log=None)
    server.serve_forever()
