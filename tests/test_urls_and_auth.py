"""A project's client API address and credentials: joining the URL, userinfo in it,
and the auth headers each auth_type makes."""

import base64

import pytest

from public_service import (
    BadProjectList,
    auth_headers,
    join_status_url,
    parse_project_list,
    split_userinfo,
)


@pytest.mark.parametrize(("base", "endpoint", "url"), [
    ("https://api.example.com", "units/status", "https://api.example.com/units/status"),
    ("https://api.example.com/", "/units/status", "https://api.example.com/units/status"),
    ("https://api.example.com//", "//units", "https://api.example.com/units"),
    ("https://api.example.com/v2", "status", "https://api.example.com/v2/status"),
    ("https://api.example.com/v2", "https://other.example.com/s", "https://other.example.com/s"),
    ("https://api.example.com/v2/status", None, "https://api.example.com/v2/status"),
    (None, "http://only.example.com/s", "http://only.example.com/s"),
    ("https://h.example/box", "status", "https://h.example/box/status"),     # only slashes
    ("https://h.example/api_", "/status", "https://h.example/api_/status"),  # and spaces
    ("https://h.example", "  /status  ", "https://h.example/status"),        # are stripped
    ("  https://h.example/  ", "xs", "https://h.example/xs"),
])
def test_status_url_joins_with_exactly_one_slash(base, endpoint, url):
    assert join_status_url(base, endpoint) == url


@pytest.mark.parametrize(("url", "split"), [
    ("https://u:p%40ss@h.example:8443/x?q=1", ("https://h.example:8443/x?q=1", ("u", "p@ss"))),
    ("https://h.example/x", ("https://h.example/x", None)),
    ("https://token@h.example/x", ("https://h.example/x", ("token", ""))),
    ("http://u:p@[::1]:8080/x", ("http://[::1]:8080/x", ("u", "p"))),
])
def test_split_userinfo(url, split):
    assert split_userinfo(url) == split


BASIC = "Basic " + base64.b64encode(b"user:pa:ss").decode()


@pytest.mark.parametrize(("auth_type", "credentials", "userinfo", "headers"), [
    ("bearer", {"token": "T0k"}, None, {"Authorization": "Bearer T0k"}),
    ("Bearer", {"token": "T"}, None, {"Authorization": "Bearer T"}),        # any case
    ("api_key", {"header": "X-Key", "key": "K"}, None, {"X-Key": "K"}),
    ("api_key", {"header_name": "X-Key", "key": "K"}, None, {"X-Key": "K"}),
    ("api_key", {"api_key": "K"}, None, {"X-API-Key": "K"}),
    ("api_key", {"key": "K"}, None, {"X-API-Key": "K"}),
    ("basic", {"username": "user", "password": "pa:ss"}, None, {"Authorization": BASIC}),
    (None, None, ("u", "p"), {"Authorization": "Basic dTpw"}),              # no auth_type:
    (None, None, None, {}),                                                 # the URL's
    ("  ", None, None, {}),                                                 # userinfo
    ("none", {"token": "t"}, None, {}),
    ("NONE", None, ("u", "p"), {"Authorization": "Basic dTpw"}),
])
def test_auth_headers(auth_type, credentials, userinfo, headers):
    assert auth_headers(auth_type, credentials, userinfo) == headers


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


def test_a_credential_that_is_a_boolean_is_unusable():
    with pytest.raises(ValueError, match="'token' is not a string"):
        auth_headers("bearer", {"token": True}, None)


@pytest.mark.parametrize(("value", "slugs"), [
    ("a", ["a"]), ("a,b,c", ["a", "b", "c"]), ("b,a,b,a", ["b", "a"]),     # each once, in order
    (",".join(f"p{n}" for n in range(3)), ["p0", "p1", "p2"]),
    ("a,a,a,a,b", ["a", "b"]),                      # more names than the limit, few projects
    ("x" * 128, ["x" * 128]),
    (",".join(c * 128 for c in "xyz"), [c * 128 for c in "xyz"]),   # the longest list there is
])
def test_a_project_list_gives_each_slug_once_in_order(value, slugs):
    assert parse_project_list(value, limit=3) == slugs


def test_a_slug_listed_twice_counts_once_however_long_the_list():
    slugs = [letter * 120 for letter in "abc"]
    assert parse_project_list(",".join(slugs * 2), limit=3) == slugs


@pytest.mark.parametrize("value", [
    None, "", "a,b,c,d", "a,,b", "a,", "A", "a b", "-a", "x" * 129, "a;b", "a," + "x" * 400,
])
def test_a_project_list_that_is_not_one_is_refused_saying_what_one_is(value):
    with pytest.raises(BadProjectList) as raised:
        parse_project_list(value, limit=3)
    assert raised.value.public == "projects: 1 to 3 project slugs, comma-separated"
