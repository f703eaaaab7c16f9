"""Project files: what loads, and that every bad input is one ProjectFileError line naming file and field."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from paradecom import limits
from paradecom import project as project_module
from paradecom.errors import ProjectFileError
from paradecom.project import ProjectDefinition, SeedTask, load_project

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


# The DevAI instances ship with the repository (data/devai, with their license).
DEVAI = REPO / "data" / "devai"


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def _error(path: str | Path) -> str:
    with pytest.raises(ProjectFileError) as info:
        load_project(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return message


def test_every_devai_instance_loads() -> None:
    """All 55 DevAI benchmark files load as they are, with the query as description and no hidden criteria."""
    files = sorted(DEVAI.glob("*.json"))
    assert len(files) == 55
    for path in files:
        project = load_project(path)
        raw = json.loads(path.read_text(encoding="utf-8"))
        assert project.name == raw["name"].strip()
        assert project.description == raw["query"].strip()
        assert project.goals == [] and project.constraints == [] and project.tasks == []
        assert project.max_depth is None


def test_webshop_example_loads() -> None:
    """examples/webshop.yaml is a valid project with 3 goals, 2 constraints and max_depth 2."""
    project = load_project(EXAMPLES / "webshop.yaml")
    assert project.name == "Webshop for a local bakery"
    assert len(project.goals) == 3
    assert len(project.constraints) == 2
    assert project.max_depth == 2
    assert project.description.startswith("A web shop")


def test_demo_example_loads() -> None:
    """examples/demo.yaml, what `make demo` decomposes, is the web shop of webshop.yaml given as
    two seed tasks, two levels deep."""
    demo, webshop = load_project(EXAMPLES / "demo.yaml"), load_project(EXAMPLES / "webshop.yaml")
    assert (demo.name, demo.description, demo.goals, demo.constraints, demo.max_depth) == (
        webshop.name, webshop.description, webshop.goals, webshop.constraints, 2,
    )  # fmt: skip
    assert [t.title for t in demo.tasks] == ["Build the customer shop", "Build the staff and owner back office"]


def test_yaml_with_seed_tasks_loads(tmp_path: Path) -> None:
    """A YAML project with seed tasks keeps their order, criteria and stripped text."""
    path = _write(
        tmp_path,
        "proj.yml",
        """
name: "  CLI tool  "
description: |
  Build a command-line tool.
goals: [Fast, Portable]
constraints:
tasks:
  - title: Parse arguments
    acceptance_criteria: ["--help prints usage"]
  - title: Write the output
    description: JSON or text
