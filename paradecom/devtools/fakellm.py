"""fake-llm: an OpenAI-compatible chat server that answers every prompt with a valid decomposition.

It stands in for a real model in tests, demos and load runs: answers are deterministic, cost nothing,
arrive after a chosen latency, and faults (malformed answers, 429s, 500s, slow answers, a real
requests-per-minute limit) can be injected at chosen rates. With `--rpm`, every answer states the
budget as OpenAI does (`x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests`,
`x-ratelimit-reset-requests`: when the oldest request leaves the window), unless
`--no-rate-limit-headers`.

    python -m paradecom.devtools.fakellm --listen 127.0.0.1:0 --fanout 3 --atomic-depth 2

Once bound it prints one line, `listening HOST:PORT`, on stdout; logs go to stderr.

Prompt contract
---------------
The answer is derived from structured data, never from a prompt's wording: the task line, a line
that is a JSON object with a string `task_to_decompose` (the title of the task being decomposed)
and an integer `task_depth` (its depth; 0 for a top-level task), alone on its line:

    {"task_to_decompose": "Build the shop", "task_depth": 1}

It is what the task message of every LlmRequest holds (proto/paradecom/v1/task.proto; the leader
writes it, runner/prompt.py), so any runner that sends the contract's messages gets the same answers.
The task line read is the last one in the last user message that has one (a re-ask after it has
none, so the task it re-asks about still counts). The title seeds every child (titles,
dependencies, estimates), so the same task always gets the same answer and different titles get
different ones. The depth decides atomicity: a child sits at depth d + 1 and is atomic when
d + 1 >= --atomic-depth. A depth that is missing, not an integer or negative counts as 0. Without
a task line a hash of the last user message (the last message if none has role "user") is the
seed and the depth is 0.

The answer's `content` is a JSON object string, valid against the contract's answer schema:

    {"subtasks": [{"title": "...", "description": "...",
                   "acceptance_criteria": ["...", "..."], "depends_on": [],
                   "atomic": false, "atomic_reason": "...", "estimate_hours": 12.0}, ...]}

where `depends_on` lists positions of earlier siblings (1 for the first). When the request's
`response_format` is a json_schema named "decomposition", each subtask holds just the properties
that schema's subtask items have (the `small` answer profile asks for three).

with --fanout children whose titles start with a verb, are not numbered and differ from the
parent's title, that differ from each other in title and description (each child takes its own
noun, so they pass the near-duplicate rule of paradecom/subtasks.py), and whose dependencies
point only at earlier siblings (so there is no cycle).
`--fanout 10,5` sets the fan-out per depth: 10 children for a task at depth 0, 5 at depth 1 and
every depth below (the last number repeats).

Other clients' structured output
--------------------------------
A request that is not a ParaDecom decomposition prompt (no task line) and asks for
`response_format: {"type": "json_schema", ...}` under another name than ParaDecom's
("decomposition") gets a valid, deterministic instance of that schema instead (`schema_instance`),
so other tools (Taskmaster, in bench/) can be run against fake-llm. It does what the prompt asks
where a schema cannot say it: arrays directly under the root get as many items as the prompt asks
for (its first "N tasks", "N subtasks", "N items" or "N steps", the last user message first; else
the depth-0 fan-out), and a string property takes the value the prompt spells out for it as JSON
(`"status": "pending"`). Otherwise: nested arrays get their minItems, enums their first value,
numbers the position of their array item (from 1) within the schema's bounds, strings the
property's name, position and a hash of the prompt (padded to minLength); `pattern` is not honoured.

Endpoints: POST /v1/chat/completions, GET /v1/models, GET /stats, POST /stats/reset, and GET
/requests: the bodies of the last MAX_RECORDED chat requests, oldest first, as they arrived (tests
compare what different callers send). /stats has, besides the counters, `first_request_unix_ms`:
when the first chat request since the start (or the last reset) arrived, on the wall clock
(time.time()), so another process can time it.

`--api-key KEY` refuses a request without `Authorization: Bearer KEY` (401, as OpenAI does);
`--models A,B` serves only those models (404 `model_not_found` for any other, and /v1/models lists
just them), as a hosted endpoint does. `--max-tokens-field` plays an endpoint that takes only one
of the two fields bounding an answer's length: `max_completion_tokens` answers a request carrying
`max_tokens` 400 `unsupported_parameter`, in OpenAI's words for its newer models; `max_tokens`
answers one carrying `max_completion_tokens` so, as a server that predates that field may.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import hashlib
import json
import math
import random
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from paradecom import limits
from paradecom.cliargs import Parser, address, float_range, int_range
from paradecom.grpc_options import parse_address
from paradecom.logs import LOG_FORMATS, LogFormat, configure_logging

PROG = "paradecom fake-llm"
DEFAULT_MODEL = "fake-llm"
# The model runners ask for unless told otherwise.
RUNNER_DEFAULT_MODEL = limits.DEFAULT_MODEL
RPM_WINDOW_S = 60.0
MAX_LATENCY_S = 3_600.0
MAX_RPM = 10_000_000
MAX_ATOMIC_DEPTH = 100
MAX_SEED = 2**31 - 1
# Runner prompts carry a whole project definition (up to 20 000 characters of description plus
# goals, ancestors and siblings); aiohttp's 1 MiB default would turn a large one into a bare 413.
MAX_REQUEST_BYTES = 32 * 1024 * 1024
# The kernel caps this at net.core.somaxconn; asking for more lets a burst of thousands of
# connections queue instead of being refused.
LISTEN_BACKLOG = 4_096
# In-flight answers of a fake server are not worth waiting for at shutdown.
SHUTDOWN_TIMEOUT_S = 1.0
# Chat request bodies kept for GET /requests; older ones are dropped.
MAX_RECORDED = 1_000
# --response-format-support: the most demanding response_format kind still accepted.
RESPONSE_FORMAT_SUPPORT = ("json_schema", "json_object", "none")
# --max-tokens-field: the answer-length fields accepted (`both`, or the only one).
TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")
MAX_TOKENS_FIELD_SUPPORT = ("both", *TOKEN_LIMIT_FIELDS)

# The task line's keys (runner/prompt.py TASK_LINE_KEYS; not imported: it pulls in pydantic).
TASK_KEY, DEPTH_KEY = "task_to_decompose", "task_depth"
MAX_DEPTH_READ = 10**9

_VERBS = (
    "Design", "Build", "Implement", "Define", "Test", "Document", "Integrate", "Review",
    "Deploy", "Measure", "Secure", "Refactor", "Prototype", "Validate", "Automate", "Configure",
)  # fmt: skip
# Each noun with what its part of the work covers: siblings get different nouns, so their titles
# and descriptions differ as the structural rules require (no near-duplicate siblings), for any
# fan-out up to limits.MAX_SUBTASKS.
_NOUNS = {
    "data model": "the entities, their fields and how they relate",
    "API": "the endpoints other components call, with their inputs and errors",
    "storage layer": "where records are written, read back and migrated",
    "user interface": "the screens people use and how they move between them",
    "job scheduler": "background jobs, when they run and what happens when one fails",
    "auth flow": "signing in, signing out and resetting a password",
    "config loader": "settings read from files and the environment, with defaults",
    "metrics pipeline": "counters and timings collected, stored and charted",
    "error handling": "how failures are caught, reported and recovered from",
    "search index": "indexing content and answering queries quickly",
    "cache": "keeping hot results close and invalidating stale ones",
    "CLI": "commands, flags and their help text",
    "release process": "versioning, packaging and shipping a build",
    "audit log": "a record of who changed what and when",
    "import tool": "bringing existing data in and checking it on arrival",
    "notification service": "emails and messages sent when something happens",
    "test harness": "fixtures and helpers that make tests quick to write",
    "access control": "roles and the permissions each one grants",
    "backup routine": "scheduled copies and restores that are rehearsed",
    "admin console": "pages where staff manage users and settings",
}
assert len(_NOUNS) >= limits.MAX_SUBTASKS

log = structlog.get_logger("paradecom.devtools.fakellm")


# --- options ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The server's behaviour, taken from the command line."""

    fanout: int = 3
    atomic_depth: int = 2
    latency: float = 0.0
    seed: int = 0
    malformed_rate: float = 0.0
    rate_limit_rate: float = 0.0
    error_rate: float = 0.0
    slow_rate: float = 0.0
    slow_latency: float = 10.0
    rpm: int = 0
    response_format_support: str = "json_schema"
    max_tokens_field: str = "both"
    rpm_window: float = RPM_WINDOW_S
    # With rpm: state the budget on every answer, as OpenAI does (x-ratelimit-*-requests).
    rate_limit_headers: bool = True
    api_key: str = ""
    models: tuple[str, ...] = ()
    # Per-depth fan-out (`--fanout 10,5`); empty: `fanout` at every depth.
    fanout_by_depth: tuple[int, ...] = ()

    def fanout_at(self, depth: int) -> int:
        """Children in an answer for a task at `depth`: the depth's entry of --fanout, the last
        entry below the list's end."""
        if not self.fanout_by_depth:
            return self.fanout
        return self.fanout_by_depth[min(max(depth, 0), len(self.fanout_by_depth) - 1)]


