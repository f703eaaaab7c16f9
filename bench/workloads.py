"""The benchmark's workloads. Each takes the sizes in force and a repeat count, runs real processes,
and returns a JSON-ready dict: the median of every figure over the repeats, plus each run's raw
numbers under "runs".

Flat workload: a project with K seed tasks and max_depth 1, so every task is one LLM call and its
children are leaves; the ideal wall time with S slots at latency L is ceil(K / S) * L.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paradecom.v1 import project_pb2

from . import profile
from .cluster import Cluster, check_flat, fake_llm_reset, fake_llm_stats, flat_project, start_fake_llm, walk
from .procs import ROOT, BenchError, Interference, Service, python_module, wait_for

DEVAI_PROJECT = ROOT / "data" / "devai" / "01_Image_Classification_ResNet18_Fashion_MNIST_DL.json"
FLAT_FANOUT = 3

Log = Callable[[str], None]
# Whether every measurement starts with one task per slot (see Cluster.warm_up); `--cold` clears it.
WARM_UP = True


@dataclass(frozen=True)
class Sizes:
    """How big each workload is; FULL is what the targets are stated for."""

    name: str
    leader_k: int
    leader_runners: tuple[int, ...]
    leader_concurrency: int
    eff_slots: tuple[int, ...]
    eff_rounds: int  # K = rounds x slots
    latency: float
    rec_fanout: int
    rec_depth: int
    rec_slots: int
    seq_k: int  # also the slots of the parallel side
    celery_k: int  # workload 1 for Celery (latency 0)
    celery_slots: int  # workload 2: the slots ParaDecom and the threads pool both get
    reassign_leases: int
    reassign_lease_timeout: float
    memory_tasks: int
    memory_held: int
    core_ks: tuple[int, ...] = (100, 1_000, 5_000)  # leader_core: flat projects of these sizes, in process


FULL = Sizes(
    name="full", leader_k=5_000, leader_runners=(1, 2, 4), leader_concurrency=16, eff_slots=(8, 64, 256, 512),
    eff_rounds=10, latency=1.0, rec_fanout=7, rec_depth=3, rec_slots=64, seq_k=64, celery_k=5_000,
    celery_slots=64, reassign_leases=50, reassign_lease_timeout=2.0, memory_tasks=100_000, memory_held=1_000,
)  # fmt: skip
QUICK = Sizes(
    name="quick", leader_k=1_000, leader_runners=(1, 2, 4), leader_concurrency=16, eff_slots=(8, 64, 256, 512),
    eff_rounds=3, latency=1.0, rec_fanout=5, rec_depth=3, rec_slots=64, seq_k=16, celery_k=1_000,
    celery_slots=64, reassign_leases=50, reassign_lease_timeout=2.0, memory_tasks=20_000, memory_held=500,
    core_ks=(100, 1_000),
)  # fmt: skip
SMOKE = Sizes(
    name="smoke", leader_k=100, leader_runners=(1,), leader_concurrency=8, eff_slots=(8,), eff_rounds=2,
    latency=0.2, rec_fanout=3, rec_depth=2, rec_slots=8, seq_k=4, celery_k=100, celery_slots=8,
    reassign_leases=4, reassign_lease_timeout=1.0, memory_tasks=2_000, memory_held=20, core_ks=(100,),
)  # fmt: skip
SIZES = {s.name: s for s in (FULL, QUICK, SMOKE)}


def layout(slots: int) -> list[int]:
    """Runner processes and the concurrency of each for `slots` slots: 1 runner up to 16 slots,
    2 up to 64, 4 beyond (runners wait on the network, so a few processes carry many slots)."""
    runners = 1 if slots <= 16 else 2 if slots <= 64 else 4
    if slots % runners:
        runners = 1
    return [slots // runners] * runners


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every numeric field's median over the runs; the runs themselves under "runs"."""
    row: dict[str, Any] = {}
    for key, value in runs[0].items():
        values = [r[key] for r in runs]
        if isinstance(value, bool) or not isinstance(value, int | float):
            row[key] = value
        else:
            row[key] = round(statistics.median(values), 4)
    row["runs"] = runs
    return row


