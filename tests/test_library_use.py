"""ParaDecom used as a library (`parallel_decompose_project` in someone else's program): it writes
nothing on stdout, masks secrets in every log line, and leaves the process's environment alone."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import run_cli

from paradecom.client import local_llm

SECRET = "sk-paradecom-library-secret-0042"

# The caller's program: decomposes a small project with the runners the first argument names
# (0, auto, processes), after configuring logging as the second says (none, stdlib, structlog),
# and prints one line of its own on stdout. The model is named like the key, so that the log lines
# naming the model would show the key unless it is masked.
LOGGING_SCRIPT = """
import logging, sys
import structlog
from paradecom import ProjectDefinition, parallel_decompose_project

runners, configured = sys.argv[1], sys.argv[2]
if configured == "stdlib":
    logging.basicConfig(level=logging.INFO)
elif configured == "structlog":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
kwargs = {"runners": 1, "runner_processes": True} if runners == "processes" else {
    "runners": 0 if runners == "0" else "auto"}
project = ProjectDefinition(name="Recipe site", description="Post and rate recipes.", max_depth=1)
tree = parallel_decompose_project(project, model=sys.argv[3], cache=False, **kwargs)
print("tasks", len(list(tree.iter_tasks())))
"""


@pytest.mark.parametrize(
    ("runners", "configured"),
    [("0", "none"), ("auto", "none"), ("processes", "none"), ("0", "stdlib"), ("auto", "stdlib"),
     ("auto", "structlog")],
)  # fmt: skip
def test_library_logs_never_reach_stdout_and_never_show_the_key(
    fake_llm: Callable[..., str], tmp_path: Path, runners: str, configured: str
) -> None:
    """Against an endpoint that fails every other request (so every task's call is retried, and
    logged), a program calling the API sees on stdout only what it prints itself, in every mode;
    the API key appears nowhere, though the model's name (the key's value here) is in log lines.
    With stdlib logging configured the lines reach its handler on stderr; with the program's own
    structlog configuration, they reach that."""
    base_url = fake_llm("--fanout", "2", "--atomic-depth", "3", "--error-rate", "0.5", "--seed", "7")
    script = tmp_path / "caller.py"
    script.write_text(LOGGING_SCRIPT)
    result = run_cli(
        [sys.executable, str(script), runners, configured, SECRET],
        env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": SECRET},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "tasks 3\n", result.stdout
    assert SECRET not in result.stderr
    if configured == "none":
        # Python's last resort shows warnings and errors only: the retries (info) are not shown.
        assert "retrying" not in result.stderr
    elif runners == "processes":
        pass  # the runners' lines are in their own log files, masked by the runners
    else:
        assert "LLM request failed, retrying" in result.stderr
        # The line naming the model (here, the key's value) shows it masked.
        assert "structured output mode chosen" in result.stderr and "model=***" in result.stderr
        if configured == "stdlib":
            assert "INFO:paradecom.runner.llm:" in result.stderr


# --- the embedded model leaves os.environ alone ---------------------------------------------------

# Variables that would point a run at an endpoint, or tune it: none is set for the embedded runs.
_ENDPOINT_ENV = (
    "OPENAI_BASE_URL", "OPENAI_API_KEY", "PARADECOM_MODEL", "PARADECOM_STRUCTURED_OUTPUT", "PARADECOM_MAX_TOKENS",
    "PARADECOM_LLM_TIMEOUT", "PARADECOM_MAX_SUBTASKS", "PARADECOM_MAX_REASKS", "PARADECOM_ANSWER_PROFILE",
    "PARADECOM_ENDPOINT_ID",
)  # fmt: skip


def test_embedded_settings_reach_the_llm_client_and_runner_processes_not_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The embedded model's address and the settings a 135M model needs are handed to the LLM
    client and to the environment of runner processes, while this process's environment is not
    touched."""
    import asyncio

    from paradecom.client.local_run import runner_environment
    from paradecom.runner.schema import decomposition_schema

    for name in _ENDPOINT_ENV:
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    settings = local_llm.embedded_settings("http://127.0.0.1:9/v1")
    llm = settings.llm_client()
    try:
        assert (llm.base_url, llm.model) == ("http://127.0.0.1:9/v1/", local_llm.MODEL_NAME)
        assert (llm.max_tokens, llm.structured_output) == (local_llm.EMBEDDED_MAX_TOKENS, "json_object")
        assert llm._client.timeout == local_llm.EMBEDDED_LLM_TIMEOUT_S
        assert llm.endpoint_id == local_llm.EMBEDDED_ENDPOINT_ID
        assert llm.schema == decomposition_schema(local_llm.EMBEDDED_MAX_SUBTASKS, profile="small")
        assert settings.request.answer_profile == "small" and settings.request.max_reasks == 1
        env = runner_environment(settings)
        assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:9/v1"
        assert env["PARADECOM_ENDPOINT_ID"] == local_llm.EMBEDDED_ENDPOINT_ID
        assert (env["PARADECOM_MAX_TOKENS"], env["PARADECOM_ANSWER_PROFILE"]) == ("400", "small")
    finally:
        asyncio.run(llm.close())
    assert dict(os.environ) == before
    assert local_llm.embedded_settings("http://h/v1", "my-model").model == "my-model"


