"""The leader's own work per task, without gRPC: `DecompositionLeader` on a SQLite file in WAL mode
(as `paradecom-leader` opens it), driven in this process the way the scheduler and TaskService drive
it. Set beside the end-to-end leader CPU per task, it splits that cost into store/lifecycle work and
everything else (gRPC, protobuf on the wire, the event loop).

Per task, for a flat project of K seeds: lease (`lease_tasks` in batches of 16, as a runner with 16
free slots gets them: the grant transaction plus building each assignment), serialize (the
assignment as it goes on the wire), accept (`process_results` with 3 subtasks, one transaction) and
summary (what every WatchProject update and GetProject reads). Then, on a second project of K seeds,
accept again with each batch's 16 results in one transaction (`accept_many`, what the group commit
does when results arrive together): `accept_group_us`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paradecom.v1 import task_pb2

from .cluster import flat_project

BATCH = 16


def measure(k: int) -> dict[str, Any]:
    from paradecom.leader.core import DecompositionLeader
    from paradecom.leader.lifecycle import Accepted, Result
    from paradecom.leader.store import SqliteStore

    with tempfile.TemporaryDirectory(prefix="paradecom-bench-core-") as tmp:
        store = SqliteStore(Path(tmp) / "leader.db")
        try:
            leader = DecompositionLeader(store)
            t0 = time.process_time()
            project_id = leader.generate_work_queue(flat_project(k))
            submit = time.process_time() - t0
            subtasks = [
                task_pb2.Subtask(
                    key=str(i), title=f"Write part {i} of the component", description=f"What part {i} covers.",
                    acceptance_criteria=["It works end to end."], depends_on=[str(i - 1)] if i > 1 else [],
                )
                for i in (1, 2, 3)
            ]  # fmt: skip
            lease = serialize = accept = summary = 0.0
            sizes: list[int] = []
            done = 0
            while done < k:
                t0 = time.process_time()
                batch = leader.lease_tasks("bench-runner", BATCH)
                t1 = time.process_time()
                for a in batch:
                    sizes.append(len(a.SerializeToString()))
                t2 = time.process_time()
                for a in batch:
                    leader.process_results(a.lease.task_id, a.lease.token, subtasks, task_pb2.Usage(calls=1))
                t3 = time.process_time()
                leader.summary(project_id)
                t4 = time.process_time()
                lease += t1 - t0
                serialize += t2 - t1
                accept += t3 - t2
                summary += (t4 - t3) * len(batch)
                done += len(batch)
                if not batch:
                    raise RuntimeError("the leader handed out no task while some were queued")
            group = 0.0
            project_id = leader.generate_work_queue(flat_project(k))
            while batch := leader.lease_tasks("bench-runner", BATCH):
                results = [Result(a.lease.task_id, a.lease.token, subtasks, task_pb2.Usage(calls=1)) for a in batch]
                t0 = time.process_time()
                answers = leader._lifecycle.accept_many(results)  # the group commit's step alone, no event loop
                group += time.process_time() - t0
                if not all(isinstance(a, Accepted) for a in answers):
                    raise RuntimeError(f"a grouped result was refused: {answers}")
        finally:
            store.close()
    us: Callable[[float], float] = lambda seconds: round(seconds / k * 1e6, 1)  # noqa: E731
    return {
        "tasks": k,
        "submit_us": us(submit),
        "lease_us": us(lease),
        "serialize_us": us(serialize),
        "accept_us": us(accept),
        "summary_us": us(summary),
        "total_us": us(lease + serialize + accept + summary),
        "accept_group_us": us(group),
        "assignment_bytes": round(sum(sizes) / len(sizes)),
    }


def leader_core(ks: tuple[int, ...], log: Callable[[str], None]) -> dict[str, Any]:
    rows = []
    for k in ks:
        row = measure(k)
        log(
            f"  K={k}: lease {row['lease_us']} µs, serialize {row['serialize_us']} µs, accept {row['accept_us']} µs, "
            f"summary {row['summary_us']} µs per task (accept in groups of {BATCH}: {row['accept_group_us']} µs); "
            f"assignments of {row['assignment_bytes']:,} bytes"
        )
        rows.append(row)
    return {"batch": BATCH, "rows": rows}
