"""Structured output per endpoint kind: json_schema, json_object, prompt, and auto's fallback,
through the real openai client against the real fake-llm process."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import urllib.request
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest
from helpers import Proc, run_cli
from runner_fakes import make_assignment

from paradecom import limits
from paradecom.errors import ConfigError
from paradecom.runner.llm import LLMClient, rejects_response_format, response_format_for
from paradecom.runner.prompt import EXAMPLE_ANSWER, SMALL_EXAMPLE_ANSWER, SMALL_SYSTEM_PROMPT, build_messages
from paradecom.runner.schema import (
    DECOMPOSITION_SCHEMA,
    ENV_ANSWER_PROFILE,
    InvalidAnswer,
    answer_profile,
    decomposition_schema,
    grammar_schema,
    parse_decomposition,
    small_title_verbs,
)

PROMPT = [
    {"role": "system", "content": "You decompose tasks."},
    {"role": "user", "content": '{"task_to_decompose": "Build the shop", "task_depth": 0}'},
]


def stats(base_url: str) -> dict[str, Any]:
    """fake-llm's /stats."""
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats", timeout=30) as response:
        data: dict[str, Any] = json.load(response)
    return data


def complete(base_url: str, structured_output: str | None, calls: int = 1) -> list[str]:
    """The answers of `calls` completions made one after another by one LLMClient."""

    async def go() -> list[str]:
        llm = LLMClient("m", base_url=base_url, api_key="k", structured_output=structured_output)
        try:
            return [(await llm.complete(PROMPT)).text for _ in range(calls)]
        finally:
            await llm.close()

    return asyncio.run(go())


def objects(schema: Any) -> list[dict[str, Any]]:
    """Every object schema inside `schema`."""
    found: list[dict[str, Any]] = []
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            found.append(schema)
        for value in schema.values():
            found.extend(objects(value))
    elif isinstance(schema, list):
        for value in schema:
            found.extend(objects(value))
    return found


def test_schema_is_strict_compatible() -> None:
    """DECOMPOSITION_SCHEMA closes every object, requires every property, has no $ref, titles or
    defaults, and still names every field of the answer (a property called "title" included) but
    `key`: a subtask's key is its position, and depends_on lists positions (integers)."""
    text = json.dumps(DECOMPOSITION_SCHEMA)
    assert "$ref" not in text and "$defs" not in text and '"default"' not in text
    found = objects(DECOMPOSITION_SCHEMA)
    assert len(found) == 2
    for obj in found:
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])
        assert all("title" not in sub for sub in obj["properties"].values())
    subtask = DECOMPOSITION_SCHEMA["properties"]["subtasks"]
    assert subtask["items"]["required"] == [
        "title", "description", "acceptance_criteria", "depends_on", "atomic", "atomic_reason", "estimate_hours",
    ]  # fmt: skip
    assert subtask["items"]["properties"]["depends_on"] == {"type": "array", "items": {"type": "integer"}}
    assert (subtask["minItems"], subtask["maxItems"]) == (1, limits.MAX_SUBTASKS)
    assert decomposition_schema(5)["properties"]["subtasks"]["maxItems"] == 5


def test_prompt_example_answer_is_valid_unnumbered_and_keyed_by_position() -> None:
    """The prompt's example answer is what an answer should be: it passes the parser as it is
    (titles kept as written, none numbered), has no keys, and its dependencies are positions that
    become the keys the runner assigns."""
    assert all("key" not in child for child in EXAMPLE_ANSWER["subtasks"])
    subtasks = parse_decomposition(json.dumps(EXAMPLE_ANSWER), "Build the team blog")
    assert [s.title for s in subtasks] == [
        "Design the database schema",
        "Build the post editor",
        "Write the end-to-end tests",
    ]
    assert [s.key for s in subtasks] == ["1", "2", "3"]
    assert [list(s.depends_on) for s in subtasks] == [[], ["1"], ["2"]]
    # Numbered titles are no longer taken off: they are an invalid answer, re-asked with the reason.
    numbered = {"subtasks": [dict(EXAMPLE_ANSWER["subtasks"][0], title="Step 1: Design the schema")]}
    with pytest.raises(InvalidAnswer, match="is numbered"):
        parse_decomposition(json.dumps(numbered), "P")


