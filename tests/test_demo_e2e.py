"""`make run` without DATABASE_URL (demo.py) and `make demo-clean`: the demo serves its
project, says which DATABASE_URL it uses, and what it leaves is removed on demand."""

import os
import signal
import subprocess
import sys
import threading

import psycopg2
import pytest
import requests

from support import ROOT, free_port, wait_for

pytestmark = pytest.mark.e2e

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def exists(kind: str, name: str) -> bool:
    query = {"database": "SELECT 1 FROM pg_database WHERE datname = %s",
             "role": "SELECT 1 FROM pg_roles WHERE rolname = %s"}[kind]
    with psycopg2.connect(ADMIN_URL) as conn, conn.cursor() as cursor:
        cursor.execute(query, (name,))
        return cursor.fetchone() is not None


def test_the_demo_prints_its_database_url_and_demo_clean_removes_what_it_left():
    names = {"DEMO_DATABASE": "public_status_demo_t", "DEMO_ROLE": "public_status_demo_t_reader"}
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env.update(names, PORT=str(port), LOG_LEVEL="WARNING")
    demo = subprocess.Popen([sys.executable, "demo.py"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True).start()
    try:
        wait_for(lambda: any("The live status board" in line for line in lines), timeout=60)
        [printed] = [line.split("DATABASE_URL=", 1)[1].split()[0] for line in lines if "DATABASE_URL=" in line]
        assert printed == f"postgresql://{names['DEMO_ROLE']}@127.0.0.1:5432/{names['DEMO_DATABASE']}"
        with psycopg2.connect(printed) as conn, conn.cursor() as cursor:   # the role it names
            cursor.execute("SELECT slug FROM projects ORDER BY slug")
            assert cursor.fetchall() == [("harbour-view",), ("marina-point",)]
        for slug, count in (("harbour-view", 240), ("marina-point", 48)):
            answer = requests.get(f"http://127.0.0.1:{port}/api/public/{slug}/status", timeout=10)
            assert answer.status_code == 200 and answer.json()["count"] == count
        assert any("/?project=harbour-view,marina-point" in line for line in lines)
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(30)
    assert exists("database", names["DEMO_DATABASE"]) and exists("role", names["DEMO_ROLE"])

    cleaned = subprocess.run([sys.executable, "demo.py", "--clean"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"dropped database {names['DEMO_DATABASE']}" in cleaned.stdout
    assert not exists("database", names["DEMO_DATABASE"]) and not exists("role", names["DEMO_ROLE"])
