"""Project definitions: the input of a decomposition, read from a YAML or JSON file.

A project file is a mapping with `name`, `description`, and optionally `goals`, `constraints`,
`tasks` (seed tasks) and `max_depth`. A DevAI benchmark instance (a mapping with `name` and `query`)
is accepted as it is, so the benchmark's files can be submitted without conversion.

Every problem is reported as one `ProjectFileError` line that names the file and, where there is
one, the field: `proj.yaml: field 'goals[2]': expected a string, got int`. List indexes in field
paths count from 0, as in the file's own list.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import yaml

from paradecom import limits
from paradecom.errors import ProjectFileError
from paradecom.v1 import project_pb2

STDIN_PATH = "-"
STDIN_SOURCE = "<stdin>"

_PROJECT_FIELDS = ("name", "description", "goals", "constraints", "tasks", "max_depth", "max_tasks", "max_tokens")
_TASK_FIELDS = ("title", "description", "acceptance_criteria")
# DevAI's own task statement; its presence (without `description`) marks a DevAI instance.
_DEVAI_QUERY = "query"

# Shown values and names are clipped so one hostile key cannot flood the terminal.
_MAX_SHOWN_CHARS = 80


@dataclass
class SeedTask:
    """A top-level task given by the user; the leader decomposes each one."""

    title: str
    description: str = ""
    acceptance_criteria: list[str] = field(default_factory=list)


@dataclass
class ProjectDefinition:
    """What a client submits: the project and, optionally, its seed tasks and depth limit.

    `max_depth` None means the leader's default depth. `max_tasks` and `max_tokens` are the
    project's budgets (None: the leader's task limit, and no token budget).
    """

    name: str
    description: str
    goals: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    tasks: list[SeedTask] = field(default_factory=list)
    max_depth: int | None = None
    max_tasks: int | None = None
    max_tokens: int | None = None

    def validate(self, source: str = "project") -> None:
        """Raise ProjectFileError naming `source` and the first field that breaks a rule in limits.py.

        Types are checked too, since a definition built in code bypasses from_mapping's checks.
        """
        _check_text(source, "name", self.name, limits.MAX_NAME_CHARS, required=True)
        _check_text(source, "description", self.description, limits.MAX_DESCRIPTION_CHARS, required=True)
        _check_str_list(source, "goals", self.goals)
        _check_str_list(source, "constraints", self.constraints)
        if not isinstance(self.tasks, list):
            _fail(source, "tasks", f"expected a list, got {_type_name(self.tasks)}")
        if len(self.tasks) > limits.MAX_SEED_TASKS:
            _fail(source, "tasks", _too_many(len(self.tasks), limits.MAX_SEED_TASKS))
        for i, task in enumerate(self.tasks):
            where = f"tasks[{i}]"
            if not isinstance(task, SeedTask):
                _fail(source, where, f"expected a task, got {_type_name(task)}")
            _check_text(source, f"{where}.title", task.title, limits.MAX_TITLE_CHARS, required=True)
            _check_text(source, f"{where}.description", task.description, limits.MAX_DESCRIPTION_CHARS, required=False)
            _check_str_list(source, f"{where}.acceptance_criteria", task.acceptance_criteria)
        if self.max_depth is not None:
            if isinstance(self.max_depth, bool) or not isinstance(self.max_depth, int):
                _fail(source, "max_depth", f"expected an integer, got {_type_name(self.max_depth)}")
            if not 1 <= self.max_depth <= limits.MAX_DEPTH_LIMIT:
                _fail(
                    source,
                    "max_depth",
                    f"must be between 1 and {limits.MAX_DEPTH_LIMIT}, got {self.max_depth}",
                )
        for name, value, high in (
            ("max_tasks", self.max_tasks, limits.MAX_TASKS_PER_PROJECT),
            ("max_tokens", self.max_tokens, limits.MAX_PROJECT_TOKENS),
        ):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                _fail(source, name, f"expected an integer, got {_type_name(value)}")
            if not 1 <= value <= high:
                _fail(source, name, f"must be between 1 and {high:,}, got {value}")

    def to_proto(self) -> project_pb2.ProjectDefinition:
        """The wire form; a None max_depth becomes 0, which the leader reads as its default."""
        return project_pb2.ProjectDefinition(
            name=self.name,
            description=self.description,
            goals=list(self.goals),
            constraints=list(self.constraints),
            tasks=[
                project_pb2.TaskSpec(
                    title=t.title,
                    description=t.description,
                    acceptance_criteria=list(t.acceptance_criteria),
                )
                for t in self.tasks
            ],
            max_depth=self.max_depth or 0,
            max_tasks=self.max_tasks or 0,
            max_tokens=self.max_tokens or 0,
        )

    @classmethod
    def from_proto(cls, msg: project_pb2.ProjectDefinition) -> ProjectDefinition:
        """The inverse of to_proto; it does not validate, so call validate() on untrusted input."""
        return cls(
            name=msg.name,
            description=msg.description,
            goals=list(msg.goals),
            constraints=list(msg.constraints),
            tasks=[
                SeedTask(
                    title=t.title,
                    description=t.description,
                    acceptance_criteria=list(t.acceptance_criteria),
                )
                for t in msg.tasks
            ],
            max_depth=msg.max_depth or None,
            max_tasks=msg.max_tasks or None,
            max_tokens=msg.max_tokens or None,
        )

    @classmethod
    def from_mapping(cls, data: object, source: str) -> ProjectDefinition:
        """Build and validate a definition from parsed YAML/JSON, checking every type strictly.

        An optional field set to null counts as absent (YAML gives null for `goals:` with nothing
        after it). Strings are stripped of surrounding whitespace, which YAML block scalars add.
        """
        if not isinstance(data, Mapping):
            raise ProjectFileError(f"{_printable(source)}: expected a mapping at the top level, got {_type_name(data)}")
        if _DEVAI_QUERY in data and "description" not in data:
            definition = cls._from_devai(data, source)
        else:
            definition = cls._from_project_mapping(data, source)
        definition.validate(source)
        return definition

    @classmethod
    def _from_devai(cls, data: Mapping[Any, Any], source: str) -> ProjectDefinition:
        # DevAI's requirements and preferences are its judge's hidden criteria, so only the
        # query (what a developer would be told) becomes the description.
        return cls(
            name=_get_str(data, "name", source, "name", required=True),
            description=_get_str(data, _DEVAI_QUERY, source, _DEVAI_QUERY, required=True),
        )

    @classmethod
    def _from_project_mapping(cls, data: Mapping[Any, Any], source: str) -> ProjectDefinition:
        _reject_unknown(data, _PROJECT_FIELDS, source, prefix="")
        tasks_raw = _get_list(data, "tasks", source, "tasks")
        tasks = [_seed_task(item, source, f"tasks[{i}]") for i, item in enumerate(tasks_raw)]
        return cls(
            name=_get_str(data, "name", source, "name", required=True),
            description=_get_str(data, "description", source, "description", required=True),
            goals=_get_str_list(data, "goals", source, "goals"),
            constraints=_get_str_list(data, "constraints", source, "constraints"),
            tasks=tasks,
            # Its type and range are checked by validate(), like those of a definition built in code.
            max_depth=data.get("max_depth"),
            max_tasks=data.get("max_tasks"),
            max_tokens=data.get("max_tokens"),
        )


def top_level_tasks(definition: project_pb2.ProjectDefinition) -> list[project_pb2.TaskSpec]:
    """A project's top-level tasks, in order: its seed tasks, or else one root task made from the
    project itself (what the leader queues on SubmitProject)."""
    return list(definition.tasks) or [
        project_pb2.TaskSpec(
            title=definition.name, description=definition.description, acceptance_criteria=definition.goals
        )
    ]


def load_project(path: str | os.PathLike[str]) -> ProjectDefinition:
    """Read, parse and validate a project file; "-" reads standard input.

    `.json` files are parsed as JSON, anything else as YAML (a superset of JSON). Every failure,
    from a missing file to a bad field, is a one-line ProjectFileError naming the file.
    """
    name = os.fspath(path)
    source = STDIN_SOURCE if name == STDIN_PATH else _printable(name)
    raw = _read_stdin() if name == STDIN_PATH else _read_file(name, source)
    text = _decode(raw, source)
    if not text.strip():
        raise ProjectFileError(f"{source}: file is empty")
    data = _parse_json(text, source) if name.lower().endswith(".json") else _parse_yaml(text, source)
    if data is None:
        raise ProjectFileError(f"{source}: file has no content, only comments or an empty document")
    return ProjectDefinition.from_mapping(data, source)


# --- reading ---------------------------------------------------------------------------------------


def _read_file(name: str, source: str) -> bytes:
    try:
        if os.path.isdir(name):
            raise ProjectFileError(f"{source}: is a directory, not a project file")
        size = os.stat(name).st_size
        if size > limits.MAX_PROJECT_FILE_BYTES:
            raise ProjectFileError(f"{source}: {_too_big(size)}")
        with open(name, "rb") as f:
            # Read one byte past the limit: st_size is 0 for pipes and /dev files, which can be endless.
            raw = f.read(limits.MAX_PROJECT_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ProjectFileError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise ProjectFileError(f"{source}: is a directory, not a project file") from None
    except PermissionError:
        raise ProjectFileError(f"{source}: permission denied") from None
    except OSError as e:
        raise ProjectFileError(f"{source}: cannot read: {_one_line(e.strerror or str(e))}") from None
    except ValueError:
        # os.stat raises ValueError, not OSError, for a path with a NUL byte in it.
        raise ProjectFileError(f"{source}: invalid path") from None
    if len(raw) > limits.MAX_PROJECT_FILE_BYTES:
        raise ProjectFileError(f"{source}: {_too_big(None)}")
    return raw


def _read_stdin() -> bytes:
    if sys.stdin is None or sys.stdin.closed:
        raise ProjectFileError(f"{STDIN_SOURCE}: standard input is closed")
    try:
        # A replaced sys.stdin (an embedding program, a test) may be text-only, without .buffer.
        buffer = getattr(sys.stdin, "buffer", None)
        if buffer is not None:
            raw: bytes = buffer.read(limits.MAX_PROJECT_FILE_BYTES + 1)
        else:
            raw = sys.stdin.read(limits.MAX_PROJECT_FILE_BYTES + 1).encode("utf-8")
    except OSError as e:
        raise ProjectFileError(f"{STDIN_SOURCE}: cannot read: {_one_line(e.strerror or str(e))}") from None
    if len(raw) > limits.MAX_PROJECT_FILE_BYTES:
        raise ProjectFileError(f"{STDIN_SOURCE}: {_too_big(None)}")
    return raw


def _too_big(size: int | None) -> str:
    # None when the size is only known to pass the limit (a pipe or a file still growing).
    shown = f"{size:,} bytes" if size is not None else "larger than that"
    return f"file too large: the limit is {limits.MAX_PROJECT_FILE_BYTES:,} bytes, the file is {shown}"


def _decode(raw: bytes, source: str) -> str:
    if b"\0" in raw:
        raise ProjectFileError(f"{source}: binary file (it contains NUL bytes); expected YAML or JSON text")
    try:
        # utf-8-sig drops a byte-order mark, which editors on Windows add and json.loads rejects.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ProjectFileError(
            f"{source}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); expected YAML or JSON text"
        ) from None


def _parse_json(text: str, source: str) -> object:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                # json.loads keeps the last silently; a project file with two `name`s is a mistake.
                raise _DuplicateKeyError(key)
            result[key] = value
        return result

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise ProjectFileError(
            f"{source}: invalid JSON at line {e.lineno}, column {e.colno}: {_one_line(e.msg)}"
        ) from None
    except _DuplicateKeyError as e:
        raise ProjectFileError(f"{source}: invalid JSON: duplicate key {_show(e.key)}") from None
    except RecursionError:
        raise ProjectFileError(f"{source}: invalid JSON: nested too deeply") from None


class _DuplicateKeyError(Exception):
    def __init__(self, key: object) -> None:
        super().__init__(key)
        self.key = key


# The C parser when PyYAML was built with libyaml: a 10 MB file parses in a fraction of the time.
_BaseSafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseSafeLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that refuses duplicate keys, which plain YAML loading resolves silently."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            # `<<` merge keys may repeat and override by design.
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {_show(key)}", key_node.start_mark)
            seen.add(key)
        result: dict[Any, Any] = super().construct_mapping(node, deep)
        return result


def _parse_yaml(text: str, source: str) -> object:
    try:
        # yaml.load is safe here: _StrictLoader is a SafeLoader, which builds plain data only.
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        # The context ("while scanning a quoted scalar") is half of some messages, so keep both.
        what = _one_line(", ".join(part for part in (e.context, e.problem) if part) or "syntax error")
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ProjectFileError(f"{source}: invalid YAML{where}: {what}") from None
    except yaml.reader.ReaderError as e:
        # Its str() names "<unicode string>" and a character offset; a line and column help more.
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise ProjectFileError(
            f"{source}: invalid YAML at line {line}, column {column}: "
            f"character #x{e.character:04x}: {_one_line(e.reason)}"
        ) from None
    except yaml.YAMLError as e:
        raise ProjectFileError(f"{source}: invalid YAML: {_one_line(str(e))}") from None
    except RecursionError:
        raise ProjectFileError(f"{source}: invalid YAML: nested too deeply") from None


# --- field checks ----------------------------------------------------------------------------------


def _fail(source: str, path: str, what: str) -> NoReturn:
    raise ProjectFileError(f"{_printable(source)}: field '{path}': {what}")


def _type_name(value: object) -> str:
    # Names from the file's point of view: a YAML or JSON author knows "mapping" and "null", not "dict".
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def _too_many(count: int, limit: int) -> str:
    return f"has {count:,} items, more than the limit of {limit:,}"


def _check_text(source: str, path: str, value: object, max_chars: int, *, required: bool) -> None:
    if not isinstance(value, str):
        _fail(source, path, f"expected a string, got {_type_name(value)}")
    if required and not value.strip():
        _fail(source, path, "must not be empty")
    if len(value) > max_chars:
        _fail(source, path, f"is {len(value):,} characters long, more than the limit of {max_chars:,}")


def _check_str_list(source: str, path: str, value: object) -> None:
    if not isinstance(value, list):
        _fail(source, path, f"expected a list of strings, got {_type_name(value)}")
    if len(value) > limits.MAX_LIST_ITEMS:
        _fail(source, path, _too_many(len(value), limits.MAX_LIST_ITEMS))
    for i, item in enumerate(value):
        _check_text(source, f"{path}[{i}]", item, limits.MAX_ITEM_CHARS, required=True)


def _get_str(data: Mapping[Any, Any], key: str, source: str, path: str, *, required: bool) -> str:
    value = data.get(key)
    if value is None:
        if required:
            _fail(source, path, "missing (required)" if key not in data else "expected a string, got null")
        return ""
    if not isinstance(value, str):
        _fail(source, path, f"expected a string, got {_type_name(value)}")
    return value.strip()


def _get_list(data: Mapping[Any, Any], key: str, source: str, path: str) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        _fail(source, path, f"expected a list, got {_type_name(value)}")
    # Checked before the items so a huge list fails fast instead of being walked.
    limit = limits.MAX_SEED_TASKS if key == "tasks" else limits.MAX_LIST_ITEMS
    if len(value) > limit:
        _fail(source, path, _too_many(len(value), limit))
    return value


def _get_str_list(data: Mapping[Any, Any], key: str, source: str, path: str) -> list[str]:
    items = _get_list(data, key, source, path)
    result: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            _fail(source, f"{path}[{i}]", f"expected a string, got {_type_name(item)}")
        result.append(item.strip())
    return result


def _seed_task(item: object, source: str, path: str) -> SeedTask:
    if not isinstance(item, Mapping):
        _fail(source, path, f"expected a mapping with a title, got {_type_name(item)}")
    _reject_unknown(item, _TASK_FIELDS, source, prefix=f"{path}.")
    return SeedTask(
        title=_get_str(item, "title", source, f"{path}.title", required=True),
        description=_get_str(item, "description", source, f"{path}.description", required=False),
        acceptance_criteria=_get_str_list(item, "acceptance_criteria", source, f"{path}.acceptance_criteria"),
    )


def _reject_unknown(data: Mapping[Any, Any], allowed: tuple[str, ...], source: str, *, prefix: str) -> None:
    unknown = [key for key in data if key not in allowed]
    if not unknown:
        return
    first, rest = unknown[0], unknown[1:]
    also = f" (also unknown: {', '.join(_show(k) for k in rest[:5])}{', ...' if len(rest) > 5 else ''})"
    _fail(
        source,
        prefix + _field_name(first),
        f"unknown field{also if rest else ''}; allowed fields are {', '.join(allowed)}",
    )


def _field_name(key: object) -> str:
    text = key if isinstance(key, str) else repr(key)
    return _clip(text.encode("unicode_escape").decode("ascii").replace("'", "\\'"))


def _show(value: object) -> str:
    return _clip(repr(value))


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN_CHARS else text[: _MAX_SHOWN_CHARS - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _printable(text: str) -> str:
    # Unlike _one_line, keeps a file name's spaces exactly and only escapes what would break the line.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
