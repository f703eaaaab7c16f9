"""Chaos soak: real processes killed, stalled and drained at random while DevAI projects decompose.

    python -m bench.chaos [--duration S] [--projects N] [--runners N] [--seed N]

It starts fake-llm (latency, a few % malformed answers and 429s), a leader with a short lease
timeout and enough attempts that chaos alone dead-letters nothing, and `--runners` runner
processes; submits the DevAI projects (`data/devai/*.json`, max depth 2) with
`python -m paradecom.client.cli submit`; then, at seeded random intervals, until `--duration` seconds
have passed or every project is done:

- kill:    SIGKILL a runner and start a new one (its leases expire and are reassigned);
- leader:  SIGKILL the leader (now and then SIGTERM, which must exit 0) and restart it on the
           same --db and port (its leases survive);
- stall:   SIGSTOP a runner for longer than the lease timeout, then SIGCONT it (its late results
           must be refused: the projects' `late_results_refused` counters show it);
- drain:   SIGTERM a runner (it must exit 0) and start a replacement.

Then it waits (bounded) for every project to finish, reads every tree with GetTaskTree and checks
it: every project done, every task exactly once (unique hierarchical ids, each decomposed task
with exactly the fake LLM's fan-out of children), nothing lost (no task left queued or leased,
every task above the depth limit decomposed or dead), counters consistent. It prints a summary and
exits 1 when a task was lost or duplicated, a project did not finish, or a process broke a promise
(a drained runner or leader that did not exit 0). Every process it started is stopped on the way
out, also on Ctrl-C; the logs stay in the work directory when the run failed or with --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar
from urllib.request import urlopen

import grpc

from paradecom.devtools import testing
from paradecom.grpc_options import CHANNEL_OPTIONS
from paradecom.v1 import project_pb2, project_service_pb2, project_service_pb2_grpc

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
DEVAI = ROOT / "data" / "devai"

FANOUT = 3  # children in every fake-llm answer
MAX_DEPTH = 2
LEASE_TIMEOUT_S = 3.0
MAX_ATTEMPTS = 10
STALL_S = LEASE_TIMEOUT_S + 2.0  # a stalled runner sleeps past its leases
RUNNER_DRAIN_TIMEOUT_S = 10.0
START_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 60.0
# A leader's drain gives in-flight calls 5 s (leader/server.py STOP_GRACE_S); this leaves room.
LEADER_EXIT_TIMEOUT_S = 30.0
SUBMIT_PARALLEL = 2
SUBMIT_TRIES = 10
RPC_TIMEOUT_S = 10.0

TERMINAL = {project_pb2.PROJECT_STATE_DONE, project_pb2.PROJECT_STATE_CANCELLED, project_pb2.PROJECT_STATE_FAILED}

# Runner log events (JSON lines) that show a result was refused for a stale lease.
REFUSED_EVENTS = ('"SubmitResult refused, dropped"', '"FailTask refused, dropped"')


class ChaosError(RuntimeError):
    """The soak could not go on (a process would not start, a deadline passed)."""


def wait_for(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `condition` until it returns something truthy; ChaosError after `timeout` seconds."""
    return testing.wait_for(condition, timeout, interval, what, error=ChaosError)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A child process whose stdout and stderr go to files in the work directory."""

    def __init__(self, name: str, args: Sequence[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = list(args)
        self.stdout_path = workdir / f"{name}.out"
        self.stderr_path = workdir / f"{name}.err"
        self.stopped = False  # SIGSTOPped and not yet continued
        self._started = False
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(
                self.args,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                cwd=ROOT,
                # Its own session: a Ctrl-C at the terminal reaches the soak, which stops everything.
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def started(self) -> bool:
        """The runner logged that it started (its signal handlers are installed by then)."""
        if not self._started:
            self._started = '"runner started"' in self.stderr()
        return self._started

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def address(self, timeout: float = START_TIMEOUT_S) -> str:
        """HOST:PORT from the `listening HOST:PORT` line a service prints once it serves."""

        def find() -> str | None:
            for line in self.stdout().splitlines():
                if line.startswith("listening "):
                    return line.split()[1]
            if not self.alive():
                tail = "\n".join(self.stderr().splitlines()[-20:])
                raise ChaosError(f"{self.name} exited {self.popen.returncode} before listening:\n{tail}")
            return None

        return wait_for(find, timeout, f"{self.name} to listen")

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def wait(self, timeout: float = EXIT_TIMEOUT_S) -> int | None:
        """The exit code, or None if the process is still running after `timeout` seconds."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGCONT (if stopped), SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGCONT)
            self.popen.send_signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.popen.kill()
                self.popen.wait(15)
        return int(self.popen.returncode)


