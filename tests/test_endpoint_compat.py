"""Endpoints that differ in what they take: the field that bounds an answer's length
(`max_tokens`, or `max_completion_tokens` as OpenAI's newer models require), through the real
openai client against the real fake-llm process."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli

from paradecom.runner import llm as llm_module
from paradecom.runner.llm import LLMClient, max_tokens_field

PROJECT_YAML = "name: Recipe site\ndescription: Post and rate recipes.\nmax_depth: 2\n"
PROMPT = [{"role": "user", "content": '{"task_to_decompose": "Build the shop", "task_depth": 0}'}]


def fake_get(base_url: str, path: str) -> Any:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + path, timeout=30) as response:
        return json.load(response)


def test_openai_is_sent_max_completion_tokens_and_other_endpoints_max_tokens() -> None:
    """The first request's field follows the host: OpenAI's API takes max_completion_tokens for
    every model; other endpoints (local servers, gateways) are sent the older max_tokens."""
    assert max_tokens_field("https://api.openai.com/v1") == "max_completion_tokens"
    for other in ("http://127.0.0.1:8000/v1", "https://api.openai.com.example.net/v1", "https://openrouter.ai/api/v1"):
        assert max_tokens_field(other) == "max_tokens", other


@pytest.mark.parametrize("runners", [["--runners", "auto"], ["--runners", "1", "--runner-processes"]])
def test_run_works_against_an_endpoint_that_refuses_max_tokens(
    fake_llm: Callable[..., str], tmp_path: Path, runners: list[str]
) -> None:
    """Against an endpoint that answers max_tokens with OpenAI's 400 unsupported_parameter (its newer
    models do), `paradecom run` (its endpoint check asks a model the endpoint does not list for
    one token, then in-process runners or runner processes) sends max_completion_tokens after the
    refusal and decomposes the whole project; only requests with max_completion_tokens were answered."""
    base_url = fake_llm("--max-tokens-field", "max_completion_tokens", "--fanout", "3", "--atomic-depth", "5")
    path = tmp_path / "project.yaml"
    path.write_text(PROJECT_YAML)
    result = run_cli(
        [sys.executable, "-m", "paradecom.client.cli", "run", str(path), *runners, "--model", "o3-like", "--no-cache"],
        env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "test-key"},
    )
    assert result.returncode == 0, result.stderr
    tree = json.loads(result.stdout)
    assert tree["project"]["state"] == "done" and tree["project"]["counts"]["done"] == 13
    stats = fake_get(base_url, "/stats")
    bodies = fake_get(base_url, "/requests")
    fields = [[f for f in ("max_tokens", "max_completion_tokens") if f in body] for body in bodies]
    assert all(len(f) == 1 for f in fields), fields
    refused = sum(f == ["max_tokens"] for f in fields)
    assert refused == stats["token_limit_rejected"] >= 1
    # Answered: the root and its 3 children (4 decompositions) and the endpoint check's probe.
    assert stats["ok"] == sum(f == ["max_completion_tokens"] for f in fields) == 5
    # Each process learns once: a refusal per first call in flight at once, no more (here the
    # check's probe with the root's early call, and a runner process's first three calls).
    assert refused <= (2 if "auto" in runners else 2 + 3)


def test_an_endpoint_that_refuses_max_completion_tokens_is_sent_max_tokens(
    fake_llm: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other way round: a client that starts with max_completion_tokens (as for OpenAI's host,
    here the fake's) against an endpoint that predates the field sends max_tokens after the
    refusal, and keeps to it for the process."""
    base_url = fake_llm("--max-tokens-field", "max_tokens")
    monkeypatch.setattr(llm_module, "MAX_COMPLETION_TOKENS_HOSTS", frozenset({"127.0.0.1"}))
    monkeypatch.setattr(llm_module, "_learned_token_fields", {})

    async def go() -> None:
        for _ in range(2):
            llm = LLMClient("m", base_url=base_url, api_key="k", max_tokens=123)
            try:
                assert (await llm.complete(PROMPT)).text
            finally:
                await llm.close()

    asyncio.run(go())
    bodies = fake_get(base_url, "/requests")
    assert [[f for f in ("max_tokens", "max_completion_tokens") if f in b] for b in bodies] == [
        ["max_completion_tokens"],
        ["max_tokens"],
        ["max_tokens"],
    ]
    assert bodies[-1]["max_tokens"] == 123
    assert fake_get(base_url, "/stats")["token_limit_rejected"] == 1


def test_an_endpoint_that_takes_max_tokens_is_never_refused(fake_llm: Callable[..., str], tmp_path: Path) -> None:
    """An endpoint that predates max_completion_tokens (most local servers) gets max_tokens from the
    first request on: no refusal, no extra request."""
    base_url = fake_llm("--max-tokens-field", "max_tokens", "--atomic-depth", "5")
    path = tmp_path / "project.yaml"
    path.write_text(PROJECT_YAML)
    result = run_cli(
        [sys.executable, "-m", "paradecom.client.cli", "run", str(path), "--runners", "0", "--no-cache"],
        env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "test-key"},
    )
    assert result.returncode == 0, result.stderr
    stats = fake_get(base_url, "/stats")
    assert stats["token_limit_rejected"] == 0 and stats["token_limit_fields"] == {"max_tokens": 4}


def test_fake_llm_max_tokens_field_flag_is_documented_and_checked() -> None:
    """fake-llm's --help names the flag and its choices; a value outside them is one line, exit 2."""
    shown = run_cli([sys.executable, "-m", "paradecom.devtools.fakellm", "--help"])
    assert "--max-tokens-field" in shown.stdout and "max_completion_tokens" in shown.stdout
    bad = run_cli(
        [sys.executable, "-m", "paradecom.devtools.fakellm", "--listen", "127.0.0.1:0", "--max-tokens-field", "x"]
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
