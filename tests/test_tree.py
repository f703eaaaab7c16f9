"""The task tree: conversion from the leader's proto, the JSON, Markdown, Mermaid and CSV renderings, and
round-trips."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import pytest

from paradecom.client import cli
from paradecom.tree import CSV_COLUMNS, FORMATS, TaskTree, TreeTask
from paradecom.v1 import project_pb2, project_service_pb2

GOLDEN = Path(__file__).resolve().parent / "golden"
# Set PARADECOM_UPDATE_GOLDEN=1 to rewrite the golden files after a deliberate format change.
UPDATE = os.environ.get("PARADECOM_UPDATE_GOLDEN") == "1"

DONE = project_pb2.TASK_STATUS_DONE
DEAD = project_pb2.TASK_STATUS_DEAD


def sample_response() -> project_service_pb2.GetTaskTreeResponse:
    """A finished project with one root task, a nested branch, sibling dependencies and a dead task."""
    node = project_pb2.TaskNode
    return project_service_pb2.GetTaskTreeResponse(
        project=project_pb2.ProjectSummary(
            project_id="p-0001",
            name="Webshop for a local bakery",
            state=project_pb2.PROJECT_STATE_DONE,
            queued=0,
            leased=0,
            done=5,
            dead=1,
            cancelled=0,
            total=6,
            created_at_unix_ms=1_700_000_000_000,
            finished_at_unix_ms=1_700_000_060_000,
            max_depth=2,
            late_results_refused=1,
            leases_expired=2,
        ),
        definition=project_pb2.ProjectDefinition(
            name="Webshop for a local bakery",
            description="Customers order bread online and collect it in a branch.",
            goals=["Customers can order and pay online", "Branches see their orders"],
            constraints=["Django and PostgreSQL"],
            max_depth=2,
        ),
        tasks=[
            node(
                id="1",
                depth=0,
                title="Build the bakery webshop",
                description="Everything from catalogue to pickup.",
                status=DONE,
                attempts=1,
                atomic_reason="too large for one person",
                children=[
                    node(
                        id="1.1",
                        parent_id="1",
                        depth=1,
                        title="Set up the Django project",
                        description="Repository, settings, CI.\nOne container image.",
                        acceptance_criteria=["`manage.py check` passes", "CI runs the tests on every push"],
                        atomic=True,
                        atomic_reason="a day's work",
                        estimate_hours=6,
                        status=DONE,
                        attempts=1,
                        stop_reason="atomic",
                    ),
                    node(
                        id="1.2",
                        parent_id="1",
                        depth=1,
                        title="Build the catalogue",
                        depends_on=["1.1"],
                        status=DONE,
                        attempts=2,
                        last_error="lease expired",
                        children=[
                            node(
                                id="1.2.1",
                                parent_id="1.2",
                                depth=2,
                                title="Model products and prices",
                                acceptance_criteria=["A product has a name, a price and a photo"],
                                atomic=True,
                                atomic_reason="max depth",
                                estimate_hours=4,
                                status=DONE,
                                attempts=1,
                                stop_reason="max depth reached",
                            ),
                            node(
                                id="1.2.2",
                                parent_id="1.2",
                                depth=2,
                                title="List products by category",
                                depends_on=["1.2.1"],
                                atomic=True,
                                atomic_reason="max depth",
                                estimate_hours=3.5,
                                status=DONE,
                                attempts=1,
                                stop_reason="max depth reached",
                            ),
                        ],
                    ),
                    node(
                        id="1.3",
                        parent_id="1",
                        depth=1,
                        title="Take card payments",
                        description="Stripe Checkout.",
                        acceptance_criteria=["A test card payment succeeds"],
                        depends_on=["1.1", "1.2"],
                        status=DEAD,
                        attempts=3,
                        last_error="LLM answer was not valid JSON:\nExpecting ',' at line 3",
                    ),
                ],
            )
        ],
    )


def _check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(actual + "\n", encoding="utf-8")
    assert actual + "\n" == path.read_text(encoding="utf-8")


def test_from_proto_fields() -> None:
    """from_proto maps enums to lower-case names, empty parent ids to None, and keeps the counters."""
    tree = TaskTree.from_proto(sample_response())
    assert tree.project["id"] == "p-0001"
    assert tree.project["state"] == "done"
    assert tree.project["counts"] == {
        "total": 6,
        "done": 5,
        "dead": 1,
        "queued": 0,
        "leased": 0,
        "cancelled": 0,
    }
    assert tree.project["max_depth"] == 2
    assert tree.project["late_results_refused"] == 1 and tree.project["leases_expired"] == 2
    root = tree.tasks[0]
    assert root.parent_id is None and root.depth == 0
    dead = root.children[2]
    assert (dead.id, dead.status, dead.attempts, dead.depends_on) == ("1.3", "dead", 3, ["1.1", "1.2"])
    assert root.children[1].children[1].parent_id == "1.2"


def test_iter_tasks_is_depth_first_preorder() -> None:
    """iter_tasks visits each task before its children and siblings in order, every node exactly once."""
    tree = TaskTree.from_proto(sample_response())
    assert [t.id for t in tree.iter_tasks()] == ["1", "1.1", "1.2", "1.2.1", "1.2.2", "1.3"]


def test_json_matches_golden() -> None:
    """to_json gives exactly the documented shape, checked against tests/golden/tree.json."""
    _check_golden("tree.json", TaskTree.from_proto(sample_response()).to_json())


def test_markdown_matches_golden() -> None:
    """to_markdown gives the checklist with criteria, dependencies and the dead task's error."""
    _check_golden("tree.md", TaskTree.from_proto(sample_response()).to_markdown())


