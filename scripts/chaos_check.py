"""The checker of `make chaos` (scripts/chaos.py): pure functions over the histories a run
recorded, no I/O and no clock, so that tests/test_chaos_checker.py can feed it small
made-up histories.

What it is given, all times in seconds of one wall clock (time.time() of one machine):

- `truth`: {slug: [(t, statuses), ...]}: every state the client API held, from the time
  it began to hold it, its statuses already normalized (the five public ones);
- `served`: {(slug, unit): {status: first time served}} and `served_states`: {slug:
  {state_key(statuses): first time served}}: what the client API answered;
- `clients`: [Client]: every event a client saw, in the order it saw them (`Record`);
- `faults`: [Fault]: each fault's kind, start and heal.

Each check returns a list of Violation; `check_all` runs the six and says which failed.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

# What a record of a client is (Record.kind):
#   open        it sent a request for a stream
#   connected   the stream's `connected` event came
#   full        a `status_update` (payload: every unit), with its id (None for a browser board)
#   delta       a `bulk_update` (payload: the units that changed), with its id
#   board       a browser instance's whole board after an update (payload: every unit)
#   closed      the stream ended (EOF, a reset, a blackout noticed)
#   error       an error answer: payload the HTTP status (a stream's or a GET's)
#   get         a GET answered 200 (payload: statuses); `t` when sent, `until` when answered
STATUS_KINDS = ("full", "delta", "board")


@dataclass(frozen=True)
class Record:
    t: float
    kind: str
    slug: str
    id: str | None = None
    payload: object = None
    until: float | None = None          # a GET: when its answer came


@dataclass
class Client:
    name: str
    kind: str                           # raw, lossy (behind the bad network), node, browser, get
    records: list[Record] = field(default_factory=list)
    ended_at: float = math.inf          # when the harness closed it (after the last check)


@dataclass(frozen=True)
class Fault:
    kind: str
    start: float
    end: float


@dataclass(frozen=True)
class Violation:
    invariant: str
    client: str
    t: float
    message: str
    around: tuple = ()                  # the few records around it, as text

    def __str__(self) -> str:
        lines = [f"{self.invariant}: {self.client} at {self.t:.3f}: {self.message}"]
        lines += [f"    {line}" for line in self.around]
        return "\n".join(lines)


# Kinds of fault after which the service may legitimately lag: a poll may not happen, a
# stream may be cut. An nginx reload and a blackout (which only cuts the clients behind
# the bad network) do not stop the service from seeing a change.
SERVICE_FAULTS = frozenset({"worker_kill", "instance_restart", "redis_stop", "redis_restart",
                            "postgres_restart", "upstream_500", "upstream_timeout",
                            "upstream_garbage"})


def around(client: Client, t: float, count: int = 3) -> tuple:
    """The records of a client nearest to `t`: `count` before and after."""
    records = client.records
    at = next((i for i, r in enumerate(records) if r.t >= t), len(records))
    return tuple(_describe(r) for r in records[max(0, at - count):at + count])


def _describe(record: Record) -> str:
    payload = record.payload
    if isinstance(payload, dict) and len(payload) > 6:
        payload = dict(list(payload.items())[:6]) | {"...": f"{len(record.payload)} units"}
    ident = f" id={record.id}" if record.id else ""
    return f"{record.t:.3f} {record.kind} {record.slug}{ident} {payload if payload is not None else ''}".rstrip()


def parse_id(text: str | None) -> tuple[str, int] | None:
    """`<epoch>-<version>` -> (epoch, version); None for anything else (a mux id)."""
    if not text or "-" not in text:
        return None
    epoch, _, version = text.rpartition("-")
    return (epoch, int(version)) if version.isdigit() else None


# --------------------------------------------------------------------------- boards

def boards(client: Client) -> Iterator[tuple[Record, dict[str, str]]]:
    """Each status record of a client and its board of that project just after it."""
    held: dict[str, dict[str, str]] = {}
    for record in client.records:
        if record.kind in ("full", "board"):
            held[record.slug] = dict(record.payload)
        elif record.kind == "delta":
            held.setdefault(record.slug, {}).update(record.payload)
        elif record.kind == "get":
            yield record, dict(record.payload)
            continue
        else:
            continue
        yield record, dict(held[record.slug])


def shown(client: Client) -> Iterator[tuple[float, str, str, str]]:
    """(t, slug, unit, status) for every status a client showed."""
    for record in client.records:
        if record.kind in STATUS_KINDS or record.kind == "get":
            for unit, status in record.payload.items():
                yield record.t if record.until is None else record.until, record.slug, unit, status


def _starts(timeline: list[tuple[float, dict]]) -> list[float]:
    cached = _STARTS.get(id(timeline))
    if cached is None or len(cached[1]) != len(timeline) or cached[0] is not timeline:
        cached = _STARTS[id(timeline)] = (timeline, [t for t, _ in timeline])
    return cached[1]


_STARTS: dict[int, tuple[list, list[float]]] = {}


def state_at(timeline: list[tuple[float, dict]], t: float) -> dict | None:
    """The state a timeline held at `t` (None before its first)."""
    at = bisect.bisect_right(_starts(timeline), t)
    return timeline[at - 1][1] if at else None


def states_between(timeline: list[tuple[float, dict]], a: float, b: float) -> list[dict]:
    """Every state a timeline held at some time in [a, b]."""
    starts = _starts(timeline)
    first = max(0, bisect.bisect_right(starts, a) - 1)
    last = bisect.bisect_right(starts, b)
    return [state for _, state in timeline[first:last]]


def overlaps(faults: Iterable[Fault], a: float, b: float, kinds=SERVICE_FAULTS, slack: float = 0.0) -> bool:
    return any(f.kind in kinds and f.start <= b and f.end + slack >= a for f in faults)


# --------------------------------------------------------------------------- the six

def check_convergence(clients: list[Client], truth: dict, heal: float, bound: float,
                      ) -> tuple[list[Violation], dict[str, float]]:
    """1. After the last fault heals (the client API holds still from then on), every
    client's board of every project it watches equals the client API's final state
    within `bound`, and stays so. Returns the violations and, per client, seconds from
    the heal until it was current."""
    violations, took = [], {}
    for client in clients:
        if client.kind == "get":
            continue
        last: dict[str, tuple[float, dict]] = {}
        current_since: dict[str, float] = {}
        for record, board in boards(client):
            if record.t > heal + bound:
                break
            final = truth[record.slug][-1][1]
            last[record.slug] = (record.t, board)
            if board == final:
                current_since.setdefault(record.slug, record.t)
            else:
                current_since.pop(record.slug, None)
        watched = {r.slug for r in client.records}
        for slug in sorted(watched):
            if slug not in truth:
                continue
            final = truth[slug][-1][1]
            got = last.get(slug)
            if got is None or got[1] != final:
                wrong = {} if got is None else {u: s for u, s in got[1].items() if final.get(u) != s}
                missing = [] if got is None else sorted(set(final) - set(got[1]))
                violations.append(Violation(
                    "convergence", client.name, heal + bound,
                    f"{slug} not current {bound:.1f}s after the last heal: wrong {wrong}, "
                    f"missing {missing[:5]}" if got else f"{slug}: never had a board",
                    around(client, heal + bound)))
            else:
                took[f"{client.name}/{slug}"] = max(0.0, current_since[slug] - heal)
    return violations, took


def state_key(statuses: dict) -> tuple:
    return tuple(sorted(statuses.items()))


def check_phantom(clients: list[Client], served: dict, served_states: dict) -> list[Violation]:
    """2. No phantom: every status a client showed for a unit is one the client API
    served for it (normalized) no later than it was shown, and every board it showed of a
    project (after each message) is a whole state the client API served: a board that
    mixes units of different moments was never true. One violation per client and
    project is enough to tell."""
    violations = []
    for client in clients:
        reported = set()
        for t, slug, unit, status in shown(client):
            first = served.get((slug, unit), {}).get(status)
            if (first is None or first > t + 0.05) and slug not in reported:
                reported.add(slug)
                said = "never" if first is None else f"only from {first:.3f}"
                violations.append(Violation("phantom", client.name, t,
                                            f"{slug} {unit} shown {status!r}, which the client API {said} served",
                                            around(client, t)))
        for record, board in boards(client):
            if record.slug in reported:
                continue
            t = record.t if record.until is None else record.until
            first = served_states.get(record.slug, {}).get(state_key(board))
            if first is None or first > t + 0.05:
                reported.add(record.slug)
                violations.append(Violation("phantom", client.name, t,
                                            f"{record.slug}: a board the client API never served",
                                            around(client, t)))
    return violations


def check_order(clients: list[Client]) -> list[Violation]:
    """3. Within one epoch a client's ids of a project strictly increase on a stream and
    never go back across its streams; an id seen again means the same board."""
    violations = []
    for client in clients:
        highest: dict[tuple[str, str], int] = {}
        meant: dict[tuple[str, str, int], dict] = {}
        on_stream: dict[str, tuple[str, int]] = {}    # the last id of this stream, by project
        held: dict[str, dict[str, str]] = {}
        for record in client.records:
            if record.kind == "connected":
                on_stream.pop(record.slug, None)       # a new stream: a line of its own
                continue
            if record.kind not in ("full", "delta"):
                continue
            board = held.setdefault(record.slug, {})
            if record.kind == "full":
                board.clear()
            board.update(record.payload)
            position = parse_id(record.id)
            if position is None:
                continue
            epoch, version = position
            key = (record.slug, epoch)
            before = on_stream.get(record.slug)
            if before is not None and before[0] == epoch and version <= before[1]:
                violations.append(Violation("order", client.name, record.t,
                                            f"{record.slug}: id {record.id} after {epoch}-{before[1]} on one stream",
                                            around(client, record.t)))
            elif version < highest.get(key, 0):
                violations.append(Violation("order", client.name, record.t,
                                            f"{record.slug}: back to {record.id} after {epoch}-{highest[key]}",
                                            around(client, record.t)))
            seen = meant.get((record.slug, epoch, version))
            if seen is not None and seen != board:
                changed = {u: (seen.get(u), s) for u, s in board.items() if seen.get(u) != s}
                violations.append(Violation("order", client.name, record.t,
                                            f"{record.slug}: id {record.id} again, for another board {changed}",
                                            around(client, record.t)))
            meant.setdefault((record.slug, epoch, version), dict(board))
            highest[key] = max(highest.get(key, 0), version)
            on_stream[record.slug] = position
    return violations


def unit_spells(timeline: list[tuple[float, dict]], end: float) -> Iterator[tuple[str, str, float, float]]:
    """(unit, status, from, until): each spell a unit held one status."""
    spells: dict[str, tuple[str, float]] = {}
    for t, state in timeline:
        for unit, status in state.items():
            held = spells.get(unit)
            if held is None or held[0] != status:
                if held is not None:
                    yield unit, held[0], held[1], t
                spells[unit] = (status, t)
    for unit, (status, since) in spells.items():
        yield unit, status, since, end


def open_streams(client: Client, slug: str) -> list[tuple[float, float]]:
    """The spans in which the client had a stream of the project open (from its
    `connected` to its end)."""
    spans, since = [], None
    for record in client.records:
        if record.slug != slug:
            continue
        if record.kind == "connected" and since is None:
            since = record.t
        elif record.kind in ("closed", "error") and since is not None:
            spans.append((since, record.t))
            since = None
    if since is not None:
        spans.append((since, client.ended_at))
    return spans


def _shown_index(client: Client) -> dict[tuple[str, str], tuple[list[float], list[str]]]:
    """(slug, unit) -> the times it was shown, in order, and the status each time."""
    index: dict[tuple[str, str], tuple[list[float], list[str]]] = {}
    for t, slug, unit, status in shown(client):
        times, statuses = index.setdefault((slug, unit), ([], []))
        times.append(t)
        statuses.append(status)
    for times, statuses in index.values():       # a GET's time is its answer's: sort
        pairs = sorted(zip(times, statuses, strict=True), key=lambda pair: pair[0])
        times[:] = [t for t, _ in pairs]
        statuses[:] = [s for _, s in pairs]
    return index


def check_lost(clients: list[Client], truth: dict, faults: list[Fault], poll: float,
               delay: float, end: float, lease: float = 0.0) -> list[Violation]:
    """4. No lost change: a unit's status that the client API held for two poll intervals
    from a moment the service was healthy (no service fault from a lease before it) was
    seen by every client that had a stream of the project open at some time between two
    intervals after it began and its end: live, or by resume (or snapshot) after, within
    `delay` of the spell's end."""
    violations = []
    watching = [c for c in clients if c.kind != "get"]
    indexes = {c.name: _shown_index(c) for c in watching}
    spans = {(c.name, slug): open_streams(c, slug) for c in watching for slug in truth}
    for slug, timeline in truth.items():
        for unit, status, since, until in unit_spells(timeline, end):
            if until - since < 2 * poll or overlaps(faults, since - lease, since + 2 * poll):
                continue
            for client in watching:
                if not any(a <= until and b >= since + 2 * poll + 0.2 for a, b in spans[client.name, slug]):
                    continue
                times, statuses = indexes[client.name].get((slug, unit), ([], []))
                first = bisect.bisect_left(times, since - 0.05)
                last = bisect.bisect_right(times, until + delay)
                # shown in the spell, or still shown from before it (the unit left the
                # status for a moment too short to be required, and came back)
                if status in statuses[max(first - 1, 0):last]:
                    continue
                violations.append(Violation(
                    "lost", client.name, since,
                    f"{slug} {unit} was {status!r} from {since:.3f} to {until:.3f}, never shown",
                    around(client, since)))
    return violations


