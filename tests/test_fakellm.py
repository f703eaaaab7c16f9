"""fake-llm as a real process, called through the real openai client (and raw HTTP where the client
hides what is under test)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import openai
import pytest
from helpers import Proc, run_cli

from paradecom import fakellm, limits
from paradecom.subtasks import SubtaskShape, find_cycle, subtask_errors

FAKE = [sys.executable, "-m", "paradecom.fakellm"]

StartServer = Callable[..., tuple[Proc, str]]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """Start fake-llm processes on a free loopback port; every one is stopped at teardown."""
    procs: list[Proc] = []

    def start(*flags: str) -> tuple[Proc, str]:
        proc = Proc([*FAKE, "--listen", "127.0.0.1:0", *flags])
        procs.append(proc)
        return proc, proc.address()

    yield start
    for proc in procs:
        proc.stop()
        # Proc.stop leaves the pipes open; closing them here keeps ResourceWarning (an error under
        # filterwarnings=error) out of whichever later test triggers the garbage collection.
        for pipe in (proc.popen.stdout, proc.popen.stderr):
            if pipe is not None:
                pipe.close()


def prompt(title: str, depth: int) -> str:
    return f"Decompose the task below.\nTask to decompose: {title}\nTask depth: {depth}\nAnswer in JSON."


def client(addr: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{addr}/v1", api_key="x", max_retries=0, timeout=30)


def ask(addr: str, text: str, model: str = "fake-model") -> openai.types.chat.ChatCompletion:
    with client(addr) as c:
        return c.chat.completions.create(
            model=model,
            messages=[
                {"role": "system", "content": "You decompose tasks."},
                {"role": "user", "content": text},
            ],
            response_format={"type": "json_object"},
            temperature=0.2,
            max_tokens=4000,
        )


def subtasks_of(completion: openai.types.chat.ChatCompletion) -> list[dict[str, Any]]:
    content = completion.choices[0].message.content
    assert content is not None
    children: list[dict[str, Any]] = json.loads(content)["subtasks"]
    return children


def http(addr: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers) of a raw request; POST when `body` is given."""
    request = urllib.request.Request(f"http://{addr}{path}", data=body, method="POST" if body is not None else "GET")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read()), dict(exc.headers)


def stats(addr: str) -> dict[str, Any]:
    status, body, _ = http(addr, "/stats")
    assert status == 200
    return body


def test_answer_is_a_valid_decomposition(start_server: StartServer) -> None:
    """An answer has --fanout children that pass the shared structural rules (unique keys and titles,
    sibling-only acyclic deps, not the parent's title), titles start with a verb, every field of the
    Subtask message is there with the right type, atomicity follows --atomic-depth, and the
    completion carries the request's model and token usage."""
    _, addr = start_server("--fanout", "5", "--atomic-depth", "2")
    for depth, atomic in ((0, False), (1, True), (4, True)):
        completion = ask(addr, prompt("Build an online shop", depth), model="my-model")
        assert completion.model == "my-model"
        assert completion.object == "chat.completion"
        assert completion.choices[0].finish_reason == "stop"
        assert completion.choices[0].message.role == "assistant"
        usage = completion.usage
        assert usage is not None
        assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

        children = subtasks_of(completion)
        assert len(children) == 5
        shapes = [SubtaskShape(c["key"], c["title"], c["depends_on"], c["description"]) for c in children]
        assert subtask_errors(shapes, parent_title="Build an online shop") == []
        keys = [c["key"] for c in children]
        for position, child in enumerate(children):
            assert set(child["depends_on"]) <= set(keys[:position]), "deps only on earlier siblings"
            assert child["title"].split()[0][0].isupper() and len(child["title"]) <= 300
            assert child["atomic"] is atomic
            assert isinstance(child["description"], str) and child["description"]
            assert isinstance(child["atomic_reason"], str) and child["atomic_reason"]
            assert len(child["acceptance_criteria"]) == 2
            assert all(isinstance(a, str) and a for a in child["acceptance_criteria"])
            assert isinstance(child["estimate_hours"], float) and child["estimate_hours"] > 0
        assert any(c["depends_on"] for c in children), "some dependencies are exercised"


@pytest.mark.parametrize("fanout", range(1, limits.MAX_SUBTASKS + 1))
def test_every_fanout_passes_the_near_duplicate_and_numbering_rules(fanout: int) -> None:
    """fake-llm's answers (the function the server calls) pass every structural rule, the
    near-duplicate titles and descriptions and numbered titles included, at every fan-out it
    accepts and for short, long and very alike parent titles; and they stay deterministic."""
    parents = ["Build an online shop", "x", " ".join(["word"] * 60), "Build an online shop!"]
    for parent in parents:
        for depth in (0, 1, 5):
            children = fakellm.decomposition(parent, depth, fanout, 2)["subtasks"]
            assert fakellm.decomposition(parent, depth, fanout, 2)["subtasks"] == children
            shapes = [SubtaskShape(c["key"], c["title"], c["depends_on"], c["description"]) for c in children]
            assert subtask_errors(shapes, parent_title=parent) == [], (parent, depth)
            assert len({c["description"] for c in children}) == fanout


