"""`paradecom eval DIR`: decompose DevAI instances and score each tree against the instance's own
hand-written requirements.

Every `*.json` file directly in DIR (sorted by name; `--limit K` keeps the first K) is a DevAI
instance: `name`, `query` (the project description ParaDecom sees) and `requirements`, a list of
`{requirement_id, prerequisites, criteria, category}` that ParaDecom never sees. Each instance is
decomposed with `parallel_decompose_project`, one after another (on the configured endpoint, or
the embedded model when none is set), and its tree gets two scores:

- **coverage**: the share of requirements whose `criteria` text is covered by at least one leaf
  task, i.e. the leaf's best `similarity` reaches `--threshold` (default 0.5);
- **dependency agreement**: each requirement is matched to its most similar leaf, and each
  prerequisite edge (A needs B) counts as respected when A's leaf waits on B's leaf in the tree
  (see `waits_on`). Edges whose two requirements land on the same leaf (the tree cannot order work
  inside one task), or with an end that shares no word with any leaf, are left out of the share
  and counted apart.

The similarity is lexical and plain Python: the *recall of content words*, the share of a
criterion's content words (lowercased, letters and digits split apart, stop words dropped, lightly
stemmed; see `content_words`) that also occur in the leaf's title, description and acceptance
criteria. The definitions, with the reasons for each choice, are in docs/quality.md.

`--save-trees OUTDIR` keeps each tree; `--from-trees OUTDIR` scores kept trees again without an LLM.

Exit status: 0 every instance was decomposed and scored; 1 some instance failed: its run failed, or
every top-level task was dead-lettered (the others are still reported); 2 bad input (DIR, a file
that is not a DevAI instance, a missing saved tree, flags, no endpoint).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from paradecom import limits
from paradecom.cliargs import add_logging_flags, fail, float_range, int_range, runners_flag
from paradecom.errors import ConfigError, ParaDecomError, ProjectFileError
from paradecom.textsafe import terminal_safe

if TYPE_CHECKING:
    from paradecom.project import ProjectDefinition
    from paradecom.tree import TaskTree, TreeTask

PROG = "paradecom eval"
FORMATS = ("table", "json")
DEFAULT_MAX_DEPTH = 2
DEFAULT_THRESHOLD = 0.5
MAX_INSTANCES = 100_000

# English function words, plus the few verbs and fillers DevAI's criteria use for every kind of
# requirement ("... is implemented using ..., including ..., etc."), which say nothing about which.
_STOP_WORDS_TEXT = """
    a about above after again against all also am an and any are as at be been before being below
    between both but by can could did do does doing done down during each either etc few for from
    further had has have having he her here hers him his how i if in into is it its itself just
    may me might more most must my no nor not now of off on once only or other our ours out over
    own per same shall she should so some such than that the their theirs them then there these
    they this those through to too under until up upon very via was we were what when where which
    while who whom why will with within without would you your yours
    eg ie
    use used uses using utilize utilized utilizing implement implemented implementing implementation
    include includes included including contain contains contained containing
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())

_WORD_RE = re.compile(r"[^\W\d_]+|\d+")
# Doubled letters that stay doubled when `ing`/`ed` is stripped: install(ed), pass(ing), buzz(ed).
_KEEP_DOUBLED = frozenset("aeioulsz")


def stem(word: str) -> str:
    """A light suffix stripper for a lowercase word (not Porter: fewer rules, easier to predict).

    In order: `ies`/`ied` -> `y`; `sses` -> `ss`; else a final `s` is dropped unless the word ends
    in `ss`, `us` or `is` or has 3 letters or fewer; then `ing` is dropped if 3 letters remain, or
    else `ed` if 3 remain, and a doubled final consonant left behind loses one letter (unless it is
    l, s or z); last, a final `e` is dropped from words longer than 3 letters. So load, loads,
    loaded and loading are all `load`; save, saved and saving are all `sav`.
    """
    if not word.isalpha():
        return word
    if len(word) > 4 and word.endswith(("ies", "ied")):
        word = word[:-3] + "y"
    elif word.endswith("sses"):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        word = word[:-1]
    stripped = False
    if word.endswith("ing") and len(word) - 3 >= 3:
        word, stripped = word[:-3], True
    elif word.endswith("ed") and len(word) - 2 >= 3:
        word, stripped = word[:-2], True
    if stripped and len(word) >= 2 and word[-1] == word[-2] and word[-1] not in _KEEP_DOUBLED:
        word = word[:-1]
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


