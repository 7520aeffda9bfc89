"""Pure logic, tested without I/O: normalization, response shapes, SSE encoding,
diffing, backoff, URL joining, auth headers, project rows, configuration."""

import base64
import gzip
import json
import math
import zlib
from decimal import Decimal

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

import public_service
from public_service import (
    GZIP_HEADER,
    STATUSES,
    Config,
    ConfigError,
    Fetched,
    History,
    LocalStore,
    Snapshot,
    SSEMessage,
    StatusParseError,
    Wire,
    accepts_gzip,
    auth_headers,
    backoff_delay,
    build_status_lookup,
    decode_status_body,
    deflate_piece,
    diff_statuses,
    extract_unit_statuses,
    gzip_end,
    join_status_url,
    json_error,
    normalize_key,
    normalize_status,
    normalize_statuses,
    parse_event_id,
    project_from_row,
    retry_message,
    split_userinfo,
    stored_piece,
)

DEFAULT = build_status_lookup(None)

# --------------------------------------------------------------------------- normalization

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


# --------------------------------------------------------------------------- response shapes

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


# --------------------------------------------------------------------------- diffing and backoff

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


@pytest.mark.parametrize("failures", range(1, 12))
@pytest.mark.parametrize("rand", [0.0, 0.5, 0.999999])
def test_backoff_grows_between_one_and_eight_intervals(failures, rand):
    delay = backoff_delay(failures, 2.0, lambda: rand)
    assert 2.0 <= delay <= 16.0
    expected_ceiling = 2.0 * min(2 ** failures, 8)
    assert expected_ceiling / 2 <= delay <= expected_ceiling


def test_backoff_is_jittered():
    assert backoff_delay(3, 1.0, lambda: 0.0) != backoff_delay(3, 1.0, lambda: 0.9)


# --------------------------------------------------------------------------- SSE encoding

@pytest.mark.parametrize(("message", "wire"), [
    (SSEMessage(data="x"), b"data: x\n\n"),
    (SSEMessage(data="x", event="ping"), b"event: ping\ndata: x\n\n"),
    (SSEMessage(data="x", event="e", id=0), b"id: 0\nevent: e\ndata: x\n\n"),
    (SSEMessage(data="x", event="e", id=7, retry=3000), b"id: 7\nevent: e\nretry: 3000\ndata: x\n\n"),
    (SSEMessage(retry=250), b"retry: 250\n\n"),
    (SSEMessage(data="a\nb\r\nc\rd"), b"data: a\ndata: b\ndata: c\ndata: d\n\n"),
    (SSEMessage(data=""), b"data: \n\n"),
    (SSEMessage(data="a\n"), b"data: a\ndata: \n\n"),
    (SSEMessage(data="x", event="evil\nevent: other"), b"event: evil event: other\ndata: x\n\n"),
    (SSEMessage(data="x", id="1\r\n2\x003"), b"id: 1 23\ndata: x\n\n"),
    (SSEMessage(data='{"k": "\u00e9"}'), 'data: {"k": "\u00e9"}\n\n'.encode()),
])
def test_sse_message_encoding(message, wire):
    assert message.encode() == wire


@pytest.mark.parametrize(("seconds", "header"), [
    (0.2, "1"), (1.0, "1"), (1.01, "2"), (5.2, "6"), (29.999, "30"), (30, "30")])
def test_retry_after_rounds_up_to_whole_seconds_of_at_least_one(seconds, header):
    assert json_error(503, "later", seconds).headers["Retry-After"] == header
    assert "Retry-After" not in json_error(404, "not found").headers


def test_sse_messages_compare_by_value():
    assert SSEMessage(data="x", id=1) == SSEMessage(data="x", id=1)
    assert SSEMessage(data="x", id=1) != SSEMessage(data="x", id=2)


def test_snapshot_carries_its_encodings():
    snapshot = Snapshot.build("demo", "e1f", 3, {"A1": "sold", "A2": "available"})
    assert json.loads(snapshot.body) == {
        "project": "demo", "statuses": {"A1": "sold", "A2": "available"}, "count": 2}
    assert snapshot.event.plain == (
        b'id: e1f-3\nevent: status_update\ndata: {"statuses": {"A1": "sold", "A2": "available"}}\n\n')
    assert snapshot.id == "e1f-3"


# --------------------------------------------------------------------------- URLs and auth

