"""Property tests. Valid documents, in every shape the SPEC allows, must parse to exactly
the units they hold (a parser that rejects everything fails here); anything at all
parses or raises the module's own parse error, never another exception; normalization
yields only the five statuses and maps every spelling of a known value."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_normalization import CARD_TABLE

from public_service import (
    STATUS_KEYS,
    STATUSES,
    UNIT_KEYS,
    WRAPPER_KEYS,
    StatusParseError,
    build_status_lookup,
    decode_status_body,
    diff_statuses,
    extract_unit_statuses,
    normalize_status,
    normalize_statuses,
)

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
unit_ids = st.text(min_size=1, max_size=8) | st.integers(min_value=-10**6, max_value=10**6)
raw_statuses = st.sampled_from([value for value, _ in CARD_TABLE]) | scalars


@st.composite
def valid_documents(draw):
    """(document, the unit -> raw status it holds) in any of the SPEC's three shapes."""
    units = draw(st.lists(st.tuples(unit_ids, raw_statuses), max_size=12))
    expected = {str(unit): status for unit, status in units}
    if draw(st.booleans()):                                     # 1. a flat object
        document = {str(unit): status for unit, status in units}
    else:                                                        # 2. a list of objects
        document = [{draw(st.sampled_from(UNIT_KEYS)): unit,
                     draw(st.sampled_from(STATUS_KEYS)): status, "floor": 3}
                    for unit, status in units]
    if draw(st.booleans()):                                     # 3. either, wrapped
        document = {draw(st.sampled_from(WRAPPER_KEYS)): document, "meta": {"page": 1}}
    return document, expected


@settings(max_examples=500)
@given(valid_documents())
def test_valid_documents_parse_to_exactly_their_units(case):
    document, expected = case
    assert extract_unit_statuses(document) == expected
    assert decode_status_body(json.dumps(document).encode()) == expected


@settings(max_examples=300)
@given(valid_documents())
def test_valid_documents_normalize_to_the_five_statuses(case):
    document, expected = case
    statuses, unknown = normalize_statuses(extract_unit_statuses(document), build_status_lookup(None))
    assert set(statuses) == set(expected)
    assert set(statuses.values()) <= set(STATUSES)
    for unit, raw in expected.items():
        known = dict(CARD_TABLE).get(raw) if isinstance(raw, str) else None
        assert statuses[unit] == (known or "hidden")
    assert len(unknown) == sum(1 for raw in expected.values()
                               if not (isinstance(raw, str) and raw in dict(CARD_TABLE)))


@st.composite
def spellings(draw):
    """A value of the card's table as a client might write it: any case, spaces or
    hyphens for underscores, whitespace around."""
    value, status = draw(st.sampled_from(CARD_TABLE))
    written = "".join(draw(st.sampled_from([c.upper(), c.lower()])) if c != "_"
                      else draw(st.sampled_from([" ", "-", "_"])) for c in value)
    pad = st.sampled_from(["", " ", "\t", "  ", "\n"])
    return draw(pad) + written + draw(pad), status


@given(spellings())
def test_every_spelling_of_a_known_value_maps_to_its_status(case):
    written, status = case
    assert normalize_status(written, build_status_lookup(None)) == status


scalar_or_container = json_values | st.dictionaries(
    st.sampled_from(["units", "data", "items", "results", "statuses", "meta"]), json_values, max_size=3)
mappings = st.none() | json_values | st.dictionaries(
    st.sampled_from([*STATUSES, "Sold", "bogus"]), st.lists(scalars, max_size=4) | scalars, max_size=6)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(scalar_or_container, mappings)
def test_any_document_parses_to_the_five_statuses_or_a_parse_error(document, mapping):
    try:
        raw = extract_unit_statuses(document)
    except StatusParseError:
        return
    assert all(isinstance(unit, str) and unit for unit in raw)
    statuses, unknown = normalize_statuses(raw, build_status_lookup(mapping))
    assert set(statuses) == set(raw)
    assert set(statuses.values()) <= set(STATUSES)
    assert all(isinstance(value, str) for value in unknown)


@settings(max_examples=300)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_decode_or_raise_a_parse_error(body):
    try:
        raw = decode_status_body(body)
    except StatusParseError:
        return
    assert isinstance(raw, dict)


statuses_maps = st.dictionaries(st.text(min_size=1, max_size=5), st.sampled_from(STATUSES), max_size=12)


@given(statuses_maps, statuses_maps)
def test_applying_a_diff_gives_the_new_view(old, new):
    """A client that applies every bulk_update sees the new snapshot (missing = hidden)."""
    view = dict(old)
    view.update(diff_statuses(old, new))
    assert {u: s for u, s in view.items() if s != "hidden"} == {
        u: s for u, s in new.items() if s != "hidden"}
