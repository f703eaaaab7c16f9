"""`python -m bench.run`: ParaDecom's benchmarks, printed as a table and written as JSON.

    python -m bench.run                      # every workload at full size, median of 3 runs each
    python -m bench.run --quick              # 1 run each, smaller sizes: a sanity run (~6 min)
    python -m bench.run --smoke              # the smallest workloads (the test suite runs this)
    python -m bench.run --only leader,efficiency --repeat 5 --out /tmp/r.json
    python -m bench.run --profile bench/profiles   # adds py-spy profiles of the leader

Every figure is the median over --repeat runs, each on fresh processes. Targets are printed as met
or not met next to each figure; a missed target does not fail the run (exit 1 only when a workload
could not run or gave a wrong result). See bench/README.md for what each workload does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import workloads
from .leader_core import leader_core
from .procs import ROOT, BenchError, machine

WORKLOADS = ("core", "leader", "efficiency", "recursive", "sequential", "celery", "reassignment", "memory")
SMOKE_WORKLOADS = ("core", "leader", "efficiency")
DEFAULT_OUT = ROOT / "bench" / "results.json"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- targets --------------------------------------------------------------------------------------


def _target(
    figure: str, value: float | None, unit: str, op: str | None = None, goal: float | None = None, note: str = ""
) -> dict[str, Any]:
    met: bool | None = None
    if value is not None and op is not None and goal is not None:
        met = value <= goal if op == "<=" else value >= goal
    return {"figure": figure, "value": value, "unit": unit, "op": op, "target": goal, "met": met, "note": note}


def _wire(row: dict[str, Any]) -> str:
    """How much the wire batched in a flat run (bench/cluster.py `wire_counters`)."""
    if row.get("assignments_per_message") is None:
        return ""
    return (
        f"{row['assignments_per_message']:g} assignments per message, "
        f"{row['results_per_transaction']:g} results per transaction"
    )


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every reported figure, with its target and whether it was met (None: no target)."""
    out: list[dict[str, Any]] = []
    sizes = results["meta"]["sizes"]
    core = results.get("core")
    if core and "rows" in core:
        for row in core["rows"]:
            out.append(
                _target(
                    f"leader store+lifecycle CPU per task, no gRPC (flat K={row['tasks']})",
                    row["total_us"], "µs", None, None,
                    f"lease {row['lease_us']:g}, accept {row['accept_us']:g}, serialize {row['serialize_us']:g}, "
                    f"summary {row['summary_us']:g} µs; assignment {row['assignment_bytes']:,} B"
                    + (f"; accept in groups of 16: {row['accept_group_us']:g} µs" if "accept_group_us" in row else ""),
                )
            )  # fmt: skip
    lc = results.get("leader")
    if lc and "rows" in lc:
        for row in lc["rows"]:
            n = row["runners"]
            label = f"latency 0, K={lc['tasks']}, {n} runner{'s' if n > 1 else ''} x {row['concurrency']}"
            out.append(_target(f"end-to-end tasks/s ({label})", row["tasks_per_s"], "tasks/s"))
            out.append(
                _target(f"leader CPU per task ({label})", row["leader_cpu_us_per_task"], "µs", "<=", 150, _wire(row))
            )
    cel = results.get("celery")
    if cel and "ratios" in cel:
        for r in cel["ratios"]:
            if r["workload"] == 1:
                out.append(
                    _target(
                        f"latency 0: ParaDecom / Celery {r['pool']} x {r['concurrency']}",
                        r["ratio"], "x", ">=", 2.0,
                        f"{r['paradecom_tasks_per_s']} vs {r['celery_tasks_per_s']} tasks/s",
                    )
                )  # fmt: skip
    eff = results.get("efficiency")
    if eff and "rows" in eff:
        goals = {64: 0.97, 512: 0.90}
        for row in eff["rows"]:
            slots = row["slots"]
            out.append(
                _target(
                    f"efficiency at {slots} slots ({row['runners']} x {row['concurrency']}, K={row['tasks']}, "
                    f"latency {eff['latency_s']:g} s)",
                    row["efficiency"], "", ">=" if slots in goals else None, goals.get(slots),
                    f"{row['wall_s']} s vs ideal {row['ideal_s']:g} s; {_wire(row)}",
                )
            )  # fmt: skip
    if cel and "ratios" in cel:
        for r in cel["ratios"]:
            if r["workload"] == 2:
                is_threads = r["pool"] == "threads"
                out.append(
                    _target(
                        f"latency {sizes['latency']:g} s, K = {sizes['eff_rounds']} x slots: ParaDecom "
                        f"{sizes['celery_slots']} slots / Celery {r['pool']} x {r['concurrency']}",
                        r["ratio"], "x", ">=" if is_threads else None, 1.5 if is_threads else None,
                        f"{r['paradecom_tasks_per_s']} vs {r['celery_tasks_per_s']} tasks/s",
                    )
                )  # fmt: skip
    rec = results.get("recursive")
    if rec and "ratio" in rec:
        out.append(
            _target(
                f"recursive tree ({rec['tree_tasks']} tasks, {rec['llm_calls']} LLM calls, depth {rec['depth']}, "
                f"{rec['slots']} slots) / lower bound",
                rec["ratio"], "x", "<=", 1.3, f"{rec['wall_s']} s vs {rec['lower_bound_s']:g} s",
            )
        )  # fmt: skip
    seq = results.get("sequential")
    if seq and "speedup" in seq:
        out.append(
            _target(
                f"speedup over --runners 0 (K={seq['tasks']}, {seq['slots']} slots)",
                seq["speedup"], "x", ">=", round(0.95 * seq["slots"], 2),
                f"{seq['sequential_s']} s vs {seq['parallel_s']} s; whole commands {seq['command_speedup']}x",
            )
        )  # fmt: skip
    rea = results.get("reassignment")
    if rea and "reassign_s" in rea:
        out.append(
            _target(
                f"reassignment of {rea['leases']} leases (lease timeout {rea['lease_timeout_s']:g} s)",
                rea["reassign_s"], "s", "<=", rea["target_s"], "each task done exactly once",
            )
        )  # fmt: skip
    mem = results.get("memory")
    if mem and "rss_mb" in mem:
        c = mem["counts"]
        out.append(
            _target(
                f"leader RSS with {mem['tasks']:,} tasks in the store",
                mem["rss_mb"], "MB", "<=", 200.0,
                f"{c['queued']:,} queued, {c['leased']:,} leased, {c['done']:,} done; idle {mem['baseline_rss_mb']} MB",
            )
        )  # fmt: skip
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "":
        return f"{value:.1%}"
    if unit in ("x",):
        return f"{value:.2f}x"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}".strip()
    return f"{value:.2f} {unit}".strip()