def fanout_list(text: str) -> tuple[int, ...]:
    """A flag type: `N` or `N,N,...` (one fan-out per depth), each 1..MAX_SUBTASKS."""
    one = int_range(1, limits.MAX_SUBTASKS)
    parts = text.split(",")
    if len(parts) > MAX_ATOMIC_DEPTH:
        raise argparse.ArgumentTypeError(f"at most {MAX_ATOMIC_DEPTH} fan-outs, one per depth")
    return tuple(one(part) for part in parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add fake-llm's options to `parser`; every range is checked while parsing (exit 2)."""
    rate = float_range(0.0, 1.0)
    seconds = float_range(0.0, MAX_LATENCY_S)
    parser.add_argument(
        "--listen",
        required=True,
        type=address,
        metavar="HOST:PORT",
        help="address to serve on; port 0 picks a free port (printed as `listening HOST:PORT`)",
    )
    parser.add_argument(
        "--fanout",
        type=fanout_list,
        default=(3,),
        metavar="N[,N...]",
        help=f"children in every answer, 1..{limits.MAX_SUBTASKS} (default 3); a comma-separated list sets it "
        "per depth of the task decomposed (10,5: 10 at depth 0, 5 at depth 1 and below)",
    )
    parser.add_argument(
        "--atomic-depth",
        type=int_range(1, MAX_ATOMIC_DEPTH),
        default=2,
        metavar="D",
        help="children at this depth or deeper are atomic (default 2)",
    )
    parser.add_argument(
        "--latency",
        type=seconds,
        default=0.0,
        metavar="S",
        help="seconds added before every answer (default 0)",
    )
    parser.add_argument(
        "--seed",
        type=int_range(0, MAX_SEED),
        default=0,
        metavar="N",
        help="seed of the fault draws; the same seed gives the same faults in the same order (default 0)",
    )
    parser.add_argument(
        "--malformed-rate",
        type=rate,
        default=0.0,
        metavar="P",
        help="share of answers whose content is truncated, invalid JSON (default 0)",
    )
    parser.add_argument(
        "--rate-limit-rate",
        type=rate,
        default=0.0,
        metavar="P",
        help="share of requests answered 429 with Retry-After: 1 (default 0)",
    )
    parser.add_argument(
        "--error-rate",
        type=rate,
        default=0.0,
        metavar="P",
        help="share of requests answered 500 (default 0)",
    )
    parser.add_argument(
        "--slow-rate",
        type=rate,
        default=0.0,
        metavar="P",
        help="share of answers delayed by --slow-latency more (default 0)",
    )
    parser.add_argument(
        "--slow-latency",
        type=seconds,
        default=10.0,
        metavar="S",
        help="extra seconds of a slow answer (default 10)",
    )
    parser.add_argument(
        "--rpm",
        type=int_range(0, MAX_RPM),
        default=0,
        metavar="N",
        help="requests per minute over a sliding window, beyond which 429; 0 = no limit (default 0)",
    )
    parser.add_argument(
        "--rpm-window",
        type=float_range(0.1, 3600.0),
        default=RPM_WINDOW_S,
        metavar="S",
        help="length of --rpm's sliding window in seconds, to make tests quick (default 60: a minute)",
    )
    parser.add_argument(
        "--no-rate-limit-headers",
        dest="rate_limit_headers",
        action="store_false",
        help="with --rpm, leave out the x-ratelimit-*-requests headers that OpenAI puts on every "
        "answer (as servers that state no budget do)",
    )
    parser.add_argument(
        "--response-format-support",
        choices=RESPONSE_FORMAT_SUPPORT,
        default="json_schema",
        help="response_format kinds accepted: json_schema = every kind (OpenAI, vLLM); json_object = "
        "json_object only, json_schema answered 400 (llama.cpp); none = any response_format answered 400 "
        "(default json_schema)",
    )
    parser.add_argument(
        "--max-tokens-field",
        choices=MAX_TOKENS_FIELD_SUPPORT,
        default="both",
        help="answer-length fields accepted: both; max_completion_tokens = a request with max_tokens answered "
        "400 unsupported_parameter (OpenAI's newer models: o1, o3, gpt-5); max_tokens = a request with "
        "max_completion_tokens answered so (servers that predate it) (default both)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="refuse requests without `Authorization: Bearer KEY` with 401 (default: no key needed)",
    )
    parser.add_argument(
        "--models",
        default=None,
        metavar="A,B",
        help="serve only these models: any other is answered 404 model_not_found (default: any name)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="console",
        help="log lines on stderr as readable text or JSON (default console)",
    )


def options_from_args(args: argparse.Namespace) -> Options:
    """The Options an argparse namespace from `add_arguments` describes."""
    fanouts: tuple[int, ...] = args.fanout
    return Options(
        fanout=fanouts[0],
        fanout_by_depth=fanouts if len(fanouts) > 1 else (),
        atomic_depth=args.atomic_depth,
        latency=args.latency,
        seed=args.seed,
        malformed_rate=args.malformed_rate,
        rate_limit_rate=args.rate_limit_rate,
        error_rate=args.error_rate,
        slow_rate=args.slow_rate,
        slow_latency=args.slow_latency,
        rpm=args.rpm,
        response_format_support=args.response_format_support,
        max_tokens_field=args.max_tokens_field,
        rpm_window=args.rpm_window,
        rate_limit_headers=args.rate_limit_headers,
        api_key=args.api_key or "",
        models=tuple(m.strip() for m in (args.models or "").split(",") if m.strip()),
    )


# --- answers ------------------------------------------------------------------------------------


def _digest(*parts: object) -> int:
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def task_line(text: str) -> tuple[str, int] | None:
    """(title, depth) of the last task line in `text` (see the module docstring), or None."""
    for line in reversed(text.split("\n")):
        line = line.strip()
        if not (line.startswith("{") and line.endswith("}") and TASK_KEY in line):
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get(TASK_KEY), str):
            depth = data.get(DEPTH_KEY)
            if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
                depth = 0
            return str(data[TASK_KEY]), min(depth, MAX_DEPTH_READ)
    return None


