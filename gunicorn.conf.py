"""gunicorn settings that cannot be command-line flags (the flags are in the Procfile).

gunicorn runs this file in its master, so it imports nothing of the service at the top:
public_service imports requests, psycopg2 and redis, which must come after wsgi.py's
monkey-patching, in the worker. The standard library and gunicorn are safe.
"""

import json
import logging
import os
import time

from gunicorn.glogging import Logger


def post_worker_init(worker):
    """In each worker, once `wsgi:app` is loaded: the service's own edge serves every
    connection (strict request heads, time limits on idle and slow clients, idle
    connections first out near the cap, a stream's connection handed to its writer; see
    public_service.Edge). It takes the place of the handler of gunicorn's gevent worker,
    whose `handle(listener, client, address)` is that worker's entry point; any other
    worker class keeps its own handler (and the streams a greenlet each)."""
    from gunicorn.workers.ggevent import GeventWorker  # in the worker: gevent is patched in

    extensions = getattr(worker.wsgi, "extensions", {})   # another app (the bench's floor): its own
    if "public_status" not in extensions:
        return
    if isinstance(worker, GeventWorker) and worker.server_class is None:
        extensions["public_status"].edge.serve_for(worker)
    else:
        worker.log.warning("worker class %s: the service's edge needs --worker-class gevent",
                           type(worker).__name__)


def when_ready(server):
    """Several workers without REDIS_URL work, at a cost an operator should hear of once:
    Heroku's Python buildpack sets WEB_CONCURRENCY (2 to 17) from the dyno's size."""
    if server.cfg.workers > 1 and not os.environ.get("REDIS_URL"):
        server.log.warning(
            "%d workers without REDIS_URL: each polls every watched project, and keeps its own "
            "cache, refresh limit and stream ids (docs/scaling.md: set REDIS_URL, or "
            "WEB_CONCURRENCY=1)", server.cfg.workers)


# ------------------------------------------------------------------ LOG_FORMAT=json
# gunicorn's own lines (the master's, each worker's, the access log) come out as the
# service's do: one JSON object a line, the keys of public_service.JsonFormatter. The
# master cannot import the service (see above), hence this small twin, which
# tests/test_operator_e2e.py holds to the same keys.


class JsonLines(logging.Formatter):
    """{"time", "level", "logger", "message"}; an access line adds its request's fields
    (gunicorn's access atoms, already redacted in the worker)."""

    ACCESS_FIELDS = {"remote": "h", "method": "m", "path": "U", "query": "q", "status": "s",
                     "bytes": "B", "referer": "f", "user_agent": "a"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if isinstance(record.args, dict):
            atoms = record.args
            entry.update({key: atoms[atom] for key, atom in self.ACCESS_FIELDS.items()
                          if atoms.get(atom) not in (None, "", "-")})
            if str(entry.get("status", "")).isdigit():
                entry["status"] = int(entry["status"])
            entry["duration"] = float(atoms["L"])
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class JsonLogger(Logger):
    def setup(self, cfg):
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonLines())


if os.environ.get("LOG_FORMAT", "text").lower() == "json":
    logger_class = JsonLogger