def test_response_formats_per_mode() -> None:
    """json_schema wraps the schema strictly by name, json_object carries it beside the type, prompt sends none."""
    schema = decomposition_schema(7)
    assert response_format_for("json_schema", schema) == {
        "type": "json_schema",
        "json_schema": {"name": "decomposition", "strict": True, "schema": schema},
    }
    # json_object goes to llama.cpp, which makes a grammar of it: string lengths are bounded there.
    bounded = response_format_for("json_object", schema)
    assert bounded == {"type": "json_object", "schema": grammar_schema(schema)} and bounded["schema"] != schema
    defs = bounded["schema"]["$defs"]
    assert defs["title"]["maxLength"] == 120 and defs["subtask1"]["properties"]["acceptance_criteria"]["maxItems"] == 5
    assert "maxLength" not in json.dumps(schema), "json_schema mode (OpenAI strict) must not get maxLength"
    assert response_format_for("prompt", schema) is None


def test_grammar_schema_lets_each_subtask_depend_only_on_earlier_positions() -> None:
    """In json_object mode the schema (a grammar for llama.cpp) allows 1 to max subtasks, one
    alternative per count, and the subtask at position p may list only positions 1 to p-1 in
    depends_on: a dependency on no sibling, on itself or in a cycle cannot be written. Every other
    field is the strict schema's, with bounded strings."""
    schema = decomposition_schema(4)
    grammar = grammar_schema(schema)
    alternatives = grammar["properties"]["subtasks"]["anyOf"]
    assert [(a["minItems"], a["maxItems"], len(a["prefixItems"])) for a in alternatives] == [
        (n, n, n) for n in range(1, 5)
    ]
    for alternative in alternatives:
        assert [item["$ref"] for item in alternative["prefixItems"]] == [
            f"#/$defs/subtask{p}" for p in range(1, alternative["maxItems"] + 1)
        ]
    defs = grammar["$defs"]
    assert defs["subtask1"]["properties"]["depends_on"]["maxItems"] == 0
    for position in range(2, 5):
        depends_on = defs[f"subtask{position}"]["properties"]["depends_on"]
        assert depends_on["items"] == {"enum": list(range(1, position))} and depends_on["maxItems"] == position - 1
    strict_item = schema["properties"]["subtasks"]["items"]
    for position in range(1, 5):
        item = defs[f"subtask{position}"]
        assert item["required"] == strict_item["required"] and item["additionalProperties"] is False
    assert defs["title"] == {"type": "string", "maxLength": 120, "minLength": 3}


def test_grammar_schema_compiles_with_llama_cpp() -> None:
    """llama-cpp-python (the `local` extra) turns the json_object schema into a grammar without
    error, and the grammar has one rule per position naming exactly the earlier positions."""
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")
    text = json.dumps(grammar_schema(decomposition_schema(5)))
    gbnf = llama_grammar.json_schema_to_gbnf(text)
    rules = dict(line.split(" ::= ", 1) for line in gbnf.splitlines())
    assert rules["subtask2-depends-on-item"] == '"1"'
    assert rules["subtask5-depends-on-item"] == '"1" | "2" | "3" | "4"'
    assert rules["subtask1-depends-on"] == '"[" space  "]" space'
    llama_grammar.LlamaGrammar.from_json_schema(text, verbose=False)


