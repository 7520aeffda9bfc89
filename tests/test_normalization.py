"""Status normalization: a client's status values to the five statuses, by the card's
table (SPEC.md), a project's own mapping, and what is left unknown."""

import pytest

from public_service import (
    STATUSES,
    build_status_lookup,
    normalize_key,
    normalize_status,
    normalize_statuses,
)

DEFAULT = build_status_lookup(None)

# SPEC.md, "Status normalization": the card's default table, written out by hand so
# that a change to the service's own table cannot pass unnoticed.
SPEC_TABLE = {
    "available": ["available", "open", "free", "for_sale"],
    "reserved": ["reserved", "held", "pending"],
    "sold": ["sold", "purchased", "closed"],
    "hidden": ["hidden", "disabled", "inactive"],
    "unreleased": ["unreleased", "coming_soon", "future"],
}
CARD_TABLE = [(value, status) for status, values in SPEC_TABLE.items() for value in values]


@pytest.mark.parametrize(("value", "status"), CARD_TABLE)
def test_every_value_of_the_card_maps_to_its_status(value, status):
    assert normalize_status(value, DEFAULT) == status


def test_the_default_table_is_the_cards_and_nothing_more():
    assert {value: status for value, status in CARD_TABLE} == DEFAULT
    assert tuple(SPEC_TABLE) == STATUSES


@pytest.mark.parametrize(("value", "status"), [
    ("OPEN", "available"),
    ("  Sold  ", "sold"),
    ("For Sale", "available"),
    ("for-sale", "available"),
    ("Coming Soon", "unreleased"),
    ("COMING-SOON", "unreleased"),
    ("\tHeld\n", "reserved"),
])
def test_case_whitespace_spaces_and_hyphens(value, status):
    assert normalize_status(value, DEFAULT) == status


def test_normalize_key_replaces_each_space_and_hyphen():
    assert normalize_key(" A-b c ") == "a_b_c"
    assert normalize_key("coming  soon") == "coming__soon"


@pytest.mark.parametrize("value", ["", "gone", "on hold", None, True, False, {"a": 1}, [1], 3.5])
def test_unknown_values_are_unknown(value):
    assert normalize_status(value, DEFAULT) is None


def test_booleans_and_null_are_never_statuses_whatever_the_mapping():
    lookup = build_status_lookup({"available": ["true", "none", "false", "null"]})
    for value in (True, False, None):
        assert normalize_status(value, lookup) is None
    assert normalize_status("true", lookup) == "available"


def test_project_mapping_is_consulted_before_the_default_table():
    lookup = build_status_lookup({"sold": ["Closed", "under contract"], "hidden": "open"})
    assert normalize_status("closed", lookup) == "sold"
    assert normalize_status("Under-Contract", lookup) == "sold"
    assert normalize_status("open", lookup) == "hidden"        # overrides the default
    assert normalize_status("free", lookup) == "available"     # default still applies


def test_project_mapping_ignores_what_is_not_a_status():
    lookup = build_status_lookup({"bogus": ["x"], "sold": [1, None, "done"], "Reserved": ["hold"]})
    assert normalize_status("x", lookup) is None
    assert normalize_status("done", lookup) == "sold"
    assert normalize_status("hold", lookup) == "reserved"


@pytest.mark.parametrize("mapping", [None, [], "sold", 5, {"sold": 7}])
def test_unusable_mappings_fall_back_to_the_default(mapping):
    assert build_status_lookup(mapping) == DEFAULT


def test_numbers_can_be_mapped():
    lookup = build_status_lookup({"available": ["1"], "sold": ["0"]})
    assert normalize_status(1, lookup) == "available"
    assert normalize_status(0, lookup) == "sold"


def test_normalize_statuses_hides_and_reports_unknown_values():
    statuses, unknown = normalize_statuses(
        {"A1": "open", "A2": "mystery", "A3": None, "A4": "Sold"}, DEFAULT)
    assert statuses == {"A1": "available", "A2": "hidden", "A3": "hidden", "A4": "sold"}
    assert unknown == ["mystery", "null"]
    assert set(statuses.values()) <= set(STATUSES)
