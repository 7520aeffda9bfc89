"""Resume, in the pure core: what changed between two views (a `bulk_update`), event
ids, the bounded history of changes, and a store's lines of versions."""

import pytest

import public_service
from public_service import (
    Change,
    Fetched,
    History,
    LocalStore,
    Position,
    Snapshot,
    Succession,
    diff_statuses,
    mux_event_id,
    parse_event_id,
    parse_mux_event_id,
    project_tag,
    succession,
)


def test_diff_reports_changed_and_new_units_only():
    old = {"A1": "available", "A2": "sold"}
    new = {"A1": "reserved", "A2": "sold", "A3": "available"}
    assert diff_statuses(old, new) == {"A1": "reserved", "A3": "available"}


def test_diff_sends_a_disappeared_unit_as_hidden():
    assert diff_statuses({"A1": "sold", "A2": "available"}, {"A1": "sold"}) == {"A2": "hidden"}


def test_diff_skips_a_hidden_unit_that_disappears():
    assert diff_statuses({"A1": "hidden"}, {}) == {}


def test_diff_of_equal_snapshots_is_empty():
    assert diff_statuses({"A1": "sold"}, {"A1": "sold"}) == {}


@pytest.mark.parametrize(("text", "parsed"), [
    ("a1b2c3-17", ("a1b2c3", 17)), ("e-0", ("e", 0)), ("  f00-5 ", ("f00", 5)),
    ("garbage", None), ("", None), (None, None), ("-5", None), ("e--5", None), ("e-1.5", None),
    ("e-", None), ("e-x", None), ("é-1", None), ("a b-1", None), ("e-٣", None),
    ("e-" + "9" * 5000, None), ("e" * 5000 + "-1", None), ("e-" + "9" * 18, ("e", 10**18 - 1)),
    ("e-" + "9" * 19, None), ("e" * 32 + "-1", ("e" * 32, 1)), ("e" * 33 + "-1", None),
])
def test_event_ids(text, parsed):
    assert parse_event_id(text) == (Position(*parsed) if parsed else None)


E = "e0"


def at(version: int, epoch: str = E) -> Position:
    return Position(epoch, version)


@pytest.mark.parametrize(("held", "new", "base", "case"), [
    (at(1), at(2), at(1), Succession.STEP),            # the version after the one held
    (at(1), at(3), at(1), Succession.STEP),            # a step is what leads from the held one
    (at(1, "shared"), at(1), at(1, "shared"), Succession.STEP),  # across epochs: a line of its own
    (at(1), at(3), at(2), Succession.JUMP),            # newer, but not from what is held
    (None, at(1), None, Succession.JUMP),              # nothing held yet
    (at(5, "old"), at(1), None, Succession.JUMP),      # another line
    (at(1), at(2), None, Succession.JUMP),             # changes not known: take it whole
    (at(2), at(2), at(1), Succession.STALE),           # held already
    (at(3), at(2), at(1), Succession.STALE),           # older than held
])
def test_the_one_rule_for_versions(held, new, base, case):
    assert succession(held, new, base) is case


def test_history_is_bounded_by_count_and_by_bytes():
    history = History(bound=3)
    for version in range(1, 6):
        history.add(at(version - 1) if version > 1 else None, at(version), [f"U{version}"])
    assert history.since(at(2), at(5)) == {"U3", "U4", "U5"}
    assert history.since(at(1), at(5)) is None             # reached back only to 3
    assert history.since(at(5), at(5)) == set()
    assert history.since(at(3), at(5)) == {"U4", "U5"}     # what came after 3, not 3 itself
    big = History(bound=100)
    for version in range(1, 4):
        big.add(at(version - 1), at(version), [f"unit-{version}-{n:06d}" for n in range(10_000)])
    assert big.bytes <= public_service.HISTORY_BYTES
    assert big.since(at(2), at(3)) is not None and big.since(at(1), at(3)) is None


def test_history_starts_again_after_a_gap():
    history = History(bound=10)
    history.add(at(0), at(1), ["A"])
    history.add(at(2), at(3), ["B"])                       # 2 was never seen: no line
    assert history.since(at(1), at(3)) is None and history.since(at(2), at(3)) == {"B"}
    history.add(None, at(4), ["C"])                        # a jump: the line begins again
    assert history.since(at(3), at(4)) is None