@dataclass
class Counts:
    """What happened, for the summary."""

    runner_kills: int = 0
    leader_kills: int = 0
    leader_terms: int = 0
    leader_term_bad_exits: int = 0
    stalls: int = 0
    stalls_refused: int = 0  # stalls after which the runner logged a refused late result
    drains: int = 0
    drains_exit_0: int = 0
    drain_bad_exits: int = 0
    final_runner_bad_exits: int = 0
    submit_retries: int = 0


@dataclass
class TreeCheck:
    """The verdict on the trees of all projects."""

    projects: int = 0
    submitted: int = 0
    rounds: int = 0
    done: int = 0
    not_done: list[str] = field(default_factory=list)
    tasks: int = 0
    tasks_done: int = 0
    dead: int = 0
    lost: int = 0
    duplicated: int = 0
    problems: list[str] = field(default_factory=list)
    leases_expired: int = 0
    late_results_refused: int = 0
    llm_calls: int = 0
    reasks: int = 0
    failures: int = 0
    rate_limited: int = 0


class Cluster:
    """fake-llm, a leader on a fixed port and db, and the runners; every process it ever started
    is in `children`, so `close()` leaves none behind."""

    def __init__(self, workdir: Path, seed: int, latency: float, concurrency: int) -> None:
        self.workdir = workdir
        self.seed = seed
        self.latency = latency
        self.concurrency = concurrency
        self.children: list[Child] = []
        self.runners: list[Child] = []
        self.draining: list[tuple[Child, float]] = []
        self._serial = 0
        self.db = workdir / "leader.db"
        self.listen = f"127.0.0.1:{free_port()}"
        self.base_url = ""
        self.leader: Child | None = None
        self.env = {
            "OPENAI_API_KEY": "chaos-key",
            # Never the user's own cache, and --no-cache besides: every task costs a real LLM call.
            "PARADECOM_CACHE_DIR": str(workdir / "cache"),
        }

    def _start(self, kind: str, args: Sequence[str]) -> Child:
        self._serial += 1
        child = Child(f"{self._serial:03d}-{kind}", args, self.workdir, self.env)
        self.children.append(child)
        return child

    def start_fake_llm(self, malformed_rate: float, rate_limit_rate: float) -> None:
        llm = self._start("fake-llm", [
            sys.executable, "-m", "paradecom.devtools.fakellm", "--listen", "127.0.0.1:0",
            "--latency", str(self.latency), "--fanout", str(FANOUT), "--atomic-depth", str(MAX_DEPTH + 5),
            "--malformed-rate", str(malformed_rate), "--rate-limit-rate", str(rate_limit_rate),
            "--seed", str(self.seed),
        ])  # fmt: skip
        self.base_url = f"http://{llm.address()}/v1"

    def llm_stats(self) -> dict[str, Any]:
        """fake-llm's own counters (GET /stats): what it answered, faults included."""
        with urlopen(self.base_url.removesuffix("/v1") + "/stats", timeout=RPC_TIMEOUT_S) as resp:
            stats: dict[str, Any] = json.load(resp)
        return stats

    def start_leader(self) -> None:
        self.leader = self._start("leader", [
            sys.executable, "-m", "paradecom.leader.main", "--listen", self.listen, "--db", str(self.db),
            "--lease-timeout", str(LEASE_TIMEOUT_S), "--max-attempts", str(MAX_ATTEMPTS),
            "--max-depth", str(MAX_DEPTH), "--log-format", "json",
        ])  # fmt: skip
        self.leader.address()

    def start_runner(self) -> Child:
        runner = self._start("runner", [
            sys.executable, "-m", "paradecom.runner.main", "--leader", self.listen,
            "--concurrency", str(self.concurrency), "--drain-timeout", str(RUNNER_DRAIN_TIMEOUT_S),
            "--no-cache", "--log-format", "json",
        ])  # fmt: skip
        self.runners.append(runner)
        return runner

    def close(self) -> None:
        """Stop every process ever started: runners first, then the leader, then fake-llm."""
        for child in sorted(self.children, key=lambda c: ("runner" not in c.name, "leader" not in c.name)):
            with contextlib.suppress(Exception):
                child.stop()


