"""The head start of a local run (runner/head_start.py): a project's first LLM calls go out before
the leader is up, and the runner that is then leased the task waits for that call instead of
making it again. The requests predicted must be the leader's own, byte for byte; a call is made
once, its 429s still count, and one nobody claims is cancelled."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from helpers import run_cli, wait_for_async
from runner_fakes import FakeChat, make_assignment
from test_local_run import get, project_file

from paradecom import limits
from paradecom.client.run_settings import RunSettings
from paradecom.leader.core import DecompositionLeader
from paradecom.leader.store import SqliteStore
from paradecom.project import ProjectDefinition, SeedTask
from paradecom.runner.cache import DecompositionCache
from paradecom.runner.decompose import Decomposer
from paradecom.runner.head_start import top_level_requests
from paradecom.runner.llm import RATE_LIMIT_LISTENER
from paradecom.runner.prompt import RequestSettings, build_request
from paradecom.v1 import task_pb2

HOSTILE = "Line one\nline two\t\u202eevil\x1b[2J \u00e9t\u00e9 \U0001f600"

PROJECTS = {
    "root-only": ProjectDefinition(
        name="Recipe site", description=f"Post, rate and shop recipes. {HOSTILE}", goals=["Rate", "Shop"],
        constraints=["Python"],
    ),
    "seeds-past-the-sibling-limit": ProjectDefinition(
        name="Big", description="Many parts", max_depth=4,
        tasks=[
            SeedTask(title=f"Part {i} {HOSTILE if i % 7 == 0 else ''}".strip(), description=f"d{i}",
                     acceptance_criteria=[f"c{i}"] * (i % 3))
            for i in range(limits.MAX_SIBLING_TITLES + 5)
        ],
    ),
    "one-seed": ProjectDefinition(name="Small", description="One part", max_depth=1, tasks=[SeedTask(title="Only")]),
}  # fmt: skip
SETTINGS = {
    "default": RequestSettings(),
    "wide-small-profile": RequestSettings(min_subtasks=2, max_subtasks=12, max_reasks=1, answer_profile="small"),
}


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
@pytest.mark.parametrize("project", PROJECTS.values(), ids=PROJECTS.keys())
@pytest.mark.parametrize("default_max_depth", [2, limits.DEFAULT_MAX_DEPTH])
def test_predicted_requests_are_the_leaders(
    project: ProjectDefinition, settings: RequestSettings, default_max_depth: int
) -> None:
    """For every top-level task, the request predicted before the leader exists is the one the
    leader puts in that task's assignment: same messages, schema, bounds and re-ask rule."""
    leader = DecompositionLeader(
        SqliteStore(":memory:"), default_max_depth=default_max_depth, request_settings=settings
    )
    leader.generate_work_queue(project)
    leased = leader.lease_tasks("runner-1", limits.MAX_BATCH)
    assert len(leased) == max(1, len(project.tasks))
    predicted = top_level_requests(project.to_proto(), default_max_depth, settings, len(leased))
    assert [a.llm_request for a in leased] == predicted
    assert top_level_requests(project.to_proto(), default_max_depth, settings, 2) == predicted[:2]


def test_head_start_is_sized_to_what_the_leader_would_send_at_once() -> None:
    """Only runners in this process get a head start, never more calls than the cap, the endpoint's
    slots or the runners' slots allow, and one under an LLM budget."""
    assert RunSettings().head_start_calls(1, None, 8) == 1
    assert RunSettings().head_start_calls(100, None, 8) == limits.HEAD_START_CALLS
    assert RunSettings(concurrency=3).head_start_calls(100, None, 8) == 3
    assert RunSettings().head_start_calls(100, 2, 8) == 2
    assert RunSettings(runners=1, concurrency=2).head_start_calls(100, None, 8) == 2
    assert RunSettings(llm_rpm=60).head_start_calls(100, None, 8) == 1
    assert RunSettings(llm_tpm=10_000).head_start_calls(100, None, 8) == 1
    for nothing in (RunSettings(runners=0), RunSettings(runner_processes=True), RunSettings(leader="h:1")):
        assert nothing.head_start_calls(100, None, 8) == 0


def _request_for(n: int) -> tuple[task_pb2.TaskAssignment, task_pb2.LlmRequest]:
    assignment = make_assignment(n)
    request = build_request(assignment, RequestSettings())
    assignment.llm_request.CopyFrom(request)
    return assignment, request


def test_an_early_call_is_made_once_and_claimed_by_its_task(tmp_path: Path) -> None:
    """The task whose request was started early waits for that call: the LLM is asked once, the
    outcome and the usage are the task's; a repeated or cached request is not sent early."""
    asyncio.run(_made_once_and_claimed(tmp_path))


