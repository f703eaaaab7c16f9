"""`python -m bench.local`: issue #11's targets for a local run, measured side by side in one run.

    python -m bench.local                    # every row, median of 3 runs per configuration (~20 min)
    python -m bench.local --rows 1,2,4       # some rows only
    python -m bench.local --smoke            # tiny sizes, 1 run each, in seconds (the test suite runs this)

Every figure times whole commands: `paradecom run FILE ...` as a subprocess (and Taskmaster's
`task-master parse-prd` then `task-master expand --all`), from the instant before it is started to
its exit, against `paradecom fake-llm --latency 1.5`. The configurations compared in a row are run
in turns (round r runs them in order, round r + 1 in reverse), so load on the machine falls on all
of them alike; every figure is the median of --repeat runs and is printed with its baseline,
measured in the same run. /proc/loadavg is recorded before and after each group of runs, and each
run's `other_cores` (cores kept busy by processes that are not the benchmark's).

`--runners auto` is measured as soon as `paradecom run` accepts it; until then the default
`--runners 2` stands in for it, and the output says so. The same for `--llm-rpm`. See
bench/README.md ("Local runs, issue #11") for what each row runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .cluster import fake_llm_reset, fake_llm_stats
from .procs import ROOT, BenchError, Interference, Service, machine, python_module

DEFAULT_OUT = ROOT / "bench" / "results-local.json"
TASKMASTER_DIR = ROOT / "bench" / "taskmaster"
TASKMASTER_JS = TASKMASTER_DIR / "node_modules" / "task-master-ai" / "dist" / "task-master.js"
LOOPBACK_GUARD = TASKMASTER_DIR / "loopback-only.cjs"
WEBSHOP = ROOT / "examples" / "webshop.yaml"
DEVAI = ROOT / "data" / "devai" / "01_Image_Classification_ResNet18_Fashion_MNIST_DL.json"
ROWS = (1, 2, 3, 4, 5, 6, 7)
SEQUENTIAL = ("--runners", "0")
# What stands in for `--runners auto` while `paradecom run` does not take it: today's default.
AUTO_STAND_IN = ("--runners", "2")
# Row 5's fixed settings: runner processes, and runners x --concurrency (default 8 per runner).
FIXED = (("--runners", "1"), ("--runners", "2"), ("--runners", "4"),
         ("--runners", "1", "--concurrency", "64"), ("--runners", "2", "--concurrency", "32"))  # fmt: skip
# Row 6: one call at a time cannot pass 40 requests a minute at 1.5 s a call.
RPM_FIXED = ("--runners", "1", "--concurrency", "1")

Log = Callable[[str], None]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Sizes:
    name: str
    latency: float
    repeat: int
    devai_depth: int  # rows 3, 5 (large) and 6: the DevAI request decomposed this deep
    devai_fanout: int  # row 3
    large_fanout: int  # row 5, large project
    rpm: int  # row 6: fake-llm's limit per minute ...
    rpm_fanout: int  # ... and a project that asks more than that many calls
    taskmaster: tuple[tuple[int, int], ...]  # row 7: (tasks, subtasks each)


FULL = Sizes("full", 1.5, 3, 3, 4, 7, 40, 6, ((4, 4), (10, 5)))
SMOKE = Sizes("smoke", 0.2, 1, 2, 2, 3, 40, 2, ((2, 2),))


# --- commands -------------------------------------------------------------------------------------


def paradecom_command() -> list[str]:
    """`paradecom` as a user runs it: the venv's console script, else the module."""
    script = Path(sys.executable).with_name("paradecom")
    return [str(script)] if script.exists() else python_module("paradecom.client.cli")


def run_accepts(*flags: str) -> bool:
    """Whether `paradecom run` takes these flags and values: argparse checks a known flag's value
    before it reaches --help, but leaves unknown flags for the end, so those are looked up in the help."""
    done = subprocess.run(
        [*paradecom_command(), "run", *flags, "--help"], capture_output=True, text=True, timeout=60
    )  # fmt: skip
    return done.returncode == 0 and all(f in done.stdout for f in flags if f.startswith("--"))


