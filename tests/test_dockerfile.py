"""The Dockerfile: clean under hadolint, and its image built and run by a real engine.

No image registry is reachable here and podman cannot start a container (its OCI runtime
is refused the rlimits it sets: docs/deploying.md), but buildah builds and runs images
with `--isolation chroot`, which needs no OCI runtime. The base image cannot be pulled,
so unless the machine holds it, `scripts/stand-in-base.sh` makes one from Debian's own
Python 3.11 (`buildah bud --from` puts it in the FROM line's place). Everything else is
the Dockerfile's: its RUN, COPY, USER, ENV, HEALTHCHECK and CMD, as the image records
them, then a real request, and `docker stop`'s SIGTERM to the container's first process.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from support import ROOT, free_port, wait_for

HADOLINT = Path(sys.executable).parent / "hadolint"
BASE = "python:3.11-slim-bookworm"      # the Dockerfile's FROM


def test_the_dockerfile_is_clean_under_hadolint():
    result = subprocess.run([str(HADOLINT), "--no-color", "Dockerfile"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout


def test_the_dockerfile_builds_from_the_base_the_stand_in_replaces():
    [first] = [line for line in (ROOT / "Dockerfile").read_text().splitlines()
               if line.startswith("FROM ")]
    assert first == f"FROM {BASE}"


def buildah(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, check=True, **kwargs)


@pytest.fixture(scope="module")
def image():
    """The image as `docker build .` makes it: (name, its config as the engine records it)."""
    if shutil.which("buildah") is None or os.getuid() != 0:
        pytest.skip("building the image needs buildah as root (make test installs it)")
    base = [] if subprocess.run(["buildah", "inspect", "--type", "image", BASE],
                                capture_output=True).returncode == 0 else [
        "--from", subprocess.run([str(ROOT / "scripts" / "stand-in-base.sh")], capture_output=True,
                                 text=True, check=True).stdout.strip()]
    name = f"localhost/public-status:test-{uuid.uuid4().hex[:8]}"
    buildah("bud", "--isolation", "chroot", "--format", "docker", "--pull=never", *base,
            "--tag", name, str(ROOT))
    config = json.loads(buildah("inspect", "--type", "image", name).stdout)["Docker"]["config"]
    yield name, config
    buildah("rmi", name)


@pytest.mark.e2e
def test_the_image_runs_the_procfile_as_an_unprivileged_user_with_a_healthcheck(image):
    _, config = image
    uid, _, gid = config["User"].partition(":")
    assert int(uid) >= 1000 and int(gid) >= 1000
    assert "Procfile" in config["Cmd"][-1] and config["WorkingDir"] == "/app"
    assert "PORT=8000" in config["Env"] and "8000/tcp" in config["ExposedPorts"]
    assert config["Healthcheck"]["Test"][0] == "CMD" and "/healthz" in config["Healthcheck"]["Test"][-1]


def gunicorn_pids(port: int) -> list[int]:
    """The container's gunicorn processes (master first), found by their bind address."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if any(b"gunicorn" in part for part in command) and f"0.0.0.0:{port}".encode() in command:
            found.append(int(entry.name))
    parent = {pid: int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
              for pid in found}
    return sorted(found, key=lambda pid: parent[pid] in found)


@pytest.mark.e2e
def test_the_image_serves_and_stops_on_sigterm(image, pg, upstream):
    name, config = image
    slug = pg.add_project(pg.unique_slug("image"), base_url=upstream.url)
    upstream.set_statuses(f"/{slug}", {"A1": "open"})
    container = buildah("from", "--pull=never", name).stdout.strip()
    port = free_port()
    settings = ["--env", f"PORT={port}", "--env", f"DATABASE_URL={pg.reader_url}"]
    service = subprocess.Popen(["buildah", "run", "--isolation", "chroot", *settings, container,
                                "--", *config["Cmd"]],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        probe = ["buildah", "run", "--isolation", "chroot", *settings, container, "--",
                 *config["Healthcheck"]["Test"][1:]]
        wait_for(lambda: subprocess.run(probe, capture_output=True).returncode == 0,
                 timeout=30, interval=0.2)
        base = f"http://127.0.0.1:{port}"
        answer = requests.get(f"{base}/api/public/{slug}/status", timeout=5)
        assert answer.status_code == 200 and answer.json()["statuses"] == {"A1": "available"}
        for page in ("/", "/public-status.js"):
            assert requests.get(base + page, timeout=5).status_code == 200
        pids = gunicorn_pids(port)
        assert len(pids) == 2                                   # the master and its worker
        for pid in pids:
            uid = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("Uid:")).split()[1]
            assert uid == config["User"].partition(":")[0]
        started = time.monotonic()
        os.kill(pids[0], signal.SIGTERM)                         # docker stop
        code = service.wait(30)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
        subprocess.run(["buildah", "rm", container], capture_output=True)
    output = service.stdout.read()
    assert code == 0, output
    assert time.monotonic() - started < 10
    assert "Traceback" not in output and "Permission denied" not in output