def parse_prompt(prompt: str) -> tuple[str, int]:
    """(title seed, depth) of one message, following the contract in the module docstring."""
    found = task_line(prompt)
    if found is not None and found[0]:
        return found
    return f"prompt-{_digest(prompt):016x}", found[1] if found else 0


def parse_messages(messages: list[dict[str, Any]]) -> tuple[str, int, bool]:
    """(title seed, depth, whether a task line was found) of a chat request's messages: the last
    user message with a task line, else the last user message (else the last message) as a whole."""
    texts = [_message_text(m) for m in messages]
    users = [t for m, t in zip(messages, texts, strict=True) if m.get("role") == "user"]
    for text in reversed(users):
        if task_line(text) is not None:
            title, depth = parse_prompt(text)
            return title, depth, True
    title, depth = parse_prompt(users[-1] if users else texts[-1])
    return title, depth, False


def _child_nouns(parent_title: str, fanout: int) -> list[str]:
    """`fanout` different nouns for the children of `parent_title`, in an order its title decides."""
    return sorted(_NOUNS, key=lambda noun: _digest(parent_title, "noun", noun))[:fanout]


def _child_title(parent_title: str, index: int, noun: str) -> str:
    h = _digest(parent_title, index)
    verb = _VERBS[h % len(_VERBS)]
    # The noun keeps siblings apart; the hash suffix keeps cousins apart and the title short
    # however deep the tree goes (it never embeds the parent's title).
    title = f"{verb} the {noun} [{h >> 40:06x}]"
    if title.casefold() == parent_title.strip().casefold():
        title = f"{_VERBS[(h + 1) % len(_VERBS)]} the {noun} [{h >> 40:06x}]"
    return title


