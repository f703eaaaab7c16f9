"""The Node.js runner (clients/node-runner/), written from proto/ alone, against a real leader and fake-llm.

It needs Node.js and `npm ci --prefix clients/node-runner`; without them these tests fail (never skip), so a
missing install cannot pass for a working runner.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from helpers import Proc, run_cli, wait_for
from test_security import TOKEN, make_ca, make_cert

NODE_RUNNER_DIR = ROOT / "clients" / "node-runner"
RUNNER_JS = NODE_RUNNER_DIR / "runner.js"
PARADECOM = [sys.executable, "-m", "paradecom.client.cli"]


def node_command() -> list[str]:
    """`node runner.js`, or a test failure that says what to install."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: install Node.js 20 or later to test clients/node-runner")
    if not (NODE_RUNNER_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("clients/node-runner/node_modules is missing: run `npm ci --prefix clients/node-runner`")
    return [node, str(RUNNER_JS)]


def walk(tasks: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every task of a `paradecom result --format json` tree, parents before their children."""
    for task in tasks:
        yield task
        yield from walk(task.get("children") or [])


@pytest.mark.slow
def test_node_runner_alone_decomposes_a_project_and_exits_0_on_sigterm(
    fake_llm: Callable[..., str], start_leader: Callable[..., tuple[Proc, str]], procs: list[Proc], tmp_path: Path
) -> None:
    """With the Node.js runner as the only runner, a max_depth 2 project comes back complete: 1 + 3 + 9 tasks,
    hierarchical ids, each task once and done; SIGTERM then stops the runner with exit code 0."""
    command = node_command()
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "5")
    _, leader = start_leader()
    runner = Proc([*command, "--leader", leader, "--concurrency", "4"],
                  env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "test-key"})  # fmt: skip
    procs.append(runner)

    project = tmp_path / "project.json"
    project.write_text(json.dumps({
        "name": "Bakery webshop",
        "description": "Customers order bread online and collect it in a branch; staff mark orders ready.",
        "goals": ["Order in under three minutes"],
        "max_depth": 2,
    }))  # fmt: skip
    submitted = run_cli([*PARADECOM, "submit", "--leader", leader, str(project)])
    assert submitted.returncode == 0, f"paradecom submit failed:\n{submitted.stderr}"
    project_id = submitted.stdout.strip()
    assert project_id, f"paradecom submit printed no project id:\n{submitted.stderr}"

    result = run_cli([*PARADECOM, "result", "--leader", leader, project_id, "--wait", "--format", "json"], timeout=90)
    assert result.returncode == 0, f"paradecom result failed:\n{result.stderr}\nnode runner log:\n{runner.stderr}"
    tree = json.loads(result.stdout)

    assert tree["project"]["state"] == "done", tree["project"]
    tasks = list(walk(tree["tasks"]))
    ids = [t["id"] for t in tasks]
    expected = ["1"] + [f"1.{i}" for i in range(1, 4)] + [f"1.{i}.{j}" for i in range(1, 4) for j in range(1, 4)]
    assert len(ids) == len(set(ids)) == 13, ids
    assert sorted(ids) == sorted(expected)
    assert {t["status"] for t in tasks} == {"done"}, [(t["id"], t["status"], t["last_error"]) for t in tasks]
    # Each decomposed task was leased once (no retries, no expiries); the depth-2 leaves never needed a lease.
    assert [t["attempts"] for t in tasks] == [1 if t["depth"] < 2 else 0 for t in tasks], [
        (t["id"], t["attempts"]) for t in tasks
    ]
    assert tree["project"]["counts"]["total"] == 13
    assert tree["project"]["late_results_refused"] == 0
    for task in tasks:
        if task["depth"] < 2:
            assert len(task["children"]) == 3, task["id"]
    # The runner submitted what the LLM wrote: the children carry its titles and criteria.
    assert all(t["title"] and t["acceptance_criteria"] for t in tasks if t["depth"] > 0)
    assert "task failed" not in runner.stderr, runner.stderr

    runner.signal(signal.SIGTERM)
    assert runner.wait(timeout=20) == 0, f"node runner did not exit 0 on SIGTERM:\n{runner.stderr}"
    assert "stopped" in runner.stderr


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--leader", "nowhere"],
        ["--leader", "127.0.0.1:1", "--concurrency", "0"],
        ["--leader", "127.0.0.1:1", "--bogus"],
        ["--leader", "127.0.0.1:1", "--auth-token-file", "/nonexistent-token"],
        ["--leader", "127.0.0.1:1", "--tls-ca", "/nonexistent.pem"],
        ["--leader", "127.0.0.1:1", "--tls-ca", __file__, "--tls-cert", __file__],
        ["--leader", "127.0.0.1:1", "--tls-cert", __file__, "--tls-key", __file__],
        ["--leader", "127.0.0.1:1", "--structured-output", "xml"],
    ],
)
def test_node_runner_bad_flags_exit_2_with_one_line(flags: list[str]) -> None:
    """A missing or malformed flag is refused before any connection: one line on stderr, exit code 2."""
    done = run_cli([*node_command(), *flags], timeout=30)
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("node-runner: error: "), done.stderr


def get_json(base_url: str, path: str) -> Any:
    """GET a fake-llm endpoint (base_url ends in /v1) and decode its JSON answer."""
    with urllib.request.urlopen(base_url.removesuffix("/v1") + path, timeout=10) as response:
        return json.loads(response.read())


def connected(status_command: list[str]) -> int:
    """How many runners `paradecom status --json` lists as connected."""
    return sum(r["connected"] for r in json.loads(run_cli(status_command).stdout or "{}").get("runners", []))


def tree_shape(tree: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What two runs of one project must agree on: every task's id, text, dependencies and status."""
    return [
        (t["id"], t["title"], t["description"], tuple(t["acceptance_criteria"]), tuple(t["depends_on"]),
         t["atomic"], t["estimate_hours"], t["status"])
        for t in walk(tree["tasks"])
    ]  # fmt: skip


@pytest.mark.slow
def test_node_and_python_runners_side_by_side_with_token_and_tls_build_the_python_only_tree(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    procs: list[Proc],
    tmp_path: Path,
) -> None:
    """A Node runner and a Python runner share a leader that demands a token and TLS: both get tasks,
    and the tree is the one a Python runner alone builds, and a Node runner alone (same titles,
    texts, structure), from the same LLM requests, body for body: the Node runner sends the
    contract's LlmRequest as it is. The Node runner reads the token from $PARADECOM_AUTH_TOKEN, the
    Python one from a file."""
    command = node_command()
    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki, "ca")
    make_cert(pki, "ca", "leader")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    security = ["--auth-token-file", str(token_file), "--tls-cert", str(pki / "leader.pem"),
                "--tls-key", str(pki / "leader.key")]  # fmt: skip
    client_security = ["--auth-token-file", str(token_file), "--tls-ca", str(pki / "ca.pem")]
    project = tmp_path / "project.json"
    project.write_text(json.dumps({
        "name": "Bakery webshop",
        "description": "Customers order bread online and collect it in a branch; staff mark orders ready.",
        "goals": ["Order in under three minutes"],
        "constraints": ["Runs on one small server"],
        "max_depth": 3,
    }))  # fmt: skip
    trees: dict[str, dict[str, Any]] = {}
    requests: dict[str, list[Any]] = {}
    logs: dict[str, list[str]] = {}
    for run in ("mixed", "python", "node"):
        # Latency keeps several tasks in flight at once, so both runners of the mixed run get some.
        base_url = fake_llm("--fanout", "3", "--atomic-depth", "5", "--latency", "0.2")
        _, leader = start_leader(*security, db=tmp_path / f"{run}.db")
        runners = [start_runner(leader, base_url, "--concurrency", "2", "--no-cache", *client_security)]
        if run == "node":
            runners = []
        if run != "python":
            node = Proc([*command, "--leader", leader, "--concurrency", "2", "--tls-ca", str(pki / "ca.pem")],
                        env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "test-key",
                             "PARADECOM_AUTH_TOKEN": TOKEN})  # fmt: skip
            procs.append(node)
            runners.append(node)
        status = [*PARADECOM, "status", "--leader", leader, *client_security, "--json"]
        expected = len(runners)
        try:
            wait_for(lambda s=status, n=expected: connected(s) == n, 60, what="every runner connected")  # type: ignore[misc]
        except AssertionError as exc:
            # Say why: a runner that exited, or what `status` printed.
            for runner in runners:
                runner.check_alive()
            last = run_cli(status)
            raise AssertionError(f"{exc} ({run}): status {last.returncode}: {last.stdout} {last.stderr}") from None
        submitted = run_cli([*PARADECOM, "submit", "--leader", leader, *client_security, str(project)])
        assert submitted.returncode == 0, submitted.stderr
        result = run_cli(
            [*PARADECOM, "result", "--leader", leader, *client_security, submitted.stdout.strip(), "--wait",
             "--format", "json"],
            timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + "".join(r.stderr for r in runners)
        trees[run] = json.loads(result.stdout)
        # In order of their messages; compared as JSON values (a number may be written 0 or 0.0).
        requests[run] = sorted(get_json(base_url, "/requests"), key=lambda body: json.dumps(body["messages"]))
        for runner in runners:
            runner.signal(signal.SIGTERM)
            assert runner.wait(timeout=30) == 0, runner.stderr
        logs[run] = [r.stderr for r in runners]

    assert {tree["project"]["state"] for tree in trees.values()} == {"done"}
    assert len(list(walk(trees["python"]["tasks"]))) == 1 + 3 + 9 + 27
    assert tree_shape(trees["mixed"]) == tree_shape(trees["node"]) == tree_shape(trees["python"])
    # 13 decompositions in each run, asked the same way by either runner.
    assert len(requests["python"]) == 13
    assert requests["mixed"] == requests["node"] == requests["python"]
    python_log, node_log = logs["mixed"]
    assert "task failed" not in logs["node"][0] and "re-asking" not in logs["node"][0], logs["node"][0]
    assert python_log.count('"result submitted"') >= 1, python_log
    assert node_log.count("result submitted") >= 1, node_log
    assert python_log.count('"result submitted"') + node_log.count("result submitted") == 13
    assert "task failed" not in node_log and "re-asking" not in node_log, node_log


# An OpenAI-compatible server whose first answer for a task has two nearly identical siblings (which
# only the leader's rules refuse) and whose answer to a re-ask is fake-llm's valid one.
NEAR_DUPLICATES_LLM = r"""
import json, time
from aiohttp import web
from paradecom.devtools.fakellm import decomposition, parse_messages

bodies = []

async def chat(request):
    body = await request.json()
    bodies.append(body)
    title, depth, _ = parse_messages(body["messages"])
    answer = decomposition(title, depth, 2, 10)
    if "task_to_decompose" in body["messages"][-1]["content"]:  # the task's message, not a re-ask
        answer["subtasks"][0]["title"] = "Set up the CI pipeline"
        answer["subtasks"][1]["title"] = "Set up the CI pipeline and deployment"
    return web.json_response({
        "id": "scripted", "object": "chat.completion", "created": int(time.time()), "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": json.dumps(answer)}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    })

async def requests(request):
    return web.json_response(bodies)

app = web.Application(client_max_size=32 * 1024 * 1024)
app.router.add_post("/v1/chat/completions", chat)
app.router.add_get("/requests", requests)
runner = web.AppRunner(app)
import asyncio
async def main():
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print("listening 127.0.0.1:%d" % site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


@pytest.mark.slow
def test_node_runner_re_asks_with_the_leaders_refusal(
    start_leader: Callable[..., tuple[Proc, str]], procs: list[Proc], tmp_path: Path
) -> None:
    """A result the leader refuses with INVALID_ARGUMENT (nearly identical sibling titles, a rule the
    answer's JSON Schema cannot state) keeps its lease: the Node runner asks again as the LlmRequest's
    re-ask rule says (the request's messages, its answer, the template with the refusal as the
    reason), and the corrected result is accepted under the same lease."""
    command = node_command()
    llm = Proc([sys.executable, "-c", NEAR_DUPLICATES_LLM])
    procs.append(llm)
    base_url = f"http://{llm.address()}/v1"
    _, leader = start_leader()
    node = Proc([*command, "--leader", leader], env={"OPENAI_BASE_URL": base_url})
    procs.append(node)
    project = tmp_path / "project.yaml"
    project.write_text("name: Shop\ndescription: Sell things online.\nmax_depth: 1\n")
    project_id = run_cli([*PARADECOM, "submit", "--leader", leader, str(project)]).stdout.strip()
    result = run_cli([*PARADECOM, "result", "--leader", leader, project_id, "--wait", "--format", "json"], timeout=60)
    assert result.returncode == 0, result.stderr + node.stderr
    tree = json.loads(result.stdout)
    (root,) = tree["tasks"]
    assert root["status"] == "done" and root["attempts"] == 1, root
    assert len(root["children"]) == 2 and "Set up the CI pipeline" not in [c["title"] for c in root["children"]]
    usage = tree["project"]["usage"]
    assert (usage["calls"], usage["reasks"], usage["failures"]) == (2, 1, 0)
    assert tree["project"]["late_results_refused"] == 0
    first, again = get_json(base_url, "/requests")
    assert again["messages"][: len(first["messages"])] == first["messages"]
    bad_answer, reask = again["messages"][len(first["messages"]) :]
    assert bad_answer["role"] == "assistant" and "Set up the CI pipeline and deployment" in bad_answer["content"]
    lead = "Your answer cannot be used:\n- task "
    assert reask["role"] == "user" and reask["content"].startswith(lead), reask
    assert "nearly the same" in reask["content"]
    assert "re-asking" in node.stderr


@pytest.mark.slow
def test_node_runner_refused_credentials_is_one_line_exit_2(
    fake_llm: Callable[..., str], start_leader: Callable[..., tuple[Proc, str]], tmp_path: Path
) -> None:
    """Against a leader with a token, a Node runner with none, or the wrong one, exits 2 with one line
    naming the fix (as the Python runner does), instead of reconnecting for ever."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    _, leader = start_leader("--auth-token-file", str(token_file))
    base_url = fake_llm()
    for env in ({"PARADECOM_AUTH_TOKEN": ""}, {"PARADECOM_AUTH_TOKEN": "wrong"}):
        done = run_cli([*node_command(), "--leader", leader], env={"OPENAI_BASE_URL": base_url, **env}, timeout=30)
        assert done.returncode == 2, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("node-runner: error: ")]
        assert len(errors) == 1 and "refused our credentials" in errors[0], done.stderr
        assert TOKEN not in done.stderr