@pytest.mark.parametrize(("base", "endpoint", "url"), [
    ("https://api.example.com", "units/status", "https://api.example.com/units/status"),
    ("https://api.example.com/", "/units/status", "https://api.example.com/units/status"),
    ("https://api.example.com//", "//units", "https://api.example.com/units"),
    ("https://api.example.com/v2", "status", "https://api.example.com/v2/status"),
    ("https://api.example.com/v2", "https://other.example.com/s", "https://other.example.com/s"),
    ("https://api.example.com/v2/status", None, "https://api.example.com/v2/status"),
    (None, "http://only.example.com/s", "http://only.example.com/s"),
])
def test_status_url_joins_with_exactly_one_slash(base, endpoint, url):
    assert join_status_url(base, endpoint) == url


def test_split_userinfo():
    assert split_userinfo("https://u:p%40ss@h.example:8443/x?q=1") == (
        "https://h.example:8443/x?q=1", ("u", "p%40ss"))
    assert split_userinfo("https://h.example/x") == ("https://h.example/x", None)


def test_bearer():
    assert auth_headers("bearer", {"token": "T0k"}, None) == {"Authorization": "Bearer T0k"}


@pytest.mark.parametrize(("credentials", "headers"), [
    ({"header": "X-Key", "key": "K"}, {"X-Key": "K"}),
    ({"header_name": "X-Key", "key": "K"}, {"X-Key": "K"}),
    ({"api_key": "K"}, {"X-API-Key": "K"}),
    ({"key": "K"}, {"X-API-Key": "K"}),
])
def test_api_key(credentials, headers):
    assert auth_headers("api_key", credentials, None) == headers


def test_basic():
    expected = "Basic " + base64.b64encode(b"user:pa:ss").decode()
    assert auth_headers("basic", {"username": "user", "password": "pa:ss"}, None) == {
        "Authorization": expected}


def test_no_auth_uses_userinfo_from_the_url():
    assert auth_headers(None, None, ("u", "p")) == {"Authorization": "Basic dTpw"}
    assert auth_headers(None, None, None) == {}
    assert auth_headers("  ", None, None) == {}


def test_auth_type_is_case_insensitive():
    assert auth_headers("Bearer", {"token": "T"}, None) == {"Authorization": "Bearer T"}


@pytest.mark.parametrize(("auth_type", "credentials"), [
    ("bearer", None), ("bearer", {}), ("bearer", "S3CRET-VALUE"),
    ("api_key", {"header": "X-Key", "password": "S3CRET-VALUE"}),
    ("api_key", {"header": "Bad Header", "key": "S3CRET-VALUE"}),
    ("basic", {"password": "S3CRET-VALUE"}),
    ("oauth2", {"token": "S3CRET-VALUE"}),
])
def test_unusable_auth_settings_raise_without_the_secret(auth_type, credentials):
    with pytest.raises(ValueError) as raised:
        auth_headers(auth_type, credentials, None)
    assert "S3CRET" not in str(raised.value)


# --------------------------------------------------------------------------- project rows

def row(base="https://api.example.com", endpoint="/status", auth_type=None, credentials=None,
        timeout=None, mapping=None, interval=None):
    return (base, endpoint, auth_type, credentials, timeout, mapping, interval)


def test_project_defaults():
    project = project_from_row("demo", row(), default_poll_interval=30.0)
    assert project.status_url == "https://api.example.com/status"
    assert project.timeout == 10.0
    assert project.poll_interval == 30.0
    assert project.auth_headers == {}
    assert project.config_error is None


def test_project_numeric_columns():
    project = project_from_row("demo", row(timeout=Decimal("2.5"), interval=Decimal("0.25")), 30.0)
    assert (project.timeout, project.poll_interval) == (2.5, 0.25)


def test_project_json_columns_as_text_and_twice_encoded():
    credentials = json.dumps(json.dumps({"token": "tok-1"}))
    mapping = json.dumps({"sold": ["gone"]})
    project = project_from_row("demo", row(auth_type="bearer", credentials=credentials,
                                           mapping=mapping), 30.0)
    assert project.auth_headers == {"Authorization": "Bearer tok-1"}
    assert project.status_lookup["gone"] == "sold"