max_depth: 3
""",
    )
    project = load_project(path)
    assert project == ProjectDefinition(
        name="CLI tool",
        description="Build a command-line tool.",
        goals=["Fast", "Portable"],
        constraints=[],
        tasks=[
            SeedTask(title="Parse arguments", acceptance_criteria=["--help prints usage"]),
            SeedTask(title="Write the output", description="JSON or text"),
        ],
        max_depth=3,
    )


def test_json_project_loads(tmp_path: Path) -> None:
    """A .json file is read as JSON, a UTF-8 byte-order mark is accepted, and non-ASCII text survives."""
    data = {"name": "Café", "description": "Menu site", "goals": ["Show the menu"], "max_depth": 1}
    path = _write(tmp_path, "proj.json", b"\xef\xbb\xbf" + json.dumps(data).encode())
    project = load_project(path)
    assert project.name == "Café"
    assert project.goals == ["Show the menu"]
    assert project.max_depth == 1


def test_json_content_in_a_yaml_file_loads(tmp_path: Path) -> None:
    """Any suffix other than .json is parsed as YAML, which also reads JSON text."""
    path = _write(tmp_path, "proj.txt", '{"name": "n", "description": "d"}')
    assert load_project(path) == ProjectDefinition(name="n", description="d")


def test_devai_instance_with_unknown_keys_is_accepted() -> None:
    """A DevAI-shaped mapping keeps only name and query; its other keys, known or not, are ignored."""
    data = {
        "name": "x",
        "query": "Do the thing",
        "requirements": [{"criteria": "secret"}],
        "hidden": True,
        "something_new": 1,
    }
    project = ProjectDefinition.from_mapping(data, "devai.json")
    assert project == ProjectDefinition(name="x", description="Do the thing")


def test_stdin_is_read_for_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path "-" reads the project from standard input."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"name: s\ndescription: from stdin\n")))
    assert load_project("-") == ProjectDefinition(name="s", description="from stdin")


def test_text_only_stdin_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sys.stdin replaced by a text stream without .buffer is read all the same."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("name: t\ndescription: text only\n"))
    assert load_project("-") == ProjectDefinition(name="t", description="text only")


def test_path_with_nul_byte() -> None:
    """A path with a NUL byte (os.stat raises ValueError for it) is a one-line error, not a traceback."""
    assert _error("a\0b.yaml") == "a\\x00b.yaml: invalid path"


def test_stdin_errors_name_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Errors on standard input name it <stdin>, including one over the size limit."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"name: [1]\ndescription: d\n")))
    assert _error("-") == "<stdin>: field 'name': expected a string, got list"
    monkeypatch.setattr(limits, "MAX_PROJECT_FILE_BYTES", 10)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"name: n\ndescription: d\n")))
    assert "<stdin>: file too large" in _error("-")


def _many(n: int) -> str:
    return "[" + ", ".join(f"g{i}" for i in range(n)) + "]"


# (file name, content, text the one-line error must contain besides the file name)
BAD_FILES: list[tuple[str, str | bytes, str]] = [
    ("no_name.yaml", "description: d\n", "field 'name': missing (required)"),
    ("null_name.yaml", "name:\ndescription: d\n", "field 'name': expected a string, got null"),
    ("blank_name.yaml", "name: '   '\ndescription: d\n", "field 'name': must not be empty"),
    ("int_name.yaml", "name: 5\ndescription: d\n", "field 'name': expected a string, got int"),
    ("no_description.yaml", "name: n\n", "field 'description': missing (required)"),
    (
        "list_description.yaml",
        "name: n\ndescription: [a]\n",
        "field 'description': expected a string, got list",
    ),
    (
        "goals_string.yaml",
        "name: n\ndescription: d\ngoals: one\n",
        "field 'goals': expected a list, got string",
    ),
    (
        "goal_int.yaml",
        "name: n\ndescription: d\ngoals: [a, b, 3]\n",
        "field 'goals[2]': expected a string, got int",
    ),
    ("goal_empty.yaml", "name: n\ndescription: d\ngoals: ['']\n", "field 'goals[0]': must not be empty"),
    (
        "constraint_map.yaml",
        "name: n\ndescription: d\nconstraints: [{a: 1}]\n",
        "field 'constraints[0]': expected a string, got mapping",
    ),
    (
        "too_many_goals.yaml",
        f"name: n\ndescription: d\ngoals: {_many(limits.MAX_LIST_ITEMS + 1)}\n",
        f"field 'goals': has {limits.MAX_LIST_ITEMS + 1} items, more than the limit of {limits.MAX_LIST_ITEMS}",
    ),
    (
        "long_goal.yaml",
        f"name: n\ndescription: d\ngoals: [{'x' * (limits.MAX_ITEM_CHARS + 1)}]\n",
        "field 'goals[0]': is 2,001 characters long, more than the limit of 2,000",
    ),
    (
        "long_name.yaml",
        f"name: {'n' * (limits.MAX_NAME_CHARS + 1)}\ndescription: d\n",
        "field 'name': is 201 characters long",
    ),
    ("unknown_field.yaml", "name: n\ndescription: d\nowner: me\n", "field 'owner': unknown field"),
    (
        "two_unknown.json",
        '{"name": "n", "description": "d", "goal": [], "depth": 2}',
        "field 'goal': unknown field (also unknown: 'depth')",
    ),
    (
        "max_depth_0.yaml",
        "name: n\ndescription: d\nmax_depth: 0\n",
        "field 'max_depth': must be between 1 and 10",
    ),
    (
        "max_depth_11.yaml",
        "name: n\ndescription: d\nmax_depth: 11\n",
        "field 'max_depth': must be between 1 and 10",
    ),
    (
        "max_depth_str.yaml",
        "name: n\ndescription: d\nmax_depth: '3'\n",
        "field 'max_depth': expected an integer, got string",
    ),
    (
        "max_depth_bool.yaml",
        "name: n\ndescription: d\nmax_depth: true\n",
        "field 'max_depth': expected an integer, got bool",
    ),
    (
        "max_depth_float.json",
        '{"name": "n", "description": "d", "max_depth": 2.5}',
        "field 'max_depth': expected an integer, got float",
    ),
    (
        "tasks_map.yaml",
        "name: n\ndescription: d\ntasks: {a: 1}\n",
        "field 'tasks': expected a list, got mapping",
    ),
    ("task_str.yaml", "name: n\ndescription: d\ntasks: [do it]\n", "field 'tasks[0]': expected a mapping"),
    (
        "task_no_title.yaml",
        "name: n\ndescription: d\ntasks: [{description: x}]\n",
        "field 'tasks[0].title': missing",
    ),
    (
        "task_unknown.yaml",
        "name: n\ndescription: d\ntasks: [{title: t}, {title: u, owner: me}]\n",
        "field 'tasks[1].owner': unknown field",
    ),
    (
        "task_criterion.yaml",
        "name: n\ndescription: d\ntasks: [{title: t, acceptance_criteria: [ok, 7]}]\n",
        "field 'tasks[0].acceptance_criteria[1]': expected a string, got int",
    ),
    ("devai_no_name.json", '{"query": "q", "tags": []}', "field 'name': missing (required)"),
    ("devai_query_int.json", '{"name": "n", "query": 1}', "field 'query': expected a string, got int"),
    ("empty.yaml", "", "file is empty"),
    ("blank.yaml", " \n\t\n", "file is empty"),
    ("comments.yaml", "# nothing here\n", "only comments"),
    ("binary.yaml", b"name: n\x00\x01\x02", "binary file"),
    ("latin1.yaml", "name: café\ndescription: d\n".encode("latin-1"), "not UTF-8 text (byte 0xe9"),
    ("bad.yaml", "name: n\n  x: : [\n", "invalid YAML at line 2, column"),
    ("unclosed.yaml", 'name: "abc\ndescription: d\n', "invalid YAML at line 3, column 1"),
    ("two_docs.yaml", "name: a\ndescription: d\n---\nname: b\n", "expected a single document"),
    (
        "dup.yaml",
        "name: a\ndescription: d\nname: b\n",
        "invalid YAML at line 3, column 1: duplicate key 'name'",
    ),
    ("bad.json", '{"name": "n",\n "description": }', "invalid JSON at line 2, column 17"),
    ("dup.json", '{"name": "n", "description": "d", "name": "m"}', "duplicate key 'name'"),
    ("list.yaml", "- a\n- b\n", "expected a mapping at the top level, got list"),
    ("scalar.json", '"just a string"', "expected a mapping at the top level, got string"),
]


@pytest.mark.parametrize(("name", "content", "expected"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_gives_one_line_error(tmp_path: Path, name: str, content: str | bytes, expected: str) -> None:
    """Each bad project file fails with one ProjectFileError line: file name, then field and problem."""
    path = _write(tmp_path, name, content)
    message = _error(path)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message


def test_missing_file(tmp_path: Path) -> None:
    """A path that does not exist is named in a one-line error."""
    path = tmp_path / "nope.yaml"
    assert _error(path) == f"{path}: no such file"


def test_directory(tmp_path: Path) -> None:
    """A directory given as the project file is refused by name."""
    assert _error(tmp_path) == f"{tmp_path}: is a directory, not a project file"


def test_huge_file(tmp_path: Path) -> None:
    """A file over MAX_PROJECT_FILE_BYTES is refused from its size, without being parsed."""
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:
        f.truncate(limits.MAX_PROJECT_FILE_BYTES + 1)  # sparse: no 10 MB actually written
    message = _error(path)
    assert message.startswith(f"{path}: file too large")
    assert f"{limits.MAX_PROJECT_FILE_BYTES:,} bytes" in message


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that cannot be opened (no permission, I/O error) gives a one-line error, not a traceback."""
    path = _write(tmp_path, "secret.yaml", "name: n\ndescription: d\n")

    # Simulated, since the tests may run as root, who can read a file whatever its mode.
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(project_module, "open", refuse, raising=False)
    assert _error(path) == f"{path}: permission denied"

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(project_module, "open", broken, raising=False)
    assert _error(path) == f"{path}: cannot read: Input/output error"


