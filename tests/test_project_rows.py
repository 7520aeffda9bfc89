"""A project's database row to its settings: column types, defaults, the secrets it
holds, and exactly why a config is unusable."""

import base64
import json
from decimal import Decimal

import pytest

import public_service
from public_service import project_from_row


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


@pytest.mark.parametrize(("timeout", "seconds"), [
    (0, 10.0), (-1, 10.0), (None, 10.0),        # none or nonpositive: the default
    (Decimal("0.5"), 0.5),                      # under a second is kept
    (86400, 120.0),                             # capped
])
def test_timeouts_default_and_are_capped(timeout, seconds):
    assert project_from_row("demo", row(timeout=timeout), 7.0).timeout == seconds


@pytest.mark.parametrize("interval", [0, -1, None])
def test_nonpositive_intervals_take_the_default(interval):
    assert project_from_row("demo", row(interval=interval), 7.0).poll_interval == 7.0


def test_project_secrets_and_repr():
    project = project_from_row(
        "demo", row(base="https://urluser:urlpass@api.example.com", auth_type="basic",
                    credentials=json.dumps({"username": "bob-user", "password": "hunter2-pw"})), 30.0)
    encoded = base64.b64encode(b"bob-user:hunter2-pw").decode()
    assert {"bob-user", "hunter2-pw", encoded, "urlpass"} <= set(project.secrets)
    assert project.status_url == "https://api.example.com/status"
    for secret in ("hunter2-pw", "bob-user", "urlpass", encoded):
        assert secret not in repr(project)


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


def test_config_errors_are_told_exactly_and_together():
    project = project_from_row("d", row(base="ftp://x.example", credentials="{no",
                                        mapping="{no", timeout="NaN"), 30)
    assert project.config_error == (
        "timeout_seconds is not a finite number; auth_credentials is not JSON (or nests too deep); "
        "status_mapping is not JSON (or nests too deep); "
        "api_base_url and status_endpoint do not make an http(s) URL")
    bad = project_from_row("d", row(auth_type="bearer", credentials=json.dumps({"token": "a\nb"})), 30)
    assert bad.auth_headers == {} and "not allowed in an HTTP header" in bad.config_error


def test_each_unusable_setting_is_named_exactly():
    assert project_from_row("d", row(interval="NaN"), 30).config_error == (
        "polling_interval_seconds is not a finite number")
    newline = project_from_row("d", row(auth_type="api_key", credentials=json.dumps({"key": "a\rb"})), 30)
    assert newline.config_error == "a credential holds characters not allowed in an HTTP header"


@pytest.mark.parametrize("mapping", ['["sold"]', '{"sold": 7}', '{"sold": ["closed"], "reserved": 3}'])
def test_a_mapping_that_is_no_object_of_statuses_to_values_is_unusable(mapping):
    project = project_from_row("d", row(mapping=mapping), 30)
    assert project.config_error == "status_mapping is not an object of statuses to values"
    assert project.status_lookup == public_service.DEFAULT_LOOKUP


@pytest.mark.parametrize("base", [
    "https://user:pa[ss]word@api.example.com",     # brackets in the password
    "https://user:pa[ssword@api.example.com",
    "https://user:secretpw@api.example.com:99999",  # a port no URL can have
    "https://user:secretpw@api.example.com:abc",
    "https://[notip]/",
], ids=["bracketed password", "open bracket", "port out of range", "port no number", "bracketed host"])
def test_a_url_no_parser_can_read_is_an_unusable_config_that_shows_none_of_it(base):
    project = project_from_row("demo", row(base=base), 30.0)
    assert project.config_error == "api_base_url and status_endpoint do not make an http(s) URL"
    for part in ("pa", "ss", "word", "secretpw", "notip", "99999"):
        assert part not in project.config_error and part not in repr(project)
    assert project.status_url == ""


def test_percent_encoded_userinfo_is_sent_decoded():
    project = project_from_row("demo", row(base="https://u:p%40ss%3Aw@api.example.com"), 30.0)
    assert project.auth_headers == {"Authorization": "Basic " + base64.b64encode(b"u:p@ss:w").decode()}
    assert "p@ss:w" in project.secrets