def table(rows: list[dict[str, Any]], full_size: bool, markdown: bool = False) -> str:
    def status(r: dict[str, Any]) -> str:
        if r["met"] is None:
            return ""
        text = "met" if r["met"] else "NOT MET"
        return text if full_size else text + "*"

    def goal(r: dict[str, Any]) -> str:
        if r["target"] is None:
            return ""
        return f"{r['op'].replace('<=', '≤').replace('>=', '≥')} {_fmt(r['target'], r['unit'])}"

    lines = [(r["figure"], _fmt(r["value"], r["unit"]), goal(r), status(r), r["note"]) for r in rows]
    header = ("figure", "value", "target", "status", "detail")
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
    else:
        widths = [max(len(str(c[i])) for c in [header, *lines]) for i in range(len(header))]
        out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
        out.append("  ".join("-" * w for w in widths))
        out += ["  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() for cells in lines]
    if not full_size:
        out.append("")
        out.append("* measured at smaller sizes than the targets are stated for: indicative only")
    return "\n".join(out)


# --- the run --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description="ParaDecom benchmarks: leader cost, parallel efficiency, "
        "recursion, the sequential fallback, Celery, reassignment, memory."
    )  # fmt: skip
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="1 run each and smaller sizes: a sanity run")
    size.add_argument("--smoke", action="store_true", help="the smallest workloads only, in seconds (for the tests)")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="no warm-up: measure runners' first LLM calls too (default: one task per slot first)",
    )
    parser.add_argument("--repeat", type=int, default=None, help="runs per figure, median reported (default 3)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown here")
    parser.add_argument(
        "--only", default=None, help=f"comma-separated workloads to run, of: {', '.join(WORKLOADS)} (default all)"
    )
    parser.add_argument(
        "--profile", type=Path, default=None, metavar="DIR",
        help="also profile the leader with py-spy (one extra run each of leader cost and the largest efficiency run)",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = workloads.SMOKE if args.smoke else workloads.QUICK if args.quick else workloads.FULL
    repeat = args.repeat or (1 if args.quick or args.smoke else 3)
    if repeat < 1:
        build_parser().error("--repeat must be at least 1")
    chosen = tuple(args.only.split(",")) if args.only else SMOKE_WORKLOADS if args.smoke else WORKLOADS
    unknown = [w for w in chosen if w not in WORKLOADS]
    if unknown:
        build_parser().error(f"unknown workload {unknown[0]!r}; choose from {', '.join(WORKLOADS)}")
    os.chdir(ROOT)
    workloads.WARM_UP = not args.cold

    results: dict[str, Any] = {
        "meta": {
            "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
            "sizes": dataclasses.asdict(sizes),
            "repeat": repeat,
            "warm_up": not args.cold,
            "workloads": list(chosen),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(),
        },
    }
    errors: dict[str, str] = {}
    started = time.monotonic()

    def step(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if name not in chosen:
            return
        log(f"[{name}] ({time.monotonic() - started:.0f} s in, load {os.getloadavg()[0]:.2f})")
        t0 = time.monotonic()
        try:
            results[name] = fn()
        except (BenchError, OSError, RuntimeError, ValueError, KeyError) as exc:
            log(f"[{name}] failed: {exc}")
            traceback.print_exc(file=sys.stderr)
            results[name] = {"error": str(exc)}
            errors[name] = str(exc)
        results[name]["workload_seconds"] = round(time.monotonic() - t0, 1)

    step("core", lambda: leader_core(sizes.core_ks, log))
    step("leader", lambda: workloads.leader_cost(sizes, repeat, log, args.profile))
    step("efficiency", lambda: workloads.efficiency(sizes, repeat, log, args.profile))
    step("recursive", lambda: workloads.recursive(sizes, repeat, log))
    step("sequential", lambda: workloads.sequential(sizes, repeat, log))
    step("celery", lambda: workloads.celery(sizes, repeat, log, _paradecom_figures(results, sizes, repeat)))
    step("reassignment", lambda: workloads.reassignment(sizes, repeat, log))
    step("memory", lambda: workloads.memory(sizes, log))

    results["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    results["meta"]["loadavg_after"] = list(os.getloadavg())
    results["targets"] = targets(results)
    results["errors"] = errors
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    full_size = sizes.name == "full"
    print(table(results["targets"], full_size))
    m = results["meta"]["machine"]
    print(
        f"\n{m['nproc']} x {m['cpu_model']}, Python {m['python']}; load average {m['loadavg'][0]:.2f} before, "
        f"{results['meta']['loadavg_after'][0]:.2f} after; {results['meta']['seconds']:.0f} s. JSON: {args.out}"
    )
    if args.markdown:
        args.markdown.write_text(table(results["targets"], full_size, markdown=True) + "\n")
    for name, message in errors.items():
        print(f"{name}: FAILED: {message}", file=sys.stderr)
    return 1 if errors else 0


def _paradecom_figures(results: dict[str, Any], sizes: workloads.Sizes, repeat: int) -> dict[str, Any]:
    """ParaDecom's side of the Celery comparison: workload 1 at 2 runners (the Celery prefork config has
    2 processes too), workload 2 at the threads pool's slots. Taken from the leader and efficiency
    results when they ran, measured here otherwise."""
    out: dict[str, Any] = {}
    lc = results.get("leader", {}).get("rows", [])
    row1 = next((r for r in lc if r["runners"] == 2), None)
    if row1 is None:
        log(" (measuring ParaDecom's workload 1 for the comparison)")
        one = dataclasses.replace(sizes, leader_runners=(2,), leader_k=sizes.celery_k)
        row1 = workloads.leader_cost(one, repeat, log)["rows"][0]
    out["workload1_tasks_per_s"] = row1["tasks_per_s"]
    out["workload1"] = f"{row1['runners']} runners x {row1['concurrency']}, K={row1['tasks']}"
    eff = results.get("efficiency", {}).get("rows", [])
    row2 = next((r for r in eff if r["slots"] == sizes.celery_slots), None)
    if row2 is None:
        log(" (measuring ParaDecom's workload 2 for the comparison)")
        two = dataclasses.replace(sizes, eff_slots=(sizes.celery_slots,))
        row2 = workloads.efficiency(two, repeat, log)["rows"][0]
    out["workload2_tasks_per_s"] = row2["tasks_per_s"]
    out["workload2"] = f"{row2['slots']} slots ({row2['runners']} x {row2['concurrency']}), K={row2['tasks']}"
    return out


if __name__ == "__main__":
    raise SystemExit(main())
