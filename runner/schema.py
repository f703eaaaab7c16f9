"""The shape of the LLM's answer, and turning an answer's text into validated `Subtask` messages.

The schema asks for no keys: a subtask's key is its position (1 for the first), which the runner
assigns, and `depends_on` lists the positions of the siblings a subtask needs first. Writing and
then citing keys of its own is what a very small model gets wrong most often (repeated keys,
dependencies on keys such as '3.756249'); positions it cannot get wrong in structure, and in
`json_object` mode the grammar (`grammar_schema`) lets each subtask name only earlier positions.

The parser is lenient where guessing cannot hurt (answers in the older shape with string keys of
their own, as caches and other runners hold, are read as they are; a missing key becomes the
child's position, a missing description becomes "", numbers where strings belong become strings,
over-long text is clipped to the limits) and strict where a guess would change the plan (a missing
title or atomic flag, a negative estimate, a dependency that names no sibling, numbered or
near-duplicate siblings): those go back to the LLM as errors.
"""

from __future__ import annotations

import copy
import json
import os
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from paradecom import limits
from paradecom.errors import ConfigError, ParaDecomError
from paradecom.subtasks import (
    NEAR_DUPLICATE_SIMILARITY,
    SubtaskShape,
    similarity,
    subtask_errors,
    without_numbering,
)
from paradecom.v1 import task_pb2

# Fields the LLM may leave out or set to null; the model's default stands in for them.
_OPTIONAL_FIELDS = (
    "key",
    "description",
    "acceptance_criteria",
    "depends_on",
    "atomic_reason",
    "estimate_hours",
)

_WORDY = re.compile(r"[^\W_]")
_FENCE_RE = re.compile(r"```[ \t]*(?:json|JSON)?\s*(.*?)```", re.DOTALL)

# Errors beyond this many add nothing for the LLM to act on and only lengthen the re-ask.
MAX_REPORTED_ERRORS = 20
# JSON decodes tried on one answer (the whole text, fenced blocks, objects in prose): keeps the
# search linear in the answer's length. Real answers need one to a few.
MAX_JSON_DECODE_ATTEMPTS = 32


class InvalidAnswer(ParaDecomError):
    """The LLM's answer is not a usable decomposition; `errors` says why, one line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors) if errors else "invalid answer")
        self.errors = errors


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _as_text(value: Any) -> Any:
    # Models often write keys as numbers ("key": 1, "depends_on": [1, 2]); the meaning is the same.
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        # Not through float(): an int of thousands of digits overflows it.
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    return value


class SubtaskAnswer(BaseModel):
    """One child as the LLM writes it."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    key: str = ""
    title: str
    description: str = ""
    acceptance_criteria: list[str] = Field(default_factory=list)
    depends_on: list[str] = Field(default_factory=list)
    atomic: bool
    atomic_reason: str = ""
    estimate_hours: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (v is None and k in _OPTIONAL_FIELDS)}
        return data

    @field_validator("key", mode="before")
    @classmethod
    def _key_as_text(cls, value: Any) -> Any:
        return _as_text(value)

    @field_validator("depends_on", mode="before")
    @classmethod
    def _deps_as_texts(cls, value: Any) -> Any:
        if isinstance(value, str | int):
            value = [value] if value != "" else []
        if isinstance(value, list):
            return [_as_text(v) for v in value]
        return value

    @field_validator("acceptance_criteria", mode="before")
    @classmethod
    def _criteria_as_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        return value


class DecompositionAnswer(BaseModel):
    """The whole answer: `{"subtasks": [...]}`."""

    model_config = ConfigDict(extra="ignore")

    subtasks: list[SubtaskAnswer]


# Keys of a pydantic JSON schema that only document it: they cost the endpoint's grammar compiler
# (and OpenAI's strict mode) nothing useful, and `default` contradicts "every property required".
_SCHEMA_NOISE = frozenset({"title", "default", "description", "examples"})


