"""WSGI entry point: `gunicorn --worker-class gevent wsgi:app` (see Procfile).

gevent must patch the standard library before anything imports socket, ssl or
threading, or requests and the pool would hold unpatched, blocking sockets; and
psycopg2 blocks the whole worker on every query unless a wait callback hands its
waits to gevent. So both happen here, first, and this is the only place they happen.
"""

from gevent import monkey

monkey.patch_all()

from psycogreen.gevent import patch_psycopg  # noqa: E402

patch_psycopg()

import gc  # noqa: E402
import signal  # noqa: E402

import gevent  # noqa: E402

import public_service  # noqa: E402

app = public_service.create_app()

# A garbage collection stops the worker, and every stream with it. A full one takes a
# time that grows with the objects alive (60-75 ms at 5,000 streams, bench/): objects
# from start-up never die, so they leave the collector's view (freeze), and full
# collections come ten times rarer (the third threshold, 100). The young generation is
# collected after 100,000 new objects rather than 700: on launch day (bench/shapes.py:
# 10,000 streams, 100 reconnects a second) the default made 2,300 collections in 37 s,
# 1.8 s in all and up to 38 ms each, and put a change's p99 delivery at 330-370 ms;
# with this, 6 collections and 250-265 ms, at the same memory (316 MB against 321).
gc.collect()
gc.freeze()
gc.set_threshold(100_000, 50, 100)


def _end_streams_then(previous):
    """On SIGTERM, let waiting connections go, end every stream (each with its own
    `retry:`, its last words written) and stop the pollers, then hand over to gunicorn's
    own handler, whose graceful wait would otherwise see no stream (streams hold no
    greenlet of its pool) and exit before their last words are out."""

    def on_sigterm(signum, frame):
        def shut_down():
            app.extensions["public_status"].shutdown()
            if callable(previous):
                previous(signum, frame)
            else:
                raise SystemExit(0)

        gevent.spawn(shut_down)

    return on_sigterm


signal.signal(signal.SIGTERM, _end_streams_then(signal.getsignal(signal.SIGTERM)))
