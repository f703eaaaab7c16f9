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

from paradecom import limits
from paradecom.devtools import fakellm
from paradecom.subtasks import SubtaskShape, find_cycle, subtask_errors

FAKE = [sys.executable, "-m", "paradecom.devtools.fakellm"]

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
    task_line = json.dumps({"task_to_decompose": title, "task_depth": depth})
    return f"Decompose the task below.\n{task_line}\nAnswer in JSON."


def shapes_of(children: list[dict[str, Any]]) -> list[SubtaskShape]:
    """fake-llm's children as the runner reads them: key = position, depends_on = positions."""
    return [
        SubtaskShape(str(i), c["title"], [str(d) for d in c["depends_on"]], c["description"])
        for i, c in enumerate(children, start=1)
    ]


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
        shapes = shapes_of(children)
        assert subtask_errors(shapes, parent_title="Build an online shop") == []
        for position, child in enumerate(children):
            assert "key" not in child, "the contract's answer has no keys: a subtask's key is its position"
            assert set(child["depends_on"]) <= set(range(1, position + 1)), "deps only on earlier siblings"
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
            shapes = shapes_of(children)
            assert subtask_errors(shapes, parent_title=parent) == [], (parent, depth)
            assert len({c["description"] for c in children}) == fanout


@pytest.mark.slow
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
        shapes = shapes_of(children)
        assert subtask_errors(shapes, parent_title=title) == []
        title = children[-1]["title"]


def test_the_task_is_read_from_the_task_line_never_from_wording() -> None:
    """fake-llm reads title and depth from the task line (a JSON object on a line of its own) of the
    last user message that has one, past a re-ask after it; wording such as "Task depth: 2" means
    nothing; a depth that is missing, not an integer or negative counts as 0."""
    line = json.dumps({"task_to_decompose": "Build the shop", "task_depth": 2})
    example = json.dumps({"task_to_decompose": "Build the team blog", "task_depth": 0})
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": f"Example.\n{example}"},
        {"role": "assistant", "content": "{}"},
        {"role": "user", "content": f"# The task\n{line}\nWrite 2 to 7 subtasks."},
        {"role": "assistant", "content": "{oops"},
        {"role": "user", "content": "Your answer cannot be used:\n- not JSON"},
    ]
    assert fakellm.parse_messages(messages) == ("Build the shop", 2, True)
    assert fakellm.parse_messages(messages[:3]) == ("Build the team blog", 0, True)
    wording = [{"role": "user", "content": "Task to decompose: Build the shop\nTask depth: 2"}]
    title, depth, found = fakellm.parse_messages(wording)
    assert not found and depth == 0 and title.startswith("prompt-")
    for bad in ('"2"', "-1", "true", "1.5", "null"):
        text = '{"task_to_decompose": "Build the shop", "task_depth": ' + bad + "}"
        assert fakellm.parse_messages([{"role": "user", "content": text}]) == ("Build the shop", 0, True), bad


def test_a_decomposition_schema_limits_the_fields_of_the_answer(start_server: StartServer) -> None:
    """A json_schema named "decomposition" (what runners send) gets subtasks with just the fields its
    items have: the small answer profile's three; valid against that schema."""
    from paradecom.runner.schema import decomposition_schema

    _, addr = start_server("--fanout", "3")
    schema = decomposition_schema(3, profile="small")
    content = ask_schema(addr, "Decompose.", prompt("Build a shop", 0), "decomposition", schema)
    children = json.loads(content)["subtasks"]
    assert [sorted(c) for c in children] == [["atomic", "depends_on", "title"]] * 3