def test_small_profile_asks_for_less_and_its_grammar_makes_siblings_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    """The small answer profile (PARADECOM_ANSWER_PROFILE=small, for the embedded model) asks for
    exactly max subtasks with a title and depends_on; its grammar starts each
    position's title with a verb of its own (disjoint sets, so no two siblings start alike and
    none is numbered), allows no digit right after the verb, and fixes atomic to false."""
    schema = decomposition_schema(3, "small")
    subtasks = schema["properties"]["subtasks"]
    assert (subtasks["minItems"], subtasks["maxItems"]) == (3, 3)
    assert subtasks["items"]["required"] == ["title", "depends_on", "atomic"]
    grammar = grammar_schema(schema)
    assert [len(a["prefixItems"]) for a in grammar["properties"]["subtasks"]["anyOf"]] == [3]
    patterns = [grammar["$defs"][f"subtask{p}"]["properties"]["title"]["pattern"] for p in (1, 2, 3)]
    verbs = [set(small_title_verbs(p, 3)) for p in (1, 2, 3)]
    assert not (verbs[0] & verbs[1] or verbs[0] & verbs[2] or verbs[1] & verbs[2])
    assert "Design" in verbs[0] and "Build" in verbs[1] and "Test" in verbs[2]
    for pattern, allowed in zip(patterns, verbs, strict=True):
        regex = re.compile(pattern)
        assert all(regex.fullmatch(f"{verb} the data loader") for verb in allowed)
        assert not regex.fullmatch("Step 2: Build it") and not regex.fullmatch(f"{sorted(allowed)[0]} 1.0")
    item = grammar["$defs"]["subtask1"]["properties"]
    assert item["atomic"] == {"const": False}
    # The profile comes from the environment when not given, and a wrong name is one clear error.
    monkeypatch.setenv(ENV_ANSWER_PROFILE, "small")
    assert decomposition_schema(3) == schema and answer_profile() == "small"
    monkeypatch.setenv(ENV_ANSWER_PROFILE, "tiny")
    with pytest.raises(ConfigError, match="PARADECOM_ANSWER_PROFILE='tiny' is not one of full, small"):
        answer_profile()


def test_small_profile_prompt_shows_an_answer_its_grammar_allows() -> None:
    """The small profile's messages carry its own rules and example, ask for exactly max subtasks,
    leave the sibling tasks out, and the example answer passes both the parser and the grammar's
    title patterns."""
    messages = build_messages(make_assignment(), 2, 3, profile="small")
    assert messages[0]["content"] == SMALL_SYSTEM_PROMPT
    assert json.loads(messages[2]["content"]) == SMALL_EXAMPLE_ANSWER
    assert messages[-1]["content"].endswith("Write 3 subtasks for this task, each a different part of the work, "
                                            "in this project's own words.")  # fmt: skip
    grammar = grammar_schema(decomposition_schema(3, "small"))
    for position, subtask in enumerate(SMALL_EXAMPLE_ANSWER["subtasks"], start=1):
        assert re.fullmatch(grammar["$defs"][f"subtask{position}"]["properties"]["title"]["pattern"], subtask["title"])
    assert len(parse_decomposition(json.dumps(SMALL_EXAMPLE_ANSWER), "Build the team blog")) == 3
    full = build_messages(make_assignment(), 2, 3, profile="full")
    assert full[0]["content"] != SMALL_SYSTEM_PROMPT
    # The sibling tasks are left out of the small profile's task: a small model copies them.
    assert "Write the docs" in full[-1]["content"] and "Write the docs" not in messages[-1]["content"]


def test_small_profile_grammar_compiles_with_llama_cpp() -> None:
    """llama-cpp-python turns the small profile's grammar, title patterns included, into GBNF."""
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")
    text = json.dumps(grammar_schema(decomposition_schema(5, "small")))
    llama_grammar.LlamaGrammar.from_json_schema(text, verbose=False)
    gbnf = llama_grammar.json_schema_to_gbnf(text)
    assert '"Desig" "n"' in gbnf and '"Documen" "t"' in gbnf


