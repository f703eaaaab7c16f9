"""`paradecom`: the client CLI (submit, watch, result, run, status, budget), the fake LLM server (fake-llm), the
embedded model's server (local-llm) and the DevAI scorer (eval).

Exit status: 0 success; 1 the work did not succeed (project failed or cancelled, leader refused);
2 bad input (flags, project file, configuration) or the leader cannot be reached; 130 stopped by
Ctrl-C or SIGTERM; 141 the reader of the output went away (`paradecom result ... | head`): the
command stops quietly, as a tool killed by SIGPIPE does, with the status a shell shows for one.

Text the CLI did not write itself (names, titles, errors, runner ids) is printed through
paradecom.textsafe: on a terminal it can show control characters and bidi overrides, never obey them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import TYPE_CHECKING, TextIO

from paradecom import limits
from paradecom.cliargs import Parser, add_logging_flags, address, fail, float_range, int_range, runners_flag
from paradecom.errors import (
    ConfigError,
    LeaderRefusedError,
    LeaderUnavailableError,
    ParaDecomError,
    PartialTreeError,
    ProjectFileError,
    RunInterrupted,
)
from paradecom.logs import configure_logging
from paradecom.security import Security, security_from_args
from paradecom.textsafe import terminal_safe
from paradecom.v1 import project_pb2

if TYPE_CHECKING:
    from paradecom.client.progress import ProgressReporter
    from paradecom.client.run_settings import RunSettings
    from paradecom.tree import TaskTree

PROG = "paradecom"
FORMATS = ("json", "markdown", "mermaid", "csv")
DEFAULT_LEADER = os.environ.get("PARADECOM_LEADER", limits.DEFAULT_LEADER_ADDRESS)
DEFAULT_STATUS_PROJECTS = 20
MAX_STATUS_PROJECTS = 1_000
# 128 + SIGPIPE: what a shell reports for a command killed by writing to a pipe nobody reads.
EXIT_PIPE_CLOSED = 141


def _add_leader(parser: argparse.ArgumentParser) -> None:
    from paradecom.security import add_security_flags

    add_security_flags(parser, server=False)
    parser.add_argument("--leader", type=address, default=DEFAULT_LEADER,
                        help=f"leader HOST:PORT (default $PARADECOM_LEADER or {DEFAULT_LEADER})")  # fmt: skip


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="json", help="output format (default json)")


def _add_json(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--json", action="store_true", help=f"{what} as JSON lines, one object per change, even on a terminal"
    )


# Commands whose options come from a module of their own (fake-llm and eval import aiohttp): built in
# full only when they are the command given, so `paradecom run` does not pay for importing them.
_TOOL_COMMANDS = ("fake-llm", "local-llm", "eval")


def build_parser(command: str | None = None) -> Parser:
    """The CLI's parser; the options of a tool command (_TOOL_COMMANDS) are added when `command`
    names it (None: all of them)."""
    parser = Parser(prog=PROG, description="ParaDecom: decompose software projects into task trees with LLMs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser, required=True)

    p = sub.add_parser("submit", help="submit a project file; prints the project id")
    _add_leader(p)
    p.add_argument("file", help="project file (YAML or JSON; - for stdin)")

    p = sub.add_parser("watch", help="follow a project's progress until it ends (on stdout)")
    _add_leader(p)
    p.add_argument("project_id")
    _add_json(p, "progress on stdout")

    p = sub.add_parser("result", help="print a project's task tree")
    _add_leader(p)
    p.add_argument("project_id")
    p.add_argument("--wait", action="store_true", help="wait for the project to end first")
    _add_format(p)

    p = sub.add_parser("run", help="decompose a project on this machine (or on a leader, with --leader)")
    p.add_argument("file", help="project file (YAML or JSON; - for stdin)")
    p.add_argument(
        "--runners",
        type=runners_flag,
        default=None,
        metavar="auto|N",
        help="auto (the default): as many decompositions at once as the project's ready tasks, the LLM "
        f"budget and the machine allow; N, 1 to {limits.MAX_RUNNERS}: that many runners, each with "
        "--concurrency calls in flight; 0: the sequential fallback, one task at a time",
    )
    p.add_argument(
        "--concurrency",
        type=int_range(1, limits.MAX_CONCURRENCY),
        default=None,
        metavar="N",
        help=f"LLM calls in flight per runner (default {limits.DEFAULT_CONCURRENCY}; 1 on the embedded model); "
        "with --runners auto, the most in flight in all",
    )
    p.add_argument(
        "--runner-processes",
        action="store_true",
        help="run each runner as a process of its own (CPU isolation); default: in this process",
    )
    p.add_argument("--model", default=None, help=f"model name (default $PARADECOM_MODEL or {limits.DEFAULT_MODEL})")
    p.add_argument("--no-cache", action="store_true", help="always ask the LLM, never the decomposition cache")
    p.add_argument(
        "--llm-rpm", type=int_range(0, limits.MAX_RPM), default=0, metavar="N",
        help="LLM requests per minute over all runners (default 0: no limit)",
    )  # fmt: skip
    p.add_argument(
        "--llm-tpm", type=int_range(0, limits.MAX_TPM), default=0, metavar="N",
        help="LLM tokens per minute over all runners (default 0: no limit)",
    )  # fmt: skip
    p.add_argument(
        "--max-attempts", type=int_range(1, limits.MAX_ATTEMPTS_LIMIT), default=limits.DEFAULT_MAX_ATTEMPTS,
        metavar="N", help=f"leases per task before it is dead (default {limits.DEFAULT_MAX_ATTEMPTS})",
    )  # fmt: skip
    p.add_argument(
        "--lease-timeout", type=float_range(limits.MIN_LEASE_TIMEOUT_S, limits.MAX_LEASE_TIMEOUT_S),
        default=limits.DEFAULT_LEASE_TIMEOUT_S, metavar="S",
        help=f"seconds a lease lives without a heartbeat (default {limits.DEFAULT_LEASE_TIMEOUT_S:g})",
    )  # fmt: skip
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="exit 0 with the tree even when tasks are dead (default: the tree, the reason on stderr, exit 1)",
    )
    p.add_argument(
        "--leader",
        type=address,
        default=None,
        help="submit to the leader at HOST:PORT and follow it there, instead of running one here",
    )
    from paradecom.security import add_security_flags

    add_security_flags(p, server=False)
    _add_format(p)
    _add_json(p, "progress on stderr")

    p = sub.add_parser("status", help="list a leader's projects and connected runners")
    _add_leader(p)
    p.add_argument(
        "--limit",
        type=int_range(1, MAX_STATUS_PROJECTS),
        default=DEFAULT_STATUS_PROJECTS,
        metavar="N",
        help=f"projects to list, newest first, 1 to {MAX_STATUS_PROJECTS} (default {DEFAULT_STATUS_PROJECTS})",
    )
    p.add_argument("--json", action="store_true", help="one JSON object with `projects` and `runners`")

    p = sub.add_parser("budget", help="show or change the leader's global LLM budget while it runs")
    _add_leader(p)
    p.add_argument(
        "--rpm",
        type=int_range(0, limits.MAX_RPM),
        default=None,
        metavar="N",
        help="LLM requests per minute over all runners (0: no limit)",
    )
    p.add_argument(
        "--tpm",
        type=int_range(0, limits.MAX_TPM),
        default=None,
        metavar="N",
        help="LLM tokens per minute over all runners (0: no limit)",
    )

    p = sub.add_parser("fake-llm", help="serve the fake OpenAI-compatible LLM (tests, demos, load)")
    if command in (None, "fake-llm"):
        from paradecom.devtools import fakellm

        fakellm.add_arguments(p)

    p = sub.add_parser("local-llm", help="serve the embedded model (SmolLM2-135M) for runners on other machines")
    if command in (None, "local-llm"):
        from paradecom.client import local_llm

        local_llm.add_arguments(p)

    p = sub.add_parser("eval", help="decompose DevAI instances and score the trees against their requirements")
    if command in (None, "eval"):
        from paradecom.devtools import evaluate

        evaluate.add_arguments(p)

    for name in ("submit", "watch", "result", "status", "budget"):
        add_logging_flags(sub.choices[name])
    # `run` keeps the leader and runners in its own process: their info lines would bury the
    # progress display, so it logs warnings and worse unless asked for more.
    add_logging_flags(sub.choices["run"], default_level="warning")
    return parser  # fmt: skip


def _progress(args: argparse.Namespace, stream: TextIO) -> ProgressReporter:
    """The live display on a terminal, JSON lines elsewhere or with --json."""
    from paradecom.client.progress import ProgressReporter

    return ProgressReporter(stream, json_lines=True if args.json else None)


def _security(args: argparse.Namespace) -> Security:
    return security_from_args(args, server=False)


async def _submit(args: argparse.Namespace) -> int:
    from paradecom.client.leader_client import LeaderClient
    from paradecom.project import load_project

    project = load_project(args.file)
    async with LeaderClient(args.leader, _security(args)) as client:
        print(await client.submit(project))
    return 0


async def _watch(args: argparse.Namespace) -> int:
    from paradecom.client.leader_client import LeaderClient

    # Progress is what `watch` is for, so it goes to stdout (`run` keeps stdout for the tree).
    async with LeaderClient(args.leader, _security(args)) as client:
        with _progress(args, sys.stdout) as show:
            summary = await client.wait(args.project_id, show)
    return 0 if summary.state == project_pb2.PROJECT_STATE_DONE else 1


async def _status(args: argparse.Namespace) -> int:
    from paradecom.client.leader_client import LeaderClient
    from paradecom.client.status import render_status, status_json

    async with LeaderClient(args.leader, _security(args)) as client:
        projects = await client.projects(args.limit)
        runners = await client.runners()
    print(json.dumps(status_json(projects, runners), indent=2) if args.json else render_status(projects, runners))
    return 0


async def _result(args: argparse.Namespace) -> int:
    from paradecom.client.leader_client import LeaderClient, state_name
    from paradecom.tree import TaskTree

    async with LeaderClient(args.leader, _security(args)) as client:
        summary = await client.wait(args.project_id) if args.wait else await client.get(args.project_id)
        if summary.state == project_pb2.PROJECT_STATE_RUNNING:
            print(
                f"{PROG}: project {args.project_id} is still running ({summary.done} of {summary.total} tasks "
                "done); add --wait to wait for it",
                file=sys.stderr,
            )
            return 1
        tree = TaskTree.from_proto(await client.tree(args.project_id))
    _print_tree(tree, args.format)
    if summary.state != project_pb2.PROJECT_STATE_DONE:
        print(f"{PROG}: project {terminal_safe(args.project_id)} ended {state_name(summary.state)}", file=sys.stderr)
        return 1
    return 0


def _print_tree(tree: TaskTree, fmt: str) -> None:
    """The tree on stdout. JSON, Markdown and Mermaid carry no control character as it is (see
    docs/tree-format.md); CSV carries the text exactly, so on a terminal it is escaped."""
    text = tree.render(fmt)
    if fmt == "csv" and _isatty(sys.stdout):
        text = terminal_safe(text, keep_newlines=True)
    print(text)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _run_settings(args: argparse.Namespace) -> RunSettings:
    """The flags of `paradecom run` as RunSettings; a combination that makes no sense is ConfigError."""
    from paradecom.client.run_settings import AUTO, RunSettings, SettingError

    if args.leader is None and (args.auth_token_file or args.tls_ca or args.tls_cert or args.tls_key):
        raise ConfigError("--auth-token-file and --tls-* are for reaching a leader: use them with --leader")
    try:
        return RunSettings(
            runners=AUTO if args.runners is None else args.runners,
            concurrency=args.concurrency,
            leader=args.leader,
            model=args.model,
            cache=not args.no_cache,
            llm_rpm=args.llm_rpm,
            llm_tpm=args.llm_tpm,
            lease_timeout=args.lease_timeout,
            max_attempts=args.max_attempts,
            allow_partial=args.allow_partial,
            runner_processes=args.runner_processes,
            security=_security(args) if args.leader else None,
        )
    except SettingError as exc:
        # The settings name themselves as in Python (llm_rpm); the user typed flags (--llm-rpm).
        raise ConfigError(exc.message(lambda name: "--" + name.replace("_", "-"))) from None


async def _run(args: argparse.Namespace) -> int:
    # SIGTERM and Ctrl-C cancel the run; everything it started (runners, leader, the embedded
    # model) is stopped on the way out, and what was finished is printed.
    run_task = asyncio.current_task()
    assert run_task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, run_task.cancel)
    try:
        return await _run_project(args)
    except RunInterrupted as exc:
        if exc.tree is not None:
            _print_tree(exc.tree, args.format)  # type: ignore[arg-type]
        print(f"{PROG}: stopped; printed what was finished", file=sys.stderr)
        return 130
    except asyncio.CancelledError:
        print(f"{PROG}: stopped", file=sys.stderr)
        return 130
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _run_project(args: argparse.Namespace) -> int:
    from paradecom.client.api import decompose
    from paradecom.project import load_project

    settings = _run_settings(args)
    project = load_project(args.file)
    try:
        with _progress(args, sys.stderr) as show:
            tree = await decompose(project, settings, on_progress=show, on_embedded=_embedded_notice)
    except PartialTreeError as exc:
        _print_tree(exc.tree, args.format)  # type: ignore[arg-type]
        print(
            f"{PROG}: error: {terminal_safe(str(exc), reversible=False)} (--allow-partial accepts such a tree)",
            file=sys.stderr,
        )
        return 1
    _print_tree(tree, args.format)
    return 0


def _embedded_notice(model_name: str) -> None:
    # Flushed: the model takes a while to start, and the user should know why before it does.
    print(
        f"{PROG}: no OPENAI_BASE_URL or OPENAI_API_KEY set: using the embedded {model_name} "
        "(a very small local model; set OPENAI_BASE_URL for a real one)",
        file=sys.stderr,
        flush=True,
    )


async def _budget(args: argparse.Namespace) -> int:
    from paradecom.client.leader_client import LeaderClient

    async with LeaderClient(args.leader, _security(args)) as client:
        budget = await client.budget(args.rpm, args.tpm)
    print(
        f"requests_per_minute={budget.requests_per_minute} tokens_per_minute={budget.tokens_per_minute} "
        f"adaptive_concurrency={budget.adaptive_concurrency or 'off'} rate_limited={budget.rate_limited} "
        f"paused_ms={budget.paused_ms}"
    )
    return 0


COMMANDS = {
    "submit": _submit, "watch": _watch, "result": _result, "run": _run, "status": _status, "budget": _budget,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The first word that is not an option is the command (the top-level parser has only --help).
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in _TOOL_COMMANDS else "").parse_args(argv)
    if args.command == "fake-llm":
        from paradecom.devtools import fakellm

        return fakellm.main_from_args(args)
    if args.command == "eval":
        from paradecom.devtools import evaluate

        return evaluate.main_from_args(args)
    if args.command == "local-llm":
        from paradecom.client import local_llm

        return local_llm.main_from_args(args)
    configure_logging(args.log_format, args.log_level)
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except (ConfigError, LeaderUnavailableError) as exc:
        return fail(PROG, str(exc))
    except LeaderRefusedError as exc:
        print(f"{PROG}: error: {terminal_safe(str(exc), reversible=False)}", file=sys.stderr)
        return 1
    except ProjectFileError as exc:
        return fail(PROG, str(exc))
    except ParaDecomError as exc:
        # A run that started and failed is a failed result, not bad input.
        print(f"{PROG}: error: {terminal_safe(str(exc), reversible=False)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    """The `paradecom` command. After `run`, the process exits at once once its output is flushed:
    tearing down the interpreter (grpc, openai and pydantic objects) took ~0.3 s, a tenth of a
    small project's whole run, and everything the run started has been stopped by then.

    A closed stdout (`paradecom result ... | head`) ends any command quietly with EXIT_PIPE_CLOSED."""
    try:
        code = main()
        # A closed pipe shows here when the output fitted in the buffer.
        sys.stdout.flush()
    except BrokenPipeError:
        # Nothing more can be written there; Python would still try to flush stdout at exit and
        # print a traceback, so stdout now goes to /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        code = EXIT_PIPE_CLOSED
    if sys.argv[1:2] == ["run"]:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    entry()