def test_hostile_key_stays_on_one_line(tmp_path: Path) -> None:
    """An unknown key with a newline and 500 characters is escaped and clipped: one short line."""
    path = _write(tmp_path, "k.json", json.dumps({"name": "n", "description": "d", "a\nb" + "x" * 500: 1}))
    message = _error(path)
    assert "field 'a\\nbxxx" in message
    assert len(message) < 300 + len(str(path))


def test_file_name_with_newline_stays_on_one_line(tmp_path: Path) -> None:
    """A file name with a control character is shown escaped, keeping the error on one line."""
    path = _write(tmp_path, "odd\nname.yaml", "name: 1\ndescription: d\n")
    message = _error(path)
    assert "odd\\nname.yaml: field 'name'" in message


def test_validate_checks_definitions_built_in_code() -> None:
    """validate() applies the same rules to a definition built in Python, named by the given source."""
    ProjectDefinition(name="n", description="d", max_depth=10).validate()
    cases: list[tuple[ProjectDefinition, str]] = [
        (ProjectDefinition(name="", description="d"), "project: field 'name': must not be empty"),
        (ProjectDefinition(name="n", description="d", max_depth=0), "project: field 'max_depth'"),
        (
            ProjectDefinition(name="n", description="d", tasks=[SeedTask(title="t" * 301)]),
            "project: field 'tasks[0].title': is 301 characters long",
        ),
        (
            ProjectDefinition(name="n", description="d", goals=[1]),  # type: ignore[list-item]
            "project: field 'goals[0]': expected a string, got int",
        ),
    ]
    for definition, expected in cases:
        with pytest.raises(ProjectFileError) as info:
            definition.validate()
        assert str(info.value).startswith(expected), str(info.value)
    with pytest.raises(ProjectFileError, match=r"^api: field 'description'"):
        ProjectDefinition(name="n", description=" ").validate("api")