@pytest.fixture
def store():
    changes = []
    local = LocalStore(on_change=changes.append, history=10)
    local.changes = changes
    return local


def commit(store, statuses):
    return store.commit("p", Fetched.over(store.read("p")[0], statuses, []))


def test_changes_since_merges_what_a_client_missed_with_current_statuses(store):
    first = commit(store, {"A1": "available", "A2": "available", "A3": "sold"})
    commit(store, {"A1": "reserved", "A2": "available", "A3": "sold"})
    commit(store, {"A1": "sold", "A2": "available"})               # A3 went away
    current = commit(store, {"A1": "sold", "A2": "available", "A4": "available"})
    assert store.changes_since("p", first.position) == {
        "A1": "sold", "A3": "hidden", "A4": "available"}
    assert store.changes_since("p", current.position) == {}
    assert store.changes_since("p", at(current.position.version + 1, store.epoch)) is None  # future
    assert store.changes_since("p", at(first.position.version, "other")) is None  # another epoch
    assert store.changes_since("nothing", first.position) is None


def test_a_commit_prepared_against_an_older_snapshot_is_compared_again(store):
    first = commit(store, {"A1": "available", "A2": "available"})
    one, two = (Fetched.over(first, statuses, []) for statuses in (
        {"A1": "sold", "A2": "available"}, {"A1": "sold", "A2": "reserved"}))
    store.commit("p", one)
    store.commit("p", two)                                  # prepared before `one` came in
    assert store.changes[-1].updates == {"A2": "reserved"}


def test_an_installed_step_adds_to_the_history_by_default(store):
    first = commit(store, {"A1": "available"})
    step = Snapshot.build("p", at(2, store.epoch), {"A1": "sold"})
    store.install(Change(step, first.position, {"A1": "sold"}), 0, None)   # as a mirror brings one in
    assert store.changes[-1].base == first.position
    assert store.changes_since("p", first.position) == {"A1": "sold"}


def test_a_new_line_takes_its_history_whatever_this_store_kept(store):
    commit(store, {"A1": "available"})
    commit(store, {"A1": "reserved"})
    shared = Snapshot.build("p", at(17, "shared"), {"A1": "sold", "A2": "sold"})
    history = History.of(10, [(at(15, "shared"), at(16, "shared"), ["A2"]),
                              (at(16, "shared"), at(17, "shared"), ["A1"])])
    store.install(Change(shared, None, None), 0, None, history)
    assert store.changes_since("p", at(15, "shared")) == {"A1": "sold", "A2": "sold"}


def test_ids_start_at_one_in_an_epoch_of_each_store():
    one, two = (LocalStore(lambda change: None) for _ in range(2))
    assert one.epoch != two.epoch
    assert commit(one, {"A1": "sold"}).id == f"{one.epoch}-1"


def test_a_change_to_a_shared_line_starts_a_line_of_its_own_stepping_from_it(store):
    shared = Snapshot.build("p", at(17, "shared"), {"A1": "sold"})
    history = History.of(10, [(at(15, "shared"), at(16, "shared"), ["A1"]),
                              (at(16, "shared"), at(17, "shared"), ["A1"])])
    store.install(Change(shared, None, None), 0, None, history)
    assert store.changes_since("p", at(16, "shared")) == {"A1": "sold"}
    assert commit(store, {"A1": "sold"}) is shared                  # unchanged: kept
    mine = commit(store, {"A1": "available"})
    assert mine.position == at(1, store.epoch)
    change = store.changes[-1]
    assert (change.snapshot, change.updates, change.base) == (mine, {"A1": "available"}, at(17, "shared"))
    assert store.changes_since("p", at(17, "shared")) is None       # resume never crosses epochs