def test_prompt_without_contract_lines_still_gets_a_valid_answer(start_server: StartServer) -> None:
    """Without a task line the whole message seeds the answer (so different messages differ) and
    the depth is 0 (children not atomic with --atomic-depth 2)."""
    _, addr = start_server("--fanout", "2")
    a = subtasks_of(ask(addr, "Plan a wedding."))
    b = subtasks_of(ask(addr, "Plan a conference."))
    assert a != b
    assert a == subtasks_of(ask(addr, "Plan a wedding."))
    for children in (a, b):
        assert len(children) == 2
        assert [c["depends_on"] for c in children] == [[], [1]]
        assert not any(c["atomic"] for c in children)
        assert find_cycle({s.key: list(s.depends_on) for s in shapes_of(children)}) == []


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_bad_flags_as_a_process_exit_2_without_traceback() -> None:
    """The real `python -m paradecom.devtools.fakellm` process refuses a bad flag, an unknown flag and an
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


@pytest.mark.slow
def test_fanout_list_sets_the_fanout_per_depth_and_one_number_is_unchanged(start_server: StartServer) -> None:
    """`--fanout 4,2`: 4 children for a task at depth 0, 2 at depth 1 and every depth below (the last
    number repeats); `--fanout 3,3` answers exactly as `--fanout 3` does, so a list changes nothing
    but the count."""
    _, per_depth = start_server("--fanout", "4,2")
    assert [len(subtasks_of(ask(per_depth, prompt("Build a shop", d)))) for d in (0, 1, 2, 5)] == [4, 2, 2, 2]
    _, one = start_server("--fanout", "3")
    _, listed = start_server("--fanout", "3,3")
    for depth in (0, 1, 3):
        text = prompt("Build a shop", depth)
        assert ask(one, text).choices[0].message.content == ask(listed, text).choices[0].message.content


@pytest.mark.parametrize("value", ["3,0", "3,x", "3,", ",", "3,21"])
def test_bad_fanout_lists_are_refused_in_one_line(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every entry of a --fanout list is checked like a single --fanout: exit 2, one error line."""
    with pytest.raises(SystemExit) as caught:
        fakellm.main(["--listen", "127.0.0.1:0", "--fanout", value])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("paradecom fake-llm: error: argument --fanout")


def test_stats_say_when_the_first_request_arrived_on_the_wall_clock(start_server: StartServer) -> None:
    """/stats `first_request_unix_ms` is null before any chat request, then the time.time() of the
    first one (not moved by later ones), and null again after /stats/reset: another process can
    time how long a command took to send its first LLM request."""
    _, addr = start_server()
    assert stats(addr)["first_request_unix_ms"] is None
    before = time.time() * 1000
    ask(addr, prompt("A", 0))
    after = time.time() * 1000
    first = stats(addr)["first_request_unix_ms"]
    assert before - 1 <= first <= after + 1
    ask(addr, prompt("B", 0))
    assert stats(addr)["first_request_unix_ms"] == first
    http(addr, "/stats/reset", b"")
    assert stats(addr)["first_request_unix_ms"] is None


# Taskmaster's parse-prd schema as it sends it (task-master-ai 0.43.1, the `lmstudio` provider).
TASKS_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {
        "tasks": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "number"},
                    "title": {"type": "string", "minLength": 1},
                    "description": {"type": "string", "minLength": 1},
                    "details": {"type": "string"},
                    "testStrategy": {"type": "string"},
                    "priority": {"type": "string", "enum": ["high", "medium", "low"]},
                    "dependencies": {"type": "array", "items": {"type": "number"}},
                    "status": {"type": "string"},
                },
                "required": ["id", "title", "description", "details", "testStrategy", "priority", "dependencies",
                             "status"],
                "additionalProperties": False,
            },
        },
        "metadata": {"default": None, "anyOf": [{"type": "object", "properties": {"projectName": {"type": "string"}},
                                                 "required": ["projectName"]}, {"type": "null"}]},
    },
    "required": ["tasks"],
    "additionalProperties": False,
}  # fmt: skip


def ask_schema(addr: str, system: str, user: str, name: str, schema: dict[str, Any]) -> str:
    with client(addr) as c:
        completion = c.chat.completions.create(
            model="fake-model",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema}},
        )
    content = completion.choices[0].message.content
    assert content is not None
    return content