def _repeat(repeat: int, one: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    return median_row([one(i) for i in range(repeat)])


def _flat_run(
    c: Cluster, k: int, log: Log, label: str, profile_to: Path | None = None, fanout: int = FLAT_FANOUT
) -> dict[str, Any]:
    """One flat project on a started cluster, with every figure a workload reports."""
    if WARM_UP:
        c.warm_up()
    interference = Interference(c.pids)
    with contextlib.ExitStack() as stack:
        if profile_to and c.leader:
            stack.enter_context(profile.record(c.leader.pid, profile_to))
            if c.runners:
                # The first runner too: at latency 0 the runners, not the leader, use most of the CPU.
                runner_base = profile_to.with_name(profile_to.name + "-runner")
                stack.enter_context(profile.record(c.runners[0].pid, runner_base))
        r = c.run(flat_project(k))
    other = interference.result()
    check_flat(r.summary, k, fanout)
    run = {
        "tasks": k,
        "wall_s": round(r.client_wall_s, 3),
        "leader_wall_s": round(r.leader_wall_s, 3),
        "tasks_per_s": round(k / r.client_wall_s, 1),
        "leader_cpu_us_per_task": round(r.leader_cpu_s / k * 1e6, 1),
        "runner_cpu_us_per_task": round(r.runner_cpu_s / k * 1e6, 1),
        "fake_llm_cpu_us_per_task": round(r.fake_llm_cpu_s / k * 1e6, 1),
        "leader_cpu_share": round(r.leader_cpu_s / r.client_wall_s, 3),
        "other_cores": other["other_cores"],
        **r.extra,
    }
    log(
        f"  {label}: {run['wall_s']} s, {run['tasks_per_s']} tasks/s, leader {run['leader_cpu_us_per_task']} µs/task,"
        f" other load {run['other_cores']} cores; {run['assignments_per_message']} assignments per message,"
        f" {run['results_per_transaction']} results per transaction"
    )
    return run


# --- 1. leader cost -------------------------------------------------------------------------------


def leader_cost(sizes: Sizes, repeat: int, log: Log, profile_dir: Path | None = None) -> dict[str, Any]:
    """Flat, latency 0: end-to-end tasks/s and the leader's CPU per task, at 1, 2, 4 runners."""
    rows = []
    for n in sizes.leader_runners:

        def one(i: int, n: int = n) -> dict[str, Any]:
            with Cluster(latency=0.0, fanout=FLAT_FANOUT, runners=[sizes.leader_concurrency] * n) as c:
                return _flat_run(c, sizes.leader_k, log, f"{n} runner(s) x {sizes.leader_concurrency}, run {i + 1}")

        row = _repeat(repeat, one)
        row.update(runners=n, concurrency=sizes.leader_concurrency)
        if profile_dir is not None:
            # An extra run under py-spy, kept out of the medians (sampling costs the leader a little).
            with Cluster(latency=0.0, fanout=FLAT_FANOUT, runners=[sizes.leader_concurrency] * n) as c:
                base = profile_dir / f"leader-cost-{n}-runners"
                _flat_run(c, sizes.leader_k, log, f"{n} runner(s), profiled", profile_to=base)
            row["profile"] = {"svg": str(base.with_suffix(".svg")), **_profile_summary(base)}
            runner_base = base.with_name(base.name + "-runner")
            row["runner_profile"] = {"svg": str(runner_base.with_suffix(".svg")), **_profile_summary(runner_base)}
        rows.append(row)
    return {"latency_s": 0.0, "tasks": sizes.leader_k, "fanout": FLAT_FANOUT, "rows": rows}


def _profile_summary(base: Path) -> dict[str, Any]:
    raw = base.with_suffix(".txt")
    if not raw.exists():
        return {"error": "py-spy wrote no profile"}
    s = profile.summarize(raw, top=12)
    return {"categories": s["categories"], "inclusive": s["inclusive"], "self": s["self"]}


# --- 2. parallel efficiency -------------------------------------------------------------------------


def efficiency(sizes: Sizes, repeat: int, log: Log, profile_dir: Path | None = None) -> dict[str, Any]:
    """Flat, latency L, K = rounds x slots: wall time against the ideal rounds x L."""
    rows = []
    for slots in sizes.eff_slots:
        k = sizes.eff_rounds * slots
        ideal = math.ceil(k / slots) * sizes.latency
        runners = layout(slots)

        def one(
            i: int, slots: int = slots, k: int = k, ideal: float = ideal, runners: list[int] = runners
        ) -> dict[str, Any]:
            with Cluster(latency=sizes.latency, fanout=FLAT_FANOUT, runners=runners) as c:
                run = _flat_run(c, k, log, f"{slots} slots ({len(runners)} x {runners[0]}), run {i + 1}")
            run["ideal_s"] = ideal
            run["efficiency"] = round(ideal / run["wall_s"], 4)
            run["leader_efficiency"] = round(ideal / run["leader_wall_s"], 4)
            return run

        row = _repeat(repeat, one)
        row.update(slots=slots, runners=len(runners), concurrency=runners[0])
        log(f"  {slots} slots: efficiency {row['efficiency']:.1%} (ideal {ideal:g} s, median {row['wall_s']} s)")
        if profile_dir is not None and slots == max(sizes.eff_slots):
            with Cluster(latency=sizes.latency, fanout=FLAT_FANOUT, runners=runners) as c:
                base = profile_dir / f"efficiency-{slots}-slots"
                _flat_run(c, k, log, f"{slots} slots, profiled", profile_to=base)
            row["profile"] = {"svg": str(base.with_suffix(".svg")), **_profile_summary(base)}
        rows.append(row)
    return {"latency_s": sizes.latency, "rounds": sizes.eff_rounds, "fanout": FLAT_FANOUT, "rows": rows}


# --- 3. recursive tree ------------------------------------------------------------------------------


def devai_project(depth: int) -> project_pb2.ProjectDefinition:
    from paradecom.project import load_project

    if not DEVAI_PROJECT.exists():
        raise BenchError(f"DevAI project not found: {DEVAI_PROJECT}")
    msg = load_project(DEVAI_PROJECT).to_proto()
    msg.max_depth = depth
    return msg


def recursive(sizes: Sizes, repeat: int, log: Log) -> dict[str, Any]:
    """A DevAI project decomposed to depth D at latency L on S slots, against
    max(D x L, calls x L / S) (calls: the tasks that need an LLM call)."""
    f, depth, slots, latency = sizes.rec_fanout, sizes.rec_depth, sizes.rec_slots, sizes.latency
    calls = sum(f**d for d in range(depth))
    total = sum(f**d for d in range(depth + 1))
    bound = max(depth * latency, calls * latency / slots)
    # Tighter: level by level, each level's calls take ceil(n / S) rounds.
    level_bound = sum(math.ceil(f**d / slots) for d in range(depth)) * latency
    runners = layout(slots)

    def one(i: int) -> dict[str, Any]:
        with Cluster(latency=latency, fanout=f, runners=runners) as c:
            if WARM_UP:
                c.warm_up()
            interference = Interference(c.pids)
            r = c.run(devai_project(depth))
            other = interference.result()
            tree = c.tree(r.summary.project_id)
        nodes = list(walk(tree.tasks))
        ids = [n.id for n in nodes]
        if len(nodes) != total or len(set(ids)) != total or r.summary.usage.calls != calls:
            raise BenchError(
                f"recursive tree is wrong: {len(nodes)} tasks ({len(set(ids))} distinct ids), expected {total}; "
                f"{r.summary.usage.calls} LLM calls, expected {calls}"
            )
        run = {
            "wall_s": round(r.client_wall_s, 3),
            "leader_wall_s": round(r.leader_wall_s, 3),
            "ratio": round(r.client_wall_s / bound, 3),
            "leader_cpu_us_per_task": round(r.leader_cpu_s / calls * 1e6, 1),
            "other_cores": other["other_cores"],
        }
        log(f"  run {i + 1}: {run['wall_s']} s = {run['ratio']} x the lower bound {bound:g} s")
        return run

    row = _repeat(repeat, one)
    row.update(
        project=DEVAI_PROJECT.name, depth=depth, fanout=f, slots=slots, latency_s=latency,
        llm_calls=calls, tree_tasks=total, lower_bound_s=bound, level_bound_s=level_bound,
    )  # fmt: skip
    return row


# --- 4. the sequential fallback -----------------------------------------------------------------------


def _run_cli(args: list[str], env: dict[str, str], workdir: Path, timeout: float) -> tuple[Service, float]:
    svc = Service("paradecom run", args, env=env, cwd=workdir, keep=100_000)
    t0 = time.time()
    try:
        svc.popen.wait(timeout)
    except Exception:
        svc.kill()
        raise BenchError(f"{' '.join(args[3:6])} did not finish in {timeout:g} s") from None
    wall = time.time() - t0
    svc.stop()
    if svc.popen.returncode != 0:
        raise BenchError(f"paradecom run exited {svc.popen.returncode}: {svc.tail()}")
    return svc, wall


def _check_tree_json(svc: Service, k: int, fanout: int) -> None:
    tree = json.loads("\n".join(svc.stdout_lines))
    counts = tree["project"]["counts"]
    if counts["done"] != k * (1 + fanout) or tree["project"]["usage"]["calls"] != k:
        raise BenchError(f"paradecom run gave a wrong tree: counts {counts}, usage {tree['project']['usage']}")


def sequential(sizes: Sizes, repeat: int, log: Log) -> dict[str, Any]:
    """Flat, latency L, K tasks: `paradecom run --runners 0` against K slots of a cluster."""
    k, latency = sizes.seq_k, sizes.latency
    runners = layout(k)

    def one(i: int) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="paradecom-bench-seq-") as tmp:
            workdir = Path(tmp)
            fake = start_fake_llm(workdir, "fake-llm", latency, FLAT_FANOUT)
            try:
                project = flat_project(k)
                path = workdir / "project.json"
                path.write_text(
                    json.dumps(
                        {"name": project.name, "description": project.description, "max_depth": 1,
                         "tasks": [{"title": t.title, "description": t.description} for t in project.tasks]}
                    )
                )  # fmt: skip
                env = {
                    "OPENAI_BASE_URL": f"http://{fake.address()}/v1",
                    "OPENAI_API_KEY": "bench",
                    "PARADECOM_CACHE_DIR": str(workdir / "cache"),
                }
                cli = python_module("paradecom.client.cli", "run", str(path), "--no-cache", "--format", "json")
                seq, seq_command = _run_cli(
                    [*cli, "--runners", "0", "--log-level", "warning"], env, workdir, k * latency * 3 + 120
                )
                _check_tree_json(seq, k, FLAT_FANOUT)
                # In-run time: from the first progress line (project queued) to the line saying done
                # (progress is JSON lines, one per change, when stderr is not a terminal).
                progress = [(t, json.loads(line)["state"]) for t, line in seq.stderr_timed if line.startswith("{")]
                if not progress or progress[-1][1] != "done":
                    raise BenchError(f"paradecom run --runners 0 printed no progress: {seq.tail()}")
                seq_wall = progress[-1][0] - progress[0][0]
                # The same project through `paradecom run` with K slots: the whole command, cold.
                cold, cold_command = _run_cli(
                    [*cli, "--runners", str(len(runners)), "--concurrency", str(runners[0]), "--log-level", "warning"],
                    env, workdir, k * latency * 3 + 120,
                )  # fmt: skip
                _check_tree_json(cold, k, FLAT_FANOUT)
            finally:
                fake.stop()
        with Cluster(latency=latency, fanout=FLAT_FANOUT, runners=runners) as c:
            par = _flat_run(c, k, log, f"{k} slots, run {i + 1}")
        run = {
            "sequential_s": round(seq_wall, 3),
            "sequential_command_s": round(seq_command, 3),
            "parallel_s": par["wall_s"],
            "parallel_command_s": round(cold_command, 3),
            "speedup": round(seq_wall / par["wall_s"], 2),
            "command_speedup": round(seq_command / cold_command, 2),
        }
        log(
            f"  run {i + 1}: sequential {run['sequential_s']} s, {k} slots {run['parallel_s']} s: "
            f"speedup {run['speedup']} (whole commands: {run['command_speedup']})"
        )
        return run

    row = _repeat(repeat, one)
    row.update(tasks=k, slots=k, latency_s=latency, runners=len(runners), concurrency=runners[0])
    return row