def test_mermaid_matches_golden() -> None:
    """to_mermaid gives the flowchart with subtask arrows, dashed dependency arrows and styled atomic and
    dead tasks, checked against tests/golden/tree.mmd."""
    _check_golden("tree.mmd", TaskTree.from_proto(sample_response()).to_mermaid())


def test_csv_matches_golden() -> None:
    """to_csv gives a header row and one row per task with parent, dependencies, estimate, labels and
    criteria, checked against tests/golden/tree.csv."""
    _check_golden("tree.csv", TaskTree.from_proto(sample_response()).to_csv())


def test_render_dispatches_and_refuses_unknown_formats() -> None:
    """render(fmt) equals the matching to_* method for every format; other formats: ValueError."""
    tree = TaskTree.from_proto(sample_response())
    assert tree.render("json") == tree.to_json()
    assert tree.render("markdown") == tree.to_markdown()
    assert tree.render("mermaid") == tree.to_mermaid()
    assert tree.render("csv") == tree.to_csv()
    with pytest.raises(ValueError, match="unknown tree format 'yaml'"):
        tree.render("yaml")


def test_cli_offers_every_tree_format() -> None:
    """The CLI's --format choices are exactly the formats the tree renders."""
    assert cli.FORMATS == FORMATS


def _awkward_tree() -> TaskTree:
    """Titles and ids that would break Mermaid or CSV if written as they are."""
    return TaskTree(
        project={"name": 'Say "hi"\n[now]', "state": "running"},
        tasks=[
            TreeTask(
                id="1",
                parent_id=None,
                depth=0,
                title='Parse "quoted" [brackets] {braces} <b>html</b> & #hash | pipe `tick`\nsecond line',
                description='Line one, with a comma\nline "two"',
                acceptance_criteria=["first; with a semicolon", "second,\nwrapped"],
                status="done",
                children=[
                    TreeTask(id="1.1", parent_id="1", depth=1, title="end", status="queued"),
                    TreeTask(id="1_1", parent_id="1", depth=1, title="o", depends_on=["1.1", "9.9"]),
                ],
            )
        ],
    )


