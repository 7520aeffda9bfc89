"""Log lines: redaction of every known secret, and the JSON format."""

import json
import logging
import re
import subprocess
import sys
import time

import pytest

import public_service
from public_service import LogScrubber


@pytest.fixture
def captured():
    """A handler like the app's own: redactor filter, then a formatter."""
    lines = []

    class ListHandler(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    redactor = LogScrubber()
    handler = ListHandler()
    handler.addFilter(redactor)
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield redactor, logger, lines, handler
    logger.removeHandler(handler)


def test_secrets_are_redacted_from_messages_args_and_tracebacks(captured):
    redactor, logger, lines, _ = captured
    redactor.add(["tok-Secret-1", "pw", "longer-tok-Secret-1-suffix"])
    logger.debug("sending %s to %s", "Bearer tok-Secret-1", "host")
    logger.info("url http://u:longer-tok-Secret-1-suffix@h/")
    try:
        raise ValueError("failed with tok-Secret-1")
    except ValueError:
        logger.exception("boom")
    text = "\n".join(lines)
    assert "tok-Secret-1" not in text
    assert "sending Bearer *** to host" in lines[0]
    assert "http://u:***@h/" in lines[1]              # the longest secret wins
    assert "ValueError: failed with ***" in text
    assert redactor.redact("pw") == "pw"              # under MIN_LENGTH: left alone


def test_json_lines_carry_the_extras(captured):
    redactor, logger, lines, handler = captured
    handler.setFormatter(public_service.JsonFormatter())
    redactor.add(["k-Secret-9"])
    logger.warning("project %s failed with k-Secret-9", "demo",
                   extra={"project": "demo", "event": "upstream_failed", "duration": 0.25})
    entry = json.loads(lines[0])
    assert entry["message"] == "project demo failed with ***"
    assert (entry["level"], entry["project"], entry["event"], entry["duration"]) == (
        "WARNING", "demo", "upstream_failed", 0.25)
    assert entry["time"].endswith("Z")


def test_access_atoms_are_redacted_where_they_are_and_kept_as_fields(captured):
    """gunicorn logs an access line as a format and a dict of atoms; the JSON access
    line reads its fields from them, so they are redacted in place, not flattened."""
    redactor, logger, lines, _ = captured
    redactor.add(["atom-Secret-4"])
    atoms = {"r": "GET /x?key=atom-Secret-4 HTTP/1.1", "s": "200", "B": 5}
    logger.info('"%(r)s" %(s)s', atoms)
    assert lines == ['"GET /x?key=*** HTTP/1.1" 200']
    assert atoms["r"] == "GET /x?key=*** HTTP/1.1" and atoms["B"] == 5


def test_access_atoms_without_a_secret_stay_fields(captured):
    """What a JSON access line is made of: the record keeps its atoms, untouched."""
    redactor, logger, lines, handler = captured
    redactor.add(["atom-Secret-6"])

    class Fields(logging.Formatter):
        def format(self, record):
            return repr(record.args)

    handler.setFormatter(Fields())
    logger.info('"%(r)s" %(s)s', {"r": "GET /x HTTP/1.1", "s": "200"})
    assert lines == [repr({"r": "GET /x HTTP/1.1", "s": "200"})]


def test_a_dict_argument_that_still_shows_a_secret_is_flattened(captured):
    """A value that is not a string (its str() made at format time) cannot be redacted
    in place: the message is then redacted as a whole."""
    redactor, logger, lines, _ = captured
    redactor.add(["obj-Secret-5"])

    class Holder:
        def __str__(self):
            return "holding obj-Secret-5"

    logger.info("%(thing)s", {"thing": Holder()})
    assert lines == ["holding ***"]


def test_the_app_redacts_the_database_password(make_app, pg, capfd):
    url = pg.reader_url
    app = make_app({"DATABASE_URL": url, "LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"})
    logging.getLogger("urllib3.connectionpool").debug("connecting with %s", url)
    err = capfd.readouterr().err
    line = json.loads(err.strip().splitlines()[-1])
    assert "reader-pw-Zq81x" not in err
    assert line["logger"] == "urllib3.connectionpool"
    assert app.extensions["public_status"].scrubber.redact(url).count("***") == 1


def test_a_redactor_that_knows_no_secret_yet_lets_every_line_through(captured):
    _, logger, lines, _ = captured
    logger.info("starting with %s", "nothing to hide")
    assert lines == ["starting with nothing to hide"]


def test_the_longest_of_overlapping_secrets_wins_and_short_ones_are_left(captured):
    redactor, logger, lines, _ = captured
    redactor.add(["abc-secret", "abc-secret-longer", "xyz"])
    redactor.add(["ab"])                                  # under MIN_LENGTH: ignored
    logger.info("abc-secret-longer abc-secret xyz ab")
    assert lines == ["*** *** *** ab"]


def test_json_lines_have_an_iso_time_and_carry_tracebacks(captured):
    _, logger, lines, handler = captured
    handler.setFormatter(public_service.JsonFormatter())
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    entry = json.loads(lines[0])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert "RuntimeError: boom" in entry["exception"] and entry["message"] == "failed"
    logger.info("plain")
    assert "exception" not in json.loads(lines[1])


def test_the_json_formatter_alone_writes_the_traceback():
    """Without the scrubber in front (which formats tracebacks to redact them), the
    formatter still writes one."""
    try:
        raise RuntimeError("alone")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    assert "RuntimeError: alone" in json.loads(public_service.JsonFormatter().format(record))["exception"]


def test_a_call_whose_arguments_do_not_fit_its_format_is_a_line_not_an_exception(captured):
    redactor, logger, lines, _ = captured
    redactor.add(["tok-Secret-1"])
    logger.info("fetched %d units for %s", "tok-Secret-1")   # a bug of the caller's
    assert len(lines) == 1 and "tok-Secret-1" not in lines[0]
    assert "fetched %d units for %s" in lines[0]



def test_a_secret_learned_beside_thousands_costs_the_event_loop_next_to_nothing():
    """Each new project's credentials are learned on the event loop: at 5,000 projects,
    rebuilding one alternation of every secret took 220 ms for each new one."""
    def cpu_to_add(scrubber: LogScrubber, secret: str) -> float:
        started = time.process_time()
        scrubber.add([secret])
        return time.process_time() - started

    scrubber = LogScrubber()
    scrubber.add([f"secret-{n:05d}-of-a-project" for n in range(10)])
    few = min(cpu_to_add(scrubber, f"another-{n}-secret") for n in range(3))
    scrubber.add([f"secret-{n:05d}-of-a-project" for n in range(5000)])
    many = min(cpu_to_add(scrubber, f"yet-another-{n}-secret") for n in range(3))
    assert many <= 20 * few + 0.005
    assert scrubber.redact("x secret-04999-of-a-project y yet-another-2-secret") == "x *** y ***"


def test_a_system_exit_in_a_greenlet_still_ends_the_process():
    """The hub hook logs what gevent would print, and forwards what gevent forwards: a
    SystemExit raised in a greenlet (wsgi.py's SIGTERM fallback raises one) ends the
    process with its code, as under gevent's own handler."""
    program = ("import gevent, sys, public_service\n"
               "gevent.get_hub().handle_error = public_service._log_hub_error\n"
               "gevent.spawn(sys.exit, 3)\n"
               "gevent.sleep(0.5)\n")
    done = subprocess.run([sys.executable, "-c", program], cwd=public_service.__file__.rsplit("/", 1)[0],
                          capture_output=True, timeout=60)
    assert done.returncode == 3, done.stderr
