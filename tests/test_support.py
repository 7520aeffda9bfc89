"""support.py, which the tests, the bench and the demo share: what they all rest on
without a test of their own, and that `make run` can import it with requirements.txt
alone."""

import ast
import re
import sys
from pathlib import Path

import pytest

from support import Dechunker, gunicorn_command, procfile_command, with_database

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def requirement_modules(path: Path) -> set[str]:
    """What the pinned packages of a requirements file are imported as."""
    known = {"psycopg2-binary": "psycopg2", "prometheus-client": "prometheus_client"}
    names = set()
    for line in path.read_text().splitlines():
        package = re.split(r"[\[=<>; ]", line.split("#")[0].strip(), maxsplit=1)[0].lower()
        if package:
            names.add(known.get(package, package.replace("-", "_")))
    return names


@pytest.mark.parametrize("script", ["demo.py", "support.py"])
def test_make_run_needs_nothing_beyond_requirements_txt(script):
    allowed = (set(sys.stdlib_module_names) | requirement_modules(ROOT / "requirements.txt")
               | {"support"})
    if script == "demo.py":                  # installed by the demo itself on first use
        allowed |= requirement_modules(ROOT / "requirements-demo.txt")
    assert imported_modules(ROOT / script) - allowed == set()


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


@pytest.mark.parametrize("step", [1, 2, 7, 1000])
def test_a_chunked_body_is_undone_however_it_arrives(step):
    wire = chunked(b"event: connected\n\n", b"x" * 300, b"\r\n0\r\n") + b"after the end"
    dechunker, body = Dechunker(), b""
    for at in range(0, len(wire), step):
        assert not dechunker.ended
        body += dechunker.feed(wire[at:at + step])
        if dechunker.ended:
            break
    assert body == b"event: connected\n\n" + b"x" * 300 + b"\r\n0\r\n"
    assert dechunker.ended


def test_a_chunk_extension_is_no_part_of_its_size():
    assert Dechunker().feed(b"3;name=value\r\nabc\r\n") == b"abc"


@pytest.mark.parametrize(("url", "user", "password", "named"), [
    ("postgresql://postgres@127.0.0.1:5432/postgres", None, None,
     "postgresql://postgres@127.0.0.1:5432/demo"),
    ("postgresql://postgres@127.0.0.1:5432/postgres", "reader", "pw",
     "postgresql://reader:pw@127.0.0.1:5432/demo"),
    ("postgresql://postgres:@/postgres?host=/data/pg", "reader", None,    # pgserver's socket
     "postgresql://reader@/demo?host=/data/pg"),
])
def test_a_database_url_names_another_database_and_user(url, user, password, named):
    assert with_database(url, "demo", user=user, password=password) == named


def test_the_procfiles_command_is_run_bound_where_asked_without_what_is_left_out():
    command = gunicorn_command("127.0.0.1:0", access_log=False, app="bench.floor:flask_app",
                               extra=["--worker-class", "gevent"])
    assert command[:3] == [sys.executable, "-m", "gunicorn"]
    procfile = procfile_command()
    assert "0.0.0.0:$PORT" in procfile and "--access-logfile" in procfile
    assert command[command.index("--bind") + 1] == "127.0.0.1:0"
    assert "--access-logfile" not in command and "wsgi:app" not in command
    assert command[-3:] == ["bench.floor:flask_app", "--worker-class", "gevent"]
    kept = [arg for arg in procfile[1:] if arg not in ("0.0.0.0:$PORT", "--access-logfile", "-",
                                                      "wsgi:app")]
    assert [arg for arg in command[3:-3] if arg != "127.0.0.1:0"] == kept