def check_fresh_gets(clients: list[Client], truth: dict, faults: list[Fault], freshness: float
                     ) -> list[Violation]:
    """1 (for GETs): a GET answered while the service was healthy shows a state the
    client API held at most `freshness` before it was asked."""
    violations = []
    for client in clients:
        for record in client.records:
            if record.kind != "get" or overlaps(faults, record.t - freshness, record.until):
                continue
            held = states_between(truth[record.slug], record.t - freshness, record.until)
            if dict(record.payload) not in held:
                violations.append(Violation("stale", client.name, record.t,
                                            f"{record.slug}: a GET showed a state older than {freshness:.1f}s",
                                            around(client, record.t)))
    return violations


def check_errors(clients: list[Client], faults: list[Fault], slack: float) -> list[Violation]:
    """6. No error answer outside the windows where a fault (of any kind) explains it
    (from its start to `slack` after its heal)."""
    violations = []
    every = frozenset(f.kind for f in faults)
    for client in clients:
        for record in client.records:
            if record.kind == "error" and not overlaps(faults, record.t, record.t, every, slack):
                violations.append(Violation("error", client.name, record.t,
                                            f"{record.slug}: answered {record.payload} outside any fault",
                                            around(client, record.t)))
    return violations


def check_leftovers(before: dict, after: dict, allowance: dict) -> list[Violation]:
    """5. Nothing left: each figure measured after every client left (streams, pollers,
    leases, sockets, descriptors, memory, by worker) within its allowance of what it was
    before any client came. `before`/`after`: {name: number}; `allowance`: {name:
    (slack, factor)}: after <= before * factor + slack."""
    violations = []
    for name, value in sorted(after.items()):
        slack, factor = allowance.get(name.split(":")[0], (0, 1.0))
        base = before.get(name, 0)
        if value > base * factor + slack:
            violations.append(Violation("leftover", name, 0.0,
                                        f"{value:g} after every client left (before: {base:g}, "
                                        f"allowed {base * factor + slack:g})"))
    return violations