def content_words(text: str) -> frozenset[str]:
    """The set of content words of `text`.

    Lowercased; tokens are maximal runs of letters or of digits (so `ResNet18`, `ResNet-18` and
    `resnet_18` all give `resnet`, `18`, and `src/data_loader.py` gives `src`, `data`, `loader`,
    `py`); tokens of one character and STOP_WORDS are dropped; the rest are stemmed with `stem`.
    """
    words = set()
    for token in _WORD_RE.findall(text.lower()):
        if len(token) < 2 or token in STOP_WORDS:
            continue
        words.add(stem(token))
    return frozenset(words)


def similarity(criterion: frozenset[str], leaf: frozenset[str]) -> float:
    """The share of the criterion's content words that occur in the leaf's: 0.0 to 1.0.

    Recall, not a symmetric measure, on purpose: a leaf task says more than the one requirement it
    fulfils, and those extra words should not count against it. 0.0 for a criterion without content
    words.
    """
    if not criterion:
        return 0.0
    return len(criterion & leaf) / len(criterion)


def leaf_text(task: TreeTask) -> str:
    """What a leaf is matched on: its title, description and acceptance criteria."""
    return "\n".join([task.title, task.description, *task.acceptance_criteria])


def scored_leaves(tree: TaskTree) -> list[TreeTask]:
    """The tree's leaves below the top level, depth first.

    A top-level task is the project itself (DevAI instances have no seed tasks: the root's
    description is the query), so a root left undivided has decomposed nothing and is not scored:
    it would "cover" every criterion by restating the request.
    """
    return [t for t in tree.iter_tasks() if not t.children and t.depth >= 1]


def waits_on(tree: TaskTree) -> dict[str, set[str]]:
    """For each leaf id, the ids of the leaves that must be finished before it may start.

    A task's `depends_on` names siblings that must be finished first; a task is finished when
    all its leaves are; and a task cannot start before its parent may. So leaf X directly waits
    on leaf Y when some ancestor-or-self of X depends on a task that is Y or has Y among its
    leaves. The result is the transitive closure of that relation (X waits on Y, Y on Z: X waits
    on Z). Unknown ids in `depends_on` are ignored. Covers every leaf, top level included.
    """
    by_id: dict[str, TreeTask] = {t.id: t for t in tree.iter_tasks()}
    leaves_under: dict[str, list[str]] = {}

    def collect(task: TreeTask) -> list[str]:
        if task.id not in leaves_under:
            if task.children:
                leaves_under[task.id] = [leaf for child in task.children for leaf in collect(child)]
            else:
                leaves_under[task.id] = [task.id]
        return leaves_under[task.id]

    for top in tree.tasks:
        collect(top)
    direct: dict[str, set[str]] = {}
    for task in by_id.values():
        if task.children:
            continue
        targets: set[str] = set()
        node: TreeTask | None = task
        while node is not None:
            for dep in node.depends_on:
                if dep in by_id and dep != node.id:
                    targets.update(collect(by_id[dep]))
            node = by_id.get(node.parent_id) if node.parent_id is not None else None
        direct[task.id] = targets
    closure: dict[str, set[str]] = {}
    for leaf in direct:
        seen: set[str] = set()
        stack = list(direct[leaf])
        while stack:
            other = stack.pop()
            if other in seen:
                continue
            seen.add(other)
            stack.extend(direct.get(other, ()))
        closure[leaf] = seen
    return closure


@dataclass(frozen=True)
class Requirement:
    """One DevAI requirement: its id, the ids it needs first, and its criteria text."""

    id: int
    prerequisites: tuple[int, ...]
    criteria: str


@dataclass
class RequirementMatch:
    """Where one requirement landed: its best leaf (None when nothing shares a word) and the score."""

    id: int
    best_leaf: str | None
    similarity: float
    covered: bool


@dataclass
class Score:
    """The scores of one tree against one instance's requirements."""

    tasks: int
    dead: int
    leaves: int
    criteria: int
    covered: int
    coverage: float
    mean_best_similarity: float
    edges: int
    edges_same_leaf: int
    edges_unmatched: int
    edges_judged: int
    edges_respected: int
    dependency_agreement: float | None
    edges_judged_covered: int
    edges_respected_covered: int
    covered_dependency_agreement: float | None
    chance_agreement: float | None
    matches: list[RequirementMatch] = field(default_factory=list)


