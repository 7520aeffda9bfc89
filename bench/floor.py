"""The floor of our stack: what Flask and gevent do on gunicorn's gevent worker with no
work of ours, so the benchmark can print our figures as ratios to it.

- `flask_app`: a bare Flask route answering a constant JSON body (FLOOR_BODY_BYTES long,
  the size of our status body).
- `broadcast_app`: a bare gevent broadcast of pre-encoded bytes to N generator streams:
  GET /stream holds a stream open; POST /trigger puts the same bytes on every stream.
"""

import json
import os

import gevent.queue
from flask import Flask, Response

BODY_BYTES = int(os.environ.get("FLOOR_BODY_BYTES", "5000"))
BODY = json.dumps({"padding": "x" * max(0, BODY_BYTES - 15)}).encode()

flask_app = Flask(__name__)


@flask_app.get("/api/public/<slug>/status")
def constant(slug):
    return Response(BODY, content_type="application/json")


_streams: set[gevent.queue.Queue] = set()


def broadcast_app(environ, start_response):
    if environ["PATH_INFO"] == "/trigger":
        message = b'id: 1\nevent: bulk_update\ndata: {"updates": {"101": "sold"}}\n\n'
        for queue in tuple(_streams):
            queue.put_nowait(message)
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]
    queue = gevent.queue.Queue()
    _streams.add(queue)

    def stream():
        try:
            yield b'event: connected\ndata: {"project": "floor"}\n\n'
            while True:
                yield queue.get()
        finally:
            _streams.discard(queue)

    start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-store")])
    return stream()