def decomposition(
    parent_title: str, depth: int, fanout: int, atomic_depth: int, fields: list[str] | None = None
) -> dict[str, Any]:
    """The answer object for a task: `fanout` children, deterministic in every field, different
    from each other in title and description; each child with only `fields` when given."""
    child_depth = depth + 1
    atomic = child_depth >= atomic_depth
    short_parent = parent_title if len(parent_title) <= 120 else parent_title[:117] + "..."
    children: list[dict[str, Any]] = []
    for index, noun in enumerate(_child_nouns(parent_title, fanout), start=1):
        h = _digest(parent_title, index, "estimate")
        title = _child_title(parent_title, index, noun)
        estimate = float(1 + h % 8) if atomic else float(8 * fanout + h % 40)
        child = {
            "title": title,
            "description": f"The {noun} of {short_parent!r}: {_NOUNS[noun]}.",
            "acceptance_criteria": [
                f"The {noun} works end to end and automated tests cover it.",
                f"A reviewer confirms the {noun} delivers what {short_parent!r} asked of it.",
            ],
            "depends_on": [index - 1] if index % 2 == 0 else [],
            "atomic": atomic,
            "atomic_reason": (
                f"At depth {child_depth} the work fits one person in about {estimate:g} hours."
                if atomic
                else f"At depth {child_depth} the work still spans several people or days."
            ),
            "estimate_hours": estimate,
        }
        children.append(child if fields is None else {name: child[name] for name in fields if name in child})
    return {"subtasks": children}