# --- 5. Celery ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def celery_missing() -> str:
    """Why the Celery comparison cannot run here, or "" when it can."""
    if shutil.which("redis-server") is None:
        return "redis-server not found (apt-get install -y redis-server)"
    try:
        import celery  # noqa: F401
        import redis  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[bench]')"
    return ""


def start_redis(workdir: Path, port: int) -> Service:
    """Redis on loopback with an append-only file synced every second: like the leader's SQLite in WAL
    mode with synchronous=NORMAL, it survives its process being killed, not a power cut."""
    svc = Service(
        "redis",
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
         "--appendfsync", "everysec", "--dir", str(workdir), "--daemonize", "no", "--loglevel", "warning"],
        cwd=workdir,
    )  # fmt: skip

    def ready() -> bool:
        svc.check_alive()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    wait_for(ready, 30, "redis to answer PING")
    return svc


def celery(sizes: Sizes, repeat: int, log: Log, paradecom: dict[str, Any]) -> dict[str, Any]:
    """The same work per task on Celery (Redis broker and backend): 2 prefork processes, and one
    process with a 64-thread pool; workload 1 (latency 0) and workload 2 (latency L, 10 rounds of the
    config's slots). `paradecom` holds the ParaDecom figures to compare with."""
    missing = celery_missing()
    if missing:
        return {"skipped": missing}
    with tempfile.TemporaryDirectory(prefix="paradecom-bench-celery-") as tmp:
        workdir = Path(tmp)
        port = _free_port()
        redis_url = f"redis://127.0.0.1:{port}/0"
        os.environ["BENCH_REDIS_URL"] = redis_url
        redis_svc = start_redis(workdir, port)
        try:
            from . import celery_app

            if redis_url != celery_app.REDIS_URL:  # imported earlier in this process with another port
                celery_app.app.conf.broker_url = celery_app.app.conf.result_backend = redis_url
            configs = [("prefork", 2), ("threads", sizes.celery_slots)]
            rows = []
            for pool, concurrency in configs:
                for workload, latency, k in (
                    (1, 0.0, sizes.celery_k),
                    (2, sizes.latency, sizes.eff_rounds * concurrency),
                ):

                    def one(
                        i: int, pool: str = pool, concurrency: int = concurrency, latency: float = latency, k: int = k
                    ) -> dict[str, Any]:
                        return _celery_run(workdir, redis_url, pool, concurrency, latency, k, log, f"run {i + 1}")

                    log(f" celery {pool} x {concurrency}, workload {workload} (latency {latency:g} s, K={k})")
                    row = _repeat(repeat, one)
                    row.update(pool=pool, concurrency=concurrency, workload=workload, latency_s=latency, tasks=k)
                    rows.append(row)
        finally:
            redis_svc.stop()
    return {"broker": "redis (appendonly, fsync everysec)", "rows": rows, **_celery_ratios(rows, paradecom)}


