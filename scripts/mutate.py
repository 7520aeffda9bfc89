"""`make mutate`: plant small bugs in public_service.py, one at a time, and see whether
the in-process tests catch each one.

Mutants are made from the AST of the functions and tables listed in TARGETS (the pure
core and the cache's rules, everything the in-process tests can judge): a comparison
flipped or loosened, an arithmetic or boolean operator swapped, min/max or ceil/floor
swapped, a number moved by one, a string or a truth value changed, a statement
dropped, a returned value replaced by None. Each mutant runs the in-process suite in a
copy of the project (two at a time on two cores); a test failure, an error or a
timeout kills it. Survivors are printed with where they are and what changed: each is
a bug the tests would let through, or a change that makes no difference (say which in
docs/tests.md).

    python scripts/mutate.py            # all mutants (about 15 minutes on 2 cores)
    python scripts/mutate.py --limit 40 # a sample, spread over the targets
    python scripts/mutate.py --only Wire.with_tail,accepts_gzip   # some targets alone
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "public_service.py"
TESTS = ["tests/test_normalization.py", "tests/test_documents.py", "tests/test_sse_encoding.py",
         "tests/test_resume.py", "tests/test_backoff.py", "tests/test_urls_and_auth.py",
         "tests/test_project_rows.py", "tests/test_config.py", "tests/test_compression.py",
         "tests/test_properties.py", "tests/test_service.py", "tests/test_http.py",
         "tests/test_logging.py", "tests/test_upstream_client.py", "tests/test_database.py",
         "tests/test_edge_heads.py", "tests/test_stream_writer.py"]
COPIED = ["tests", "support.py", "schema.sql", "board.html", "board.js", "board.css",
          "public-status.js", "pyproject.toml"]
TIMEOUT = 120

# Functions (qualified names) and module-level tables whose mutants are judged.
TARGETS = {
    # normalization and response shapes
    "normalize_key", "_lookup_from", "build_status_lookup", "normalize_status",
    "normalize_statuses", "_unit_id", "_scalar_status", "extract_unit_statuses",
    "decode_status_body", "parse_statuses", "prepare_fetch", "diff_statuses", "backoff_delay",
    "Fetched.over", "Fetched.against",
    # the one rule for versions, streams and their writer
    "succession", "Change.succession", "Stream.offer", "Stream.say", "Stream.say_status",
    "Stream.event", "Stream.attach", "Stream.end", "SocketTransport.write", "SocketTransport.end",
    "SocketTransport._put", "SocketTransport._on_writable", "SocketTransport._on_readable",
    "SocketTransport._close", "_rest", "QueueTransport.write", "QueueTransport.end",
    "Wire.with_tail", "STREAM_TRANSITIONS",
    # ids, one project or several
    "mux_event_id", "parse_mux_event_id", "_id_line", "parse_project_list",
    # the edge's reading of heads
    "parse_head", "_request_target", "PartialHead.check",
    # upstream manners
    "retry_after_seconds", "hold_cap", "UpstreamClient._answer", "_conditional_headers",
    "_validator", "StatusService._validators_for", "LocalStore.hold", "LocalStore.held_for",
    "Fetched.same",
    "DEFAULT_STATUS_VALUES", "UNIT_KEYS", "STATUS_KEYS", "WRAPPER_KEYS", "MAX_WRAPPING",
    # SSE and snapshot encodings, resume, compression
    "SSEMessage.encode", "_one_line", "Snapshot.build", "parse_event_id", "retry_message",
    "History.add", "History.since", "accepts_gzip", "deflate_piece", "stored_piece",
    "gzip_end", "Wire.piece",
    # settings: environment, database rows, URLs, auth
    "Config.from_env", "_env_number", "_json_column", "_seconds", "project_from_row",
    "join_status_url",
    "split_userinfo", "auth_headers", "_basic", "_secret_strings", "_connection_params",
    "SLUG_PATTERN", "HEADER_NAME", "HEADER_VALUE",
    # logs
    "LogScrubber.add", "LogScrubber.redact", "LogScrubber.filter", "LogScrubber.scrub",
    "escape_controls",
    "JsonFormatter.format",
    # the cache's rules
    "StatusService.status", "StatusService._fetch_or_stale", "StatusService.refresh",
    "StatusService._stale", "StatusService._record_success", "StatusService._record_failure",
    "StatusService._log_unknown", "LocalStore.read", "LocalStore.commit", "LocalStore.touch",
    "LocalStore.claim_refresh", "LocalStore.install", "LocalStore.changes_since",
    "ProjectDirectory.cached", "ProjectDirectory.get",
    "ProjectDirectory._load", "_remember", "StatusService._prepare",
    # the client API
    "UpstreamClient.get", "_read_capped", "_root_cause",
    # HTTP answers
    "json_error", "_find_project", "public_headers", "refuse_bodies",
    "WarmStatusFastPath.__call__", "create_app",
}

COMPARE_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
                 ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
                 ast.Is: ast.IsNot, ast.IsNot: ast.Is}
BINOP_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
               ast.Pow: ast.Mult, ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv}
NAME_SWAPS = {"min": "max", "max": "min", "ceil": "floor", "floor": "ceil",
              "any": "all", "all": "any", "isfinite": "isinf"}


@dataclass
class Mutant:
    where: str          # qualified name
    line: int
    what: str
    source: str


def target_nodes(tree: ast.Module):
    """(qualified name, node) of every target: a function, or a table's value."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            if node.name in TARGETS:
                yield node.name, node
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and f"{node.name}.{item.name}" in TARGETS:
                        yield f"{node.name}.{item.name}", item
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id in TARGETS:
                    yield target.id, node.value