def test_request_body_carries_the_schema_through_the_openai_client() -> None:
    """The openai client passes json_object's non-standard `schema` key on untouched."""
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "{}"}, "finish_reason": "stop"}]}
        return httpx2.Response(200, json={**body, "id": "x", "object": "chat.completion", "created": 0, "model": "m"})

    async def go() -> None:
        client = openai.AsyncOpenAI(
            api_key="k",
            base_url="http://llm.invalid/v1",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
        )
        llm = LLMClient("m", client=client, structured_output="json_object", max_subtasks=4)
        try:
            await llm.complete(PROMPT)
        finally:
            await llm.close()

    asyncio.run(go())
    body = json.loads(seen[0].content)
    assert body["response_format"] == {"type": "json_object", "schema": grammar_schema(decomposition_schema(4))}


def _status_error(status: int, body: object) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://llm.invalid/v1/chat/completions")
    message = body["error"]["message"] if isinstance(body, dict) and "error" in body else f"Error code: {status}"
    return openai.APIStatusError(message, response=httpx2.Response(status, request=request), body=body)


@pytest.mark.parametrize(
    ("status", "message", "refused"),
    [
        # llama-cpp-python's server: a validation error of the field, answered 500.
        (500, "1 validation error: {'loc': ('body', 'response_format', 'type'), 'input': 'json_schema'}", True),
        (400, "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.", True),
        (422, "json_schema: unknown variant", True),
        (400, "response_format type json_schema is not supported", True),
        (400, "This model's maximum context length is 4096 tokens", False),
        (500, "CUDA out of memory", False),
        (401, "Incorrect API key provided: response_format", False),
        (429, "Rate limit reached", False),
    ],
)
def test_rejects_response_format_tells_format_refusals_from_other_errors(
    status: int, message: str, refused: bool
) -> None:
    """Only a 400/422 (or llama-cpp-python's 500) that names the response format counts as one."""
    assert rejects_response_format(_status_error(status, {"error": {"message": message}})) is refused


@pytest.mark.parametrize(
    ("mode", "sent"), [("json_schema", "json_schema"), ("json_object", "json_object"), ("prompt", "none")]
)
def test_each_explicit_mode_sends_its_response_format(fake_llm: Callable[..., str], mode: str, sent: str) -> None:
    """An explicit mode sends exactly its response_format, once, even to an endpoint taking all kinds."""
    base_url = fake_llm()
    [answer] = complete(base_url, mode)
    assert json.loads(answer)["subtasks"]
    seen = stats(base_url)
    assert seen["last_response_format"] == sent
    assert seen["response_formats"] == {sent: 1} and seen["response_format_rejected"] == 0


def test_explicit_mode_refused_is_not_retried(fake_llm: Callable[..., str]) -> None:
    """json_schema set explicitly against an endpoint without it fails at once, not retryable."""
    from paradecom.errors import DecompositionError

    base_url = fake_llm("--response-format-support", "json_object")
    with pytest.raises(DecompositionError) as info:
        complete(base_url, "json_schema")
    assert not info.value.retryable and "json_schema is not supported" in str(info.value)
    assert stats(base_url)["requests"] == 1


@pytest.mark.parametrize(
    ("support", "landed", "refusals"),
    [("json_schema", "json_schema", 0), ("json_object", "json_object", 1), ("none", "none", 2)],
)
def test_auto_lands_on_the_first_kind_accepted_and_remembers_it(
    fake_llm: Callable[..., str], support: str, landed: str, refusals: int
) -> None:
    """auto tries json_schema, then json_object, then no response_format; the kind that worked is
    used from then on, so the second call makes no failed attempt."""
    base_url = fake_llm("--response-format-support", support)
    first, second = complete(base_url, "auto", calls=2)
    assert json.loads(first) == json.loads(second)
    seen = stats(base_url)
    assert seen["response_format_rejected"] == refusals
    assert seen["requests"] == refusals + 2 and seen["ok"] == 2
    assert seen["last_response_format"] == landed and seen["response_formats"][landed] == 2