class Chaos:
    """The soak itself: submit, inject faults, wait, verify."""

    def __init__(self, args: argparse.Namespace, workdir: Path, log: Callable[[str], None]) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.cluster = Cluster(workdir, args.seed, args.latency, args.concurrency)
        self.counts = Counts()
        self.log = log
        self.files: list[Path] = []
        self.rounds = 0
        self.pending: list[tuple[Path, int]] = []
        self.submitting: list[tuple[Path, int, subprocess.Popen[str], int]] = []
        self.project_ids: list[str] = []
        self.stalled: list[tuple[Child, float]] = []  # (runner, resume at)
        self.stall_checks: list[tuple[Child, int]] = []  # (runner, stderr size when continued)
        self._channel: grpc.Channel | None = None
        self._stub: project_service_pb2_grpc.ProjectServiceStub | None = None

    # --- plumbing --------------------------------------------------------------------------------

    def stub(self) -> project_service_pb2_grpc.ProjectServiceStub:
        if self._stub is None:
            self._channel = grpc.insecure_channel(self.cluster.listen, options=CHANNEL_OPTIONS)
            self._stub = project_service_pb2_grpc.ProjectServiceStub(self._channel)
        return self._stub

    def close(self) -> None:
        for _, _, proc, _ in self.submitting:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(Exception):
                proc.communicate(timeout=15)
        self.submitting.clear()
        if self._channel is not None:
            self._channel.close()
        self.cluster.close()

    def summaries(self) -> dict[str, project_pb2.ProjectSummary] | None:
        """Every project's summary (ListProjects, page by page); None while the leader is away."""
        found: dict[str, project_pb2.ProjectSummary] = {}
        token = ""
        try:
            while True:
                resp = self.stub().ListProjects(
                    project_service_pb2.ListProjectsRequest(page_size=1000, page_token=token), timeout=RPC_TIMEOUT_S
                )
                found.update((p.project_id, p) for p in resp.projects)
                token = resp.next_page_token
                if not token:
                    return found
        except grpc.RpcError:
            return None

    def all_finished(self) -> bool:
        """Every project submitted so far (and any the leader stored twice) has ended."""
        found = self.summaries()
        if found is None:
            return False
        return all(pid in found for pid in self.project_ids) and all(p.state in TERMINAL for p in found.values())

    # --- setup -----------------------------------------------------------------------------------

    def start(self) -> None:
        c = self.cluster
        c.start_fake_llm(self.args.malformed_rate, self.args.rate_limit_rate)
        c.env["OPENAI_BASE_URL"] = c.base_url
        c.start_leader()
        for _ in range(self.args.runners):
            c.start_runner()
        self.log(f"cluster: fake-llm {c.base_url}, leader {c.listen} (db {c.db}), {self.args.runners} runners")

    def queue_round(self) -> None:
        """Queue one more pass over the DevAI files for `paradecom submit`."""
        self.rounds += 1
        self.pending.extend((path, self.rounds) for path in self.files)

    def poll_submissions(self) -> None:
        """Start queued `paradecom submit` processes (a few at a time) and collect finished ones. A
        submit that failed (the leader was down) is tried again; if its first try had reached the
        leader, the project is stored twice, which is harmless: every project the leader lists is
        verified at the end."""
        still: list[tuple[Path, int, subprocess.Popen[str], int]] = []
        for path, round_no, proc, tries in self.submitting:
            if proc.poll() is None:
                still.append((path, round_no, proc, tries))
                continue
            out, err = proc.communicate()
            if proc.returncode == 0 and out.strip():
                self.project_ids.append(out.strip())
            elif tries < SUBMIT_TRIES:
                self.counts.submit_retries += 1
                still.append((path, round_no, self._submit_process(path), tries + 1))
            else:
                raise ChaosError(f"paradecom submit {path.name} failed {tries} times: {err.strip()}")
        self.submitting = still
        while self.pending and len(self.submitting) < SUBMIT_PARALLEL:
            path, round_no = self.pending.pop(0)
            self.submitting.append((path, round_no, self._submit_process(path), 1))

    def finish_submissions(self, timeout: float) -> None:
        """Let the submissions already started finish (the queue is dropped)."""
        self.pending.clear()

        def done() -> bool:
            self.poll_submissions()
            return not self.submitting

        wait_for(done, timeout, "the last submissions")

    def _submit_process(self, path: Path) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "paradecom.client.cli", "submit", "--leader", self.cluster.listen, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            start_new_session=True,
        )

    # --- the faults ------------------------------------------------------------------------------

    def _working_runners(self) -> list[Child]:
        """Runners up and running: started (signal handlers in place, stream opening), not stalled.
        A runner still importing its modules dies of SIGTERM like any process without a handler."""
        stalled = {id(r) for r, _ in self.stalled}
        return [r for r in self.cluster.runners if r.alive() and id(r) not in stalled and r.started()]

    def kill_runner(self) -> None:
        victims = self._working_runners()
        if not victims:
            return
        victim = self.rng.choice(victims)
        victim.signal(signal.SIGKILL)
        victim.wait(EXIT_TIMEOUT_S)
        self.cluster.runners.remove(victim)
        self.cluster.start_runner()
        self.counts.runner_kills += 1
        self.log(f"SIGKILL runner {victim.name} (pid {victim.pid}); started a new one")

    def restart_leader(self) -> None:
        leader = self.cluster.leader
        assert leader is not None
        graceful = self.rng.random() < self.args.leader_sigterm_share
        leader.signal(signal.SIGTERM if graceful else signal.SIGKILL)
        code = leader.wait(LEADER_EXIT_TIMEOUT_S)
        if code is None:
            leader.popen.kill()
            leader.wait(15)
        if graceful:
            self.counts.leader_terms += 1
            if code != 0:
                self.counts.leader_term_bad_exits += 1
                self.log(f"leader {leader.name} exited {code} after SIGTERM (expected 0)")
        else:
            self.counts.leader_kills += 1
        self.cluster.start_leader()
        how = "SIGTERM (exit 0)" if graceful and code == 0 else "SIGTERM" if graceful else "SIGKILL"
        self.log(f"{how} leader {leader.name}; restarted on the same db and port")

    def stall_runner(self) -> None:
        victims = self._working_runners()
        if len(victims) < 2:
            return  # keep at least one runner working
        victim = self.rng.choice(victims)
        victim.signal(signal.SIGSTOP)
        victim.stopped = True
        self.stalled.append((victim, time.monotonic() + STALL_S))
        self.counts.stalls += 1
        self.log(f"SIGSTOP runner {victim.name} for {STALL_S:g} s (lease timeout {LEASE_TIMEOUT_S:g} s)")

    def resume_stalled(self, force: bool = False) -> None:
        now = time.monotonic()
        for runner, resume_at in list(self.stalled):
            if force or now >= resume_at:
                size = runner.stderr_path.stat().st_size
                runner.signal(signal.SIGCONT)
                runner.stopped = False
                self.stalled.remove((runner, resume_at))
                self.stall_checks.append((runner, size))
                self.log(f"SIGCONT runner {runner.name}")

    def drain_runner(self) -> None:
        victims = self._working_runners()
        if not victims:
            return
        victim = self.rng.choice(victims)
        victim.signal(signal.SIGTERM)
        self.cluster.runners.remove(victim)
        self.cluster.draining.append((victim, time.monotonic() + RUNNER_DRAIN_TIMEOUT_S + EXIT_TIMEOUT_S))
        self.cluster.start_runner()
        self.counts.drains += 1
        self.log(f"SIGTERM runner {victim.name} (drain); started a replacement")

    def reap_drained(self, force: bool = False) -> None:
        now = time.monotonic()
        for runner, deadline in list(self.cluster.draining):
            code = runner.popen.poll()
            if code is None and not force and now < deadline:
                continue
            if code is None:
                code = runner.wait(max(0.0, deadline - now) if force else 0)
            if code is None:
                runner.popen.kill()
                runner.wait(15)
                self.log(f"drained runner {runner.name} did not exit in time; killed")
                self.counts.drain_bad_exits += 1
            elif code == 0:
                self.counts.drains_exit_0 += 1
            else:
                self.log(f"drained runner {runner.name} exited {code} (expected 0)")
                self.counts.drain_bad_exits += 1
            self.cluster.draining.remove((runner, deadline))

    # --- the run ---------------------------------------------------------------------------------

    def chaos(self, until: float) -> None:
        """Submit the projects and inject faults at random (seeded) intervals until `until`, or until
        every project is done after the last of `--rounds` passes (0: pass after pass until `until`)."""
        faults: list[tuple[Callable[[], None], float]] = [
            (self.kill_runner, 3.0),
            (self.restart_leader, 1.5),
            (self.stall_runner, 2.0),
            (self.drain_runner, 2.0),
        ]
        next_fault = time.monotonic() + self.rng.uniform(self.args.min_gap, self.args.max_gap)
        next_check = 0.0
        self.queue_round()
        while time.monotonic() < until:
            now = time.monotonic()
            self.resume_stalled()
            self.reap_drained()
            self.poll_submissions()
            if not self.pending and not self.submitting:
                if self.args.rounds == 0 or self.rounds < self.args.rounds:
                    self.log(f"round {self.rounds} submitted ({len(self.project_ids)} projects so far)")
                    self.queue_round()
                elif now >= next_check:
                    next_check = now + 1.0
                    if self.all_finished():
                        self.log("every project finished; chaos stops")
                        return
            if now >= next_fault:
                fault = self.rng.choices([f for f, _ in faults], weights=[w for _, w in faults])[0]
                fault()
                next_fault = time.monotonic() + self.rng.uniform(self.args.min_gap, self.args.max_gap)
            time.sleep(0.1)
        self.log(f"chaos duration over; {len(self.project_ids)} projects submitted in {self.rounds} rounds")

    def settle(self) -> None:
        """Finish the submissions under way, continue stalled runners, collect drained ones, wait
        (bounded) for every project."""
        self.finish_submissions(EXIT_TIMEOUT_S * 2)
        self.resume_stalled(force=True)
        self.reap_drained(force=True)
        wait_for(self.all_finished, self.args.finish_timeout, "every project to finish", interval=0.5)
        for runner, offset in self.stall_checks:
            with runner.stderr_path.open("rb") as f:
                f.seek(offset)
                after = f.read().decode(errors="replace")
            if any(event in after for event in REFUSED_EVENTS):
                self.counts.stalls_refused += 1

    def verify(self) -> TreeCheck:
        """Read the tree of every project the leader has and check it."""
        found = wait_for(self.summaries, RPC_TIMEOUT_S * 3, "the project list")
        missing = [pid for pid in self.project_ids if pid not in found]
        check = TreeCheck(projects=len(found), submitted=len(self.project_ids), rounds=self.rounds)
        check.not_done += [f"{pid}: submitted but unknown to the leader" for pid in missing]
        stub = self.stub()
        for project_id in sorted(found):
            resp = stub.GetTaskTree(project_service_pb2.GetTaskTreeRequest(project_id=project_id), timeout=60)
            check_tree(resp, check)
        return check

    def stop_all(self) -> None:
        """Stop the runners (each must exit 0 on SIGTERM), then the leader and fake-llm."""
        for runner in list(self.cluster.runners):
            code = runner.stop(timeout=RUNNER_DRAIN_TIMEOUT_S + 20)
            if code != 0:
                self.counts.final_runner_bad_exits += 1
                self.log(f"runner {runner.name} exited {code} on the final SIGTERM (expected 0)")
        self.cluster.close()


