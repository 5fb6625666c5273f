"""`persona-agents serve` options, and the pieces of the server that need no socket."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from persona_agents.cli import main
from persona_agents.server.auth import is_loopback, presented_key
from persona_agents.server.ratelimit import RateLimit, RateLimited, SlidingWindowLimiter, parse_rate_limit

from .conftest import NPCS_DIR


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.org"])
def test_serve_refuses_a_public_address_without_an_api_key(host):
    result = CliRunner().invoke(main, ["serve", "--host", host, "--npcs-dir", str(NPCS_DIR)],
                                env={"PERSONA_AGENTS_API_KEY": None})
    assert result.exit_code == 2
    assert f"Refusing to listen on {host} without an API key" in result.output
    assert "PERSONA_AGENTS_API_KEY" in result.output


def test_serve_rejects_a_bad_rate_limit_and_an_empty_key():
    bad = CliRunner().invoke(main, ["serve", "--rate-limit", "lots", "--npcs-dir", str(NPCS_DIR)],
                             env={"PERSONA_AGENTS_API_KEY": None})
    assert bad.exit_code == 2 and "Invalid rate limit 'lots'" in bad.output
    empty = CliRunner().invoke(main, ["serve", "--api-key", " ", "--npcs-dir", str(NPCS_DIR)])
    assert empty.exit_code == 2 and "API key is empty" in empty.output


def test_serve_help_lists_the_options():
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--npcs-dir", "--db", "--api-key", "PERSONA_AGENTS_API_KEY", "--rate-limit"):
        assert option in result.output


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True),
                                            ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("10.0.0.1", False),
                                            ("game.example", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_presented_key_reads_bearer_or_x_api_key():
    assert presented_key({b"authorization": b"Bearer abc"}) == "abc"
    assert presented_key({b"authorization": b"bearer  abc "}) == "abc"
    assert presented_key({b"x-api-key": b"xyz"}) == "xyz"
    assert presented_key({b"authorization": b"Basic abc"}) is None
    assert presented_key({}) is None


@pytest.mark.parametrize("spec, expected", [("60/min", RateLimit(60, 60.0)), ("5/s", RateLimit(5, 1.0)),
                                            ("2 / minutes", RateLimit(2, 60.0)), ("100/hour", RateLimit(100, 3600.0)),
                                            ("off", None), ("0", None), (None, None)])
def test_parse_rate_limit(spec, expected):
    assert parse_rate_limit(spec) == expected


@pytest.mark.parametrize("spec", ["60", "60/day", "-1/min", "0/min", "x/min"])
def test_parse_rate_limit_rejects(spec):
    with pytest.raises(ValueError, match="Invalid rate limit"):
        parse_rate_limit(spec)


def test_sliding_window_counts_per_player_and_forgets_old_requests():
    now = [1000.0]
    limiter = SlidingWindowLimiter(RateLimit(3, 60.0), clock=lambda: now[0])
    for step in (0, 10, 20):
        now[0] = 1000.0 + step
        limiter.hit("a")
    now[0] = 1030.0
    with pytest.raises(RateLimited) as refused:
        limiter.hit("a")
    assert refused.value.retry_after == 30  # the request at t=1000 leaves the window at t=1060
    limiter.hit("b")  # other players are not affected
    now[0] = 1060.5  # a sliding window: one slot is free again, not all three
    limiter.hit("a")
    with pytest.raises(RateLimited):
        limiter.hit("a")
    SlidingWindowLimiter(None).hit("anyone")  # no limit configured