# --------------------------------------------------------------------------- figures

def recovery_times(clients: list[Client], truth: dict, faults: list[Fault]) -> dict[str, list[float]]:
    """Per fault kind, for each fault: seconds from its heal until every client's board of
    every project it watches shows a state the client API held at or after the heal
    (clients away of their own accord at the heal are not waited for)."""
    result: dict[str, list[float]] = {}
    watched = []                          # (client, slug, times, boards)
    for client in clients:
        if client.kind == "get":
            continue
        by_slug: dict[str, tuple[list[float], list[dict]]] = {}
        for record, board in boards(client):
            times, states = by_slug.setdefault(record.slug, ([], []))
            times.append(record.t)
            states.append(board)
        # when it left of its own accord (a phone asleep), and when it came back
        turns = [(r.t, r.kind == "closed" and r.payload == "left") for r in client.records
                 if r.kind in ("open", "closed")]
        asleep = ([t for t, _ in turns], [away for _, away in turns])
        watched += [(asleep, slug, times, states) for slug, (times, states) in by_slug.items()]
    for fault in faults:
        worst = 0.0
        for (turned, away), slug, times, states in watched:
            at = bisect.bisect_right(turned, fault.end)
            if not (at and away[at - 1]):       # asleep at the heal: not waited for
                worst = max(worst, _current_after(times, states, truth[slug], fault.end))
        result.setdefault(fault.kind, []).append(worst)
    return result


