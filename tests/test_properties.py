"""Property tests: whatever a client API sends, parsing raises nothing but the module's
own parse error, and normalization yields nothing but the five statuses."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from public_service import (
    STATUSES,
    StatusParseError,
    build_status_lookup,
    decode_status_body,
    diff_statuses,
    extract_unit_statuses,
    normalize_statuses,
)

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
unit_keys = st.sampled_from(["unit", "unit_id", "unit_number", "id", "code", "name", "other"])
status_keys = st.sampled_from(["status", "state", "availability", "other"])
plausible = st.one_of(
    st.dictionaries(st.text(max_size=10), scalars, max_size=10),
    st.lists(st.dictionaries(unit_keys | status_keys, scalars, max_size=4), max_size=8),
    st.dictionaries(st.sampled_from(["units", "data", "items", "results", "statuses", "meta"]),
                    json_values, max_size=3),
)
mappings = st.none() | json_values | st.dictionaries(
    st.sampled_from([*STATUSES, "Sold", "bogus"]), st.lists(scalars, max_size=4) | scalars, max_size=6)


def parse_and_normalize(document, mapping):
    try:
        raw = extract_unit_statuses(document)
    except StatusParseError:
        return None
    assert all(isinstance(unit, str) and unit for unit in raw)
    statuses, unknown = normalize_statuses(raw, build_status_lookup(mapping))
    assert set(statuses) == set(raw)
    assert set(statuses.values()) <= set(STATUSES)
    assert all(isinstance(value, str) for value in unknown)
    return statuses


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | plausible, mappings)
def test_any_document_parses_to_the_five_statuses_or_a_parse_error(document, mapping):
    parse_and_normalize(document, mapping)


@settings(max_examples=300)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_decode_or_raise_a_parse_error(body):
    try:
        raw = decode_status_body(body)
    except StatusParseError:
        return
    assert isinstance(raw, dict)


@settings(max_examples=300)
@given(plausible, mappings)
def test_documents_survive_a_json_round_trip(document, mapping):
    try:
        encoded = json.dumps(document).encode()
    except ValueError:
        return
    try:
        raw = decode_status_body(encoded)
    except StatusParseError:
        return
    assert set(normalize_statuses(raw, build_status_lookup(mapping))[0].values()) <= set(STATUSES)


statuses_maps = st.dictionaries(st.text(min_size=1, max_size=5), st.sampled_from(STATUSES), max_size=12)


@given(statuses_maps, statuses_maps)
def test_applying_a_diff_gives_the_new_view(old, new):
    """A client that applies every bulk_update sees the new snapshot (missing = hidden)."""
    view = dict(old)
    view.update(diff_statuses(old, new))
    assert {u: s for u, s in view.items() if s != "hidden"} == {
        u: s for u, s in new.items() if s != "hidden"}
