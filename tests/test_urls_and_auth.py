"""A project's client API address and credentials: joining the URL, userinfo in it,
and the auth headers each auth_type makes."""

import base64

import pytest

from public_service import auth_headers, join_status_url, split_userinfo


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
    ("https://u:p%40ss@h.example:8443/x?q=1", ("https://h.example:8443/x?q=1", ("u", "p%40ss"))),
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
