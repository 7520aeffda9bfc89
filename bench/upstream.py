"""The benchmark's client API: one status document per path, a way to change one unit,
and a request counter. gevent's WSGI server, so it is never the slow part."""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
from urllib.parse import parse_qs  # noqa: E402

from gevent.pywsgi import WSGIServer  # noqa: E402

UNITS = [f"{floor}{unit:02d}" for floor in range(1, 16) for unit in range(1, 17)]  # 240
documents: dict[str, dict[str, str]] = {}
requests_by_path: dict[str, int] = {}


def app(environ, start_response):
    path = environ["PATH_INFO"]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/_flip":       # change the first unit of ?path=
        statuses = documents.setdefault(query["path"][0], {u: "open" for u in UNITS})
        statuses[UNITS[0]] = "closed" if statuses[UNITS[0]] == "open" else "open"
        body = b"{}"
    elif path == "/_count":    # requests served per path
        body = json.dumps(requests_by_path).encode()
    else:
        requests_by_path[path] = requests_by_path.get(path, 0) + 1
        body = json.dumps(documents.setdefault(path, {u: "open" for u in UNITS})).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


if __name__ == "__main__":
    server = WSGIServer(("127.0.0.1", int(sys.argv[1])), app, log=None)
    server.serve_forever()