def test_answers_are_deterministic_and_depend_on_the_title(start_server: StartServer) -> None:
    """The same prompt gets the same content (also from a second server), a different title gets
    different children, and a child's title used as the next prompt never comes back as its own
    child's title: a walk down the tree stays valid at every depth."""
    _, addr = start_server("--fanout", "3")
    _, other = start_server("--fanout", "3")
    first = ask(addr, prompt("Write a compiler", 0)).choices[0].message.content
    assert ask(addr, prompt("Write a compiler", 0)).choices[0].message.content == first
    assert ask(other, prompt("Write a compiler", 0)).choices[0].message.content == first
    different = ask(addr, prompt("Write an operating system", 0)).choices[0].message.content
    assert different != first
    assert {c["title"] for c in json.loads(first or "")["subtasks"]}.isdisjoint(
        c["title"] for c in json.loads(different or "")["subtasks"]
    )

    title = "Write a compiler"
    for depth in range(8):
        children = subtasks_of(ask(addr, prompt(title, depth)))
        shapes = [SubtaskShape(c["key"], c["title"], c["depends_on"], c["description"]) for c in children]
        assert subtask_errors(shapes, parent_title=title) == []
        title = children[-1]["title"]


def test_prompt_without_contract_lines_still_gets_a_valid_answer(start_server: StartServer) -> None:
    """Without `Task to decompose:` / `Task depth:` lines the whole message seeds the answer (so
    different messages differ) and the depth is 0 (children not atomic with --atomic-depth 2)."""
    _, addr = start_server("--fanout", "2")
    a = subtasks_of(ask(addr, "Plan a wedding."))
    b = subtasks_of(ask(addr, "Plan a conference."))
    assert a != b
    assert a == subtasks_of(ask(addr, "Plan a wedding."))
    for children in (a, b):
        assert len(children) == 2
        assert [c["depends_on"] for c in children] == [[], ["1"]]
        assert not any(c["atomic"] for c in children)
        assert find_cycle({c["key"]: c["depends_on"] for c in children}) == []


def test_models_endpoint(start_server: StartServer) -> None:
    """GET /v1/models answers an OpenAI model list the client can read."""
    _, addr = start_server()
    with client(addr) as c:
        ids = [m.id for m in c.models.list()]
    assert "fake-llm" in ids


def test_invalid_requests_get_openai_style_400(start_server: StartServer) -> None:
    """A body that is not JSON, a missing or empty `messages` list, and `stream: true` each get 400
    with an OpenAI-style error object; they count as bad_requests, not as answers."""
    _, addr = start_server()
    cases = [
        b"not json",
        b'{"model": "m"}',
        b'{"model": "m", "messages": []}',
        b'{"model": "m", "messages": "hello"}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": true}',
    ]
    for body in cases:
        status, answer, _ = http(addr, "/v1/chat/completions", body)
        assert status == 400, body
        assert answer["error"]["type"] == "invalid_request_error"
        assert answer["error"]["message"]
    assert "streaming not supported" in answer["error"]["message"]

    with client(addr) as c, pytest.raises(openai.BadRequestError, match="streaming not supported"):
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    counts = stats(addr)
    assert counts["bad_requests"] == 6 and counts["requests"] == 6 and counts["ok"] == 0


def test_malformed_rate_one_gives_content_that_is_not_json(start_server: StartServer) -> None:
    """--malformed-rate 1: a 200 answer whose content does not parse as JSON."""
    _, addr = start_server("--malformed-rate", "1")
    content = ask(addr, prompt("Build a bridge", 0)).choices[0].message.content
    assert content
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)
    assert stats(addr)["malformed"] == 1


def test_rate_limit_rate_one_gives_429_with_retry_after(start_server: StartServer) -> None:
    """--rate-limit-rate 1: the client raises RateLimitError and the response says Retry-After: 1."""
    _, addr = start_server("--rate-limit-rate", "1")
    with pytest.raises(openai.RateLimitError) as caught:
        ask(addr, prompt("Build a bridge", 0))
    assert caught.value.response.headers["retry-after"] == "1"
    assert stats(addr)["rate_limited"] == 1


def test_error_rate_one_gives_500(start_server: StartServer) -> None:
    """--error-rate 1: the client raises InternalServerError."""
    _, addr = start_server("--error-rate", "1")
    with pytest.raises(openai.InternalServerError):
        ask(addr, prompt("Build a bridge", 0))
    assert stats(addr)["errors"] == 1


def test_rpm_limit_refuses_the_third_request_in_a_minute(start_server: StartServer) -> None:
    """--rpm 2: two requests pass, the third in the same minute gets 429 with a Retry-After that
    points inside the window; it counts as rpm_limited."""
    _, addr = start_server("--rpm", "2")
    ask(addr, prompt("A", 0))
    ask(addr, prompt("B", 0))
    with pytest.raises(openai.RateLimitError) as caught:
        ask(addr, prompt("C", 0))
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60
    counts = stats(addr)
    assert (counts["ok"], counts["rate_limited"], counts["rpm_limited"]) == (2, 1, 1)