def requested_fields(response_format: Any) -> list[str] | None:
    """The subtask properties a json_schema response_format named "decomposition" asks for; None
    (every field) for any other request."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or spec.get("name") != DECOMPOSITION_SCHEMA_NAME:
        return None
    try:
        properties = spec["schema"]["properties"]["subtasks"]["items"]["properties"]
    except (KeyError, TypeError):
        return None
    return [str(name) for name in properties] if isinstance(properties, dict) else None


# --- other clients' structured output -----------------------------------------------------------

# The name ParaDecom's runners give their json_schema (runner/llm.py SCHEMA_NAME): never answered generically.
DECOMPOSITION_SCHEMA_NAME = "decomposition"
# A schema nested deeper than this (a recursive $ref) is cut short: the deepest value is minimal.
MAX_SCHEMA_DEPTH = 32
# `"status": "pending"`: a string value the prompt spells out as JSON.
_EXAMPLE_RE = re.compile(r'"([A-Za-z_][A-Za-z0-9_]{0,63})"\s*:\s*"([^"\n]{1,200})"')
# "4 tasks", "exactly 5 subtasks", "10 items": the count a prompt asks for.
_COUNT_RE = re.compile(r"\b(\d{1,4})\s+(?:[A-Za-z-]+\s+){0,2}?(?:sub)?(?:tasks|items|steps)\b", re.IGNORECASE)
_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00Z",
    "email": "fake@example.com",
    "uri": "https://example.com/fake",
    "url": "https://example.com/fake",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
}


def requested_count(*texts: str) -> int | None:
    """The number of items asked for ("4 tasks", "exactly 5 subtasks"): the first the texts say."""
    for text in texts:
        match = _COUNT_RE.search(text)
        if match:
            return int(match.group(1))
    return None


def prompt_examples(text: str) -> dict[str, str]:
    """String values the prompt spells out as JSON (`"status": "pending"`), the first per name."""
    examples: dict[str, str] = {}
    for name, value in _EXAMPLE_RE.findall(text):
        examples.setdefault(name, value)
    return examples


def foreign_schema(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema of a `json_schema` response_format that is not named like ParaDecom's
    ("decomposition"), else None."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or spec.get("name") == DECOMPOSITION_SCHEMA_NAME:
        return None
    schema = spec.get("schema")
    return schema if isinstance(schema, dict) else None


def schema_instance(schema: dict[str, Any], seed: str, count: int, examples: dict[str, str] | None = None) -> Any:
    """A deterministic instance of JSON schema `schema`: see "Other clients' structured output" in
    the module docstring. `seed` (the prompt) varies the strings, `count` sizes top-level arrays,
    `examples` (prompt_examples) gives string properties their value."""
    return _Instance(schema, seed, count, examples or {}).of(schema, "", 1, 0)


def _pointer(root: dict[str, Any], ref: str) -> dict[str, Any]:
    """The subschema a local `$ref` ("#/$defs/Task") names; {} for anything else."""
    if not ref.startswith("#"):
        return {}
    target: Any = root
    for part in filter(None, ref[1:].split("/")):
        target = target.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
    return target if isinstance(target, dict) else {}


def _resolve(root: dict[str, Any], node: Any) -> dict[str, Any]:
    """`node` with local `$ref`s and `allOf` folded in (shallowly: properties and required merged)."""
    if not isinstance(node, dict):
        return {}
    out: dict[str, Any] = dict(node)
    for _ in range(MAX_SCHEMA_DEPTH):
        ref = out.pop("$ref", None)
        if not isinstance(ref, str):
            break
        out = {**out, **_pointer(root, ref)}
    parts = out.pop("allOf", None)
    if isinstance(parts, list):
        for part in (_resolve(root, p) for p in parts):
            properties = {**out.get("properties", {}), **part.get("properties", {})}
            required = [*out.get("required", []), *part.get("required", [])]
            out.update(part, properties=properties, required=required)
    return out


def _kind(node: dict[str, Any]) -> str:
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    if "properties" in node:
        return "object"
    if "items" in node:
        return "array"
    return "string"


class _Instance:
    def __init__(self, root: dict[str, Any], seed: str, count: int, examples: dict[str, str]) -> None:
        self.root, self.seed, self.count, self.examples = root, seed, count, examples

    def of(self, node: Any, name: str, position: int, depth: int) -> Any:
        node = _resolve(self.root, node)
        if "const" in node:
            return node["const"]
        if isinstance(node.get("enum"), list) and node["enum"]:
            return node["enum"][0]
        for key in ("anyOf", "oneOf"):
            options = [_resolve(self.root, o) for o in node.get(key) or []]
            if options:
                # The first branch that is not null: a value says more than an absent one.
                chosen = next((o for o in options if o.get("type") != "null"), options[0])
                return self.of(chosen, name, position, depth)
        kind = _kind(node)
        if depth >= MAX_SCHEMA_DEPTH:
            return {"object": {}, "array": [], "string": "", "boolean": False, "null": None}.get(kind, 0)
        if kind == "object":
            properties = node.get("properties") or {}
            required = node.get("required")
            names = [n for n in properties if n in required] if isinstance(required, list) else list(properties)
            return {n: self.of(properties[n], n, position, depth + 1) for n in names}
        if kind == "array":
            low = int(node.get("minItems", 0))
            high = int(node.get("maxItems", 10_000))
            # Only the arrays directly under the root hold what the prompt asked for; nested ones (a
            # task's dependencies) stay at their minimum.
            size = max(low, min(self.count if depth <= 1 else low, high))
            items = node.get("items") if isinstance(node.get("items"), dict) else {}
            return [self.of(items, name, i, depth + 1) for i in range(1, size + 1)]
        if kind in ("integer", "number"):
            return _number(node, kind, position)
        if kind == "boolean":
            return False
        if kind == "null":
            return None
        return self._string(node, name, position)

    def _string(self, node: dict[str, Any], name: str, position: int) -> str:
        fmt = node.get("format")
        if fmt == "uuid":
            h = f"{_digest(self.seed, name, position):016x}{_digest(name, position, self.seed):016x}"
            return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"
        if fmt in _FORMATS:
            return _FORMATS[str(fmt)]
        text = self.examples.get(name)
        if text is None:
            label = (name or "value").replace("_", " ")
            text = f"{label[:1].upper()}{label[1:]} {position} [{_digest(self.seed, name, position) >> 40:06x}]"
        low = int(node.get("minLength", 0))
        if len(text) < low:
            text += "." * (low - len(text))
        return text[: int(node.get("maxLength", len(text)))]


def _number(node: dict[str, Any], kind: str, position: int) -> float:
    value: float = position
    if isinstance(node.get("minimum"), int | float):
        value = max(value, node["minimum"])
    if isinstance(node.get("exclusiveMinimum"), int | float):
        value = max(value, node["exclusiveMinimum"] + 1)
    if isinstance(node.get("maximum"), int | float):
        value = min(value, node["maximum"])
    if isinstance(node.get("exclusiveMaximum"), int | float):
        value = min(value, node["exclusiveMaximum"] - 1)
    return int(value) if kind == "integer" or float(value).is_integer() else value


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # OpenAI content parts: [{"type": "text", "text": "..."}, ...]
        return "\n".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _tokens(chars: int) -> int:
    return (chars + 3) // 4


# --- server -------------------------------------------------------------------------------------


class Stats:
    """Counters served at /stats. The event loop is single-threaded, so plain ints are safe."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.ok = 0
        self.malformed = 0
        self.rate_limited = 0
        self.rpm_limited = 0
        self.errors = 0
        self.slow = 0
        self.bad_requests = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.max_in_flight = self.in_flight
        self.by_model: collections.Counter[str] = collections.Counter()
        # response_format types seen (accepted or not; "none" for a request without one), those
        # refused, and the type of the last request's.
        self.response_formats: collections.Counter[str] = collections.Counter()
        self.response_format_rejected = 0
        self.last_response_format: str | None = None
        # Answer-length fields seen (max_tokens, max_completion_tokens), and requests refused for one.
        self.token_limit_fields: collections.Counter[str] = collections.Counter()
        self.token_limit_rejected = 0
        # Wall clock (time.time()) in ms of the first chat request since the start or a reset.
        self.first_request_unix_ms: int | None = None
        # Answers that were an instance of another client's JSON schema, not a decomposition.
        self.schema_answers = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "malformed": self.malformed,
            "rate_limited": self.rate_limited,
            "rpm_limited": self.rpm_limited,
            "errors": self.errors,
            "slow": self.slow,
            "bad_requests": self.bad_requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "by_model": dict(self.by_model),
            "response_formats": dict(self.response_formats),
            "token_limit_fields": dict(self.token_limit_fields),
            "token_limit_rejected": self.token_limit_rejected,
            "response_format_rejected": self.response_format_rejected,
            "last_response_format": self.last_response_format,
            "first_request_unix_ms": self.first_request_unix_ms,
            "schema_answers": self.schema_answers,
        }