def test_project_secrets_and_repr():
    project = project_from_row(
        "demo", row(base="https://urluser:urlpass@api.example.com", auth_type="basic",
                    credentials=json.dumps({"username": "bob-user", "password": "hunter2-pw"})), 30.0)
    encoded = base64.b64encode(b"bob-user:hunter2-pw").decode()
    assert {"bob-user", "hunter2-pw", encoded, "urlpass"} <= set(project.secrets)
    assert project.status_url == "https://api.example.com/status"
    for secret in ("hunter2-pw", "bob-user", "urlpass", encoded):
        assert secret not in repr(project)


@pytest.mark.parametrize(("fields", "problem"), [
    ({"credentials": "{not json"}, "auth_credentials is not JSON"),
    ({"mapping": "{not json"}, "status_mapping is not JSON"),
    ({"auth_type": "bearer", "credentials": json.dumps({"token": "a\nb"})}, "not allowed in an HTTP header"),
    ({"auth_type": "magic"}, "needs auth_credentials"),
    ({"base": None, "endpoint": "/status"}, "http(s) URL"),
    ({"base": "ftp://x.example", "endpoint": "s"}, "http(s) URL"),
])
def test_unusable_configs_say_why(fields, problem):
    project = project_from_row("demo", row(**fields), 30.0)
    assert problem in project.config_error


@pytest.mark.parametrize("value", [0, -1, None])
def test_nonpositive_timeouts_and_intervals_take_defaults(value):
    project = project_from_row("demo", row(timeout=value, interval=value), 7.0)
    assert (project.timeout, project.poll_interval) == (10.0, 7.0)


def test_timeouts_are_capped():
    assert project_from_row("demo", row(timeout=86400), 7.0).timeout == 120.0


# --------------------------------------------------------------------------- configuration

def test_config_defaults_follow_the_spec():
    config = Config.from_env({"DATABASE_URL": "postgresql://x/y"})
    assert (config.port, config.status_cache_ttl, config.sse_ping_interval, config.sse_retry_ms,
            config.default_poll_interval, config.refresh_min_interval, config.project_cache_ttl,
            config.cors_allow_origin, config.log_level, config.log_format,
            config.max_upstream_bytes, config.max_streams, config.redis_url,
            config.poll_lease_ttl) == (8000, 30, 30, 3000, 30, 10, 30, "*", "INFO", "text",
                                       5_000_000, 10_000, None, 10)


def test_config_durations_accept_floats():
    config = Config.from_env({"DATABASE_URL": "x", "STATUS_CACHE_TTL": "0.25",
                              "SSE_PING_INTERVAL": 0.1, "REFRESH_MIN_INTERVAL": "0"})
    assert (config.status_cache_ttl, config.sse_ping_interval, config.refresh_min_interval) == (
        0.25, 0.1, 0.0)


@pytest.mark.parametrize(("name", "value"), [
    ("STATUS_CACHE_TTL", "soon"), ("SSE_PING_INTERVAL", "0"), ("SSE_PING_INTERVAL", "-1"),
    ("SSE_RETRY_MS", "1.5"), ("LOG_FORMAT", "xml"), ("LOG_LEVEL", "LOUD"),
    ("DEFAULT_POLL_INTERVAL", "nan"), ("DEFAULT_POLL_INTERVAL", "inf"), ("MAX_STREAMS", "-1"),
])
def test_config_rejects_bad_values_by_name(name, value):
    with pytest.raises(ConfigError, match=name):
        Config.from_env({"DATABASE_URL": "x", name: value})


def test_config_requires_a_database_and_never_shows_it():
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Config.from_env({})
    config = Config.from_env({"DATABASE_URL": "postgresql://u:s3cret-db@h/d"})
    assert "s3cret-db" not in repr(config)


def test_config_is_frozen():
    config = Config.from_env({"DATABASE_URL": "x"})
    with pytest.raises(AttributeError):
        config.port = 1
    assert math.isfinite(config.db_timeout)


# --------------------------------------------------------------------------- edges of the rules

