"""Credentials never reach a log line (at DEBUG, libraries included) or a response."""

import base64

import pytest
import requests

from conftest import READER_PASSWORD
from support import EventStream

pytestmark = pytest.mark.e2e

BEARER = "bearer-tok-9Xq7Lw"
API_KEY = "api-key-3Rt8Vz"
BASIC_USER = "basic-user-5Hn2"
BASIC_PASS = "basic-pass-7Jm4Qp"
URL_USER = "url-user-8Kd3"
URL_PASS = "url-pass-2Wc6Ys"
SECRETS = [BEARER, API_KEY, BASIC_USER, BASIC_PASS, URL_USER, URL_PASS, READER_PASSWORD,
           base64.b64encode(f"{BASIC_USER}:{BASIC_PASS}".encode()).decode(),
           base64.b64encode(f"{URL_USER}:{URL_PASS}".encode()).decode()]


def test_no_secret_in_logs_or_responses_at_debug(start_service, pg, upstream):
    with_userinfo = upstream.url.replace("http://", f"http://{URL_USER}:{URL_PASS}@")
    projects = {
        pg.add_project(pg.unique_slug("bearer"), base_url=upstream.url, auth_type="bearer",
                       credentials={"token": BEARER}): "ok",
        pg.add_project(pg.unique_slug("key"), base_url=upstream.url, auth_type="api_key",
                       credentials={"header": "X-Client-Key", "key": API_KEY}): "500",
        pg.add_project(pg.unique_slug("basic"), base_url=upstream.url, auth_type="basic",
                       credentials={"username": BASIC_USER, "password": BASIC_PASS}): "bad json",
        pg.add_project(pg.unique_slug("userinfo"), base_url=with_userinfo): "ok",
        pg.add_project(pg.unique_slug("refused"), base_url=f"http://{URL_USER}:{URL_PASS}@127.0.0.1:1",
                       auth_type="bearer", credentials={"token": BEARER}): "refused",
        pg.add_project(pg.unique_slug("badcfg"), base_url=upstream.url, auth_type="bearer",
                       credentials={"token": f"{BEARER}\nX-Injected: 1"}): "config",
    }
    for slug, behaviour in projects.items():
        if behaviour == "ok":
            upstream.set_statuses(f"/{slug}", {"A1": "open"})
        elif behaviour == "500":
            upstream.set(f"/{slug}", f"denied {API_KEY}".encode(), status=500)
        elif behaviour == "bad json":
            upstream.set(f"/{slug}", b"<html>")

    service = start_service(LOG_LEVEL="DEBUG")
    bodies = []
    for slug in projects:
        bodies.append(requests.get(f"{service.url}/api/public/{slug}/status", timeout=10))
        bodies.append(requests.post(f"{service.url}/api/public/{slug}/status/refresh", timeout=10))
        stream = EventStream(service.port, f"/api/public/{slug}/status/stream")
        stream.next(timeout=1)
        stream.next(timeout=0.6)
        stream.close()
    bodies.append(requests.get(f"{service.url}/metrics", timeout=5))
    service.stop()

    logs = service.logs()
    assert "DEBUG" in logs and "urllib3" in logs          # the library debug lines were there
    assert "Authorization" not in logs
    for response in bodies:
        for secret in SECRETS:
            assert secret not in response.text
            assert all(secret not in value for value in response.headers.values())
    for secret in SECRETS:
        assert secret not in logs, f"{secret} leaked into the logs"
    seen = {r.headers.get("Authorization") for r in upstream.seen}
    assert f"Bearer {BEARER}" in seen                      # and yet it was sent upstream