def _error(
    status: int,
    message: str,
    err_type: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": err_type, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


class FakeLLM:
    """The request handlers and their shared state."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.stats = Stats()
        self._sequence = 0
        self._window: collections.deque[float] = collections.deque()
        self.recorded: collections.deque[Any] = collections.deque(maxlen=MAX_RECORDED)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/stats", self.get_stats)
        app.router.add_post("/stats/reset", self.reset_stats)
        app.router.add_get("/requests", self.get_requests)
        return app

    def _refuse_key(self, request: web.Request) -> web.Response | None:
        if not self.options.api_key or request.headers.get("Authorization") == f"Bearer {self.options.api_key}":
            return None
        return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")

    def _rpm_retry_after(self) -> float | None:
        """Seconds until the sliding window has room, or None after admitting this request."""
        now = time.monotonic()
        window = self._window
        while window and window[0] <= now - self.options.rpm_window:
            window.popleft()
        if len(window) >= self.options.rpm:
            return window[0] + self.options.rpm_window - now
        window.append(now)
        return None

    def _rate_limit_headers(self) -> dict[str, str]:
        """OpenAI's statement of the request budget: the limit, what is left in the window now,
        and when the oldest request in it leaves the window (`x-ratelimit-reset-requests`)."""
        opts = self.options
        if not opts.rpm or not opts.rate_limit_headers:
            return {}
        now = time.monotonic()
        live = [t for t in self._window if t > now - opts.rpm_window]
        reset = max(0.0, live[0] + opts.rpm_window - now) if live else 0.0
        return {
            "x-ratelimit-limit-requests": str(opts.rpm),
            "x-ratelimit-remaining-requests": str(max(0, opts.rpm - len(live))),
            "x-ratelimit-reset-requests": f"{math.ceil(reset * 1000)}ms",
        }

    def _refuse_response_format(self, response_format: Any) -> web.Response | None:
        """Record the request's response_format; a 400 if --response-format-support refuses it."""
        stats = self.stats
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        kind = str(kind) if kind is not None else ("none" if response_format is None else "invalid")
        stats.response_formats[kind] += 1
        stats.last_response_format = kind
        support = self.options.response_format_support
        if kind == "none" or support == "json_schema":
            return None
        if support == "json_object" and kind in ("json_object", "text"):
            return None
        stats.response_format_rejected += 1
        # Worded like llama.cpp's server, which takes json_object but not json_schema.
        message = f"response_format type {kind} is not supported"
        return _error(400, message, "invalid_request_error", "unsupported_response_format")

    def _refuse_token_limit(self, body: dict[str, Any]) -> web.Response | None:
        """Record the answer-length fields of the request; a 400 if --max-tokens-field refuses one."""
        sent = [field for field in TOKEN_LIMIT_FIELDS if body.get(field) is not None]
        self.stats.token_limit_fields.update(sent)
        accepted = self.options.max_tokens_field
        refused = next((field for field in sent if accepted not in ("both", field)), None)
        if refused is None:
            return None
        self.stats.token_limit_rejected += 1
        # Worded as OpenAI's answer to max_tokens for its newer models.
        message = f"Unsupported parameter: '{refused}' is not supported with this model. Use '{accepted}' instead."
        return _error(400, message, "invalid_request_error", "unsupported_parameter", param=refused)

    async def chat_completions(self, request: web.Request) -> web.Response:
        stats = self.stats
        if stats.first_request_unix_ms is None:
            stats.first_request_unix_ms = int(time.time() * 1000)
        stats.requests += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            return await self._chat_completions(request)
        except web.HTTPException:
            # aiohttp's own answers, such as 413 for a body over MAX_REQUEST_BYTES.
            raise
        except Exception:
            log.exception("fake-llm handler failed")
            stats.errors += 1
            return _error(500, "fake-llm failed unexpectedly", "server_error")
        finally:
            stats.in_flight -= 1

    async def _chat_completions(self, request: web.Request) -> web.Response:
        stats, opts = self.stats, self.options
        refusal = self._refuse_key(request)
        if refusal is not None:
            stats.bad_requests += 1
            return refusal
        try:
            body = await request.json()
        except ValueError:
            stats.bad_requests += 1
            return _error(400, "request body is not valid JSON", "invalid_request_error")
        self.recorded.append(body)
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            stats.bad_requests += 1
            message = "'messages' must be a non-empty list of message objects"
            return _error(400, message, "invalid_request_error", "invalid_messages")
        if body.get("stream"):
            stats.bad_requests += 1
            return _error(400, "streaming not supported", "invalid_request_error", "unsupported_parameter")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            model = DEFAULT_MODEL
        if opts.models and model not in opts.models:
            stats.bad_requests += 1
            message = f"The model `{model}` does not exist or you do not have access to it."
            return _error(404, message, "invalid_request_error", "model_not_found")
        stats.by_model[model] += 1
        refusal = self._refuse_token_limit(body) or self._refuse_response_format(body.get("response_format"))
        if refusal is not None:
            return refusal

        if opts.rpm:
            wait = self._rpm_retry_after()
            if wait is not None:
                stats.rate_limited += 1
                stats.rpm_limited += 1
                headers = {
                    "Retry-After": str(max(1, math.ceil(wait))),
                    "retry-after-ms": str(math.ceil(wait * 1000)),
                    **self._rate_limit_headers(),
                }
                message = f"rate limit of {opts.rpm} requests per minute reached"
                return _error(429, message, "requests", "rate_limit_exceeded", headers)

        # One generator per request number, and every draw made whatever the rates: the faults of
        # request n depend only on the seed and n, not on which other faults are switched on.
        sequence = self._sequence
        self._sequence += 1
        rng = random.Random((opts.seed << 32) | (sequence & 0xFFFFFFFF))
        rate_limited = rng.random() < opts.rate_limit_rate
        failed = rng.random() < opts.error_rate
        malformed = rng.random() < opts.malformed_rate
        slow = rng.random() < opts.slow_rate

        # Real rate limiters refuse before doing any work, so an injected 429 skips the latency.
        if rate_limited:
            stats.rate_limited += 1
            return _error(429, "injected rate limit", "requests", "rate_limit_exceeded", {"Retry-After": "1"})

        delay = opts.latency + (opts.slow_latency if slow else 0.0)
        if slow:
            stats.slow += 1
        if delay > 0:
            await asyncio.sleep(delay)

        if failed:
            stats.errors += 1
            return _error(500, "injected server error", "server_error")

        texts = [_message_text(m) for m in messages]
        users = [t for m, t in zip(messages, texts, strict=True) if m.get("role") == "user"]
        prompt = users[-1] if users else texts[-1]
        title, depth, has_task = parse_messages(messages)
        schema = None if has_task else foreign_schema(body.get("response_format"))
        if schema is not None:
            conversation = "\n".join(texts)
            count = requested_count(prompt, conversation) or opts.fanout_at(0)
            content = json.dumps(schema_instance(schema, prompt, count, prompt_examples(conversation)))
            stats.schema_answers += 1
        else:
            fields = requested_fields(body.get("response_format"))
            content = json.dumps(decomposition(title, depth, opts.fanout_at(depth), opts.atomic_depth, fields))
        if malformed:
            # Cut mid-object: looks like a model that ran out of tokens, never parses as JSON.
            content = content[: len(content) // 2]
            stats.malformed += 1
        else:
            stats.ok += 1

        prompt_tokens = _tokens(sum(len(t) for t in texts))
        completion_tokens = _tokens(len(content))
        stats.prompt_tokens += prompt_tokens
        stats.completion_tokens += completion_tokens
        log.debug("answered", model=model, title=title, depth=depth, malformed=malformed, slow=slow)
        return web.json_response(
            {
                "id": f"chatcmpl-fake-{sequence:x}-{_digest(title, depth) & 0xFFFFFFFF:08x}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": "fake-llm",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
            headers=self._rate_limit_headers(),
        )

    async def models(self, request: web.Request) -> web.Response:
        refusal = self._refuse_key(request)
        if refusal is not None:
            return refusal
        # Without --models it answers for any name: it lists its own, the runners' default and those asked for.
        names = sorted(self.options.models or {DEFAULT_MODEL, RUNNER_DEFAULT_MODEL, *self.stats.by_model})
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "paradecom"} for n in names]
        return web.json_response({"object": "list", "data": data})

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_json())

    async def get_requests(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.recorded))

    async def reset_stats(self, request: web.Request) -> web.Response:
        """Zero the counters and restart the fault sequence and the rpm window, so a run after a
        reset sees the same faults as a run against a fresh server."""
        self.stats.reset()
        self._sequence = 0
        self._window.clear()
        self.recorded.clear()
        return web.json_response(self.stats.as_json())