CONFIG_VARIABLES = [
    ("PORT", "port", "9000", 9000), ("STATUS_CACHE_TTL", "status_cache_ttl", "1.5", 1.5),
    ("SSE_PING_INTERVAL", "sse_ping_interval", "2", 2.0), ("SSE_RETRY_MS", "sse_retry_ms", "10", 10),
    ("DEFAULT_POLL_INTERVAL", "default_poll_interval", "3", 3.0),
    ("REFRESH_MIN_INTERVAL", "refresh_min_interval", "4", 4.0),
    ("PROJECT_CACHE_TTL", "project_cache_ttl", "5", 5.0),
    ("CORS_ALLOW_ORIGIN", "cors_allow_origin", "https://a.example", "https://a.example"),
    ("LOG_LEVEL", "log_level", "debug", "DEBUG"), ("LOG_FORMAT", "log_format", "JSON", "json"),
    ("MAX_UPSTREAM_BYTES", "max_upstream_bytes", "7", 7), ("MAX_STREAMS", "max_streams", "8", 8),
    ("REDIS_URL", "redis_url", "redis://r.example/0", "redis://r.example/0"),
    ("POLL_LEASE_TTL", "poll_lease_ttl", "9", 9.0), ("MIN_POLL_INTERVAL", "min_poll_interval", "0.5", 0.5),
    ("HEADER_TIMEOUT", "header_timeout", "11", 11.0), ("KEEPALIVE_TIMEOUT", "keepalive_timeout", "12", 12.0),
    ("DB_POOL_SIZE", "db_pool_size", "13", 13), ("DB_TIMEOUT", "db_timeout", "14", 14.0),
    ("SSE_RECONNECT_SPREAD_MS", "sse_reconnect_spread_ms", "15", 15),
    ("SSE_HISTORY", "sse_history", "16", 16), ("COMPRESSION", "compression", "OFF", False),
]


@pytest.mark.parametrize(("name", "attribute", "raw", "value"), CONFIG_VARIABLES,
                         ids=[v[0] for v in CONFIG_VARIABLES])
def test_every_variable_sets_its_setting(name, attribute, raw, value):
    config = Config.from_env({"DATABASE_URL": "x", name: raw})
    assert getattr(config, attribute) == value
    assert getattr(Config.from_env({"DATABASE_URL": "x"}), attribute) != value


def test_the_other_defaults():
    config = Config.from_env({"DATABASE_URL": "x"})
    assert (config.min_poll_interval, config.header_timeout, config.keepalive_timeout,
            config.db_pool_size, config.db_timeout, config.sse_reconnect_spread_ms,
            config.sse_history, config.compression) == (1, 10, 100, 5, 5, 5000, 100, True)


@pytest.mark.parametrize(("name", "lowest"), [
    ("PORT", 0), ("SSE_RETRY_MS", 0), ("MAX_UPSTREAM_BYTES", 1), ("MAX_STREAMS", 0),
    ("DB_POOL_SIZE", 1), ("REFRESH_MIN_INTERVAL", 0), ("PROJECT_CACHE_TTL", 0),
    ("SSE_RECONNECT_SPREAD_MS", 0), ("SSE_HISTORY", 0)])
def test_each_minimum_is_allowed_and_below_it_is_not(name, lowest):
    Config.from_env({"DATABASE_URL": "x", name: str(lowest)})
    with pytest.raises(ConfigError, match=name):
        Config.from_env({"DATABASE_URL": "x", name: str(lowest - 1)})


def test_wrappers_nest_three_deep_and_no_deeper():
    three = {"data": {"items": {"units": {"A1": "open"}}}}
    assert extract_unit_statuses(three) == {"A1": "open"}
    with pytest.raises(StatusParseError):
        extract_unit_statuses({"data": {"items": {"units": {"results": {"A1": "open"}}}}})


def test_booleans_and_null_are_never_statuses_whatever_the_mapping():
    lookup = build_status_lookup({"available": ["true", "none", "false", "null"]})
    for value in (True, False, None):
        assert normalize_status(value, lookup) is None
    assert normalize_status("true", lookup) == "available"


@pytest.mark.parametrize(("base", "endpoint", "url"), [
    ("https://h.example/box", "status", "https://h.example/box/status"),
    ("https://h.example/api_", "/status", "https://h.example/api_/status"),
    ("https://h.example", "  /status  ", "https://h.example/status"),
    ("  https://h.example/  ", "xs", "https://h.example/xs"),
])
def test_joining_strips_only_slashes_and_spaces(base, endpoint, url):
    assert join_status_url(base, endpoint) == url


def test_userinfo_without_a_password_and_an_ipv6_host():
    assert split_userinfo("https://token@h.example/x") == ("https://h.example/x", ("token", ""))
    assert split_userinfo("http://u:p@[::1]:8080/x") == ("http://[::1]:8080/x", ("u", "p"))


def test_auth_type_none_is_no_auth():
    assert auth_headers("none", {"token": "t"}, None) == {}
    assert auth_headers("NONE", None, ("u", "p")) == {"Authorization": "Basic dTpw"}