def _strict(node: Any, defs: dict[str, Any]) -> Any:
    """`node` with $refs inlined, the noise dropped, and every object closed and fully required."""
    if isinstance(node, list):
        return [_strict(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _strict(defs[ref.removeprefix("#/$defs/")], defs)
    out = {k: _strict(v, defs) for k, v in node.items() if k not in _SCHEMA_NOISE and k not in ("$defs", "properties")}
    if isinstance(node.get("properties"), dict):
        # Property names are data, not schema keywords: a property called "title" stays.
        out["properties"] = {name: _strict(sub, defs) for name, sub in node["properties"].items()}
    if out.get("type") == "object":
        out["required"] = list(out.get("properties", {}))
        out["additionalProperties"] = False
    return out


def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of `model` in the form OpenAI's strict structured outputs accept (and vLLM,
    Ollama and llama.cpp's grammar compilers too): no $defs/$ref, no titles, descriptions or defaults,
    every object `additionalProperties: false` with all its properties required."""
    raw = model.model_json_schema()
    result: dict[str, Any] = _strict(raw, raw.get("$defs", {}))
    return result


# Answer profiles: what an answer is asked to contain. `full` (the default) is every field of a
# Subtask. `small` is for very small local models (the embedded SmolLM2-135M, which `paradecom run`
# points its runners at with PARADECOM_ANSWER_PROFILE=small): measured, such a model repeats one
# subtask's title and description over every sibling and copies whatever text it saw last (asked
# for one acceptance criterion, 43 of 99 it wrote were the worked example's), so it is asked only
# for a title and depends_on, for exactly --max-subtasks subtasks; `grammar_schema` then makes each
# position's title start with a verb of its own (`SMALL_TITLE_VERBS`), so siblings differ by
# construction, and fixes `atomic` to false (a tiny model's judgement of atomicity is noise; the
# project's max_depth ends the tree instead).
ANSWER_PROFILES = ("full", "small")
ENV_ANSWER_PROFILE = "PARADECOM_ANSWER_PROFILE"
_SMALL_FIELDS = ("title", "depends_on", "atomic")


def answer_profile() -> str:
    """$PARADECOM_ANSWER_PROFILE, else `full`; ConfigError if it names no profile."""
    profile = os.environ.get(ENV_ANSWER_PROFILE, "").strip() or "full"
    if profile not in ANSWER_PROFILES:
        raise ConfigError(f"{ENV_ANSWER_PROFILE}={profile!r} is not one of {', '.join(ANSWER_PROFILES)}")
    return profile


def decomposition_schema(max_subtasks: int = limits.MAX_SUBTASKS, profile: str | None = None) -> dict[str, Any]:
    """DECOMPOSITION_SCHEMA with at most `max_subtasks` subtasks (the runner's --max-subtasks), for
    answer `profile` (None: `answer_profile()`, from the environment).

    Derived from DecompositionAnswer, with two changes to what is asked (the parser still reads
    both forms): no `key`, since a subtask's key is its position; and `depends_on` as integers,
    the positions of the siblings it needs first. The `small` profile asks only for _SMALL_FIELDS,
    and for exactly `max_subtasks` subtasks.
    """
    if not 1 <= max_subtasks <= limits.MAX_SUBTASKS:
        raise ValueError(f"max_subtasks must be 1 to {limits.MAX_SUBTASKS}, not {max_subtasks}")
    profile = profile or answer_profile()
    if profile not in ANSWER_PROFILES:
        raise ValueError(f"profile must be one of {', '.join(ANSWER_PROFILES)}, not {profile!r}")
    schema = strict_json_schema(DecompositionAnswer)
    item = schema["properties"]["subtasks"]["items"]
    del item["properties"]["key"]
    if profile == "small":
        item["properties"] = {name: item["properties"][name] for name in _SMALL_FIELDS}
    item["required"] = list(item["properties"])
    item["properties"]["depends_on"]["items"] = {"type": "integer"}
    # Bounds the runner enforces anyway; in the schema they also stop a grammar-constrained small
    # model from writing subtasks until it runs out of tokens.
    schema["properties"]["subtasks"].update(minItems=max_subtasks if profile == "small" else 1, maxItems=max_subtasks)
    return schema


def _is_small(schema: dict[str, Any]) -> bool:
    return "description" not in schema["properties"]["subtasks"]["items"]["properties"]


# Lengths a grammar-constrained answer is held to (json_object mode: llama.cpp turns the schema into
# a grammar). Without them a very small model fills one string until it hits max_tokens, and the
# cut-off answer is refused. OpenAI's strict mode does not take maxLength, so json_schema mode
# sends the schema without them; longer strings are clipped after parsing anyway.
GRAMMAR_STRING_BOUNDS = {"title": 120, "description": 400, "atomic_reason": 200}
GRAMMAR_MIN_TITLE_CHARS = 3
GRAMMAR_CRITERION_CHARS = 200
GRAMMAR_MAX_CRITERIA = 5
# The small profile's bounds: short titles keep two titles that differ only in their verb apart
# under the near-duplicate rule (k shared words of k + 1 are nearly the same only from k = 8).
SMALL_TITLE_CHARS = 60
# The verbs a small profile title may start with, per position (1-based), for up to five subtasks:
# disjoint sets, so no two siblings start alike, in the order work usually goes (prepare, build,
# extend, check, ship). With fewer subtasks the first and last groups stay first and last.
SMALL_TITLE_VERBS: tuple[tuple[str, ...], ...] = (
    ("Design", "Plan", "Define", "Set up", "Prepare", "Choose", "Research", "Collect", "Load", "Gather", "Read"),
    ("Build", "Implement", "Create", "Develop", "Write", "Train", "Code", "Make", "Program", "Fit"),
    ("Add", "Integrate", "Connect", "Extend", "Configure", "Tune", "Improve", "Optimize", "Handle", "Support"),
    ("Test", "Evaluate", "Validate", "Check", "Measure", "Verify", "Compare", "Review", "Analyze", "Debug"),
    ("Document", "Deploy", "Release", "Save", "Report", "Visualize", "Publish", "Package", "Export", "Present"),
)
_SMALL_GROUPS_BY_COUNT = {1: (1,), 2: (0, 1), 3: (0, 1, 3), 4: (0, 1, 3, 4), 5: (0, 1, 2, 3, 4)}
# A title's text after its verb: a letter first (not "1.0"), then no quote, backslash or control
# character (the grammar writes the string's characters itself, and JSON forbids raw control ones).
_TITLE_REST = r'[A-Za-z][^"\\\x00-\x1f]'


def small_title_verbs(position: int, count: int) -> tuple[str, ...]:
    """The verbs the title of the subtask at `position` (1-based) of `count` may start with in the
    small profile; () beyond the fifth subtask (any title)."""
    groups = _SMALL_GROUPS_BY_COUNT.get(count, _SMALL_GROUPS_BY_COUNT[5])
    return SMALL_TITLE_VERBS[groups[position - 1]] if position <= len(groups) else ()


def grammar_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (a decomposition schema) tightened into what a grammar can enforce: string lengths,
    and `depends_on` naming only earlier siblings by position, so that a dependency on no sibling,
    on itself or in a cycle cannot be written at all.

    JSON schema cannot make an item's schema depend on its index except through tuples, so the
    subtasks list becomes one alternative per allowed count (anyOf), each a tuple (`prefixItems`)
    of the subtasks at positions 1 to n, where the subtask at position p may depend on 1 to p-1.
    The subtask at each position, and each bounded string, is one `$defs` entry referenced
    wherever it appears: inlined, the grammar llama.cpp compiles for every request would repeat
    them once per count and position (137 KB of grammar for 5 subtasks instead of 9 KB).
    llama.cpp's converters (the server's C++ one and llama-cpp-python's) take all of this.
    """
    bounded = copy.deepcopy(schema)
    small = _is_small(bounded)
    subtasks = bounded["properties"]["subtasks"]
    item = subtasks["items"]
    props = item["properties"]
    defs: dict[str, Any] = {}
    for name, length in GRAMMAR_STRING_BOUNDS.items():
        if name in props:
            defs[name] = {**props[name], "maxLength": SMALL_TITLE_CHARS if small and name == "title" else length}
            props[name] = {"$ref": f"#/$defs/{name}"}
    defs["title"]["minLength"] = GRAMMAR_MIN_TITLE_CHARS
    if "acceptance_criteria" in props:
        defs["criterion"] = {**props["acceptance_criteria"]["items"], "maxLength": GRAMMAR_CRITERION_CHARS}
        props["acceptance_criteria"]["items"] = {"$ref": "#/$defs/criterion"}
        props["acceptance_criteria"]["maxItems"] = GRAMMAR_MAX_CRITERIA
    if small:
        props["atomic"] = {"const": False}
    low, high = subtasks.get("minItems", 1), subtasks["maxItems"]
    for position in range(1, high + 1):
        at = copy.deepcopy(item)
        depends_on = at["properties"]["depends_on"]
        if position == 1:
            depends_on["maxItems"] = 0
        else:
            # Repeats are not forbidden (the parser drops them); the bound keeps the list short.
            depends_on["items"] = {"enum": list(range(1, position))}
            depends_on["maxItems"] = position - 1
        verbs = small_title_verbs(position, high) if small else ()
        if verbs:
            rest = f"{_TITLE_REST}{{{GRAMMAR_MIN_TITLE_CHARS - 1},{SMALL_TITLE_CHARS - 1}}}"
            at["properties"]["title"] = {"type": "string", "pattern": f"^({'|'.join(verbs)}) {rest}$"}
        defs[f"subtask{position}"] = at
    bounded["properties"]["subtasks"] = {
        "anyOf": [
            {
                "type": "array",
                "prefixItems": [{"$ref": f"#/$defs/subtask{position}"} for position in range(1, count + 1)],
                "minItems": count,
                "maxItems": count,
            }
            for count in range(low, high + 1)
        ]
    }
    bounded["$defs"] = defs
    return bounded


# What `response_format` sends (json_schema and json_object modes) in the full profile: the answer's
# shape, derived from the models above so the two cannot drift apart.
DECOMPOSITION_SCHEMA: dict[str, Any] = decomposition_schema(profile="full")


def _loads(text: str) -> Any:
    """json.loads, with every way it can refuse text raised as json.JSONDecodeError. Raw control
    characters (a line break) inside strings are taken as they are: a grammar-constrained model
    writes them, and their meaning is plain."""
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        # Brackets nested deeper than the interpreter's recursion limit (a model stuck repeating one).
        raise json.JSONDecodeError("nested too deeply", text, 0) from None
    except ValueError:
        # Python refuses to convert integers of more than 4,300 digits (sys.get_int_max_str_digits).
        raise json.JSONDecodeError("a number with too many digits to read", text, 0) from None


def extract_json(text: str) -> Any:
    """The JSON value in `text`: the whole text, else a ```json fenced block, else the first
    `{"subtasks": ...}` object found in surrounding prose. Raises InvalidAnswer when there is none,
    or when `text` is longer than limits.MAX_ANSWER_CHARS (it is then not read at all).

    At most MAX_JSON_DECODE_ATTEMPTS decodes are tried in all: each failed one costs time in
    proportion to the text's length (JSONDecodeError counts the lines before the error), so trying
    every `{` of a long answer would be quadratic.
    """
    if len(text) > limits.MAX_ANSWER_CHARS:
        raise InvalidAnswer(
            [f"the answer is {len(text):,} characters, more than the limit of {limits.MAX_ANSWER_CHARS:,}: "
             "write a much shorter answer"]
        )  # fmt: skip
    stripped = text.strip().lstrip("\ufeff")
    if not stripped:
        raise InvalidAnswer(["the answer is empty; expected a JSON object"])
    try:
        return _loads(stripped)
    except json.JSONDecodeError as exc:
        first_error = exc
    attempts = 1
    for block in _FENCE_RE.findall(stripped):
        if attempts >= MAX_JSON_DECODE_ATTEMPTS:
            break
        attempts += 1
        try:
            return _loads(block)
        except json.JSONDecodeError:
            continue
    # Prose around the object: take the first object that has our top-level field. Any other
    # object (a lone subtask inside a cut-off answer, an example in the prose) would only turn a
    # clear "not valid JSON" into a misleading shape error. Without the field's name in the text
    # no object can have it, so the search is skipped.
    decoder = json.JSONDecoder(strict=False)
    candidates = re.finditer(r"\{", stripped) if '"subtasks"' in stripped else iter(())
    for match in candidates:
        if attempts >= MAX_JSON_DECODE_ATTEMPTS:
            break
        attempts += 1
        try:
            value, _ = decoder.raw_decode(stripped, match.start())
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError, as is a too-long integer
            continue
        if isinstance(value, dict) and "subtasks" in value:
            return value
    raise InvalidAnswer(
        [f"the answer is not valid JSON ({first_error.msg} at line {first_error.lineno} column {first_error.colno})"]
    )


def _format_validation_error(exc: ValidationError) -> list[str]:
    errors: list[str] = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "subtasks" and isinstance(loc[1], int):
            where = f"subtask {loc[1] + 1}"
            loc = loc[2:]
        field = ".".join(str(part) for part in loc)
        prefix = ": ".join(part for part in (where, field) if part)
        errors.append(f"{prefix}: {err['msg']}" if prefix else str(err["msg"]))
    return errors


def parse_decomposition(text: str, parent_title: str, *, salvage: bool = False) -> list[task_pb2.Subtask]:
    """The validated children in the LLM's answer `text` for the task titled `parent_title`.

    Raises InvalidAnswer listing every problem (not JSON, wrong shape, broken structural rules of
    `paradecom.subtasks.subtask_errors`), worded so the LLM can correct itself when re-asked.

    `salvage` (for the last answer the runner may get, once re-asks are spent): instead of refusing
    an answer for its children's structural faults, keep what is sound (`_salvaged`); InvalidAnswer
    only when nothing valid is left.
    """
    data = extract_json(text)
    # A bare list of children is unambiguous, so it is taken as the subtasks.
    if isinstance(data, list):
        data = {"subtasks": data}
    if not isinstance(data, dict):
        raise InvalidAnswer([f'expected a JSON object {{"subtasks": [...]}}, got {type(data).__name__}'])
    if "subtasks" not in data:
        raise InvalidAnswer(['the object has no "subtasks" field; expected {"subtasks": [...]}'])
    try:
        answer = DecompositionAnswer.model_validate(data)
    except ValidationError as exc:
        raise InvalidAnswer(_format_validation_error(exc)[:MAX_REPORTED_ERRORS]) from None

    subtasks: list[task_pb2.Subtask] = []
    for position, child in enumerate(answer.subtasks, start=1):
        # A criterion with no letter or digit ("],", "-") says nothing: left out.
        criteria = [_clip(c, limits.MAX_ITEM_CHARS) for c in child.acceptance_criteria if _WORDY.search(c)]
        subtasks.append(
            task_pb2.Subtask(
                key=child.key or str(position),
                title=_clip(child.title, limits.MAX_TITLE_CHARS),
                description=_clip(child.description, limits.MAX_DESCRIPTION_CHARS),
                acceptance_criteria=criteria[: limits.MAX_LIST_ITEMS],
                # Order kept, repeats dropped: a repeated dependency means nothing more.
                depends_on=list(dict.fromkeys(d for d in child.depends_on if d)),
                atomic=child.atomic,
                atomic_reason=_clip(child.atomic_reason, limits.MAX_ITEM_CHARS),
                estimate_hours=child.estimate_hours,
            )
        )
    errors = _errors(subtasks, parent_title)
    if errors and salvage:
        kept = _salvaged(subtasks, parent_title)
        if kept and not _errors(kept, parent_title):
            return kept
    if errors:
        raise InvalidAnswer(errors[:MAX_REPORTED_ERRORS])
    return subtasks


def _errors(subtasks: list[task_pb2.Subtask], parent_title: str) -> list[str]:
    return subtask_errors(
        [SubtaskShape(s.key, s.title, list(s.depends_on), s.description) for s in subtasks],
        parent_title=parent_title,
    )


def _salvaged(subtasks: list[task_pb2.Subtask], parent_title: str) -> list[task_pb2.Subtask]:
    """What is sound in `subtasks`: a numbered title loses its number; a child that is its parent
    again (its title), has no title, repeats an earlier sibling's key, or is nearly the same as an
    earlier kept sibling (title or description) is left out; dependencies on no kept sibling are
    dropped. Left for `subtask_errors` to refuse: a dependency cycle, over-long keys or titles.
    Guessing here cannot hurt: what is left out is a child already there (or no child at all), and
    the order of the rest is the answer's own."""
    kept: list[task_pb2.Subtask] = []
    parent = parent_title.strip().casefold()
    for original in subtasks:
        child = task_pb2.Subtask()
        child.CopyFrom(original)
        child.title = without_numbering(child.title)
        title = child.title.strip()
        if not title or title.casefold() == parent or any(k.key == child.key for k in kept):
            continue
        if any(
            similarity(k.title, child.title) >= NEAR_DUPLICATE_SIMILARITY
            or (
                k.description.strip()
                and child.description.strip()
                and similarity(k.description, child.description) >= NEAR_DUPLICATE_SIMILARITY
            )
            for k in kept
        ):
            continue
        kept.append(child)
    keys = {k.key for k in kept}
    for child in kept:
        deps = [d for d in child.depends_on if d in keys and d != child.key]
        del child.depends_on[:]
        child.depends_on.extend(deps)
    return kept