def _bind(host: str, port: int) -> socket.socket:
    # One socket bound by hand: aiohttp's TCPSite would bind every address a name resolves to
    # (e.g. localhost on both ::1 and 127.0.0.1), each on its own port when the port is 0.
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(options: Options, sock: socket.socket) -> None:
    """Serve on the bound `sock` until SIGTERM or SIGINT, after printing `listening HOST:PORT`."""
    fake = FakeLLM(options)
    # No access log: one line per request would dominate the cost of a load run.
    runner = web.AppRunner(fake.app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await web.SockSite(runner, sock, backlog=LISTEN_BACKLOG).start()
        bound_host, bound_port = sock.getsockname()[:2]
        address = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
        print(f"listening {address}", flush=True)
        log.info("fake-llm listening", address=address, **dataclasses.asdict(options))
        await stop.wait()
        log.info("fake-llm stopping", requests=fake.stats.requests)
    finally:
        await runner.cleanup()


def main_from_args(args: argparse.Namespace) -> int:
    """Run the server from options parsed by a parser `add_arguments` set up; the exit code."""
    log_format: LogFormat = args.log_format
    configure_logging(log_format)
    options = options_from_args(args)
    try:
        host, port = parse_address(args.listen)
        sock = _bind(host, port)
    except (ValueError, OSError) as exc:
        # An address that does not resolve or is taken is the user's to fix, like a bad flag.
        print(f"{PROG}: error: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(options, sock))
    except KeyboardInterrupt:
        # Ctrl-C before the signal handlers are installed is still a clean stop.
        pass
    finally:
        sock.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m paradecom.devtools.fakellm`: parse `argv` (default sys.argv[1:]) and serve."""
    parser = Parser(prog=PROG, description="Fake OpenAI-compatible chat server for tests.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return main_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
