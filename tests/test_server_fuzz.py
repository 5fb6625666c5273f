"""Schemathesis against the live server's /openapi.json (tiny model, loopback).

For every operation, a bounded number of generated requests, valid ones and invalid
ones: no 5xx, and every response matches the schema (status documented, content type,
body schema, documented headers). schemathesis' own pytest loader (`from_fixture`) does
not run on this pytest, so each operation's Hypothesis strategy is driven directly.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .server_support import shared_tiny_server

#: Generated requests per operation and mode: a bounded run.
MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
OPERATIONS = [
    ("POST", "/v1/npcs/{npc_id}/turns"),
    ("POST", "/v1/npcs/{npc_id}/turns/stream"),
    ("GET", "/v1/npcs"),
    ("GET", "/v1/npcs/{npc_id}"),
    ("GET", "/v1/players/{player_id}/npcs/{npc_id}/state"),
    ("DELETE", "/v1/players/{player_id}/npcs/{npc_id}/state"),
    ("GET", "/v1/players/{player_id}/npcs/{npc_id}/memories"),
    ("DELETE", "/v1/players/{player_id}/npcs/{npc_id}/memories"),
    ("DELETE", "/v1/players/{player_id}/npcs/{npc_id}/memories/{memory_id}"),
    ("POST", "/v1/scenes/{scene_id}/turns"),
    ("POST", "/v1/scenes/{scene_id}/turns/stream"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("POST", "/ask"),
]

WITHOUT_INPUT = {"/healthz", "/readyz", "/v1/npcs"}


@pytest.fixture(scope="session")
def live(tmp_path_factory, tiny_model_dir):
    return shared_tiny_server(tmp_path_factory, tiny_model_dir)


@pytest.fixture(scope="session")
def api_schema(live):
    return schemathesis.openapi.from_url(f"{live.base_url}/openapi.json", timeout=30)


def test_the_fuzzed_operations_are_all_the_operations(api_schema):
    listed = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert listed == set(OPERATIONS)


def _cases():
    """(method, path, mode, pinned NPC): `valid` and `invalid` generate the NPC id too
    (mostly 404s for valid bodies); `valid-real-npc` pins it to a served NPC, so the
    generated turns run the pipeline and write to the store."""
    for method, path in OPERATIONS:
        yield pytest.param(method, path, GenerationMode.POSITIVE, None, id=f"{method} {path} valid")
        if path not in WITHOUT_INPUT:
            yield pytest.param(method, path, GenerationMode.NEGATIVE, None, id=f"{method} {path} invalid")
        if "{npc_id}" in path or path == "/ask":
            yield pytest.param(method, path, GenerationMode.POSITIVE, "smith", id=f"{method} {path} valid-real-npc")


@pytest.mark.parametrize("method, path, mode, npc", list(_cases()))
def test_openapi_fuzz(api_schema, live, method, path, mode, npc):
    operation = api_schema[path][method]
    pinned = {"npc_id": npc} if npc and "{npc_id}" in path else None
    calls = []

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=pinned))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    def run(case):
        if npc and path == "/ask" and isinstance(case.body, dict):
            case.body["npc_id"] = npc
        response = case.call_and_validate(base_url=live.base_url, headers=live.headers, checks=CHECKS, timeout=60)
        calls.append(response.status_code)

    run()
    assert calls and all(status < 500 for status in calls)
    if npc and method == "POST":
        assert 200 in calls, f"no generated turn ran the pipeline: {sorted(set(calls))}"
