"""Resume, in the pure core: what changed between two views (a `bulk_update`), event
ids, the bounded history of changes, and a store's lines of versions."""

import pytest

import public_service
from public_service import Fetched, History, LocalStore, Snapshot, diff_statuses, parse_event_id


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
])
def test_event_ids(text, parsed):
    assert parse_event_id(text) == parsed


def test_history_is_bounded_by_count_and_by_bytes():
    history = History(bound=3)
    for version in range(1, 6):
        history.add(version, [f"U{version}"])
    assert history.since(2, 5) == {"U3", "U4", "U5"}
    assert history.since(1, 5) is None                     # reached back only to 3
    assert history.since(5, 5) == set()
    assert history.since(3, 5) == {"U4", "U5"}             # what came after 3, not 3 itself
    big = History(bound=100)
    for version in range(1, 4):
        big.add(version, [f"unit-{version}-{n:06d}" for n in range(10_000)])
    assert big.bytes <= public_service.HISTORY_BYTES
    assert big.since(2, 3) is not None and big.since(1, 3) is None


def test_history_starts_again_after_a_gap():
    history = History(bound=10)
    history.add(1, ["A"])
    history.add(3, ["B"])                                  # 2 was never seen: no line
    assert history.since(1, 3) is None and history.since(2, 3) == {"B"}


@pytest.fixture
def store():
    changes = []
    local = LocalStore(on_change=lambda *change: changes.append(change), history=10)
    local.changes = changes
    return local


def commit(store, statuses):
    return store.commit("p", Fetched.over(store.read("p")[0], statuses, []))


def test_changes_since_merges_what_a_client_missed_with_current_statuses(store):
    first = commit(store, {"A1": "available", "A2": "available", "A3": "sold"})
    commit(store, {"A1": "reserved", "A2": "available", "A3": "sold"})
    commit(store, {"A1": "sold", "A2": "available"})               # A3 went away
    current = commit(store, {"A1": "sold", "A2": "available", "A4": "available"})
    assert store.changes_since("p", first.epoch, first.version) == {
        "A1": "sold", "A3": "hidden", "A4": "available"}
    assert store.changes_since("p", current.epoch, current.version) == {}
    assert store.changes_since("p", current.epoch, current.version + 1) is None   # future
    assert store.changes_since("p", "other", first.version) is None               # another epoch
    assert store.changes_since("nothing", first.epoch, 1) is None


def test_a_commit_prepared_against_an_older_snapshot_is_compared_again(store):
    first = commit(store, {"A1": "available", "A2": "available"})
    one, two = (Fetched.over(first, statuses, []) for statuses in (
        {"A1": "sold", "A2": "available"}, {"A1": "sold", "A2": "reserved"}))
    store.commit("p", one)
    store.commit("p", two)                                  # prepared before `one` came in
    assert store.changes[-1][1] == {"A2": "reserved"}


def test_an_installed_step_adds_to_the_history_by_default(store):
    first = commit(store, {"A1": "available"})
    step = Snapshot.build("p", first.epoch, 2, {"A1": "sold"})
    store.install(step, 0, {"A1": "sold"})                 # as a mirror brings one in
    assert store.changes[-1][2] == (first.epoch, 1)
    assert store.changes_since("p", first.epoch, 1) == {"A1": "sold"}


def test_a_new_line_takes_its_history_whatever_this_store_kept(store):
    commit(store, {"A1": "available"})
    commit(store, {"A1": "reserved"})
    shared = Snapshot.build("p", "shared", 17, {"A1": "sold", "A2": "sold"})
    store.install(shared, 0, None, history=[(16, ["A2"]), (17, ["A1"])])
    assert store.changes_since("p", "shared", 15) == {"A1": "sold", "A2": "sold"}


def test_ids_start_at_one_in_an_epoch_of_each_store():
    one, two = (LocalStore(lambda *change: None) for _ in range(2))
    assert one.epoch != two.epoch
    assert commit(one, {"A1": "sold"}).id == f"{one.epoch}-1"


def test_a_change_to_a_shared_line_starts_a_line_of_its_own_stepping_from_it(store):
    shared = Snapshot.build("p", "shared", 17, {"A1": "sold"})
    store.install(shared, 0, None, history=[(16, ["A1"]), (17, ["A1"])])
    assert store.changes_since("p", "shared", 16) == {"A1": "sold"}
    assert commit(store, {"A1": "sold"}) is shared                  # unchanged: kept
    mine = commit(store, {"A1": "available"})
    assert (mine.epoch, mine.version) == (store.epoch, 1)
    assert store.changes[-1] == (mine, {"A1": "available"}, ("shared", 17))  # a step from it
    assert store.changes_since("p", "shared", 17) is None