# A stand-in for llama-cpp-python's server (`python -m llama_cpp.server ... --host H --port P`):
# fake-llm, writing every chat request's body to a file of its own in $FAKE_LLAMA_REQUESTS.
FAKE_LLAMA_SERVER = """
import argparse, os
from aiohttp import web
from paradecom.devtools import fakellm

parser = argparse.ArgumentParser()
parser.add_argument("--host")
parser.add_argument("--port", type=int)
args, _ = parser.parse_known_args()
record = os.path.join(os.environ["FAKE_LLAMA_REQUESTS"], f"{args.port}.jsonl")

@web.middleware
async def keep(request, handler):
    if request.method == "POST":
        with open(record, "ab") as f:
            f.write(await request.read() + b"\\n")
    return await handler(request)

app = fakellm.FakeLLM(fakellm.Options(fanout=3, atomic_depth=5)).app()
app.middlewares.append(keep)
web.run_app(app, host=args.host, port=args.port, print=None)
"""

# The caller's program: a run on the embedded model with the runners the first argument names,
# comparing os.environ with what it was at every progress summary and at the end.
ENVIRONMENT_SCRIPT = """
import json, os, sys
from paradecom import ProjectDefinition, parallel_decompose_project

before = dict(os.environ)
changes = []

def look(summary):
    if dict(os.environ) != before:
        changes.append(sorted(set(os.environ.items()) ^ set(before.items())))

kwargs = {"runners": 1, "runner_processes": True} if sys.argv[1] == "processes" else {
    "runners": 0 if sys.argv[1] == "0" else "auto"}
project = ProjectDefinition(name="Recipe site", description="Post and rate recipes.", max_depth=2)
tree = parallel_decompose_project(project, cache=False, on_progress=look, **kwargs)
after = sorted(set(os.environ.items()) ^ set(before.items()))
print(json.dumps({"tasks": len(list(tree.iter_tasks())), "during": changes, "after": after}))
"""


def fake_embedded_model(root: Path) -> None:
    """Make `root`, put first on PYTHONPATH, hold a fake `local` extra: the model package with a
    file of the model's name, FAKE_LLAMA_SERVER as `llama_cpp.server`, and empty modules for the
    server's other dependencies that are not installed."""
    model = root / local_llm.MODEL_PACKAGE
    model.mkdir(parents=True)
    (model / "__init__.py").write_text("")
    (model / local_llm.GGUF_NAME).write_bytes(b"GGUF tokenizer.chat_template")
    server = root / "llama_cpp" / "server"
    server.mkdir(parents=True)
    (root / "llama_cpp" / "__init__.py").write_text("")
    (server / "__init__.py").write_text("")
    (server / "__main__.py").write_text(FAKE_LLAMA_SERVER)
    for name in local_llm._SERVER_MODULES:
        if name != "llama_cpp" and importlib.util.find_spec(name) is None:
            (root / f"{name}.py").write_text("")


@pytest.mark.parametrize("runners", ["0", "auto", "processes"])
def test_a_run_on_the_embedded_model_leaves_the_environment_alone(tmp_path: Path, runners: str) -> None:
    """With no endpoint configured, a run starts the embedded model (here a stand-in serving
    fake-llm's answers) and sends it the embedded settings (its model name, 400-token answers,
    json_object, the small answer profile), from the runners in this process or in processes of
    their own; the caller's os.environ is the same at every progress summary and after."""
    from paradecom.runner.prompt import SMALL_SYSTEM_PROMPT

    fake_embedded_model(tmp_path / "extra")
    requests = tmp_path / "requests"
    requests.mkdir()
    script = tmp_path / "caller.py"
    script.write_text(ENVIRONMENT_SCRIPT)
    env = {name: value for name, value in os.environ.items() if name not in _ENDPOINT_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "extra"), env.get("PYTHONPATH", "")])
    env["FAKE_LLAMA_REQUESTS"] = str(requests)
    result = subprocess.run(
        [sys.executable, str(script), runners], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {"tasks": 13, "during": [], "after": []}
    # The root and its three children are decomposed (the grandchildren are at max_depth).
    bodies = [json.loads(line) for path in requests.iterdir() for line in path.read_text().splitlines()]
    assert len(bodies) == 4
    for body in bodies:
        assert body["model"] == local_llm.MODEL_NAME
        assert body["max_tokens"] == local_llm.EMBEDDED_MAX_TOKENS
        assert body["response_format"]["type"] == "json_object"
        assert body["messages"][0]["content"] == SMALL_SYSTEM_PROMPT


def test_importing_the_library_changes_no_environment_variable() -> None:
    """Only the commands quiet gRPC core (GRPC_VERBOSITY, paradecom/cliargs.py); a program that
    imports the library, the leader and the runner keeps its environment as it was."""
    script = (
        "import os, paradecom, paradecom.client.api, paradecom.leader.core, paradecom.runner.loop\n"
        "from paradecom import parallel_decompose_project\n"
        "print('GRPC_VERBOSITY' in os.environ)\n"
    )
    env = {name: value for name, value in os.environ.items() if name != "GRPC_VERBOSITY"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
