"""The configuration: environment variables read once into a frozen Config, defaults
as the SPEC has them, and a malformed value named."""

import math

import pytest

from public_service import STREAM_QUEUE_SIZE, Config, ConfigError, Database


def test_every_default_follows_the_spec():
    config = Config.from_env({"DATABASE_URL": "postgresql://x/y"})
    assert (config.port, config.status_cache_ttl, config.sse_ping_interval, config.sse_retry_ms,
            config.default_poll_interval, config.refresh_min_interval, config.project_cache_ttl,
            config.cors_allow_origin, config.log_level, config.log_format,
            config.max_upstream_bytes, config.max_streams, config.redis_url,
            config.poll_lease_ttl) == (8000, 30, 30, 3000, 30, 10, 30, "*", "INFO", "text",
                                       5_000_000, 10_000, None, 10)
    assert (config.min_poll_interval, config.header_timeout, config.keepalive_timeout,
            config.db_pool_size, config.db_timeout, config.sse_reconnect_spread_ms,
            config.sse_history, config.compression) == (1, 10, 100, 5, 5, 5000, 100, True)
    assert config.max_projects_per_stream == 20


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
    ("MAX_PROJECTS_PER_STREAM", "max_projects_per_stream", "3", 3),
]


@pytest.mark.parametrize(("name", "attribute", "raw", "value"), CONFIG_VARIABLES,
                         ids=[v[0] for v in CONFIG_VARIABLES])
def test_every_variable_sets_its_setting(name, attribute, raw, value):
    config = Config.from_env({"DATABASE_URL": "x", name: raw})
    assert getattr(config, attribute) == value
    assert getattr(Config.from_env({"DATABASE_URL": "x"}), attribute) != value


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


@pytest.mark.parametrize(("name", "lowest"), [
    ("PORT", 0), ("SSE_RETRY_MS", 0), ("MAX_UPSTREAM_BYTES", 1), ("MAX_STREAMS", 0),
    ("DB_POOL_SIZE", 1), ("REFRESH_MIN_INTERVAL", 0), ("PROJECT_CACHE_TTL", 0),
    ("SSE_RECONNECT_SPREAD_MS", 0), ("SSE_HISTORY", 0), ("MAX_PROJECTS_PER_STREAM", 1)])
def test_each_minimum_is_allowed_and_below_it_is_not(name, lowest):
    Config.from_env({"DATABASE_URL": "x", name: str(lowest)})
    with pytest.raises(ConfigError, match=name):
        Config.from_env({"DATABASE_URL": "x", name: str(lowest - 1)})


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


def test_a_multiplexed_stream_carries_no_more_projects_than_its_first_words_fit():
    """`connected` and a snapshot per project are said before the stream's writer comes,
    and wait in its queue: more than it holds, and the stream would end as it opens."""
    most = STREAM_QUEUE_SIZE - 1
    assert Config.from_env({"DATABASE_URL": "x", "MAX_PROJECTS_PER_STREAM": str(most)}
                           ).max_projects_per_stream == most
    with pytest.raises(ConfigError, match="MAX_PROJECTS_PER_STREAM"):
        Config.from_env({"DATABASE_URL": "x", "MAX_PROJECTS_PER_STREAM": str(most + 1)})


@pytest.mark.parametrize("url", ["redis://:pa[ss-secret-9]@127.0.0.1:6379/0",
                                 "redis://:ss-secret-9@127.0.0.1:99999/0"])
def test_a_redis_url_that_cannot_be_read_is_a_config_error_that_shows_none_of_it(url):
    with pytest.raises(ConfigError, match="REDIS_URL") as refused:
        Config.from_env({"DATABASE_URL": "x", "REDIS_URL": url})
    assert "secret" not in str(refused.value) and "ss-" not in str(refused.value)


def test_a_database_url_that_cannot_be_read_is_a_config_error_that_shows_none_of_it():
    with pytest.raises(ConfigError, match="DATABASE_URL") as refused:
        Database("postgresql://reader:Xy%zz-secret-9@127.0.0.1:5432/postgres", 1, 1.0)
    assert "secret" not in str(refused.value) and "Xy" not in str(refused.value)


def test_a_database_timeout_is_at_most_an_hour():
    assert Config.from_env({"DATABASE_URL": "x", "DB_TIMEOUT": "3600"}).db_timeout == 3600
    with pytest.raises(ConfigError, match="DB_TIMEOUT"):
        Config.from_env({"DATABASE_URL": "x", "DB_TIMEOUT": "3601"})