def test_too_many_seed_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """More seed tasks than MAX_SEED_TASKS is refused before the tasks are read one by one."""
    monkeypatch.setattr(limits, "MAX_SEED_TASKS", 2)
    data = {"name": "n", "description": "d", "tasks": [{"title": "a"}, {"title": "b"}, 3]}
    with pytest.raises(ProjectFileError, match=r"^p\.yaml: field 'tasks': has 3 items, more than the limit of 2$"):
        ProjectDefinition.from_mapping(data, "p.yaml")


def test_from_mapping_rejects_non_mapping() -> None:
    """from_mapping names the source when the data is not a mapping at all."""
    with pytest.raises(ProjectFileError, match=r"^x\.json: expected a mapping at the top level, got null$"):
        ProjectDefinition.from_mapping(None, "x.json")


def test_proto_round_trip() -> None:
    """to_proto/from_proto keep every field, and max_depth None travels as 0 and comes back as None."""
    definition = ProjectDefinition(
        name="n",
        description="d",
        goals=["g1", "g2"],
        constraints=["c"],
        tasks=[SeedTask(title="t", description="td", acceptance_criteria=["a1"])],
        max_depth=4,
    )
    msg = definition.to_proto()
    assert msg.max_depth == 4
    assert list(msg.tasks[0].acceptance_criteria) == ["a1"]
    assert ProjectDefinition.from_proto(msg) == definition
    default_depth = ProjectDefinition(name="n", description="d")
    assert default_depth.to_proto().max_depth == 0
    assert ProjectDefinition.from_proto(default_depth.to_proto()).max_depth is None