def score_tree(tree: TaskTree, requirements: Sequence[Requirement], threshold: float = DEFAULT_THRESHOLD) -> Score:
    """Score `tree` against `requirements`; see the module docstring and docs/quality.md.

    A requirement's best leaf has the highest `similarity`; ties go to the leaf with the higher
    Jaccard index (shared words over all words of both: the more focused leaf), then to the first
    in depth-first order. A requirement whose best similarity is 0 matches no leaf.

    A prerequisite edge (A needs B) is *judged* when A and B match two different leaves, and
    *respected* when A's leaf waits on B's (`waits_on`). Edges with both ends on one leaf
    (`edges_same_leaf`) or an end matching no leaf (`edges_unmatched`) are counted but not judged.
    `dependency_agreement` is respected / judged, None when nothing is judged;
    `covered_dependency_agreement` is the same over the judged edges whose two ends are covered.
    `chance_agreement` is the share of ordered pairs (X, Y) of distinct scored leaves where X waits
    on Y: the expected agreement if each judged edge fell on two random distinct leaves; None with
    fewer than two leaves.
    """
    leaves = scored_leaves(tree)
    leaf_words = [content_words(leaf_text(leaf)) for leaf in leaves]
    matches: dict[int, RequirementMatch] = {}
    for req in requirements:
        words = content_words(req.criteria)
        best_leaf: str | None = None
        best = (0.0, 0.0)
        for leaf, lw in zip(leaves, leaf_words, strict=True):
            key = (similarity(words, lw), len(words & lw) / len(words | lw) if words | lw else 0.0)
            if key[0] > 0 and key > best:
                best_leaf, best = leaf.id, key
        matches[req.id] = RequirementMatch(req.id, best_leaf, best[0], covered=best[0] > 0 and best[0] >= threshold)
    waits = waits_on(tree)
    edges = same = unmatched = respected = judged_covered = respected_covered = 0
    for req in requirements:
        for pre in req.prerequisites:
            edges += 1
            a, b = matches[req.id], matches[pre]
            if a.best_leaf is None or b.best_leaf is None:
                unmatched += 1
                continue
            if a.best_leaf == b.best_leaf:
                same += 1
                continue
            ok = b.best_leaf in waits.get(a.best_leaf, ())
            respected += int(ok)
            if a.covered and b.covered:
                judged_covered += 1
                respected_covered += int(ok)
    judged = edges - same - unmatched
    ids = {leaf.id for leaf in leaves}
    pairs = len(ids) * (len(ids) - 1)
    ordered = sum(1 for x in ids for y in waits.get(x, ()) if y != x and y in ids)
    covered = sum(1 for m in matches.values() if m.covered)
    n = len(requirements)
    return Score(
        tasks=sum(1 for _ in tree.iter_tasks()),
        dead=sum(1 for t in tree.iter_tasks() if t.status == "dead"),
        leaves=len(leaves),
        criteria=n,
        covered=covered,
        coverage=covered / n if n else 0.0,
        mean_best_similarity=sum(m.similarity for m in matches.values()) / n if n else 0.0,
        edges=edges,
        edges_same_leaf=same,
        edges_unmatched=unmatched,
        edges_judged=judged,
        edges_respected=respected,
        dependency_agreement=respected / judged if judged else None,
        edges_judged_covered=judged_covered,
        edges_respected_covered=respected_covered,
        covered_dependency_agreement=respected_covered / judged_covered if judged_covered else None,
        chance_agreement=ordered / pairs if pairs else None,
        matches=[matches[req.id] for req in requirements],
    )


def dead_roots(tree: TaskTree) -> str | None:
    """Why nothing was decomposed, when every top-level task is dead (else None).

    The project then still ends "done" (dead letters do not fail a project), but the tree says
    nothing about the model: an unreachable endpoint looks the same. Such an instance is reported
    as failed rather than scored 0.
    """
    if tree.tasks and all(t.status == "dead" for t in tree.tasks):
        last = " ".join(tree.tasks[0].last_error.split()) or "no error recorded"
        return f"every top-level task is dead; last error: {last}"
    return None


# --- instances -------------------------------------------------------------------------------------