def _current_after(times: list[float], states: list[dict], timeline: list[tuple[float, dict]],
                   heal: float) -> float:
    """Seconds after `heal` until the board (`states`, shown at `times`) shows a state
    the client API held at or after the heal (it may already at the heal: 0); inf if
    never."""
    at = bisect.bisect_right(times, heal)
    if at and states[at - 1] == state_at(timeline, heal):
        return 0.0
    for t, state in zip(times[at:], states[at:], strict=True):
        if state in states_between(timeline, heal, t):
            return t - heal
    return math.inf


def percentiles(values: list[float]) -> tuple[float, float, float]:
    """p50, p99, max (nearest rank)."""
    if not values:
        return (math.nan, math.nan, math.nan)
    ordered = sorted(values)
    rank = max(0, math.ceil(0.99 * len(ordered)) - 1)
    return statistics.median(ordered), ordered[rank], ordered[-1]


def check_all(clients: list[Client], truth: dict, served: dict, served_states: dict,
              faults: list[Fault], *, poll: float,
              heal: float, bound: float, delay: float, freshness: float, error_slack: float,
              end: float, lease: float = 0.0) -> tuple[list[Violation], dict]:
    """Every invariant but the leftovers (which need the processes): the violations, and
    the figures (convergence times per client, events checked)."""
    converged, took = check_convergence(clients, truth, heal, bound)
    violations = [
        *converged,
        *check_fresh_gets(clients, truth, faults, freshness),
        *check_phantom(clients, served, served_states),
        *check_order(clients),
        *check_lost(clients, truth, faults, poll, delay, end, lease),
        *check_errors(clients, faults, error_slack),
    ]
    events = sum(1 for c in clients for r in c.records if r.kind in (*STATUS_KINDS, "get"))
    return violations, {"converged": took, "events": events}
