"""`paradecom status --leader ADDR`: projects and runners with their in-flight counts, end to end."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import Proc, run_cli, wait_for
from test_security import TOKEN, make_ca, make_cert

PARADECOM = [sys.executable, "-m", "paradecom.client.cli"]


def submit(
    leader: str, tmp_path: Path, name: str, *extra: str, env: dict[str, str] | None = None, **fields: object
) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, "description": f"{name}, for status.", **fields}))
    done = run_cli([*PARADECOM, "submit", "--leader", leader, *extra, str(path)], env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def status(leader: str, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = run_cli([*PARADECOM, "status", "--leader", leader, "--json", *extra], env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_status_lists_projects_and_runners_with_in_flight(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    """Two projects (newest first) with their counts; two runners with what each holds; a killed
    runner is listed as disconnected with its leases until they expire; the table says the same."""
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "5", "--latency", "60")
    _, leader = start_leader("--lease-timeout", "20")
    seeds = [{"title": f"Part {i}"} for i in range(5)]
    first = submit(leader, tmp_path, "First", tasks=seeds, max_depth=1)
    second = submit(leader, tmp_path, "Second", max_depth=1)

    empty = status(leader)
    assert empty["runners"] == []
    assert [(p["project_id"], p["name"], p["state"]) for p in empty["projects"]] == [
        (second, "Second", "running"),
        (first, "First", "running"),
    ]
    assert [(p["done"], p["total"], p["queued"]) for p in empty["projects"]] == [(0, 1, 1), (0, 5, 5)]

    start_runner(leader, base_url, "--concurrency", "2", "--runner-id", "alpha", "--drain-timeout", "0")
    beta = start_runner(leader, base_url, "--concurrency", "3", "--runner-id", "beta", "--drain-timeout", "0")

    def busy() -> dict[str, Any] | None:
        s = status(leader)
        held = {r["runner_id"]: (r["connected"], r["in_flight"], r["max_in_flight"]) for r in s["runners"]}
        return s if held == {"alpha": (True, 2, 2), "beta": (True, 3, 3)} else None

    s = wait_for(busy, what="both runners full")
    assert sum(p["leased"] for p in s["projects"]) == 5 and sum(p["queued"] for p in s["projects"]) == 1
    assert all(r["peer"].startswith("ipv4:127.0.0.1:") and r["connected_at_unix_ms"] > 0 for r in s["runners"])

    table = run_cli([*PARADECOM, "status", "--leader", leader])
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["PROJECT", "NAME", "STATE", "DONE/TOTAL", "LEASED", "QUEUED", "DEAD"]
    assert lines[1].split()[:4] == [second, "Second", "running", "0/1"]
    assert any(line.split()[:4] == ["alpha", "yes", "2", "2"] for line in lines)
    assert any(line.split()[:4] == ["beta", "yes", "3", "3"] for line in lines)

    limited = status(leader, "--limit", "1")
    assert [p["project_id"] for p in limited["projects"]] == [second]

    beta.signal(signal.SIGKILL)
    beta.wait()

    def beta_in_grace() -> bool:
        runners = {r["runner_id"]: r for r in status(leader)["runners"]}
        b = runners.get("beta")
        return b is not None and not b["connected"] and b["in_flight"] == 3 and runners["alpha"]["connected"]

    wait_for(beta_in_grace, what="beta listed as disconnected, its leases in grace")
    grace = run_cli([*PARADECOM, "status", "--leader", leader]).stdout
    assert any(line.split()[:3] == ["beta", "no", "(grace)"] for line in grace.splitlines()), grace


@pytest.mark.slow
def test_status_honours_token_and_tls_and_fails_in_one_line(
    start_leader: Callable[..., tuple[Proc, str]], tmp_path: Path
) -> None:
    """Against a TLS leader with a token: status with --tls-ca and the token works; without the
    token it is one line, exit 1; no leader at the address is one line, exit 2; a bad --limit too."""
    make_ca(tmp_path, "ca")
    make_cert(tmp_path, "ca", "leader")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    _, address = start_leader(
        "--auth-token-file", str(token_file),
        "--tls-cert", str(tmp_path / "leader.pem"), "--tls-key", str(tmp_path / "leader.key"),
    )  # fmt: skip
    tls = ["--tls-ca", str(tmp_path / "ca.pem")]
    project_id = submit(address, tmp_path, "Secure", *tls, env={"PARADECOM_AUTH_TOKEN": TOKEN})
    s = status(address, *tls, "--auth-token-file", str(token_file))
    assert [p["project_id"] for p in s["projects"]] == [project_id] and s["runners"] == []

    refused = run_cli([*PARADECOM, "status", "--leader", address, *tls], env={"PARADECOM_AUTH_TOKEN": ""})
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"paradecom: error: the leader at {address} refused the credentials: set PARADECOM_AUTH_TOKEN or "
        "--auth-token-file"
    ]
    untrusted = run_cli([*PARADECOM, "status", "--leader", address], env={"PARADECOM_AUTH_TOKEN": TOKEN})
    assert untrusted.returncode != 0 and len(untrusted.stderr.strip().splitlines()) == 1, untrusted.stderr

    nobody = run_cli([*PARADECOM, "status", "--leader", "127.0.0.1:1"], timeout=60)
    assert nobody.returncode == 2
    assert nobody.stderr.strip().splitlines() == [
        "paradecom: error: cannot reach the leader at 127.0.0.1:1 (unavailable)"
    ]
    bad = run_cli([*PARADECOM, "status", "--leader", address, "--limit", "0"])
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--limit" in bad.stderr