def test_auto_is_remembered_for_the_process(fake_llm: Callable[..., str]) -> None:
    """A second client in the same process, for the same endpoint and model, starts from the kind
    the first one learned."""
    base_url = fake_llm("--response-format-support", "none")
    complete(base_url, None)
    complete(base_url, "auto")
    assert stats(base_url)["response_format_rejected"] == 2


def test_auto_holds_no_first_call_back(fake_llm: Callable[..., str]) -> None:
    """Eight calls started together before anything is learned all reach the endpoint at once (no
    call waits for another's probe); each costs at most one quick refusal, then the mode is learned."""
    base_url = fake_llm("--response-format-support", "json_object", "--latency", "0.5")

    async def go() -> None:
        llm = LLMClient("m", base_url=base_url, api_key="k", structured_output="auto")
        try:
            await asyncio.gather(*(llm.complete(PROMPT) for _ in range(8)))
            # Learned: a later call goes straight to json_object.
            await llm.complete(PROMPT)
        finally:
            await llm.close()

    asyncio.run(go())
    seen = stats(base_url)
    assert seen["max_in_flight"] == 8, seen  # all eight were answered together, none held back
    assert seen["response_format_rejected"] == 8 and seen["response_formats"] == {"json_schema": 8, "json_object": 9}


def test_structured_output_from_the_environment(fake_llm: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    """$PARADECOM_STRUCTURED_OUTPUT sets the mode of a client not given one; a bad value is a ConfigError."""
    from paradecom.errors import ConfigError

    base_url = fake_llm()
    monkeypatch.setenv("PARADECOM_STRUCTURED_OUTPUT", "json_object")
    complete(base_url, None)
    assert stats(base_url)["last_response_format"] == "json_object"
    monkeypatch.setenv("PARADECOM_STRUCTURED_OUTPUT", "yaml")
    with pytest.raises(ConfigError, match="PARADECOM_STRUCTURED_OUTPUT"):
        LLMClient("m", base_url=base_url)


@pytest.mark.slow
def test_runner_flag_drives_a_whole_project(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
) -> None:
    """`paradecom-runner --structured-output json_object` against a llama.cpp-like endpoint decomposes
    a project with json_object requests only, none refused."""
    from paradecom.client.leader_client import LeaderClient
    from paradecom.project import ProjectDefinition
    from paradecom.v1 import project_pb2

    base_url = fake_llm("--response-format-support", "json_object")
    _, leader = start_leader()
    start_runner(leader, base_url, "--structured-output", "json_object", "--no-cache")
    project = ProjectDefinition(name="Shop", description="Sell things.", max_depth=2)

    async def go() -> project_pb2.ProjectSummary:
        async with LeaderClient(leader) as client:
            return await client.wait(await client.submit(project))

    summary = asyncio.run(go())
    assert summary.state == project_pb2.PROJECT_STATE_DONE and summary.done == 13
    seen = stats(base_url)
    assert seen["response_formats"] == {"json_object": 4} and seen["response_format_rejected"] == 0


def test_runner_rejects_an_unknown_structured_output_mode() -> None:
    """A mode that is not one of the four is a one-line flag error, exit 2."""
    result = run_cli(
        [sys.executable, "-m", "paradecom.runner.main", "--leader", "127.0.0.1:1", "--structured-output", "xml"],
        env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"},
        timeout=60,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "--structured-output" in line and "'xml' is not one of auto, json_schema, json_object, prompt" in line


def test_fake_llm_response_format_support_flag_is_checked() -> None:
    """fake-llm refuses an unknown --response-format-support in one line, exit 2."""
    result = run_cli([sys.executable, "-m", "paradecom.devtools.fakellm", "--listen", "127.0.0.1:0",
                      "--response-format-support", "grammar"], timeout=60)  # fmt: skip
    assert result.returncode == 2 and "--response-format-support" in result.stderr
