"""`python -m bench.plot [RESULTS.json] [OUT.png]`: efficiency vs slots and throughput vs runners.

Reads what `python -m bench.run` wrote (default bench/results.json) and draws two panels into a PNG
(default docs/performance.png). Needs matplotlib (the `bench` extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .procs import ROOT

DEFAULT_IN = ROOT / "bench" / "results.json"
DEFAULT_OUT = ROOT / "docs" / "performance.png"


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    meta = results.get("meta", {})
    sizes = meta.get("sizes", {})

    eff = results.get("efficiency", {}).get("rows", [])
    if eff:
        slots = [r["slots"] for r in eff]
        left.plot(slots, [100 * r["efficiency"] for r in eff], "o-", label="ParaDecom (end to end)")
        for r in eff:
            lo = min(100 * x["efficiency"] for x in r["runs"])
            hi = max(100 * x["efficiency"] for x in r["runs"])
            left.vlines(r["slots"], lo, hi, colors="C0", alpha=0.4)
        left.scatter([64], [97], marker="_", s=400, color="C3", label="target (97% at 64, 90% at 512)")
        left.scatter([512], [90], marker="_", s=400, color="C3")
        left.set_xscale("log", base=2)
        left.set_xticks(slots, [str(s) for s in slots])
        left.set_ylim(0, 105)
    left.set_xlabel("slots (runners x concurrency)")
    left.set_ylabel("efficiency = ideal / actual wall time (%)")
    rounds = sizes.get("eff_rounds", 10)
    latency = sizes.get("latency", 1.0)
    left.set_title(f"Parallel efficiency (flat, K = {rounds} x slots, latency {latency:g} s)", fontsize=10)
    left.grid(alpha=0.3)
    left.legend(fontsize=8, loc="lower left")

    lc = results.get("leader", {}).get("rows", [])
    if lc:
        runners = [r["runners"] for r in lc]
        right.plot(runners, [r["tasks_per_s"] for r in lc], "o-", label="ParaDecom end to end (tasks/s)")
        for r in lc:
            values = [x["tasks_per_s"] for x in r["runs"]]
            right.vlines(r["runners"], min(values), max(values), colors="C0", alpha=0.4)
        cel = results.get("celery", {}).get("rows", [])
        styles = iter(["--", ":"])
        for row in cel:
            if row.get("workload") == 1:
                right.axhline(
                    row["tasks_per_s"],
                    linestyle=next(styles, "-."),
                    color="C2",
                    label=f"Celery {row['pool']} x {row['concurrency']} (tasks/s)",
                )
        twin = right.twinx()
        twin.plot(runners, [r["leader_cpu_us_per_task"] for r in lc], "s-", color="C1", label="leader CPU per task")
        twin.axhline(150, color="C3", linewidth=0.8, label="target: 150 µs/task")
        twin.set_ylabel("leader CPU per task (µs)")
        twin.set_ylim(0, max(160, *(r["leader_cpu_us_per_task"] for r in lc)) * 1.15)
        right.set_xticks(runners)
        lines = right.get_legend_handles_labels()
        lines2 = twin.get_legend_handles_labels()
        right.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")
        right.set_ylim(0, max([r["tasks_per_s"] for r in lc] + [r["tasks_per_s"] for r in cel]) * 1.5)
    right.set_xlabel("runner processes")
    right.set_ylabel("tasks/s")
    k = sizes.get("leader_k", "")
    right.set_title(f"Throughput and leader cost (flat, K = {k}, latency 0)", fontsize=10)
    right.grid(alpha=0.3)

    machine = meta.get("machine", {})
    fig.suptitle(
        f"ParaDecom benchmarks — {machine.get('nproc', '?')} x {machine.get('cpu_model', '?')}, "
        f"Python {machine.get('python', '?')}, {meta.get('started', '')}",
        fontsize=10,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=DEFAULT_IN)
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    plot(json.loads(args.results.read_text()), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
