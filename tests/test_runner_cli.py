"""The paradecom-runner command: bad flags, a missing endpoint, and a clean stop on a signal."""

from __future__ import annotations

import sys

import pytest
from helpers import Proc, free_port, run_cli, wait_for

from paradecom.runner.main import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: --leader"),
        (["--leader", "nowhere"], "argument --leader: 'nowhere' is not HOST:PORT"),
        (
            ["--leader", "h:1", "--concurrency", "0"],
            "argument --concurrency: 0 is out of range: a whole number from 1 to 1024",
        ),
        (
            ["--leader", "h:1", "--concurrency", "2000"],
            "argument --concurrency: 2000 is out of range: a whole number from 1 to 1024",
        ),
        (
            ["--leader", "h:1", "--max-reasks", "11"],
            "argument --max-reasks: 11 is out of range: a whole number from 0 to 10",
        ),
        (
            ["--leader", "h:1", "--drain-timeout", "-1"],
            "argument --drain-timeout: -1 is out of range: a number from 0 to 3600",
        ),
        (["--leader", "h:1", "--log-format", "xml"], "argument --log-format: invalid choice"),
        (["--leader", "h:1", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_cli_rejects_bad_flags_in_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad flag is one `paradecom-runner: error:` line on stderr and exit 2, no usage dump."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"paradecom-runner: error: {message}")


@pytest.mark.slow
def test_cli_without_endpoint_is_a_config_error() -> None:
    """Without OPENAI_BASE_URL or OPENAI_API_KEY the runner says what to set, in one line, exit 2."""
    result = run_cli(
        [sys.executable, "-m", "paradecom.runner.main", "--leader", "127.0.0.1:1"],
        env={"OPENAI_BASE_URL": "", "OPENAI_API_KEY": ""},
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "paradecom-runner: error: no LLM endpoint: set OPENAI_BASE_URL (and OPENAI_API_KEY for hosted endpoints)"
    ]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
@pytest.mark.slow
def test_cli_stops_cleanly_on_signal(sig: str) -> None:
    """The runner process, waiting for an unreachable leader, exits 0 on SIGTERM or SIGINT and
    never logs the API key."""
    import signal

    proc = Proc(
        [
            sys.executable,
            "-m",
            "paradecom.runner.main",
            "--leader",
            f"127.0.0.1:{free_port()}",
            "--log-format",
            "json",
        ],
        env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-test-secret-value"},
    )
    try:
        wait_for(lambda: "reconnecting to the leader" in proc.stderr, timeout=30, what="the runner to start")
        proc.signal(getattr(signal, sig))
        assert proc.wait(30) == 0
        assert "runner stopped" in proc.stderr
        assert "sk-test-secret-value" not in proc.stderr
    finally:
        proc.stop()