def test_mermaid_escapes_labels_and_makes_safe_ids() -> None:
    """Quotes, brackets, braces, HTML, "#", "|", backticks and newlines never reach a Mermaid label as
    they are (tests/test_output_safety.py reads them back with Mermaid itself); node ids are letters,
    digits and "_" and stay unique; a dependency outside the tree is left out."""
    text = _awkward_tree().to_mermaid()
    lines = text.splitlines()
    assert lines[:4] == ["---", 'title: "Say \\"hi\\"\\\\n[now]"', "---", "flowchart TD"]
    labels = re.findall(r'^    (\w+)\["(.*)"\]$', text, flags=re.MULTILINE)
    assert [node for node, _ in labels] == ["t1", "t1_1", "t1_1_2"]
    first = labels[0][1]
    assert first == (
        "1 Parse #34;quoted#34; #91;brackets#93; #123;braces#125; #60;b#62;html#60;/b#62; #38; #35;hash "
        "#124; pipe #96;tick#96;#10;second line"
    )
    for _, label in labels:
        assert not set(label) & set('"[]{}<>|`\n')
    assert labels[1][1] == "1.1 end (queued)"
    assert "    t1_1 -.-> t1_1_2" in lines
    assert not any("9_9" in line for line in lines)


def test_csv_quotes_fields_and_round_trips_through_the_csv_module() -> None:
    """Commas, quotes and line breaks in fields survive a trip through csv.reader; criteria are one per
    line, dependencies joined by ";", unfinished tasks labelled with their status."""
    rows = list(csv.DictReader(io.StringIO(_awkward_tree().to_csv())))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [r["id"] for r in rows] == ["1", "1.1", "1_1"]
    root = rows[0]
    assert root["description"] == 'Line one, with a comma\nline "two"'
    assert root["title"].endswith("tick`\nsecond line"), "titles are exact"
    assert root["acceptance_criteria"] == "first; with a semicolon\nsecond, wrapped"
    assert root["parent"] == "" and root["estimate_hours"] == "" and root["labels"] == "depth-0"
    assert rows[2]["depends_on"] == "1.1;9.9" and rows[2]["parent"] == "1"
    assert rows[1]["labels"] == "depth-1;queued"


def test_dict_round_trip() -> None:
    """from_dict(to_dict()) rebuilds an equal tree, also after a trip through JSON text."""
    tree = TaskTree.from_proto(sample_response())
    assert TaskTree.from_dict(tree.to_dict()) == tree
    assert TaskTree.from_dict(json.loads(tree.to_json())) == tree


def test_to_dict_shares_nothing() -> None:
    """Changing the dict from to_dict leaves the tree unchanged."""
    tree = TaskTree.from_proto(sample_response())
    d = tree.to_dict()
    d["project"]["counts"]["done"] = 99
    d["tasks"][0]["children"].clear()
    assert tree.project["counts"]["done"] == 5
    assert len(tree.tasks[0].children) == 3


def test_from_dict_reports_missing_keys() -> None:
    """from_dict names the task and the key when a required key is missing, and needs a project mapping."""
    with pytest.raises(ValueError, match="task 1: missing key 'title'"):
        TaskTree.from_dict({"project": {}, "tasks": [{"id": "1", "depth": 0}]})
    with pytest.raises(ValueError, match="'project' mapping"):
        TaskTree.from_dict({"tasks": []})


def test_unknown_enum_values_do_not_fail() -> None:
    """A status or state this client does not know (from a newer leader) is shown, not an exception."""
    resp = project_service_pb2.GetTaskTreeResponse(
        project=project_pb2.ProjectSummary(state=42),  # type: ignore[arg-type]
        tasks=[project_pb2.TaskNode(id="1", title="t", status=17)],  # type: ignore[arg-type]
    )
    tree = TaskTree.from_proto(resp)
    assert tree.project["state"] == "unknown(42)"
    assert tree.tasks[0].status == "unknown(17)"


def test_markdown_of_running_project_marks_unfinished_tasks() -> None:
    """In a running project, queued and leased tasks are marked with their status; boxes stay unchecked."""
    tree = TaskTree(
        project={"name": "P", "state": "running", "counts": {"total": 2, "queued": 1, "leased": 1}},
        tasks=[
            TreeTask(id="1", parent_id=None, depth=0, title="A", status="queued"),
            TreeTask(id="2", parent_id=None, depth=0, title="B", status="leased"),
        ],
    )
    md = tree.to_markdown()
    assert "- [ ] 1 A _(queued)_" in md
    assert "- [ ] 2 B _(leased)_" in md
    assert md.startswith("# P\n\nrunning · 2 tasks: 0 done, 0 dead, 1 queued, 1 leased, 0 cancelled")