async def _made_once_and_claimed(tmp_path: Path) -> None:
    chat = FakeChat(delay=0.05)
    cache = DecompositionCache(tmp_path)
    decomposer = Decomposer(llm=chat, cache=cache)
    (first, request), (second, _) = _request_for(1), _request_for(2)
    assert decomposer.start_early([request, request]) == 1
    await asyncio.sleep(0)
    assert chat.calls == 1
    outcome = await decomposer.decompose(first)
    assert chat.calls == 1 and outcome.usage.calls == 1 and len(outcome.subtasks) == 2
    # Answered now, so in the cache: starting it early again sends nothing.
    assert decomposer.start_early([request]) == 0
    await decomposer.decompose(second)
    assert chat.calls == 2
    await decomposer.close()


def test_an_early_calls_rate_limits_count_for_the_task_that_claims_it() -> None:
    """429s met by the early call before anyone claimed it are counted in the claiming task's usage."""
    asyncio.run(_rate_limits_counted())


async def _rate_limits_counted() -> None:

    class RateLimitedOnce(FakeChat):
        async def complete(self, messages, schema=None):  # type: ignore[no-untyped-def]
            listener = RATE_LIMIT_LISTENER.get()
            assert listener is not None
            listener(2.5)
            return await super().complete(messages, schema)

    chat = RateLimitedOnce()
    decomposer = Decomposer(llm=chat)
    assignment, request = _request_for(1)
    decomposer.start_early([request])
    # The call runs (and meets its 429) before its task is leased.
    await wait_for_async(lambda: chat.calls == 1, what="the early call to be answered")
    outcome = await decomposer.decompose(assignment)
    assert outcome.usage.rate_limited == 1 and outcome.usage.retry_after_ms == 2500
    await decomposer.close()


def test_an_early_call_nobody_claims_is_cancelled_at_close() -> None:
    asyncio.run(_cancelled_at_close())


async def _cancelled_at_close() -> None:
    gate = asyncio.Event()
    chat = FakeChat(gate=gate)
    decomposer = Decomposer(llm=chat)
    refusing = FakeChat(error=RuntimeError("refused"))
    failing = Decomposer(llm=refusing)
    _, request = _request_for(1)
    decomposer.start_early([request])
    failing.start_early([request])
    await wait_for_async(lambda: chat.in_flight == 1 and refusing.calls == 1, what="both early calls to be made")
    assert chat.in_flight == 1
    await decomposer.close()
    await failing.close()  # its failed call is read, not reported as a never-retrieved exception
    await asyncio.sleep(0)
    assert chat.in_flight == 0 and chat.cancelled == 1


def _log_time(stderr: str, event: str) -> float:
    for line in stderr.splitlines():
        if line.startswith("{") and json.loads(line).get("event") == event:
            return datetime.fromisoformat(json.loads(line)["timestamp"].replace("Z", "+00:00")).timestamp()
    raise AssertionError(f"no {event!r} log line in:\n{stderr}")


@pytest.mark.slow
def test_paradecom_run_asks_the_root_before_the_leader_is_up(fake_llm: Callable[..., str], tmp_path: Path) -> None:
    """`paradecom run` (auto, in this process) sends the root's request before its leader serves,
    and the leader's assignment of the root is served by that call: fake-llm answers exactly the
    calls the tree counts (1 + 3), none twice."""
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "2", "--latency", "0.5")
    result = run_cli(
        [sys.executable, "-m", "paradecom.client.cli", "run", str(project_file(tmp_path)), "--no-cache",
         "--log-format", "json", "--log-level", "info"],
        env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "k"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    tree = json.loads(result.stdout)
    stats = get(base_url, "/stats")
    assert tree["project"]["usage"]["calls"] == 4 and stats["ok"] == 4 and stats["requests"] == 4
    bodies = [json.dumps(b, sort_keys=True) for b in get(base_url, "/requests")]
    assert len(set(bodies)) == 4
    assert stats["first_request_unix_ms"] / 1000 < _log_time(result.stderr, "leader serving")


def test_what_a_run_loads_before_its_first_request_is_lean() -> None:
    """Before a run's early calls leave, it loads the CLI, the decomposer and openai, and neither
    grpc (the leader and the runners load it in a thread meanwhile: paradecom/grpc_auth.py holds
    what needs it) nor openai's optional aiohttp transport (aiohttp is installed, for fake-llm and
    the embedded model's proxy; the commands keep openai from importing it: paradecom/cliargs.py).
    aiohttp itself still imports, and the client the runner makes still works."""
    script = (
        "import sys\n"
        "import paradecom.client.cli, paradecom.client.api, paradecom.runner.decompose, paradecom.runner.head_start\n"
        "import paradecom.runner.cache, paradecom.runner.llm\n"
        "print('grpc' in sys.modules, 'aiohttp' in sys.modules)\n"
        "import aiohttp, openai\n"
        "openai.AsyncOpenAI(api_key='k', base_url='http://127.0.0.1:9/v1')\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "ok"]