def _celery_run(
    workdir: Path, redis_url: str, pool: str, concurrency: int, latency: float, k: int, log: Log, label: str
) -> dict[str, Any]:
    import redis
    from celery import group

    from paradecom.limits import MAX_SIBLING_TITLES

    from .celery_app import app, decompose

    redis.Redis.from_url(redis_url).flushall()
    fake = start_fake_llm(workdir, "fake-llm", latency, FLAT_FANOUT)
    worker: Service | None = None
    try:
        worker = Service(
            f"celery {pool}",
            python_module(
                "celery", "-A", "bench.celery_app", "worker", "-P", pool, "-c", str(concurrency),
                "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "-n", f"bench-{os.getpid()}@%h",
            ),
            env={"BENCH_REDIS_URL": redis_url, "OPENAI_BASE_URL": f"http://{fake.address()}/v1",
                 "OPENAI_API_KEY": "bench", "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
        )  # fmt: skip

        def pinged() -> bool:
            assert worker is not None
            worker.check_alive()
            return bool(app.control.ping(timeout=0.5))

        wait_for(pinged, 60, f"the celery {pool} worker to answer a ping")
        project = flat_project(k)
        definition = {"name": project.name, "description": project.description, "max_depth": 1}
        # The sibling titles the leader would send with each seed task, so the prompts are the same.
        first = [t.title for t in project.tasks[: MAX_SIBLING_TITLES + 1]]
        signatures = [
            decompose.s(definition, t.title, t.description, 0, [s for s in first if s != t.title][:MAX_SIBLING_TITLES])
            for t in project.tasks
        ]
        if WARM_UP:
            # One task per slot first, as for ParaDecom's runners: clients made, connections open.
            warm = flat_project(concurrency, name="Warm-up", title="Warm up component")
            group(decompose.s(definition, t.title, t.description, 0, []) for t in warm.tasks).apply_async().get(
                timeout=600, disable_sync_subtasks=False
            )
            fake_llm_reset(fake)
        interference = Interference(lambda: [fake.pid, *([worker.pid] if worker else [])])
        cpu0 = _tree_cpu(worker.pid)
        t0 = time.time()
        result = group(signatures).apply_async()
        answers = result.get(timeout=max(600.0, k * 0.5), disable_sync_subtasks=False)
        wall = time.time() - t0
        other = interference.result()
        worker_cpu = _tree_cpu(worker.pid) - cpu0
        served = fake_llm_stats(fake)["ok"]
    finally:
        if worker is not None:
            worker.stop()
        fake.stop()
    if len(answers) != k or any(len(a) != FLAT_FANOUT for a in answers) or served != k:
        raise BenchError(f"celery run is wrong: {len(answers)} answers for {k} tasks, fake-llm served {served}")
    run = {
        "wall_s": round(wall, 3),
        "tasks_per_s": round(k / wall, 1),
        "worker_cpu_us_per_task": round(worker_cpu / k * 1e6, 1),
        "other_cores": other["other_cores"],
    }
    log(f"  {label}: {run['wall_s']} s, {run['tasks_per_s']} tasks/s")
    return run


def _tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its children (prefork's pool processes)."""
    from .procs import cpu_seconds

    total = 0.0
    pids = [pid]
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
    for p in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


def _celery_ratios(rows: list[dict[str, Any]], paradecom: dict[str, Any]) -> dict[str, Any]:
    """ParaDecom tasks/s over Celery tasks/s for each config and workload."""
    out: dict[str, Any] = {"paradecom": paradecom, "ratios": []}
    for row in rows:
        ours = paradecom.get(f"workload{row['workload']}_tasks_per_s")
        if ours:
            out["ratios"].append(
                {
                    "pool": row["pool"],
                    "concurrency": row["concurrency"],
                    "workload": row["workload"],
                    "paradecom_tasks_per_s": ours,
                    "celery_tasks_per_s": row["tasks_per_s"],
                    "ratio": round(ours / row["tasks_per_s"], 2),
                }
            )
    return out


# --- 6. reassignment ------------------------------------------------------------------------------------


def reassignment(sizes: Sizes, repeat: int, log: Log) -> dict[str, Any]:
    """A runner holding N leases is SIGKILLed; another runner (on a fast endpoint) is waiting. Time from
    the kill until the last of the N tasks is done; each done exactly once."""
    n, lease_timeout = sizes.reassign_leases, sizes.reassign_lease_timeout

    def one(i: int) -> dict[str, Any]:
        with Cluster(latency=0.0, fanout=FLAT_FANOUT, lease_timeout=lease_timeout) as c:
            assert c.workdir is not None and c.fake is not None
            slow = start_fake_llm(c.workdir, "slow fake-llm", 3_600.0, FLAT_FANOUT)
            c.services.insert(0, slow)
            victim = c.add_runner(n, fake=slow, name="victim")
            c.wait_runners(1)
            project_id = c.submit(flat_project(n, name="Reassignment benchmark"))
            wait_for(lambda: c.get(project_id).leased == n, 60, f"the victim to hold {n} leases")
            c.add_runner(n, name="rescuer")
            c.wait_runners(2)
            time.sleep(0.2)  # a heartbeat or two of the victim, so its leases are fresh when it dies
            killed_at = time.time()
            victim.signal(signal.SIGKILL)
            summary = c.wait_done(project_id, 120)
            elapsed = summary.finished_at_unix_ms / 1000 - killed_at
            tree = c.tree(project_id)
            assert c.leader is not None
            # When the leader saw the stream drop and when the leases expired, from its log.
            events = {
                event: round(t - killed_at, 3)
                for t, line in list(c.leader.stderr_timed)
                if t >= killed_at
                for event in ("runner disconnected", "leases expired")
                if f'"{event}"' in line
            }
            served = fake_llm_stats(c.fake)["ok"]
        seeds = list(tree.tasks)
        nodes = list(walk(tree.tasks))
        ids = [node.id for node in nodes]
        problems = []
        if len(seeds) != n or any(s.attempts != 2 for s in seeds):
            problems.append(f"attempts {sorted({s.attempts for s in seeds})}, expected 2 for each of {n} tasks")
        if len(nodes) != n * (1 + FLAT_FANOUT) or len(set(ids)) != len(ids):
            problems.append(f"{len(nodes)} tasks, {len(set(ids))} distinct ids, expected {n * (1 + FLAT_FANOUT)}")
        if any(len(s.children) != FLAT_FANOUT for s in seeds):
            problems.append("a task's children were added twice or not at all")
        if summary.leases_expired != n or summary.late_results_refused or served != n:
            problems.append(
                f"leases_expired={summary.leases_expired} (expected {n}), late_results_refused="
                f"{summary.late_results_refused}, the rescuer's endpoint answered {served} calls (expected {n})"
            )
        if problems:
            raise BenchError("reassignment went wrong: " + "; ".join(problems))
        log(f"  run {i + 1}: the last of {n} leases done {elapsed:.2f} s after the kill")
        return {
            "reassign_s": round(elapsed, 3),
            "disconnect_seen_s": events.get("runner disconnected", -1.0),
            "leases_expired_s": events.get("leases expired", -1.0),
            "done_once": True,
        }

    row = _repeat(repeat, one)
    row.update(leases=n, lease_timeout_s=lease_timeout, target_s=lease_timeout + 1.0)
    return row


# --- 7. memory ------------------------------------------------------------------------------------------

MEMORY_SEEDS_PER_PROJECT = 1_000
MEMORY_FANOUT = 7


def memory(sizes: Sizes, log: Log) -> dict[str, Any]:
    """Leader RSS with N tasks in its store, queued, leased and done mixed: projects of 1,000 seeds
    (max_depth 1) are submitted, runners finish part of them (each adds 7 done children), then a
    runner on an endpoint that never answers holds some leases; RSS is read then."""
    target, held = sizes.memory_tasks, sizes.memory_held
    f = MEMORY_FANOUT
    # seeds + f x done seeds = target, with one task in 20 a done seed (100k: 65k seeds, 5k of them done).
    seeds = target - f * (target // 20)
    with Cluster(latency=0.0, fanout=f) as c:
        assert c.workdir is not None
        baseline = c.leader_memory()
        submitted = 0
        t0 = time.time()
        while submitted < seeds:
            k = min(MEMORY_SEEDS_PER_PROJECT, seeds - submitted)
            c.submit(flat_project(k, name=f"Memory benchmark {submitted // MEMORY_SEEDS_PER_PROJECT + 1}"))
            submitted += k
        log(f"  {submitted} seed tasks submitted in {time.time() - t0:.1f} s")
        after_submit = c.leader_memory()
        workers = [c.add_runner(32, name=f"worker-{i + 1}") for i in range(2)]
        c.wait_runners(2)

        def totals() -> dict[str, int]:
            out = {"total": 0, "queued": 0, "leased": 0, "done": 0}
            for p in c.list_projects():
                out["total"] += p.total
                out["queued"] += p.queued
                out["leased"] += p.leased
                out["done"] += p.done
            return out

        # Each result adds f tasks; stop early enough that the workers' last results land near the goal.
        stop_at = target - f * 64
        wait_for(lambda: totals()["total"] >= stop_at, 3_600, f"{stop_at} tasks in the store", interval=0.5)
        for w in workers:
            c.stop_runner(w)
        slow = start_fake_llm(c.workdir, "slow fake-llm", 3_600.0, f)
        c.services.insert(0, slow)
        c.add_runner(held, fake=slow, name="holder")
        c.wait_runners(3)
        wait_for(lambda: totals()["leased"] >= held, 120, f"{held} leases held")
        counts = totals()
        mem = c.leader_memory()
        db_bytes = sum(p.stat().st_size for p in c.workdir.glob("leader.db*"))
    mb = 1024 * 1024
    log(f"  {counts['total']} tasks ({counts}): leader RSS {mem['VmRSS'] / mb:.0f} MB, peak {mem['VmHWM'] / mb:.0f} MB")
    return {
        "tasks": counts["total"],
        "counts": counts,
        "projects": math.ceil(seeds / MEMORY_SEEDS_PER_PROJECT),
        "rss_mb": round(mem["VmRSS"] / mb, 1),
        "peak_rss_mb": round(mem["VmHWM"] / mb, 1),
        "baseline_rss_mb": round(baseline["VmRSS"] / mb, 1),
        "after_submit_rss_mb": round(after_submit["VmRSS"] / mb, 1),
        "db_mb": round(db_bytes / mb, 1),
    }