def test_the_secrets_of_a_project_are_every_credential_string():
    bearer = project_from_row("d", row(auth_type="bearer", credentials=json.dumps({"token": "tok-1"})), 30)
    assert set(bearer.secrets) == {"Bearer tok-1", "tok-1"}
    keyed = project_from_row("d", row(auth_type="api_key", credentials=json.dumps(
        {"header": "X-Key", "header_name": "X-Other", "key": 12345})), 30)
    assert set(keyed.secrets) == {"12345"}                   # header names are no secret
    basic = project_from_row("d", row(auth_type="basic", credentials=json.dumps(
        {"username": "ann", "password": "pw-9"})), 30)
    encoded = base64.b64encode(b"ann:pw-9").decode()
    assert set(basic.secrets) == {"ann", "pw-9", f"Basic {encoded}", encoded}
    assert list(basic.secrets) == sorted(basic.secrets, key=len, reverse=True)


def test_config_errors_are_told_exactly_and_together():
    project = project_from_row("d", row(base="ftp://x.example", credentials="{no",
                                        mapping="{no", timeout="NaN"), 30)
    assert project.config_error == (
        "timeout_seconds is not a finite number; auth_credentials is not JSON (or nests too deep); "
        "status_mapping is not JSON (or nests too deep); "
        "api_base_url and status_endpoint do not make an http(s) URL")
    bad = project_from_row("d", row(auth_type="bearer", credentials=json.dumps({"token": "a\nb"})), 30)
    assert bad.auth_headers == {} and "not allowed in an HTTP header" in bad.config_error


@pytest.mark.parametrize("mapping", ['["sold"]', '{"sold": 7}', '{"sold": ["closed"], "reserved": 3}'])
def test_a_mapping_that_is_no_object_of_statuses_to_values_is_unusable(mapping):
    project = project_from_row("d", row(mapping=mapping), 30)
    assert project.config_error == "status_mapping is not an object of statuses to values"
    assert project.status_lookup == public_service.DEFAULT_LOOKUP


def test_each_unusable_setting_is_named_exactly():
    assert project_from_row("d", row(interval="NaN"), 30).config_error == (
        "polling_interval_seconds is not a finite number")
    newline = project_from_row("d", row(auth_type="api_key", credentials=json.dumps({"key": "a\rb"})), 30)
    assert newline.config_error == "a credential holds characters not allowed in an HTTP header"


def test_a_credential_that_is_a_boolean_is_unusable():
    with pytest.raises(ValueError, match="'token' is not a string"):
        auth_headers("bearer", {"token": True}, None)


def test_the_urls_own_application_name_is_kept():
    params = public_service._connection_params("postgresql://h/db?application_name=mine", 1)
    assert params["application_name"] == "mine"


def test_a_timeout_under_a_second_is_kept():
    assert project_from_row("d", row(timeout=Decimal("0.5")), 30).timeout == 0.5


def test_connection_parameters():
    params = public_service._connection_params("postgresql://u@h/db?options=-c%20x%3D1", 2.5)
    assert params["options"] == ("-c x=1 -c default_transaction_read_only=on "
                                 "-c statement_timeout=2500 -c idle_in_transaction_session_timeout=2500")
    assert (params["connect_timeout"], params["application_name"]) == (3, "public-status")
    assert (params["keepalives"], params["keepalives_idle"], params["keepalives_interval"],
            params["keepalives_count"]) == (1, 10, 5, 3)
    assert public_service._connection_params("postgresql://h/db", 0.5)["connect_timeout"] == 2


@pytest.mark.parametrize(("failures", "low", "high"), [(1, 1, 2), (2, 2, 4), (3, 4, 8), (4, 4, 8), (9, 4, 8)])
def test_backoff_bounds_exactly(failures, low, high):
    assert backoff_delay(failures, 1.0, lambda: 0.0) == low
    assert backoff_delay(failures, 1.0, lambda: 1.0) == high


def test_the_root_cause_of_a_chain_of_errors():
    inner = ConnectionRefusedError("refused")
    middle = OSError("wrapping")
    middle.__cause__ = inner
    outer = requests.exceptions.ConnectionError(middle)
    assert public_service._root_cause(outer) == "ConnectionRefusedError"
    with_reason = requests.exceptions.ConnectionError("x")
    with_reason.reason = TimeoutError("slow")
    assert public_service._root_cause(with_reason) == "TimeoutError"
    looped = ValueError("a")
    looped.__context__ = KeyError("b")
    looped.__context__.__context__ = looped                 # a cycle ends, it does not spin
    assert public_service._root_cause(looped) in ("ValueError", "KeyError")
    assert public_service._root_cause(ValueError("alone")) == "ValueError"