def test_a_second_spell_alone_never_gives_out_an_id_of_the_first(store):
    """Found by `make chaos` (seed 1): a worker alone twice (Redis restarted empty, later
    stopped) began its line of its own at `<its epoch>-1` both times, for two different
    boards; a client holding the first spell's id was taken as current in the second."""
    shared = Snapshot.build("p", at(6, "shared"), {"A1": "sold"})
    store.install(Change(shared, None, None), 0, None, History(10))
    first = commit(store, {"A1": "available"})                     # alone: a line of its own
    back = Snapshot.build("p", at(7, "shared"), {"A1": "reserved", "A2": "sold"})
    store.install(Change(back, None, None), 0, None, History(10))   # shared again
    second = commit(store, {"A1": "hidden", "A2": "sold"})          # alone again
    assert second.id != first.id
    assert store.changes_since("p", first.position) is None        # its client gets it all
    assert commit(store, {"A1": "sold", "A2": "sold"}).position == Position(second.position.epoch, 2)


def test_a_client_ahead_of_this_worker_is_not_sent_back_to_an_older_version(store):
    """Found by `make chaos` (seeds 11 and 424242): a worker one version behind the shared
    line (Redis, restarted empty, lost a commit whose message had reached another worker;
    or the message was still on its way) answered a client that had the newer version
    with its older snapshot: the board went back in time. Nothing is said until this
    worker has news; the client keeps what it has."""
    fifth = Snapshot.build("p", at(5, "shared"), {"A1": "sold"})
    store.install(Change(fifth, None, None), 0, None, History(10))  # as a mirror of Redis
    ahead = at(6, "shared")
    fanout = public_service.Fanout(public_service.Config.from_env({"DATABASE_URL": "x"}),
                                   public_service.Metrics(), lambda slug: None)
    stream = public_service.open_stream(fanout, store, ["p"], str(ahead), gzip=False)
    [connected] = stream._early
    assert b'"resumed": false' in connected.plain and stream.held["p"] == ahead
    fanout.publish(Change(fifth, None, None))                      # nothing newer: nothing
    assert len(stream._early) == 1
    newer = Snapshot.build("p", at(1, "next"), {"A1": "available"})  # a new line: taken whole
    fanout.publish(Change(newer, None, None))
    assert b"status_update" in stream._early[-1].plain and stream.held["p"] == newer.position
    stream.abort()


def test_a_newer_id_of_this_workers_own_line_is_a_first_connect(store):
    mine = commit(store, {"A1": "sold"})
    fanout = public_service.Fanout(public_service.Config.from_env({"DATABASE_URL": "x"}),
                                   public_service.Metrics(), lambda slug: None)
    forged = str(at(mine.position.version + 5, mine.position.epoch))
    stream = public_service.open_stream(fanout, store, ["p"], forged, gzip=False)
    assert b"status_update" in stream._early[-1].plain and stream.held["p"] == mine.position
    stream.abort()


def test_a_multiplexed_id_names_each_project_by_a_tag_of_its_own():
    held = {"harbour-view": at(7, "aa"), "marina-point": at(3, "bb"), "not-yet": None}
    text = mux_event_id(held)
    assert parse_mux_event_id(text) == {project_tag("harbour-view"): at(7, "aa"),
                                        project_tag("marina-point"): at(3, "bb")}
    assert len({project_tag(f"p-{n}") for n in range(20_000)}) == 20_000
    assert parse_mux_event_id("garbage.x-y-z." + "a" * 10_000) == {}
    assert parse_mux_event_id(None) == {}
    tag = project_tag("harbour-view")
    assert parse_mux_event_id(f"~{'e' * 32}.{tag}5") == {tag: at(5, "e" * 32)}
    assert parse_mux_event_id(f"~{'e' * 33}.{tag}5") == {}
    assert parse_mux_event_id(f"~ba!d.{tag}5.~ok.{tag}6") == {tag: at(6, "ok")}
    assert parse_mux_event_id(f"~.{tag}5") == parse_mux_event_id(f"{tag}5") == {}


def test_a_multiplexed_id_line_is_made_once_for_the_positions_held():
    held = (("harbour-view", at(7, "aa")), ("marina-point", None))
    line = public_service._id_line(held)
    assert line == b"id: ~aa.%s7\n\n" % project_tag("harbour-view").encode()
    assert public_service._id_line(held) is line