def left_alone(tree: ast.Module) -> set[int]:
    """Nodes no mutant touches: docstrings, type annotations, and the words of messages
    (f-strings, raised errors, log calls), which no reasonable test pins down."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
        quiet = [getattr(node, "annotation", None), getattr(node, "returns", None)]
        if isinstance(node, (ast.JoinedStr, ast.Raise)):
            quiet.append(node)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "log"):
            quiet.append(node)
        for subtree in filter(None, quiet):
            ids.update(id(n) for n in ast.walk(subtree) if isinstance(n, ast.Constant))
    return ids


def _set(owner, field, value):
    """Set a field (or a list item, field being (name, index)); return the undo."""
    if isinstance(field, tuple):
        name, index = field
        items = getattr(owner, name)
        old = items[index]
        items[index] = value
        return lambda: items.__setitem__(index, old)
    old = getattr(owner, field)
    setattr(owner, field, value)
    return lambda: setattr(owner, field, old)


def mutations(node: ast.AST, parent: tuple | None, quiet: set[int]):
    """(description, do) for each way to mutate `node`; `do()` returns its undo."""
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in COMPARE_SWAPS:
                new = COMPARE_SWAPS[type(op)]
                yield (f"{type(op).__name__} -> {new.__name__}",
                       lambda i=i, new=new: _set(node, ("ops", i), new()))
    elif isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAPS:
        new = BINOP_SWAPS[type(node.op)]
        yield f"{type(node.op).__name__} -> {new.__name__}", lambda: _set(node, "op", new())
    elif isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        yield f"{type(node.op).__name__} -> {new.__name__}", lambda: _set(node, "op", new())
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not) and parent:
        yield "drop `not`", lambda: _set(*parent, node.operand)
    elif isinstance(node, ast.Constant) and id(node) not in quiet:
        value = node.value
        if isinstance(value, bool):
            yield f"{value} -> {not value}", lambda: _set(node, "value", not value)
        elif isinstance(value, int):
            yield f"{value} -> {value + 1}", lambda: _set(node, "value", value + 1)
        elif isinstance(value, float):
            yield f"{value} -> {value * 2 or 1.0}", lambda: _set(node, "value", value * 2 or 1.0)
        elif isinstance(value, str) and value:
            yield f"{value[:30]!r} -> {value[:30] + '_x'!r}", lambda: _set(node, "value", value + "_x")
    elif isinstance(node, ast.Name) and node.id in NAME_SWAPS:
        yield f"{node.id} -> {NAME_SWAPS[node.id]}", lambda: _set(node, "id", NAME_SWAPS[node.id])
    elif isinstance(node, ast.Attribute) and node.attr in NAME_SWAPS:
        yield f".{node.attr} -> .{NAME_SWAPS[node.attr]}", lambda: _set(node, "attr", NAME_SWAPS[node.attr])
    elif isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None):
        yield "return None", lambda: _set(node, "value", ast.Constant(None))
    for field in ("body", "orelse", "finalbody"):
        block = getattr(node, field, None)
        if isinstance(block, list) and len(block) > 1:
            for i, stmt in enumerate(block):
                droppable = isinstance(stmt, (ast.Assign, ast.AugAssign, ast.Expr)) and not (
                    isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))
                if droppable:
                    yield (f"drop line: {ast.unparse(stmt)[:60]}",
                           lambda block=block, i=i: _drop(block, i))


def _drop(block: list, index: int):
    stmt = block.pop(index)
    return lambda: block.insert(index, stmt)


def parents(root: ast.AST):
    """(node, (owner, field)) for every node under `root`, field as for `_set`."""
    for owner in ast.walk(root):
        for name, value in ast.iter_fields(owner):
            if isinstance(value, ast.AST):
                yield value, (owner, name)
            elif isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, ast.AST):
                        yield item, (owner, (name, index))


def make_mutants(source: str) -> list[Mutant]:
    tree = ast.parse(source)
    quiet = left_alone(tree)
    mutants = []
    for where, root in target_nodes(tree):
        for node, parent in [(root, None), *parents(root)]:
            for description, do in mutations(node, parent, quiet):
                undo = do()
                try:
                    mutants.append(Mutant(where, getattr(node, "lineno", 0), description,
                                          ast.unparse(tree)))
                finally:
                    undo()
    return mutants


def run(mutant: Mutant, workdir: Path) -> tuple[Mutant, str, str]:
    """(mutant, "survived" or "killed", what pytest said last)."""
    (workdir / "public_service.py").write_text(mutant.source)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TESTS],
            cwd=workdir, capture_output=True, text=True, timeout=TIMEOUT,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        return mutant, "survived" if result.returncode == 0 else "killed", result.stdout[-3000:]
    except subprocess.TimeoutExpired:
        return mutant, "killed", "timeout"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="run an evenly spread sample of this many")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--only", help="comma-separated targets (as TARGETS names them): "
                                       "those alone, to see survivors killed")
    options = parser.parse_args()
    source = MODULE.read_text()        # once: the file may change while the run goes on
    mutants = make_mutants(source)
    if options.only:
        only = set(options.only.split(","))
        if only - TARGETS:
            raise SystemExit(f"not targets: {', '.join(sorted(only - TARGETS))}")
        mutants = [mutant for mutant in mutants if mutant.where in only]
    total = len(mutants)
    if options.limit and options.limit < total:
        step = total / options.limit
        mutants = [mutants[int(i * step)] for i in range(options.limit)]
    workdirs = []
    for _ in range(options.jobs):
        workdir = Path(tempfile.mkdtemp(prefix="mutate-"))
        for name in COPIED:
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, workdir / name,
                                ignore=shutil.ignore_patterns("__pycache__"))
            elif (ROOT / name).exists():
                shutil.copy(ROOT / name, workdir / name)
        workdirs.append(workdir)
    clean = run(Mutant("-", 0, "no change", source), workdirs[0])
    if clean[1] != "survived":
        raise SystemExit(f"the unmutated module fails the tests; fix that first:\n{clean[2]}")
    print(f"{len(mutants)} of {total} mutants, {options.jobs} at a time", flush=True)
    survivors, done = [], 0
    free = list(workdirs)
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(options.jobs) as pool:
        pending = {}
        queue = list(mutants)
        while queue or pending:
            while queue and free:
                workdir = free.pop()
                pending[pool.submit(run, queue.pop(0), workdir)] = workdir
            finished, _ = concurrent.futures.wait(pending, return_when="FIRST_COMPLETED")
            for future in finished:
                free.append(pending.pop(future))
                mutant, outcome, _ = future.result()
                done += 1
                if outcome == "survived":
                    survivors.append(mutant)
                    print(f"  survived: {mutant.where} (line {mutant.line}): {mutant.what}", flush=True)
    for workdir in workdirs:
        shutil.rmtree(workdir, ignore_errors=True)
    killed = done - len(survivors)
    print(f"\n{done} mutants: {killed} killed, {len(survivors)} survived "
          f"({100 * killed / max(1, done):.0f}% killed) in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