@dataclass
class Instance:
    """One DevAI file: its path, name, requirements and the project definition made from it."""

    path: Path
    name: str
    requirements: list[Requirement]
    definition: ProjectDefinition


def _int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_requirements(data: object, source: str) -> list[Requirement]:
    """The `requirements` of parsed DevAI JSON; ProjectFileError (one line) if it is not DevAI."""
    not_devai = f"{source}: not a DevAI instance:"
    if not isinstance(data, Mapping):
        raise ProjectFileError(f"{not_devai} expected a JSON object at the top level")
    for key in ("name", "query"):
        if not isinstance(data.get(key), str):
            raise ProjectFileError(f"{not_devai} expected a string '{key}'")
    raw = data.get("requirements")
    if not isinstance(raw, list) or not raw:
        raise ProjectFileError(f"{not_devai} expected a non-empty list 'requirements'")
    requirements: list[Requirement] = []
    for i, item in enumerate(raw):
        where = f"{not_devai} 'requirements[{i}]'"
        if not isinstance(item, Mapping):
            raise ProjectFileError(f"{where}: expected an object")
        rid, pre, criteria = item.get("requirement_id"), item.get("prerequisites", []), item.get("criteria")
        if not _int(rid):
            raise ProjectFileError(f"{where}: expected an integer 'requirement_id'")
        if not isinstance(pre, list) or not all(_int(p) for p in pre):
            raise ProjectFileError(f"{where}: expected a list of integers 'prerequisites'")
        if not isinstance(criteria, str):
            raise ProjectFileError(f"{where}: expected a string 'criteria'")
        # A requirement listed as its own prerequisite (DevAI instance 45 has two) orders nothing:
        # it is dropped, like a prerequisite listed twice.
        requirements.append(Requirement(rid, tuple(dict.fromkeys(p for p in pre if p != rid)), criteria))
    ids = [r.id for r in requirements]
    if len(set(ids)) != len(ids):
        raise ProjectFileError(f"{not_devai} duplicate requirement_id")
    for r in requirements:
        for p in r.prerequisites:
            if p not in ids:
                raise ProjectFileError(f"{not_devai} requirement {r.id}: unknown prerequisite {p}")
    return requirements