def test_fault_sequence_is_fixed_by_the_seed(start_server: StartServer) -> None:
    """With --malformed-rate 0.5 the pattern of malformed answers is the same on two servers with
    the same seed and after /stats/reset, and /stats counts requests, ok, malformed and by_model."""

    def pattern(addr: str) -> list[bool]:
        result = []
        for i in range(12):
            content = ask(addr, prompt(f"Task {i}", 0), model="m1" if i % 3 else "m2").choices[0].message.content
            try:
                json.loads(content or "")
                result.append(True)
            except json.JSONDecodeError:
                result.append(False)
        return result

    _, addr = start_server("--malformed-rate", "0.5", "--seed", "7")
    _, twin = start_server("--malformed-rate", "0.5", "--seed", "7")
    seen = pattern(addr)
    assert True in seen and False in seen
    assert pattern(twin) == seen

    counts = stats(addr)
    assert counts["requests"] == 12
    assert counts["ok"] == seen.count(True) and counts["malformed"] == seen.count(False)
    assert counts["by_model"] == {"m1": 8, "m2": 4}
    assert counts["errors"] == counts["rate_limited"] == counts["slow"] == 0

    status, reset, _ = http(addr, "/stats/reset", b"")
    assert status == 200 and reset["requests"] == 0 and reset["by_model"] == {}
    assert pattern(addr) == seen


def test_latency_and_slow_answers_are_delayed(start_server: StartServer) -> None:
    """--latency delays every answer, --slow-rate 1 adds --slow-latency on top and counts as slow."""
    _, addr = start_server("--latency", "0.3", "--slow-rate", "1", "--slow-latency", "0.4")
    started = time.monotonic()
    subtasks_of(ask(addr, prompt("Wait for it", 0)))
    assert time.monotonic() - started >= 0.7
    assert stats(addr)["slow"] == 1


def test_thousand_concurrent_requests_overlap(start_server: StartServer) -> None:
    """1000 requests sent at once with --latency 1 all succeed in a few seconds: the latency is
    waited concurrently, not serially, and /stats saw them in flight together."""
    _, addr = start_server("--latency", "1")
    body = {"model": "load", "messages": [{"role": "user", "content": prompt("Load", 0)}]}

    async def one(session: aiohttp.ClientSession) -> int:
        async with session.post(f"http://{addr}/v1/chat/completions", json=body) as response:
            await response.read()
            return response.status

    async def burst() -> list[int]:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
            return await asyncio.gather(*(one(session) for _ in range(1000)))

    started = time.monotonic()
    statuses = asyncio.run(burst())
    elapsed = time.monotonic() - started
    assert statuses == [200] * 1000
    assert elapsed < 10, f"1000 requests of 1 s took {elapsed:.1f} s"
    counts = stats(addr)
    assert counts["ok"] == 1000 and counts["in_flight"] == 0
    assert counts["max_in_flight"] > 100


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly(start_server: StartServer, sig: signal.Signals) -> None:
    """SIGTERM and SIGINT end the server with exit code 0 and no traceback."""
    proc, _ = start_server()
    proc.signal(sig)
    assert proc.wait(15) == 0
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "flags",
    [
        ["--listen", "127.0.0.1:0", "--fanout", "0"],
        ["--listen", "127.0.0.1:0", "--fanout", "21"],
        ["--listen", "127.0.0.1:0", "--atomic-depth", "zero"],
        ["--listen", "127.0.0.1:0", "--malformed-rate", "1.5"],
        ["--listen", "127.0.0.1:0", "--error-rate", "nan"],
        ["--listen", "127.0.0.1:0", "--latency", "-1"],
        ["--listen", "127.0.0.1:0", "--slow-latency", "inf"],
        ["--listen", "127.0.0.1:0", "--rpm", "-3"],
        ["--listen", "127.0.0.1:0", "--seed", "-1"],
        ["--listen", "127.0.0.1:0", "--log-format", "xml"],
        ["--listen", "127.0.0.1:0", "--bogus"],
        ["--listen", "127.0.0.1:99999"],
        ["--listen", "no-port"],
        [],
    ],
)
def test_bad_flags_are_refused_in_one_line(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Every out-of-range or unknown option is refused while parsing: exit 2 and one
    `paradecom fake-llm: error:` line naming the problem (in-process, so many cases stay fast)."""
    with pytest.raises(SystemExit) as caught:
        fakellm.main(flags)
    assert caught.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("paradecom fake-llm: error: ")


def test_bad_flags_as_a_process_exit_2_without_traceback() -> None:
    """The real `python -m paradecom.fakellm` process refuses a bad flag, an unknown flag and an
    address already in use with exit 2, one stderr line, nothing on stdout and no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        for flags in (["--listen", "127.0.0.1:0", "--fanout", "0"], ["--listen", "127.0.0.1:0", "--bogus"],
                      ["--listen", busy]):  # fmt: skip
            result = run_cli([*FAKE, *flags], timeout=30)
            assert result.returncode == 2, (flags, result.stderr)
            assert "Traceback" not in result.stderr
            assert result.stderr.count("\n") == 1 and result.stderr.startswith("paradecom fake-llm: error: ")
            assert result.stdout == ""