def _walk(nodes: Sequence[project_pb2.TaskNode]) -> Iterator[project_pb2.TaskNode]:
    for n in nodes:
        yield n
        yield from _walk(n.children)


def check_tree(resp: project_service_pb2.GetTaskTreeResponse, check: TreeCheck) -> None:
    """Add one project's tree to `check`: lost and duplicated tasks, counters."""
    p = resp.project
    name = f"{p.project_id} ({p.name[:40]})"
    if p.state == project_pb2.PROJECT_STATE_DONE:
        check.done += 1
    else:
        check.not_done.append(f"{name}: {project_pb2.ProjectState.Name(p.state)} {p.error}".strip())
    check.leases_expired += p.leases_expired
    check.late_results_refused += p.late_results_refused
    check.llm_calls += p.usage.calls
    check.reasks += p.usage.reasks
    check.failures += p.usage.failures
    check.rate_limited += p.usage.rate_limited

    nodes = list(_walk(resp.tasks))
    check.tasks += len(nodes)
    ids = [n.id for n in nodes]
    repeats = len(ids) - len(set(ids))
    if repeats:
        check.duplicated += repeats
        check.problems.append(f"{name}: {repeats} task ids appear more than once")
    if len(nodes) != p.total:
        check.problems.append(f"{name}: the tree has {len(nodes)} tasks, the counters say {p.total}")
        if len(nodes) < p.total:
            check.lost += p.total - len(nodes)
    if p.queued or p.leased or p.done + p.dead != p.total:
        check.problems.append(f"{name}: counters {p.done} done + {p.dead} dead of {p.total}, {p.queued} queued, "
                              f"{p.leased} leased")  # fmt: skip
    top = [n.id for n in resp.tasks]
    if top != [str(i) for i in range(1, len(top) + 1)]:
        check.problems.append(f"{name}: top-level ids {top}")
    for n in nodes:
        kids = list(n.children)
        expected_ids = [f"{n.id}.{i}" for i in range(1, len(kids) + 1)]
        if [k.id for k in kids] != expected_ids or any(k.parent_id != n.id or k.depth != n.depth + 1 for k in kids):
            check.problems.append(f"{name}: children of {n.id} are misnumbered: {[k.id for k in kids]}")
        titles = [k.title for k in kids]
        if len(set(titles)) != len(titles):
            check.duplicated += len(titles) - len(set(titles))
            check.problems.append(f"{name}: task {n.id} has the same child twice")
        if n.status == project_pb2.TASK_STATUS_DEAD:
            check.dead += 1
            if kids:
                check.problems.append(f"{name}: dead task {n.id} has children")
            continue
        if n.status != project_pb2.TASK_STATUS_DONE:
            check.lost += 1
            check.problems.append(f"{name}: task {n.id} ended {project_pb2.TaskStatus.Name(n.status)}")
            continue
        check.tasks_done += 1
        if n.depth >= resp.definition.max_depth:
            if kids or n.stop_reason != "max depth reached":
                check.problems.append(f"{name}: leaf {n.id} at the depth limit: {len(kids)} children, "
                                      f"stop reason {n.stop_reason!r}")  # fmt: skip
            continue
        # Above the depth limit a done task must have been decomposed into exactly the fan-out.
        if len(kids) > FANOUT:
            check.duplicated += len(kids) - FANOUT
            check.problems.append(f"{name}: task {n.id} has {len(kids)} children, the LLM gave {FANOUT}")
        elif len(kids) < FANOUT:
            check.lost += FANOUT - len(kids) if kids else 1
            check.problems.append(f"{name}: task {n.id} has {len(kids)} children (stop reason "
                                  f"{n.stop_reason!r}), the LLM gave {FANOUT}")  # fmt: skip