def children_cpu() -> float:
    """CPU seconds of every descendant waited for so far (a command's leader and runners included:
    each process waits for its own children, so their time adds up into ours)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Load(Interference):
    """Interference that also counts the commands' whole process trees as ours."""

    def _ours(self) -> float:
        return super()._ours() + children_cpu()


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def timed(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[Service, float, float]:
    """Run a command to its end: (the process, wall seconds, wall-clock time it was started at)."""
    started_unix = time.time()
    t0 = time.monotonic()
    # A tree of hundreds of tasks is thousands of JSON lines: keep them all.
    svc = Service(Path(args[0]).name, args, env=env, cwd=cwd, keep=10_000_000)
    try:
        svc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        svc.kill()
        raise BenchError(f"{' '.join(args)} did not finish in {timeout:g} s: {svc.tail()}") from None
    wall = time.monotonic() - t0
    svc.stop()
    return svc, wall, started_unix


# --- configurations, groups -----------------------------------------------------------------------


@dataclass
class Outcome:
    """What one command did, checked against what its project should give."""

    wall_s: float
    first_request_s: float | None
    llm_ok: int
    rpm_limited: int
    other_cores: float
    problem: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    label: str
    args: tuple[str, ...] = ()  # paradecom run flags; Taskmaster configs have none
    taskmaster: bool = False


@dataclass
class Group:
    """Configurations run in turns against one fake-llm and one project."""

    name: str
    fake_flags: tuple[str, ...]
    project: dict[str, Any]  # the project file's content
    tasks: int  # tasks in the finished tree, root included
    calls: int  # LLM calls it takes
    configs: list[Config]
    strict: bool = True  # a wrong result fails the run (row 6 reports it instead)
    shape: tuple[int, int] | None = None  # Taskmaster: (tasks, subtasks each)
    prd: str = ""
    env: dict[str, str] = field(default_factory=dict)  # for paradecom run


def _add(configs: list[Config], config: Config) -> None:
    # A stand-in and a fixed setting may be the same command: run it once, report it under both.
    if all(c.args != config.args or c.taskmaster != config.taskmaster for c in configs):
        configs.append(config)


def label_of(args: tuple[str, ...]) -> str:
    if args == SEQUENTIAL:
        return "--runners 0"
    return " ".join(args)


def prd_text() -> str:
    """The PRD both Taskmaster and ParaDecom get: examples/webshop.yaml as prose."""
    shop = yaml.safe_load(WEBSHOP.read_text())
    lines = [f"# {shop['name']}", "", shop["description"].strip(), "", "## Goals"]
    lines += [f"- {g}" for g in shop["goals"]] + ["", "## Constraints"] + [f"- {c}" for c in shop["constraints"]]
    return "\n".join(lines) + "\n"


def devai(depth: int) -> dict[str, Any]:
    data = json.loads(DEVAI.read_text())
    return {"name": data["name"], "description": data["query"], "max_depth": depth}


def levels(fanouts: list[int]) -> tuple[int, int]:
    """(tasks, LLM calls) of a tree whose level d has fanouts[d] children per task, the last level atomic."""
    width, tasks, calls = 1, 1, 0
    for f in fanouts:
        calls += width
        width *= f
        tasks += width
    return tasks, calls


def groups(sizes: Sizes, rows: set[int], auto: tuple[str, ...], llm_rpm: bool) -> list[Group]:
    lat = ["--latency", f"{sizes.latency:g}"]
    auto_cfg = Config("auto", auto)
    seq_cfg = Config("--runners 0", SEQUENTIAL)
    out: list[Group] = []
    shop = yaml.safe_load(WEBSHOP.read_text())
    if 1 in rows:
        shop1 = {**shop, "max_depth": 2}
        out.append(Group("one-call", (*lat, "--fanout", "3", "--atomic-depth", "1"), shop1, 4, 1, [seq_cfg, auto_cfg]))
    if rows & {2, 4, 5}:
        configs = [seq_cfg, auto_cfg]
        if 5 in rows:
            for args in FIXED:
                _add(configs, Config(label_of(args), args))
        out.append(Group("webshop", (*lat, "--fanout", "3", "--atomic-depth", "2"), shop, 13, 4, configs))
    d = sizes.devai_depth
    if 3 in rows:
        tasks, calls = levels([sizes.devai_fanout] * d)
        flags = (*lat, "--fanout", str(sizes.devai_fanout), "--atomic-depth", str(d))
        out.append(Group("devai", flags, devai(d), tasks, calls, [seq_cfg, auto_cfg]))
    if 5 in rows:
        tasks, calls = levels([sizes.large_fanout] * d)
        configs = [auto_cfg]
        for args in FIXED:
            _add(configs, Config(label_of(args), args))
        flags = (*lat, "--fanout", str(sizes.large_fanout), "--atomic-depth", str(d))
        out.append(Group("large", flags, devai(d), tasks, calls, configs))
    if 6 in rows:
        tasks, calls = levels([sizes.rpm_fanout] * d)
        configs = [Config(label_of(RPM_FIXED), RPM_FIXED), auto_cfg]
        if llm_rpm:
            configs.append(Config("auto --llm-rpm", (*auto, "--llm-rpm", str(sizes.rpm))))
        flags = (*lat, "--fanout", str(sizes.rpm_fanout), "--atomic-depth", str(d), "--rpm", str(sizes.rpm))
        out.append(Group("rpm", flags, devai(d), tasks, calls, configs, strict=False))
    if 7 in rows:
        prd = prd_text()
        for n, m in sizes.taskmaster:
            tasks, calls = levels([n, m])
            project = {"name": shop["name"], "description": prd, "max_depth": 2}
            flags = (*lat, "--fanout", f"{n},{m}", "--atomic-depth", "2")
            configs = [Config("taskmaster", taskmaster=True), auto_cfg]
            # Runners refuse answers of more than 7 subtasks unless told otherwise; Taskmaster takes 10.
            env = {"PARADECOM_MAX_SUBTASKS": str(max(n, m))} if max(n, m) > 7 else {}
            out.append(Group(f"taskmaster-{n}x{m}", flags, project, tasks, calls, configs, shape=(n, m), prd=prd,
                             env=env))  # fmt: skip
    return out


# --- running ----------------------------------------------------------------------------------------


def start_fake(workdir: Path, flags: tuple[str, ...]) -> Service:
    svc = Service(
        "fake-llm", python_module("paradecom.devtools.fakellm", "--listen", "127.0.0.1:0", *flags), cwd=workdir
    )
    svc.address()
    return svc


def run_paradecom(group: Group, config: Config, fake: Service, workdir: Path, timeout: float) -> Outcome:
    path = workdir / f"{group.name}.json"
    path.write_text(json.dumps(group.project))
    env = {
        "OPENAI_BASE_URL": f"http://{fake.address()}/v1",
        "OPENAI_API_KEY": "bench",
        "PARADECOM_CACHE_DIR": str(workdir / "cache"),
        **group.env,
    }
    args = [*paradecom_command(), "run", str(path), *config.args, "--no-cache", "--log-level", "warning"]
    fake_llm_reset(fake)
    load = Load(lambda: [fake.pid])
    svc, wall, started = timed(args, env, workdir, timeout)
    other = load.result()["other_cores"]
    stats = fake_llm_stats(fake)
    out = _outcome(wall, started, stats, other)
    try:
        tree = json.loads(svc.stdout) if svc.popen.returncode == 0 else None
    except ValueError:
        tree = None
    if tree is None:
        out.problem = f"exit {svc.popen.returncode}: {svc.tail(3)}"
        return out
    counts, usage = tree["project"]["counts"], tree["project"]["usage"]
    out.extra = {"done": counts["done"], "dead": counts["dead"], "calls": usage["calls"]}
    if counts["done"] != group.tasks or counts["dead"] or usage["calls"] != group.calls or stats["ok"] != group.calls:
        out.problem = (
            f"wrong tree: {counts['done']} done, {counts['dead']} dead (expected {group.tasks} done), "
            f"{usage['calls']} calls by the tree and {stats['ok']} answered by fake-llm (expected {group.calls})"
        )
    return out


def _outcome(wall: float, started: float, stats: dict[str, Any], other: float) -> Outcome:
    first = stats.get("first_request_unix_ms")
    return Outcome(
        wall_s=round(wall, 3),
        first_request_s=round(first / 1000 - started, 3) if first else None,
        llm_ok=stats["ok"],
        rpm_limited=stats["rpm_limited"],
        other_cores=other,
    )


def taskmaster_config(fake: Service) -> dict[str, Any]:
    """Taskmaster's .taskmaster/config.json: every role on fake-llm through the `lmstudio` provider
    (OpenAI-compatible chat completions with json_schema structured output; the `openai` provider
    calls the Responses API and `openai-compatible` sends json_object without the schema)."""
    model = {"provider": "lmstudio", "modelId": "fake-llm", "maxTokens": 16000, "temperature": 0.2,
             "baseURL": f"http://{fake.address()}/v1"}  # fmt: skip
    return {
        "models": {"main": model, "research": model, "fallback": model},
        "global": {"logLevel": "info", "debug": False, "defaultPriority": "medium", "projectName": "bench",
                   "responseLanguage": "English", "enableCodebaseAnalysis": False, "enableProxy": False,
                   "anonymousTelemetry": False},
    }  # fmt: skip


def run_taskmaster(group: Group, fake: Service, workdir: Path, timeout: float) -> Outcome:
    assert group.shape is not None
    n, m = group.shape
    home = Path(tempfile.mkdtemp(prefix="taskmaster-", dir=workdir))
    (home / ".taskmaster" / "docs").mkdir(parents=True)
    (home / ".taskmaster" / "config.json").write_text(json.dumps(taskmaster_config(fake), indent=2))
    prd = home / ".taskmaster" / "docs" / "prd.txt"
    prd.write_text(group.prd)
    env = {
        "HOME": str(home),
        "TASKMASTER_SKIP_AUTO_UPDATE": "1",
        "NODE_OPTIONS": f"--require {LOOPBACK_GUARD}",
        "NO_COLOR": "1",
    }
    node = shutil.which("node") or "node"
    parse = [node, str(TASKMASTER_JS), "parse-prd", "--input", str(prd), "--num-tasks", str(n), "--force"]
    expand = [node, str(TASKMASTER_JS), "expand", "--all", "--num", str(m)]
    fake_llm_reset(fake)
    load = Load(lambda: [fake.pid])
    first, wall1, started = timed(parse, env, home, timeout)
    blocked = sum("loopback-only: refused" in line for line in first.stderr_lines)
    second = first
    wall2 = 0.0
    if first.popen.returncode == 0:
        second, wall2, _ = timed(expand, env, home, timeout)
        blocked += sum("loopback-only: refused" in line for line in second.stderr_lines)
    other = load.result()["other_cores"]
    stats = fake_llm_stats(fake)
    out = _outcome(wall1 + wall2, started, stats, other)
    out.extra = {"parse_prd_s": round(wall1, 3), "expand_s": round(wall2, 3), "blocked_connections": blocked,
                 "schema_answers": stats.get("schema_answers")}  # fmt: skip
    if second.popen.returncode != 0:
        out.problem = f"task-master exited {second.popen.returncode}: {second.tail(3)}"
        return out
    tasks = json.loads((home / ".taskmaster" / "tasks" / "tasks.json").read_text())["master"]["tasks"]
    subtasks = [len(t.get("subtasks", [])) for t in tasks]
    out.extra["subtasks"] = subtasks
    if len(tasks) != n or subtasks != [m] * n or stats["ok"] != group.calls:
        out.problem = f"Taskmaster made {len(tasks)} tasks with {subtasks} subtasks, fake-llm answered {stats['ok']}"
    return out


def run_group(group: Group, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """Every configuration of `group`, --repeat times, in turns; the medians and every run."""
    before = loadavg()
    fake = start_fake(workdir, group.fake_flags)
    runs: dict[str, list[Outcome]] = {c.label: [] for c in group.configs}
    # A stuck run must not hang the benchmark: many times the calls' latency, and the start-ups.
    timeout = 120 + 10 * group.calls * sizes.latency
    try:
        for r in range(sizes.repeat):
            order = group.configs if r % 2 == 0 else group.configs[::-1]
            for config in order:
                if config.taskmaster:
                    out = run_taskmaster(group, fake, workdir, timeout)
                else:
                    out = run_paradecom(group, config, fake, workdir, timeout)
                if out.problem and group.strict:
                    raise BenchError(f"{group.name}, {config.label}: {out.problem}")
                runs[config.label].append(out)
                first = f", first request at {out.first_request_s} s" if out.first_request_s is not None else ""
                problem = f", {out.problem}" if out.problem else ""
                log(f"  [{group.name}] round {r + 1}, {config.label}: {out.wall_s} s{first}, "
                    f"{out.llm_ok} calls, {out.rpm_limited} x 429{problem}")  # fmt: skip
    finally:
        fake.stop()
    configs = {}
    for c in group.configs:
        outs = runs[c.label]
        configs[c.label] = {
            "args": list(c.args),
            **{key: _median([getattr(o, key) for o in outs]) for key in
               ("wall_s", "first_request_s", "llm_ok", "rpm_limited", "other_cores")},
            "problems": [o.problem for o in outs if o.problem],
            "runs": [o.__dict__ for o in outs],
        }  # fmt: skip
    return {"fake_llm": list(group.fake_flags), "tasks": group.tasks, "calls": group.calls,
            "loadavg_before": before, "loadavg_after": loadavg(), "configs": configs}  # fmt: skip


def _median(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


# --- the table ---------------------------------------------------------------------------------------


def _row(
    figure: str, before: str, value: float | None, unit: str, baseline: str, ratio: str,
    op: str, goal: float, note: str = "",
) -> dict[str, Any]:  # fmt: skip
    met = None if value is None else (value <= goal if op == "<=" else value >= goal)
    return {"figure": figure, "issue_now": before, "value": value, "unit": unit, "baseline": baseline,
            "ratio": ratio, "op": op, "target": goal, "met": met, "note": note}  # fmt: skip


def rows(results: dict[str, Any], sizes: Sizes) -> list[dict[str, Any]]:
    g = results["groups"]
    auto = "auto"
    out: list[dict[str, Any]] = []

    def cfg(group: str, label: str) -> dict[str, Any]:
        c: dict[str, Any] = g[group]["configs"][label]
        return c

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    if "one-call" in g:
        a, s = cfg("one-call", "auto")["wall_s"], cfg("one-call", "--runners 0")["wall_s"]
        out.append(_row(f"{auto} wall / --runners 0 wall, 1-call project", "1.46-1.56", ratio(a, s), "x",
                        f"--runners 0: {s} s", f"{a} s / {s} s", "<=", 1.05))  # fmt: skip
    if "webshop" in g:
        a, s = cfg("webshop", "auto")["wall_s"], cfg("webshop", "--runners 0")["wall_s"]
        out.append(_row("same, 4-call webshop", "1.12", ratio(a, s), "x",
                        f"--runners 0: {s} s", f"{a} s / {s} s", "<=", 0.60))  # fmt: skip
    if "devai" in g:
        grp = g["devai"]
        a, s = cfg("devai", "auto")["wall_s"], cfg("devai", "--runners 0")["wall_s"]
        ideal = sizes.devai_depth * sizes.latency
        excess = round(a - ideal, 3) if a is not None else None
        out.append(_row(f"{grp['calls']}-call {sizes.devai_depth}-level project: wall - ideal ({ideal:g} s)",
                        "7.3 s (wall 11.8 s)", excess, "s", f"--runners 0: {s} s",
                        f"{a} s; {ratio(s, a)}x faster than --runners 0", "<=", 1.5))  # fmt: skip
    if "webshop" in g:
        a, s = cfg("webshop", "auto")["first_request_s"], cfg("webshop", "--runners 0")["first_request_s"]
        out.append(_row("first LLM request after the command starts (webshop)", "~5 s", a, "s",
                        f"--runners 0: {s} s", f"{ratio(a, s)}x", "<=", 1.5))  # fmt: skip
    for name, what in (("webshop", "small (webshop, 4 calls)"), ("large", "large")):
        if name not in g or len(g[name]["configs"]) < 3:
            continue
        fixed = {k: v["wall_s"] for k, v in g[name]["configs"].items() if k not in ("auto", "--runners 0")}
        # The stand-in for auto may be one of the fixed settings: it then counts as both.
        fixed.update({label_of(tuple(v["args"])): v["wall_s"] for k, v in g[name]["configs"].items() if k == "auto"
                      and tuple(v["args"]) in FIXED})  # fmt: skip
        best = min(fixed, key=lambda k: fixed[k])
        a = cfg(name, "auto")["wall_s"]
        label = what if name == "webshop" else f"large ({g[name]['calls']} calls)"
        out.append(_row(f"{auto} / best fixed runner setting, {label}", "—", ratio(a, fixed[best]), "x",
                        f"best: {best}, {fixed[best]} s", "; ".join(f"{k} {v} s" for k, v in fixed.items()),
                        "<=", 1.10))  # fmt: skip
    if "rpm" in g:
        grp = g["rpm"]
        fixed = cfg("rpm", label_of(RPM_FIXED))
        for label, what in (("auto --llm-rpm", f"{auto} --llm-rpm {sizes.rpm}"), ("auto", f"{auto}, AIMD only")):
            if label not in grp["configs"]:
                out.append(_row(f"429s: {what} vs {label_of(RPM_FIXED)} (fake-llm --rpm {sizes.rpm})", "—", None,
                                "", "", "", "<=", 0, "not measured: paradecom run has no --llm-rpm yet"))  # fmt: skip
                continue
            c = cfg("rpm", label)
            problems = "; ".join(sorted(set(c["problems"])))
            out.append(_row(
                f"429s: {what} vs {label_of(RPM_FIXED)} (fake-llm --rpm {sizes.rpm}, {grp['calls']} calls)", "—",
                c["rpm_limited"], "", f"{fixed['rpm_limited']:g} 429s in {fixed['wall_s']} s",
                f"{c['wall_s']} s", "<=", fixed["rpm_limited"], problems))  # fmt: skip
    for name in [k for k in g if k.startswith("taskmaster-")]:
        grp = g[name]
        tm, pd = cfg(name, "taskmaster"), cfg(name, "auto")
        n, m = name.removeprefix("taskmaster-").split("x")
        goal = {(4, 4): 3.0, (10, 5): 5.0}.get((int(n), int(m)), 3.0)
        before = {(4, 4): "1.83x", (10, 5): "3.2x"}.get((int(n), int(m)), "—")
        out.append(_row(
            f"Taskmaster parse-prd + expand --all / ParaDecom {auto}, {n} x {m}", before,
            ratio(tm["wall_s"], pd["wall_s"]), "x", f"Taskmaster {tm['wall_s']} s",
            f"ParaDecom {pd['wall_s']} s", ">=", goal,
            f"LLM calls at fake-llm: Taskmaster {tm['llm_ok']:g}, ParaDecom {pd['llm_ok']:g}"))  # fmt: skip
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if unit == "x" else f"{value:g} {unit}".strip()


def table(table_rows: list[dict[str, Any]], markdown: bool = False) -> str:
    header = ("figure", "issue: now", "measured", "baseline (same run)", "detail", "target", "status")
    lines = [
        (r["figure"], r["issue_now"], _fmt(r["value"], r["unit"]), r["baseline"],
         "; ".join(x for x in (r["ratio"], r["note"]) if x),
         f"{r['op'].replace('<=', '≤').replace('>=', '≥')} {_fmt(r['target'], r['unit'])}",
         "" if r["met"] is None else "met" if r["met"] else "NOT MET")
        for r in table_rows
    ]  # fmt: skip
    if markdown:
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(cells) + " |" for cells in lines])  # fmt: skip
    widths = [max(len(str(c[i])) for c in [header, *lines]) for i in range(len(header))]
    out = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() for cells in lines]
    return "\n".join(out)