# --------------------------------------------------------------------------- resume

@pytest.mark.parametrize(("text", "parsed"), [
    ("a1b2c3-17", ("a1b2c3", 17)), ("e-0", ("e", 0)), ("  f00-5 ", ("f00", 5)),
    ("garbage", None), ("", None), (None, None), ("-5", None), ("e--5", None), ("e-1.5", None),
    ("e-", None), ("e-x", None), ("é-1", None), ("a b-1", None), ("e-٣", None),
])
def test_event_ids(text, parsed):
    assert parse_event_id(text) == parsed


def test_a_sent_away_stream_gets_its_own_retry_within_the_spread():
    assert retry_message(3000, 5000, lambda: 0.0) == b"retry: 3000\n\n"
    assert retry_message(3000, 5000, lambda: 0.9999) == b"retry: 7999\n\n"
    assert len({retry_message(3000, 5000) for _ in range(50)}) > 10


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


# --------------------------------------------------------------------------- compression

@pytest.mark.parametrize(("header", "gzip"), [
    ("gzip", True), ("gzip, deflate, br, zstd", True), ("GZIP", True), ("deflate, gzip;q=0.5", True),
    ("x-gzip", True), ("*", True), ("br;q=1, *;q=0.1", True),
    (None, False), ("", False), ("identity", False), ("br, deflate", False), ("gzip;q=0", False),
    ("gzip;q=0, *", False), ("*;q=0", False), ("gzip;q=nope", False), ("gzipped", False),
    ("gzip;level=1;q=0", False), ("gzip;level=1;q=0.2", True), ("x-gzip;q=0", False),
])
def test_accept_encoding(header, gzip):
    assert accepts_gzip(header) is gzip


def inflate_as_it_comes(pieces: list[bytes]) -> list[bytes]:
    """What a gzip decoder (a browser's, curl's) gives back after each piece arrives."""
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    return [decoder.decompress(piece) for piece in pieces] + [decoder.flush()]


messages = st.lists(st.binary(max_size=3000) | st.text(max_size=500).map(str.encode), max_size=12)


@settings(max_examples=300)
@given(messages, st.lists(st.booleans(), max_size=12))
def test_pieces_make_a_gzip_stream_that_inflates_message_by_message(sent, stored):
    pieces = [stored_piece(m) if i < len(stored) and stored[i] else deflate_piece(m)
              for i, m in enumerate(sent)]
    stream = [GZIP_HEADER, *pieces, gzip_end(zlib.crc32(b"".join(sent)), len(b"".join(sent)))]
    assert gzip.decompress(b"".join(stream)) == b"".join(sent)
    arrived = inflate_as_it_comes(stream)
    assert arrived[1:-2] == sent                      # each message whole, as its piece arrives
    assert arrived[-2:] == [b"", b""]


def test_a_stored_piece_splits_what_one_block_cannot_hold():
    data = bytes(range(256)) * 600                     # 153,600 bytes: three stored blocks
    assert gzip.decompress(GZIP_HEADER + stored_piece(data) + gzip_end(zlib.crc32(data), len(data))) == data


def test_wire_pieces_are_made_once():
    wire = Wire(b"event: ping\ndata: {}\n\n")
    assert wire.piece is wire.piece
    assert zlib.decompressobj(-zlib.MAX_WBITS).decompress(wire.piece) == wire.plain
    assert Wire(b"x" * 10, stored=True).piece == b"\x00\x0a\x00\xf5\xff" + b"x" * 10


def test_a_wire_piece_is_the_smaller_of_compressed_and_stored():
    repetitive, incompressible = b"data: " + b"available " * 200, bytes(range(256))
    assert len(Wire(repetitive).piece) < len(repetitive) // 5
    assert Wire(incompressible).piece == stored_piece(incompressible)


def test_the_snapshots_gzip_body_is_its_body():
    snapshot = Snapshot.build("demo", "e", 1, {f"U{n}": "available" for n in range(500)})
    assert gzip.decompress(snapshot.gzip_body) == snapshot.body
    assert snapshot.gzip_body is snapshot.gzip_body
    assert len(snapshot.gzip_body) * 5 < len(snapshot.body)
