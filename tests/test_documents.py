"""A client API's document to its units and their raw statuses: the shapes the SPEC
allows and the wrappers around them, and everything else a parse error."""

import pytest

from public_service import StatusParseError, decode_status_body, extract_unit_statuses


def test_flat_object():
    assert extract_unit_statuses({"A101": "open", "A102": "sold"}) == {"A101": "open", "A102": "sold"}


@pytest.mark.parametrize("unit_key", ["unit", "unit_id", "unit_number", "id", "code", "name"])
@pytest.mark.parametrize("status_key", ["status", "state", "availability"])
def test_list_of_objects_with_any_unit_and_status_key(unit_key, status_key):
    body = [{unit_key: "A1", status_key: "open", "floor": 3}, {unit_key: "A2", status_key: "held"}]
    assert extract_unit_statuses(body) == {"A1": "open", "A2": "held"}


def test_unit_key_order_decides_between_several():
    assert extract_unit_statuses([{"id": 7, "unit": "A1", "status": "open"}]) == {"A1": "open"}


@pytest.mark.parametrize("wrapper", ["units", "data", "items", "results", "statuses"])
def test_wrapped_shapes(wrapper):
    listed = {wrapper: [{"unit": "A1", "status": "open"}], "meta": {"page": 1}}
    flat = {wrapper: {"A1": "open"}}
    assert extract_unit_statuses(listed) == {"A1": "open"}
    assert extract_unit_statuses(flat) == {"A1": "open"}


def test_nested_wrapping_is_understood():
    assert extract_unit_statuses({"data": {"items": [{"id": 1, "state": "open"}]}}) == {"1": "open"}


def test_wrappers_nest_three_deep_and_no_deeper():
    three = {"data": {"items": {"units": {"A1": "open"}}}}
    assert extract_unit_statuses(three) == {"A1": "open"}
    with pytest.raises(StatusParseError):
        extract_unit_statuses({"data": {"items": {"units": {"results": {"A1": "open"}}}}})


def test_a_wrapper_key_holding_a_value_is_a_unit():
    assert extract_unit_statuses({"data": "open", "A1": "sold"}) == {"data": "open", "A1": "sold"}


@pytest.mark.parametrize(("unit", "expected"), [(101, "101"), (101.0, "101"), (1.5, "1.5"), ("B-2", "B-2")])
def test_unit_ids_are_strings(unit, expected):
    assert extract_unit_statuses([{"unit": unit, "status": "open"}]) == {expected: "open"}


def test_empty_documents_mean_no_units():
    assert extract_unit_statuses({}) == {}
    assert extract_unit_statuses([]) == {}
    assert extract_unit_statuses({"units": []}) == {}


@pytest.mark.parametrize("document", [
    "open", 42, None, True,
    [1, 2],
    [{"status": "open"}],                 # no unit key
    [{"unit": "A1"}],                     # no status key
    [{"unit": None, "status": "open"}],
    [{"unit": True, "status": "open"}],
    [{"unit": "", "status": "open"}],
    [{"unit": ["A1"], "status": "open"}],
    [{"unit": "A1", "status": {"code": "open"}}],
    {"A1": {"status": "open"}},
    {"A1": ["open"]},
])
def test_anything_else_is_a_parse_error(document):
    with pytest.raises(StatusParseError):
        extract_unit_statuses(document)


@pytest.mark.parametrize("body", [b"", b"not json", b"{", b"\xff\xfe\x00", b"[" * 100_000])
def test_undecodable_bodies_are_parse_errors(body):
    with pytest.raises(StatusParseError):
        decode_status_body(body)


def test_decode_status_body():
    assert decode_status_body(b'{"results": [{"code": "X", "availability": "Free"}]}') == {"X": "Free"}
