"""No secret leaks: a whole project decomposed with the API key and the auth token set to unique
random values, every log at debug level, faults injected so the error paths log too; then every
byte the run produced (each process's stdout and stderr, the CLI's output, the result as JSON and
Markdown, the leader's SQLite files, the runners' cache) is searched for the secrets."""

from __future__ import annotations

import base64
import secrets
import sys
from pathlib import Path

import pytest
from helpers import Proc, run_cli

PARADECOM = [sys.executable, "-m", "paradecom.client.cli"]


def _forms(secret: str) -> list[bytes]:
    """The secret as it could appear: plain, base64 (an encoded header) or hex."""
    raw = secret.encode()
    return [raw, base64.b64encode(raw), raw.hex().encode()]


@pytest.mark.slow
def test_api_key_and_auth_token_appear_in_no_output_and_no_file(
    tmp_path: Path, private_cache: Path, monkeypatch: pytest.MonkeyPatch, procs: list[Proc]
) -> None:
    """leader + 2 runners + fake-llm (with malformed answers, 429s and 500s) + the CLI, all with
    OPENAI_API_KEY and PARADECOM_AUTH_TOKEN set to fresh random secrets and OPENAI_LOG=debug: the
    project completes, and neither secret (plain, base64 or hex) is in any output or stored file."""
    api_key = "sk-leakcheck-" + secrets.token_hex(16)
    token = "tok-leakcheck-" + secrets.token_hex(16)
    # Inherited by every process this test starts, the CLI included.
    monkeypatch.setenv("OPENAI_API_KEY", api_key)
    monkeypatch.setenv("PARADECOM_AUTH_TOKEN", token)
    monkeypatch.setenv("OPENAI_LOG", "debug")

    llm = Proc([sys.executable, "-m", "paradecom.devtools.fakellm", "--listen", "127.0.0.1:0", "--fanout", "2",
                "--malformed-rate", "0.2", "--rate-limit-rate", "0.1", "--error-rate", "0.1", "--seed", "7",
                "--log-format", "json"])  # fmt: skip
    procs.append(llm)
    base_url = f"http://{llm.address()}/v1"
    db = tmp_path / "leader.db"
    leader = Proc([sys.executable, "-m", "paradecom.leader.main", "--listen", "127.0.0.1:0", "--db", str(db),
                   "--log-format", "json", "--log-level", "debug", "--max-attempts", "10"])  # fmt: skip
    procs.append(leader)
    address = leader.address()
    runners = []
    for fmt in ("json", "console"):
        runner = Proc(
            [sys.executable, "-m", "paradecom.runner.main", "--leader", address, "--concurrency", "2",
             "--log-format", fmt, "--log-level", "debug"],
            env={"OPENAI_BASE_URL": base_url},
        )  # fmt: skip
        procs.append(runner)
        runners.append(runner)

    project = tmp_path / "project.yaml"
    project.write_text("name: Secret keeper\ndescription: A shop that must never print its keys.\nmax_depth: 2\n")
    outputs: list[str] = []
    submitted = run_cli([*PARADECOM, "submit", "--leader", address, str(project), "--log-level", "debug"])
    assert submitted.returncode == 0, submitted.stderr
    project_id = submitted.stdout.strip()
    outputs += [submitted.stdout, submitted.stderr]
    watched = run_cli([*PARADECOM, "watch", "--leader", address, project_id])
    assert watched.returncode == 0, watched.stderr
    outputs += [watched.stdout, watched.stderr]
    for fmt in ("json", "markdown"):
        result = run_cli([*PARADECOM, "result", "--leader", address, project_id, "--format", fmt])
        assert result.returncode == 0, result.stderr
        outputs += [result.stdout, result.stderr]
    assert '"state": "done"' in outputs[-4]
    # A command that fails (unknown project) must not print the secrets in its error either.
    failed = run_cli([*PARADECOM, "result", "--leader", address, "no-such-project"])
    assert failed.returncode != 0
    outputs += [failed.stdout, failed.stderr]

    for p in reversed(procs):
        p.stop()
    for p in (llm, leader, *runners):
        outputs += [p.stdout, p.stderr]
    assert any('"task received"' in r.stderr or "task received" in r.stderr for r in runners)

    haystacks: dict[str, bytes] = {f"output {i}": o.encode() for i, o in enumerate(outputs)}
    for directory in (tmp_path, private_cache):
        for path in directory.rglob("*"):
            if path.is_file():
                haystacks[str(path)] = path.read_bytes()
    assert any(name.startswith(str(db)) for name in haystacks), "the leader's db was searched"
    for secret in (api_key, token):
        for form in _forms(secret):
            leaks = [name for name, data in haystacks.items() if form in data]
            assert not leaks, f"{secret[:14]}… found in {leaks}"