# --- main ----------------------------------------------------------------------------------------------


def taskmaster_ready(install: bool) -> str:
    """ "" when Taskmaster can run, else why not (after `npm ci` into bench/taskmaster when asked)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        return "node is not installed"
    if not TASKMASTER_JS.exists() and install and npm is not None:
        log("installing Taskmaster: npm ci --prefix bench/taskmaster (from its package-lock.json)")
        done = subprocess.run(
            [npm, "ci", "--prefix", str(TASKMASTER_DIR), "--ignore-scripts", "--no-audit", "--no-fund", "--silent"],
            capture_output=True, text=True, timeout=1_800,
        )  # fmt: skip
        if done.returncode != 0:
            return f"npm ci failed: {done.stderr.strip()[-300:]}"
    if not TASKMASTER_JS.exists():
        return (
            "bench/taskmaster/node_modules is absent (python -m bench.local without --no-install installs it, "
            "or: npm ci --prefix bench/taskmaster --ignore-scripts)"
        )
    return ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=None, help="runs per configuration, median reported (default 3)")
    parser.add_argument("--rows", default=None, help="comma-separated rows of the table to measure, 1..7 (default all)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, latency 0.2 s, 1 run: rows 1, 2, 4, 7")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown here")
    parser.add_argument("--no-install", action="store_true", help="never run npm ci for Taskmaster (row 7)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.repeat is not None:
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        sizes = Sizes(**{**sizes.__dict__, "repeat": args.repeat})
    try:
        chosen = {int(r) for r in args.rows.split(",")} if args.rows else {1, 2, 4, 7} if args.smoke else set(ROWS)
    except ValueError:
        parser.error(f"--rows takes numbers from 1 to 7, not {args.rows!r}")
    if not chosen <= set(ROWS):
        parser.error(f"--rows takes numbers from 1 to 7, not {args.rows!r}")
    os.chdir(ROOT)

    auto_available = run_accepts("--runners", "auto")
    auto = ("--runners", "auto") if auto_available else AUTO_STAND_IN
    llm_rpm = run_accepts("--llm-rpm", "60")
    skipped: dict[str, str] = {}
    if 7 in chosen:
        why = taskmaster_ready(install=not args.no_install and not args.smoke)
        if why:
            skipped["7"] = f"Taskmaster comparison skipped: {why}"
            chosen.discard(7)
    auto_label = "--runners auto" if auto_available else f"{' '.join(AUTO_STAND_IN)} (standing in for auto)"
    results: dict[str, Any] = {
        "meta": {
            # File names only: a path on this machine says nothing to a reader of the JSON.
            "command": "python -m bench.local "
            + " ".join(Path(a).name if os.path.isabs(a) else a for a in (argv if argv is not None else sys.argv[1:])),
            "sizes": sizes.__dict__,
            "rows": sorted(chosen),
            "auto_available": auto_available,
            "auto_args": list(auto),
            "auto_label": auto_label,
            "llm_rpm_available": llm_rpm,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "loadavg_before": loadavg(),
            "machine": machine(),
        },
        "groups": {},
        "skipped": skipped,
    }
    if not auto_available:
        log("paradecom run does not take --runners auto yet: measuring --runners 2 (today's default) in its place")
    if not llm_rpm:
        log("paradecom run does not take --llm-rpm yet: row 6 measures auto without it only")
    for message in skipped.values():
        log(message)
    errors: dict[str, str] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="paradecom-bench-local-") as tmp:
        for group in groups(sizes, chosen, auto, llm_rpm):
            log(f"[{group.name}] {len(group.configs)} configurations x {sizes.repeat} "
                f"({time.monotonic() - started:.0f} s in, load {loadavg()})")  # fmt: skip
            workdir = Path(tmp) / group.name
            workdir.mkdir()
            try:
                results["groups"][group.name] = run_group(group, sizes, workdir)
            except (BenchError, OSError, ValueError, KeyError) as exc:
                log(f"[{group.name}] failed: {exc}")
                errors[group.name] = str(exc)
    results["meta"]["loadavg_after"] = loadavg()
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    results["rows"] = rows(results, sizes)
    results["errors"] = errors
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(table(results["rows"]))
    print()
    print(f"auto = {auto_label}" + ("" if auto_available else ": paradecom run does not take --runners auto yet"))
    if sizes.name != "full":
        print(f"{sizes.name} sizes (fake-llm latency {sizes.latency:g} s, smaller projects): indicative only")
    for message in skipped.values():
        print(f"SKIPPED: {message}")
    m = results["meta"]
    print(f"fake-llm latency {sizes.latency:g} s; median of {sizes.repeat} runs per configuration, interleaved; "
          f"{m['machine']['nproc']} cores; /proc/loadavg {m['loadavg_before']} before, {m['loadavg_after']} after; "
          f"{m['seconds']:.0f} s. JSON: {args.out}")  # fmt: skip
    if args.markdown:
        args.markdown.write_text(table(results["rows"], markdown=True) + "\n")
    for name, message in errors.items():
        print(f"{name}: FAILED: {message}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