def test_other_clients_json_schema_gets_a_valid_instance_of_it(start_server: StartServer) -> None:
    """A request that is not a ParaDecom prompt and sends its own json_schema (Taskmaster's) gets an
    instance of that schema: as many tasks as the prompt asks for, the value the prompt spells out
    for `status`, the first enum value, ids counting from 1, no property the schema does not list,
    the same content for the same request; /stats counts it under schema_answers."""
    _, addr = start_server("--fanout", "3")
    system = 'Generate tasks. Each task: {"status": "pending", "priority": "high" | "low"}'
    user = "Break this PRD into approximately 4 tasks:\n\nA bakery web shop."
    content = ask_schema(addr, system, user, "tasks_data", TASKS_SCHEMA)
    answer = json.loads(content)
    assert set(answer) == {"tasks"}
    tasks = answer["tasks"]
    assert [t["id"] for t in tasks] == [1, 2, 3, 4]
    item = TASKS_SCHEMA["properties"]["tasks"]["items"]
    for task in tasks:
        assert set(task) == set(item["required"])
        assert task["status"] == "pending" and task["priority"] == "high" and task["dependencies"] == []
        assert all(isinstance(task[k], str) and task[k] for k in ("title", "description", "details", "testStrategy"))
    assert len({t["title"] for t in tasks}) == 4
    assert ask_schema(addr, system, user, "tasks_data", TASKS_SCHEMA) == content
    # No count in the prompt: the depth-0 fan-out.
    assert len(json.loads(ask_schema(addr, "Plan.", "A shop.", "tasks_data", TASKS_SCHEMA))["tasks"]) == 3
    assert stats(addr)["schema_answers"] == 3


def test_paradecom_requests_with_a_schema_still_get_a_decomposition(start_server: StartServer) -> None:
    """The generic answer never replaces ParaDecom's: a prompt with a task line, or a
    json_schema named `decomposition` (what runners send), gets the decomposition whatever schema
    comes with it."""
    _, addr = start_server("--fanout", "2")
    with_line = json.loads(ask_schema(addr, "Decompose.", prompt("Build a shop", 0), "tasks_data", TASKS_SCHEMA))
    assert len(with_line["subtasks"]) == 2
    named = json.loads(ask_schema(addr, "Decompose.", "Plan a wedding.", "decomposition", TASKS_SCHEMA))
    assert named == json.loads(ask(addr, "Plan a wedding.").choices[0].message.content or "")
    assert stats(addr)["schema_answers"] == 0


def test_schema_instance_follows_refs_bounds_and_lengths() -> None:
    """schema_instance (in process): local $refs and allOf are followed, anyOf takes its first
    non-null branch, numbers stay within minimum/maximum, strings within minLength/maxLength, nested
    arrays get their minItems and top-level ones the count (within minItems/maxItems), formats get
    a value of that format, and a recursive schema ends."""
    schema: dict[str, Any] = {
        "$defs": {
            "Step": {"allOf": [{"properties": {"n": {"type": "integer", "minimum": 5, "maximum": 6}},
                                "required": ["n"]},
                               {"properties": {"tags": {"type": "array", "minItems": 2, "items": {"type": "string"}}},
                                "required": ["tags"]}]},
            "Node": {"type": "object", "properties": {"child": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/Node"}]}},
                     "required": ["child"]},
        },
        "type": "object",
        "properties": {
            "steps": {"type": "array", "maxItems": 3, "items": {"$ref": "#/$defs/Step"}},
            "name": {"type": "string", "minLength": 40, "maxLength": 50},
            "short": {"type": "string", "maxLength": 3},
            "when": {"type": "string", "format": "date-time"},
            "ratio": {"type": "number", "exclusiveMaximum": 1},
            "tree": {"$ref": "#/$defs/Node"},
        },
    }  # fmt: skip
    value = fakellm.schema_instance(schema, "seed", 5)
    assert [s["n"] for s in value["steps"]] == [5, 5, 5]
    assert all(len(s["tags"]) == 2 for s in value["steps"])
    assert 40 <= len(value["name"]) <= 50 and len(value["short"]) == 3
    assert value["when"] == "2026-01-01T00:00:00Z"
    assert value["ratio"] < 1
    depth, node = 0, value["tree"]
    while node:
        depth, node = depth + 1, node["child"]
    assert 1 <= depth <= fakellm.MAX_SCHEMA_DEPTH
    assert fakellm.requested_count("make exactly 5 subtasks", "10 tasks") == 5
    assert fakellm.requested_count("no number", "then 10 top-level development tasks") == 10
    assert fakellm.requested_count("none here") is None