def load_instance(path: Path) -> Instance:
    """Read one DevAI file; ProjectFileError naming the file for anything unreadable or not DevAI.

    The requirements are checked first, so a project file that is not DevAI is named as such; the
    project definition then comes from `load_project`, which takes DevAI files as they are.
    """
    from paradecom.project import load_project

    source = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise ProjectFileError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ProjectFileError(f"{source}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ProjectFileError(f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise ProjectFileError(f"{source}: invalid JSON: nested too deeply") from None
    requirements = parse_requirements(data, source)
    definition = load_project(path)
    return Instance(path=path, name=definition.name, requirements=requirements, definition=definition)


def find_instances(directory: str, limit: int | None) -> list[Path]:
    """The `*.json` files directly in `directory`, sorted by name, the first `limit` of them."""
    base = Path(directory)
    if not base.exists():
        raise ProjectFileError(f"{directory}: no such directory")
    if not base.is_dir():
        raise ProjectFileError(f"{directory}: not a directory")
    try:
        files = sorted(p for p in base.iterdir() if p.suffix.lower() == ".json" and p.is_file())
    except OSError as exc:
        raise ProjectFileError(f"{directory}: cannot list: {exc.strerror or exc}") from None
    if not files:
        raise ProjectFileError(f"{directory}: no .json files (expected DevAI instances)")
    return files[:limit] if limit else files


# --- running and reporting -------------------------------------------------------------------------


@dataclass
class Result:
    """One instance's outcome: its score, or the error that stopped its decomposition."""

    name: str
    file: str
    seconds: float
    score: Score | None = None
    error: str | None = None
    # The tree's LLM usage (project.usage): calls, re-asks and failed attempts; empty without a tree.
    usage: dict[str, int] = field(default_factory=dict)


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def summary(results: Sequence[Result]) -> dict[str, Any]:
    """Means over the scored instances; each metric over the instances where it is defined."""
    scores = [r.score for r in results if r.score is not None]
    agreements = [s.dependency_agreement for s in scores if s.dependency_agreement is not None]
    covered_agreements = [s.covered_dependency_agreement for s in scores if s.covered_dependency_agreement is not None]
    return {
        "instances": len(results),
        "scored": len(scores),
        "failed": len(results) - len(scores),
        "tasks": _mean(s.tasks for s in scores),
        "dead": sum(s.dead for s in scores),
        "leaves": _mean(s.leaves for s in scores),
        "coverage": _mean(s.coverage for s in scores),
        "mean_best_similarity": _mean(s.mean_best_similarity for s in scores),
        "dependency_agreement": _mean(agreements),
        "dependency_agreement_instances": len(agreements),
        "covered_dependency_agreement": _mean(covered_agreements),
        "covered_dependency_agreement_instances": len(covered_agreements),
        "chance_agreement": _mean(s.chance_agreement for s in scores),
        "edges": sum(s.edges for s in scores),
        "edges_same_leaf": sum(s.edges_same_leaf for s in scores),
        "edges_unmatched": sum(s.edges_unmatched for s in scores),
        "edges_judged": sum(s.edges_judged for s in scores),
        "edges_respected": sum(s.edges_respected for s in scores),
        "edges_judged_covered": sum(s.edges_judged_covered for s in scores),
        "edges_respected_covered": sum(s.edges_respected_covered for s in scores),
        "seconds": sum(r.seconds for r in results),
    }


def to_json(results: Sequence[Result], settings: Mapping[str, Any]) -> str:
    """The machine-readable report: settings, one object per instance, and the means."""
    instances = []
    for r in results:
        item: dict[str, Any] = {"name": r.name, "file": r.file, "seconds": round(r.seconds, 3), "error": r.error}
        item |= {f"llm_{key}": value for key, value in r.usage.items()}
        if r.score is not None:
            s = r.score
            item |= {
                "tasks": s.tasks,
                "dead": s.dead,
                "leaves": s.leaves,
                "criteria": s.criteria,
                "covered": s.covered,
                "coverage": s.coverage,
                "mean_best_similarity": s.mean_best_similarity,
                "edges": s.edges,
                "edges_same_leaf": s.edges_same_leaf,
                "edges_unmatched": s.edges_unmatched,
                "edges_judged": s.edges_judged,
                "edges_respected": s.edges_respected,
                "dependency_agreement": s.dependency_agreement,
                "edges_judged_covered": s.edges_judged_covered,
                "edges_respected_covered": s.edges_respected_covered,
                "covered_dependency_agreement": s.covered_dependency_agreement,
                "chance_agreement": s.chance_agreement,
                "requirements": [
                    {"id": m.id, "best_leaf": m.best_leaf, "similarity": m.similarity, "covered": m.covered}
                    for m in s.matches
                ],
            }
        instances.append(item)
    return json.dumps({"settings": dict(settings), "instances": instances, "mean": summary(results)}, indent=2)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


HEADERS = (
    "instance",
    "tasks",
    "dead",
    "leaves",
    "coverage",
    "best sim.",
    "dep. agreement",
    "edges same/none/all",
    "chance",
)


def to_table(results: Sequence[Result]) -> str:
    """A plain-text table: one row per instance, then the means.

    dead: tasks dead-lettered (every attempt failed); coverage: % (covered/criteria); best sim.:
    the mean best similarity; dep. agreement: % (respected/judged); edges: same leaf/no matching
    leaf/all prerequisite edges; chance: the chance agreement. The last row holds the means over
    the scored instances (dependency agreement over the n where it is defined), and the dead tasks
    and edge counts summed.
    """
    rows: list[tuple[str, ...]] = []
    for r in results:
        s = r.score
        if s is None:
            rows.append((terminal_safe(r.name), "failed: " + terminal_safe(" ".join((r.error or "").split())[:100])))
            continue
        rows.append(
            (
                terminal_safe(r.name),
                str(s.tasks),
                str(s.dead),
                str(s.leaves),
                f"{_pct(s.coverage)} ({s.covered}/{s.criteria})",
                _pct(s.mean_best_similarity),
                _pct(s.dependency_agreement) + (f" ({s.edges_respected}/{s.edges_judged})" if s.edges_judged else ""),
                f"{s.edges_same_leaf}/{s.edges_unmatched}/{s.edges}",
                _pct(s.chance_agreement),
            )
        )
    m = summary(results)
    rows.append(
        (
            f"mean of {m['scored']} scored" + (f" ({m['failed']} failed)" if m["failed"] else ""),
            _num(m["tasks"]),
            str(m["dead"]),
            _num(m["leaves"]),
            _pct(m["coverage"]),
            _pct(m["mean_best_similarity"]),
            _pct(m["dependency_agreement"]) + f" (n={m['dependency_agreement_instances']})",
            f"{m['edges_same_leaf']}/{m['edges_unmatched']}/{m['edges']}",
            _pct(m["chance_agreement"]),
        )
    )
    widths = [len(h) for h in HEADERS]
    for row in rows:
        if len(row) == len(HEADERS):
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        if len(cells) != len(HEADERS):
            return "  ".join(cells)
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))]).rstrip()

    out = [line(HEADERS), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in rows[:-1]]
    out += ["  ".join("-" * w for w in widths), line(rows[-1])]
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `paradecom eval` to `parser`; ranges are checked while parsing (exit 2)."""
    parser.add_argument("dir", metavar="DIR", help="folder of DevAI instance files (*.json)")
    parser.add_argument(
        "--runners",
        type=runners_flag,
        default=limits.DEFAULT_RUNNERS,
        metavar="auto|N",
        help=f"runners per instance as for `paradecom run`: auto (default), 1 to {limits.MAX_RUNNERS}, or 0 "
        "for the sequential fallback",
    )
    parser.add_argument(
        "--concurrency",
        type=int_range(1, limits.MAX_CONCURRENCY),
        default=None,
        metavar="N",
        help=f"LLM calls in flight per runner (default {limits.DEFAULT_CONCURRENCY}; 1 on the embedded model); "
        "with --runners auto, the most in flight in all",
    )
    parser.add_argument(
        "--max-depth",
        type=int_range(1, limits.MAX_DEPTH_LIMIT),
        default=DEFAULT_MAX_DEPTH,
        metavar="N",
        help=f"levels of decomposition, 1 to {limits.MAX_DEPTH_LIMIT} (default {DEFAULT_MAX_DEPTH})",
    )
    parser.add_argument(
        "--limit",
        type=int_range(1, MAX_INSTANCES),
        default=None,
        metavar="K",
        help="only the first K files, in name order (default all)",
    )
    parser.add_argument(
        "--threshold",
        type=float_range(0.0, 1.0),
        default=DEFAULT_THRESHOLD,
        metavar="T",
        help=f"similarity at which a leaf covers a criterion (default {DEFAULT_THRESHOLD})",
    )
    parser.add_argument("--model", default=None, help="model name (default $PARADECOM_MODEL or the runner's)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    parser.add_argument(
        "--cache",
        action="store_true",
        help="let runners answer from the decomposition cache (default: off, so every tree is the "
        "endpoint's own answer; the cache is keyed by model name, not endpoint)",
    )
    parser.add_argument(
        "--save-trees",
        metavar="OUTDIR",
        default=None,
        help="also write each instance's tree as OUTDIR/NAME.tree.json (created if missing)",
    )
    parser.add_argument(
        "--from-trees",
        metavar="TREEDIR",
        default=None,
        help="score the trees a run with --save-trees TREEDIR wrote instead of decomposing again "
        "(no LLM; --runners, --max-depth, --model and --cache do not apply)",
    )
    # The leader and runners run in this process: their info lines would bury the progress lines.
    add_logging_flags(parser, default_level="warning")


def _saved_tree_path(directory: str, inst: Instance) -> Path:
    return Path(directory, f"{inst.path.stem}.tree.json")


def _load_saved_tree(directory: str, inst: Instance) -> TaskTree:
    from paradecom.tree import TaskTree

    path = _saved_tree_path(directory, inst)
    try:
        return TaskTree.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ProjectFileError(f"{path}: no saved tree for {inst.path.name}") from None
    except OSError as exc:
        raise ProjectFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, TypeError, AttributeError) as exc:
        # JSONDecodeError is a ValueError; from_dict raises ValueError for a missing key.
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ProjectFileError(f"{path}: not a saved task tree: {first}") from None


def _result(inst: Instance, tree: TaskTree, seconds: float, threshold: float) -> Result:
    raw = tree.project.get("usage") or {}
    usage = {key: int(raw.get(key) or 0) for key in ("calls", "reasks", "failures")}
    dead = dead_roots(tree)
    if dead is not None:
        return Result(inst.name, inst.path.name, seconds, error=dead, usage=usage)
    return Result(inst.name, inst.path.name, seconds, score=score_tree(tree, inst.requirements, threshold), usage=usage)


def main_from_args(args: argparse.Namespace) -> int:
    """Run `paradecom eval` from options parsed by a parser `add_arguments` set up; the exit code."""
    from paradecom.logs import configure_logging

    configure_logging(args.log_format, args.log_level)
    saved: dict[str, TaskTree] = {}
    try:
        paths = find_instances(args.dir, args.limit)
        instances = [load_instance(p) for p in paths]
        if args.from_trees:
            # Every tree is read before anything is printed, so a missing one is one line, exit 2.
            saved = {inst.path.name: _load_saved_tree(args.from_trees, inst) for inst in instances}
        else:
            if args.save_trees:
                os.makedirs(args.save_trees, exist_ok=True)
    except (ProjectFileError, ConfigError) as exc:
        return fail(PROG, str(exc))
    except OSError as exc:
        return fail(PROG, f"{args.save_trees}: cannot create: {exc.strerror or exc}")
    from paradecom.client.run_settings import RunSettings

    # Dead tasks are scored (a dead root fails the instance): the tree is taken as it is.
    run_settings = RunSettings(
        runners=args.runners, concurrency=args.concurrency, model=args.model, cache=args.cache, allow_partial=True
    )
    results: list[Result] = []
    interrupted = False
    try:
        for i, inst in enumerate(instances, 1):
            if args.from_trees:
                result = _result(inst, saved[inst.path.name], 0.0, args.threshold)
            else:
                # Imported only now: the cluster and runner modules are slow to import, bad input is not.
                from paradecom.client.api import decompose

                inst.definition.max_depth = args.max_depth
                started = time.monotonic()
                try:
                    inst.definition.validate(source="project")
                    tree = asyncio.run(
                        decompose(
                            inst.definition,
                            run_settings,
                            # Once: the first instance finds a missing model (ConfigError, exit 2
                            # before any result), the notice says so for every instance.
                            on_embedded=_embedded_notice if i == 1 else None,
                        )
                    )
                except ConfigError as exc:
                    return fail(PROG, str(exc))
                except ParaDecomError as exc:
                    result = Result(inst.name, inst.path.name, time.monotonic() - started, error=str(exc))
                else:
                    result = _result(inst, tree, time.monotonic() - started, args.threshold)
                    if args.save_trees:
                        _saved_tree_path(args.save_trees, inst).write_text(tree.to_json() + "\n", encoding="utf-8")
            results.append(result)
            print(_progress(i, len(instances), result), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        # Ctrl-C: report the instances finished so far, then exit 130.
        interrupted = True
    settings = {
        "dir": args.dir,
        "from_trees": args.from_trees,
        "runners": args.runners,
        "concurrency": args.concurrency,
        "max_depth": args.max_depth,
        "limit": args.limit,
        "threshold": args.threshold,
        "model": args.model,
        "cache": args.cache,
        "similarity": "recall of criterion content words in leaf title+description+acceptance criteria",
    }
    print(to_json(results, settings) if args.format == "json" else to_table(results))
    if interrupted:
        return 130
    return 1 if any(r.error is not None for r in results) else 0


def _embedded_notice(_model_name: str) -> None:
    # As for `paradecom run`, flushed before the model starts, which takes a while.
    print(
        f"{PROG}: no OPENAI_BASE_URL or OPENAI_API_KEY set: using the embedded model, started for each instance",
        file=sys.stderr,
        flush=True,
    )


def _progress(i: int, n: int, r: Result) -> str:
    head = f"{PROG}: {i}/{n} {terminal_safe(r.name)} ({r.seconds:.1f} s)"
    if r.score is None:
        return f"{head}: failed: {terminal_safe(' '.join((r.error or '').split()), reversible=False)}"
    s = r.score
    dead = f" ({s.dead} dead)" if s.dead else ""
    calls = f", {r.usage['calls']} LLM calls ({r.usage['reasks']} re-asks)" if r.usage else ""
    return (
        f"{head}: {s.tasks} tasks{dead}, {s.leaves} leaves{calls}, coverage {_pct(s.coverage)}, "
        f"dependency agreement {_pct(s.dependency_agreement)}"
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m paradecom.devtools.evaluate`: the same as `paradecom eval`."""
    from paradecom.cliargs import Parser

    parser = Parser(prog=PROG, description="Decompose DevAI instances and score the trees.")
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
