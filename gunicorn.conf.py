"""gunicorn settings that cannot be command-line flags (the flags are in the Procfile).

gunicorn runs this file in its master, so it imports nothing of the service at the top:
public_service imports requests, psycopg2 and redis, which must come after wsgi.py's
monkey-patching, in the worker.
"""


def post_worker_init(worker):
    """In each worker, once `wsgi:app` is loaded: on the gevent_pywsgi worker, serve each
    connection with the service's own handler (time limits on idle and slow clients,
    bounded request heads and bodies, idle connections first out near the cap; see
    public_service.ConnectionGuard). gunicorn's own HTTP workers keep their own."""
    if getattr(worker, "wsgi_handler", None) is not None:
        guard = worker.wsgi.extensions["public_status"].connections
        worker.wsgi_handler = guard.handler_class(worker.wsgi_handler)