def summary_lines(
    args: argparse.Namespace,
    per_round: int,
    counts: Counts,
    check: TreeCheck,
    llm: dict[str, Any],
    times: dict[str, float],
) -> list[str]:
    c = counts
    lines = [
        f"chaos soak: {per_round} DevAI projects a round (max depth {MAX_DEPTH}), {args.runners} runners x "
        f"{args.concurrency}, seed {args.seed}, duration {args.duration:g} s, lease timeout {LEASE_TIMEOUT_S:g} s, "
        f"max attempts {MAX_ATTEMPTS}",
        f"fake-llm: latency {args.latency:g} s, malformed {args.malformed_rate:.0%}, "
        f"429 {args.rate_limit_rate:.0%}, fan-out {FANOUT}",
        f"runner kills (SIGKILL)        {c.runner_kills}",
        f"leader restarts               {c.leader_kills + c.leader_terms} ({c.leader_kills} SIGKILL, "
        f"{c.leader_terms} SIGTERM, {c.leader_term_bad_exits} bad exits)",
        f"runner stalls (SIGSTOP)       {c.stalls} ({c.stalls_refused} followed by a refused late result "
        "in the runner's log)",
        f"runner drains (SIGTERM)       {c.drains} ({c.drains_exit_0} exited 0, {c.drain_bad_exits} did not)",
        f"reassignments (leases_expired) {check.leases_expired}",
        f"late results refused          {check.late_results_refused}",
        f"dead letters                  {check.dead}",
        f"projects done                 {check.done} of {check.projects} ({check.submitted} submitted in "
        f"{check.rounds} rounds, {c.submit_retries} submits retried)",
        f"tasks                         {check.tasks} ({check.tasks_done} done, {check.dead} dead)",
        f"llm calls (runners' usage)    {check.llm_calls} ({check.reasks} re-asks, {check.rate_limited} 429s, "
        f"{check.failures} failed attempts)",
        f"fake-llm answered             {llm.get('requests', 0)} requests ({llm.get('malformed', 0)} malformed, "
        f"{llm.get('rate_limited', 0)} 429s)",
        f"lost                          {check.lost}",
        f"duplicated                    {check.duplicated}",
        f"wall time                     {times['total']:.1f} s (start {times['start']:.1f} s, chaos "
        f"{times['chaos']:.1f} s, finish {times['finish']:.1f} s)",
    ]
    lines += [f"problem: {p}" for p in check.problems[:50]]
    lines += [f"not done: {p}" for p in check.not_done[:50]]
    return lines


def failed(counts: Counts, check: TreeCheck) -> bool:
    return bool(
        check.lost
        or check.duplicated
        or check.not_done
        or check.problems
        or check.done != check.projects
        or counts.drain_bad_exits
        or counts.leader_term_bad_exits
        or counts.final_runner_bad_exits
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=180.0, help="seconds of chaos at most (default 180)")
    p.add_argument("--projects", type=int, default=0, help="DevAI projects per round (default 0: all)")
    p.add_argument("--rounds", type=int, default=0,
                   help="passes over the projects; 0 (default) submits pass after pass until --duration, "
                   "1 submits them once and stops the chaos when they are done")  # fmt: skip
    p.add_argument("--runners", type=int, default=4, help="runner processes (default 4)")
    p.add_argument("--concurrency", type=int, default=2, help="tasks per runner at once (default 2)")
    p.add_argument("--seed", type=int, default=1, help="seed of the fault schedule and of fake-llm (default 1)")
    p.add_argument("--latency", type=float, default=0.2, help="fake-llm latency in seconds (default 0.2)")
    p.add_argument("--malformed-rate", type=float, default=0.03, help="malformed answers (default 0.03)")
    p.add_argument("--rate-limit-rate", type=float, default=0.03, help="429 answers (default 0.03)")
    p.add_argument("--leader-sigterm-share", type=float, default=0.25,
                   help="share of leader restarts done with SIGTERM (must exit 0) instead of SIGKILL "
                   "(default 0.25)")  # fmt: skip
    p.add_argument("--min-gap", type=float, default=2.0, help="least seconds between faults (default 2)")
    p.add_argument("--max-gap", type=float, default=6.0, help="most seconds between faults (default 6)")
    p.add_argument("--finish-timeout", type=float, default=300.0,
                   help="seconds to wait for the projects after the chaos (default 300)")  # fmt: skip
    p.add_argument("--devai", type=Path, default=DEVAI, help="folder of DevAI *.json instances")
    p.add_argument("--workdir", type=Path, default=None, help="where the db and logs go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory even when the run passes")
    p.add_argument("--json", action="store_true", help="also print the summary as one JSON line at the end")
    return p


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration <= 0 or args.runners < 1 or args.concurrency < 1 or args.min_gap > args.max_gap:
        print("chaos: error: --duration > 0, --runners >= 1, --concurrency >= 1, --min-gap <= --max-gap",
              file=sys.stderr)  # fmt: skip
        return 2
    files = sorted(args.devai.glob("*.json"))
    if args.projects:
        files = files[: args.projects]
    if not files:
        print(f"chaos: error: no DevAI *.json in {args.devai}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="paradecom-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    # Both stop the soak through the `finally` below (SIGINT explicitly too: a shell starts background
    # jobs with it ignored).
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    chaos = Chaos(args, workdir, log)
    code = 1
    try:
        chaos.files = files
        chaos.start()
        submitted = time.monotonic()
        chaos.chaos(until=submitted + args.duration)
        chaos_end = time.monotonic()
        chaos.settle()
        finished = time.monotonic()
        check = chaos.verify()
        llm = chaos.cluster.llm_stats()
        chaos.stop_all()
        times = {
            "total": finished - started,
            "start": submitted - started,
            "chaos": chaos_end - submitted,
            "finish": finished - chaos_end,
        }
        code = 1 if failed(chaos.counts, check) else 0
        for line in summary_lines(args, len(files), chaos.counts, check, llm, times):
            print(line)
        print(f"result                        {'FAILED' if code else 'OK'}")
        if args.json:
            out = {**asdict(chaos.counts), **asdict(check), **{f"{k}_s": round(v, 1) for k, v in times.items()}}
            out["llm"] = {k: v for k, v in llm.items() if isinstance(v, int)}
            print(json.dumps({**out, "ok": code == 0}))
    except ChaosError as exc:
        print(f"chaos: error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("chaos: interrupted; stopping every process", file=sys.stderr)
        code = 130
    finally:
        chaos.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if code == 0 and not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"chaos: logs and db kept in {workdir}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
