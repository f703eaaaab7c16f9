"""Text from users and LLMs cannot change the structure of what is printed (issue #12, defect 5).

- Every format of `paradecom result` parses back, with real parsers, to exactly the tree's tasks and
  text, whatever the text holds: Markdown with markdown-it-py (CommonMark, with its task-list
  plugin) and with marked (GitHub-flavoured, under Node); Mermaid with Mermaid's own parser (under
  Node, jsdom as its DOM); JSON with json; CSV with the csv module. The readers here walk the
  parsers' token trees and rebuild the tree (ids, titles, descriptions, criteria, dependencies,
  checked state, status, errors, project text) and compare it with the tree itself.
- What is printed for people (`status`, `watch`, errors, logs, every tree format) holds no
  non-printable character: control characters and bidi overrides are shown escaped, never obeyed.
- `paradecom result ... | head` ends quietly (exit 141, nothing on stderr).

The hostile text is a list of known-nasty cases plus hypothesis's; end to end it goes through a real
leader, runner and fake-llm, and through `paradecom run`.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Proc, run_cli, wait_for
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode
from mdit_py_plugins.tasklists import tasklists_plugin
from test_progress import PtyProc

from paradecom.textsafe import json_safe, terminal_safe
from paradecom.tree import TaskTree, TreeTask

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"
PARADECOM = [sys.executable, "-m", "paradecom.client.cli"]
STATUSES = ("done", "dead", "queued", "leased", "cancelled")

# Known-nasty pieces: Markdown block and inline syntax, HTML, GitHub's extensions, Mermaid's
# preprocessing, terminal escapes, invisible and bidi characters, line breaks of every kind.
NASTY = [
    "```", "~~~", "```python\nx", "<!--", "-->", "<div>", "</div>", "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>", "- [x] done", "- [ ] todo", "* [x] ticked", "# heading", "## Tasks",
    "Title\n===", "Title\n---", "\n---\n", "* * *", "___", "1. item", "2) item", "> quote", ">",
    "| a | b |\n|---|---|\n| 1 | 2 |", "[ref]: http://example.com", "[link](http://x)", "![img](x.png)",
    "[x]", "[^1]", "http://example.com/a_b", "https://x.y/z?q=1&r=2", "www.example.com", "WWW.EXAMPLE.COM",
    "user@example.com", "mailto:a@b.co", "<http://x>", "\\", "\\\\", "  \n", "\\\n", "&amp;", "&#59;",
    "&#x1B;", "&lt;", "&", "#59;", "#quot;", "style:#x;", "style a fill:#f00;", "classDef a fill:#f00;",
    "%%{init: {\"theme\": \"dark\"}}%%", "%% comment", "end", "graph TD", "-->", "-.->", "A[x]", "((x))",
    "\x1b[2J\x1b[H", "\x1b]0;pwned\x07", "\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "\x9b31m",
    "\u202eevil\u202c", "\u2066isolate\u2069", "\u200b", "\u200d", "\ufeff", "\u00a0", "\u2028", "\u2029",
    "\x00", "\x07", "\x08", "\x0b", "\x0c", "\x7f", "\x85", "\r\n", "\r", "\t", "    code", "\t\tcode",
    "~~del~~", "**b**", "__b__", "_i_", "*i*", "`c`", "``", "$x$", ":smile:", "😀", "e\u0301", "ß", "ﬂ°°59¶ß",
    "\U000e0041", "\ufffe", "\U0010ffff", "\ud800", "'", '"', "(6 h)", " _(queued)_", "**DEAD**",
    "_depends on:_ 1", "1 ", " ", "",
]  # fmt: skip

# Text of any kind, biased towards the pieces above and the characters that matter to the formats.
_CHARS = st.characters(codec="utf-8") | st.sampled_from(list("\\`*_[]<>&~|#@!:./()-+=\"' \t\n\r;%{}$^?,0123wW"))
hostile = st.lists(st.sampled_from(NASTY) | st.text(_CHARS, max_size=6), max_size=6).map("".join)
# Sample texts cannot hold lone surrogates (they are not UTF-8): the formats are exact for valid text.
_valid = st.sampled_from([n for n in NASTY if "\ud800" not in n])
hostile_valid = st.lists(_valid | st.text(_CHARS, max_size=6), max_size=6).map("".join)


@st.composite
def trees(draw: st.DrawFn, text: st.SearchStrategy[str] = hostile_valid) -> TaskTree:
    """A tree of up to three levels whose every text is hostile; dependencies between siblings."""

    def task(task_id: str, parent: str | None, depth: int, siblings: list[str]) -> TreeTask:
        status = draw(st.sampled_from(STATUSES))
        n_children = draw(st.integers(0, 3 if depth < 2 else 0))
        child_ids = [f"{task_id}.{i}" for i in range(1, n_children + 1)]
        return TreeTask(
            id=task_id,
            parent_id=parent,
            depth=depth,
            title=draw(text),
            description=draw(text),
            acceptance_criteria=draw(st.lists(text, max_size=3)),
            depends_on=draw(st.lists(st.sampled_from(siblings), unique=True)) if siblings else [],
            atomic=draw(st.booleans()),
            estimate_hours=draw(st.sampled_from([0.0, 0.5, 6.0, 1234.5])),
            status=status,
            attempts=draw(st.integers(0, 5)),
            last_error=draw(text),
            children=[task(cid, task_id, depth + 1, child_ids[:i]) for i, cid in enumerate(child_ids)],
        )

    top = [str(i) for i in range(1, draw(st.integers(1, 3)) + 1)]
    project = {
        "id": "p-1",
        "name": draw(text),
        "description": draw(text),
        "goals": draw(st.lists(text, max_size=3)),
        "constraints": draw(st.lists(text, max_size=2)),
        "max_depth": 2,
        "state": draw(st.sampled_from(("done", "failed", "running"))),
        "error": draw(text),
        "counts": {"total": 1},
    }
    return TaskTree(project=project, tasks=[task(tid, None, 0, top[:i]) for i, tid in enumerate(top)])


# ---------------------------------------------------------------------------------------------
# What every reader must rebuild: the tree's text and structure, as the Markdown shows them.


def expected(tree: TaskTree) -> dict[str, Any]:
    p = tree.project
    return {
        "name": p.get("name", ""),
        "description": p.get("description", ""),
        "goals": list(p.get("goals", [])),
        "constraints": list(p.get("constraints", [])),
        "error": p.get("error", ""),
        "tasks": [_expected_task(t) for t in tree.tasks],
    }


def _expected_task(t: TreeTask) -> dict[str, Any]:
    return {
        "id": t.id,
        "checked": False,
        "title": t.title,
        "estimate": f"{t.estimate_hours:g} h" if t.estimate_hours > 0 else None,
        "status": t.status,
        "description": t.description,
        "depends_on": list(t.depends_on),
        "last_error": t.last_error if t.status == "dead" else None,
        "criteria": list(t.acceptance_criteria),
        "children": [_expected_task(c) for c in t.children],
    }


# ---------------------------------------------------------------------------------------------
# Markdown: both parsers' token trees are first put in one shape, then read by one reader.
# Blocks: ("heading", level, inlines), ("paragraph", inlines), ("quote", blocks),
# ("list", [(checked or None, blocks)]), ("other", type). Inlines: ("text", s), ("br",),
# ("code", s), ("em", inlines), ("strong", inlines), ("other", type).

Block = tuple[Any, ...]
Inline = tuple[Any, ...]

_MDIT = MarkdownIt("commonmark").use(tasklists_plugin)


def mdit_blocks(markdown: str) -> list[Block]:
    return [_mdit_block(node) for node in SyntaxTreeNode(_MDIT.parse(markdown)).children]


def _mdit_block(node: SyntaxTreeNode) -> Block:
    if node.type == "heading":
        return ("heading", int(node.tag[1]), _mdit_inlines(node.children[0].children))
    if node.type == "paragraph":
        return ("paragraph", _mdit_inlines(node.children[0].children))
    if node.type == "blockquote":
        return ("quote", [_mdit_block(c) for c in node.children])
    if node.type == "bullet_list":
        items = []
        for item in node.children:
            checked: bool | None = None
            blocks = [_mdit_block(c) for c in item.children]
            if "task-list-item" in str(item.attrs.get("class", "")):
                # The plugin puts an <input> first in the item's first paragraph, then the rest of
                # the text after "[ ]" (starting with its space).
                first = item.children[0].children[0].children[0]
                assert first.type == "html_inline", first.type
                checked = "checked" in first.content
                inlines = blocks[0][1][1:]
                assert inlines and inlines[0][0] == "text" and inlines[0][1].startswith(" "), inlines
                blocks[0] = ("paragraph", [("text", inlines[0][1][1:]), *inlines[1:]])
            items.append((checked, blocks))
        return ("list", items)
    return ("other", node.type)


def _mdit_inlines(nodes: list[SyntaxTreeNode]) -> list[Inline]:
    out: list[Inline] = []
    for node in nodes:
        if node.type == "text":
            if node.content:  # markdown-it leaves empty ones before some delimiters
                out.append(("text", node.content))
        elif node.type == "hardbreak":
            out.append(("br",))
        elif node.type == "code_inline":
            out.append(("code", node.content))
        elif node.type in ("em", "strong"):
            out.append((node.type, _mdit_inlines(node.children)))
        else:
            out.append(("other", node.type))
    return out


def marked_blocks(tokens: list[dict[str, Any]]) -> list[Block]:
    return [_marked_block(t) for t in tokens if t["type"] != "space"]


def _marked_block(token: dict[str, Any]) -> Block:
    kind = token["type"]
    if kind == "heading":
        return ("heading", token["depth"], _marked_inlines(token["tokens"]))
    if kind in ("paragraph", "text"):
        return ("paragraph", _marked_inlines(token["tokens"]))
    if kind == "blockquote":
        return ("quote", marked_blocks(token["tokens"]))
    if kind == "list" and not token["ordered"]:
        items = []
        for item in token["items"]:
            inner = [t for t in item["tokens"] if t["type"] != "checkbox"]
            items.append((item["checked"] if item["task"] else None, marked_blocks(inner)))
        return ("list", items)
    return ("other", kind)


def _marked_inlines(tokens: list[dict[str, Any]]) -> list[Inline]:
    out: list[Inline] = []
    for token in tokens:
        kind = token["type"]
        if kind in ("text", "escape"):
            # marked decodes numeric character references in text and leaves nothing else encoded
            # there, but "&" itself (which user text never holds unescaped).
            assert "tokens" not in token, token
            out.append(("text", token["text"]))
        elif kind == "br":
            out.append(("br",))
        elif kind == "codespan":
            out.append(("code", token["text"]))
        elif kind in ("em", "strong"):
            out.append((kind, _marked_inlines(token["tokens"])))
        else:
            out.append(("other", kind))
    return out


def text_of(inlines: list[Inline]) -> str:
    """User text: plain text, hard breaks (line breaks of descriptions) and the code spans that name
    a character Markdown cannot carry; anything else means the text made syntax."""
    out = []
    for inline in inlines:
        if inline[0] == "text":
            out.append(inline[1])
        elif inline[0] == "br":
            out.append("\n")
        elif inline[0] == "code":
            assert re.fullmatch(r"U\+[0-9A-F]{4,6}( U\+[0-9A-F]{4,6})*", inline[1]), f"code span {inline[1]!r}"
            out += [chr(int(code[2:], 16)) for code in inline[1].split(" ")]
        else:
            raise AssertionError(f"user text became {inline[0]}: {inline!r}")
    return "".join(out)


def _label(inlines: list[Inline]) -> tuple[str | None, list[Inline]]:
    """An item's fixed label (emphasis first) and what follows it, or (None, everything)."""
    if inlines and inlines[0][0] == "em":
        return text_of(inlines[0][1]), inlines[1:]
    return None, inlines


def _after_label(rest: list[Inline]) -> str:
    text = text_of(rest)
    assert text.startswith(" "), rest
    return text[1:]


def _one_paragraph(blocks: list[Block]) -> list[Inline]:
    assert len(blocks) == 1 and blocks[0][0] == "paragraph", blocks
    return blocks[0][1]  # type: ignore[no-any-return]


def read_markdown(blocks: list[Block]) -> dict[str, Any]:
    """Rebuild the tree from the blocks of `TaskTree.to_markdown()` (the layout of docs/tree-format.md)."""
    assert blocks[0][0] == "heading" and blocks[0][1] == 1, blocks[0]
    model: dict[str, Any] = {
        "name": text_of(blocks[0][2]),
        "description": "",
        "goals": [],
        "constraints": [],
        "error": "",
        "tasks": [],
    }
    section = None
    for block in blocks[1:]:
        if block[0] == "heading":
            assert block[1] == 2, block
            section = text_of(block[2])
            assert section in ("Goals", "Constraints", "Tasks"), section
        elif section is None and block[0] == "quote":
            model["description"] = text_of(_one_paragraph(block[1]))
        elif section is None and block[0] == "paragraph":
            inlines = block[1]
            if inlines and inlines[0][0] == "strong":
                assert text_of(inlines[0][1]) == "Failed:"
                model["error"] = _after_label(inlines[1:])
            else:
                text_of(inlines)  # a summary line: plain text only
        elif section in ("Goals", "Constraints") and block[0] == "list":
            assert not model[section.lower()], "one list per section"
            for checked, item_blocks in block[1]:
                assert checked is None, "a goal became a task"
                label, rest = _label(_one_paragraph(item_blocks))
                assert label in (None, "(empty)") and (label is None or not rest)
                model[section.lower()].append("" if label else text_of(rest))
        elif section == "Tasks" and block[0] == "list":
            assert not model["tasks"], "one task list"
            model["tasks"] = [_read_task(checked, item_blocks) for checked, item_blocks in block[1]]
        else:
            raise AssertionError(f"unexpected block {block!r} in section {section!r}")
    return model


def _read_task(checked: bool | None, blocks: list[Block]) -> dict[str, Any]:
    assert checked is not None, f"not a task: {blocks!r}"
    assert blocks[0][0] == "paragraph", blocks
    head = blocks[0][1]
    cut = next((i for i, x in enumerate(head) if x[0] in ("em", "strong")), len(head))
    text = text_of(head[:cut])
    if cut < len(head):
        assert text.endswith(" "), head
        text = text[:-1]
    task_id, _, title = text.partition(" ")
    task: dict[str, Any] = {
        "id": task_id,
        "checked": checked,
        "title": title,
        "estimate": None,
        "status": "done",
        "description": "",
        "depends_on": [],
        "last_error": None,
        "criteria": [],
        "children": [],
    }
    for mark in head[cut:]:
        if mark[0] == "text":
            assert mark[1] == " ", head
        elif mark[0] == "strong":
            assert text_of(mark[1]) == "DEAD" and task["status"] == "done"
            task["status"] = "dead"
        else:
            assert mark[0] == "em", head
            value = text_of(mark[1])
            hours = re.fullmatch(r"\((.+ h)\)", value)
            if hours and task["estimate"] is None and task["status"] == "done":
                task["estimate"] = hours.group(1)
            else:
                assert value.startswith("(") and value.endswith(")") and task["status"] == "done", head
                task["status"] = value[1:-1]
    for block in blocks[1:]:
        if block[0] == "quote":
            task["description"] = text_of(_one_paragraph(block[1]))
            continue
        assert block[0] == "list", block
        for item_checked, item_blocks in block[1]:
            if item_checked is not None:
                task["children"].append(_read_task(item_checked, item_blocks))
                continue
            label, rest = _label(_one_paragraph(item_blocks))
            if label is None:
                task["criteria"].append(text_of(rest))
            elif label == "(empty)":
                assert not rest
                task["criteria"].append("")
            elif label == "depends on:":
                task["depends_on"] = _after_label(rest).split(", ")
            elif re.fullmatch(r"dead after \d+ attempts?:", label):
                task["last_error"] = _after_label(rest)
            else:
                assert re.fullmatch(r"dead after \d+ attempts?, no error recorded", label) and not rest, label
                task["last_error"] = ""
    return task


# ---------------------------------------------------------------------------------------------
# Node helpers: marked and Mermaid, each one long-lived process answering one JSON line a document.


class NodeReader:
    def __init__(self, script: str) -> None:
        node = shutil.which("node")
        if node is None:
            pytest.fail("Node.js is needed to read the Markdown and Mermaid output back (marked, mermaid)")
        if not (TOOLS / "node_modules" / "mermaid").is_dir() or not (TOOLS / "node_modules" / "marked").is_dir():
            pytest.fail("tools/node_modules is missing marked or mermaid: run `npm ci --prefix tools`")
        self.proc = subprocess.Popen(
            [node, str(TOOLS / script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8"
        )

    def __call__(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        # ensure_ascii keeps the line one line and valid UTF-8 whatever the text (lone surrogates too).
        self.proc.stdin.write(json.dumps(text) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"{self.proc.args!r} ended"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(30)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def marked() -> Iterator[NodeReader]:
    reader = NodeReader("markdown_tokens.mjs")
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def mermaid() -> Iterator[NodeReader]:
    reader = NodeReader("mermaid_read.mjs")
    yield reader
    reader.close()


def check_markdown(tree: TaskTree, markdown: str, marked: NodeReader) -> None:
    want = expected(tree)
    assert read_markdown(mdit_blocks(markdown)) == want, "markdown-it-py"
    answer = marked(markdown)
    assert "tokens" in answer, answer
    assert read_markdown(marked_blocks(answer["tokens"])) == want, "marked"


# ---------------------------------------------------------------------------------------------
# Mermaid: labels as the parser stored them, decoded, and the arrows.

_MERMAID_ENTITY = re.compile("\ufb02\u00b0\u00b0(\\d+)\u00b6\u00df")  # Mermaid's stand-in for "#N;"
_LABEL = re.compile(r"(?P<id>[^ ]*)(?: (?P<title>.*?))?(?: \((?P<hours>[^()]*) h\))?(?: \((?P<status>[^()]*)\))?")


def mermaid_decode(text: str) -> str:
    """The documented inverse: every entity code "#N;" is the character N."""
    return _MERMAID_ENTITY.sub(lambda m: chr(int(m.group(1))), text)


def terminal_unescape(text: str) -> str:
    """The inverse of terminal_safe (Python string-literal escapes)."""
    short = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}
    return re.sub(
        r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[tnr\\])",
        lambda m: short.get(m.group(1)) or chr(int(m.group(1)[1:], 16)),
        text,
    )


def read_mermaid(answer: dict[str, Any]) -> dict[str, Any]:
    assert "error" not in answer, answer["error"]
    assert answer["type"].startswith("flowchart"), answer
    tasks: dict[str, dict[str, Any]] = {}
    by_node: dict[str, str] = {}
    for vertex in answer["vertices"]:
        match = _LABEL.fullmatch(vertex["text"])
        assert match, vertex
        task_id = mermaid_decode(match["id"])
        by_node[vertex["id"]] = task_id
        tasks[task_id] = {
            "title": mermaid_decode(match["title"] or ""),
            "estimate": f"{match['hours']} h" if match["hours"] else None,
            "status": mermaid_decode(match["status"]) if match["status"] else "done",
            "classes": sorted(vertex["classes"]),
            "children": [],
            "depends_on": [],
        }
    for edge in answer["edges"]:
        start, end = by_node[edge["start"]], by_node[edge["end"]]
        assert edge["type"] == "arrow_point", edge
        if edge["stroke"] == "normal":
            tasks[start]["children"].append(end)
        else:
            assert edge["stroke"] == "dotted", edge
            tasks[end]["depends_on"].append(start)
    return {"title": terminal_unescape(html.unescape(answer["title"])), "tasks": tasks}


def expected_mermaid(tree: TaskTree) -> dict[str, Any]:
    ids = {t.id for t in tree.iter_tasks()}
    return {
        "title": tree.project.get("name", ""),
        "tasks": {
            t.id: {
                "title": t.title,
                "estimate": f"{t.estimate_hours:g} h" if t.estimate_hours > 0 else None,
                "status": t.status,
                "classes": ["dead"] if t.status == "dead" else ["atomic"] if t.atomic else [],
                "children": [c.id for c in t.children],
                "depends_on": [d for d in t.depends_on if d in ids],
            }
            for t in tree.iter_tasks()
        },
    }


def check_mermaid(tree: TaskTree, text: str, mermaid: NodeReader) -> None:
    assert read_mermaid(mermaid(text)) == expected_mermaid(tree)


def check_csv(tree: TaskTree, text: str) -> None:
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    tasks = list(tree.iter_tasks())
    assert [(r["id"], r["title"], r["description"], r["parent"]) for r in rows] == [
        (t.id, t.title, t.description, t.parent_id or "") for t in tasks
    ]
    assert [r["depends_on"] for r in rows] == [";".join(t.depends_on) for t in tasks]


def assert_printable(text: str, what: str) -> None:
    """Nothing in `text` can act on a terminal: every character printable but the line breaks."""
    bad = sorted({c for c in text if not c.isprintable() and c != "\n"})
    assert not bad, f"{what} prints {bad!r} as they are"


# ---------------------------------------------------------------------------------------------
# Unit tests of the renderers, with hypothesis.

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _nasty_tree() -> TaskTree:
    """Every nasty piece somewhere: the project's text, titles, descriptions, criteria, errors."""
    valid = [n for n in NASTY if "\ud800" not in n]
    tasks = [
        TreeTask(
            id=str(i + 1),
            parent_id=None,
            depth=0,
            title=piece,
            description=f"{piece}\n{piece}",
            acceptance_criteria=[piece, f"- [x] {piece}"],
            depends_on=[str(i)] if i else [],
            status=STATUSES[i % len(STATUSES)],
            estimate_hours=1.5 * (i % 3),
            last_error=piece,
            children=[TreeTask(id=f"{i + 1}.1", parent_id=str(i + 1), depth=1, title=f"{piece}x{piece}")],
        )
        for i, piece in enumerate(valid)
    ]
    return TaskTree(
        project={
            "name": "".join(valid[:20]),
            "description": "\n".join(valid),
            "goals": valid,
            "constraints": ["```", "<!--"],
            "state": "done",
            "error": "\n".join(valid[::-1]),
        },
        tasks=tasks,
    )


@pytest.mark.slow
def test_known_nasty_text_reads_back_exactly_in_every_format(marked: NodeReader, mermaid: NodeReader) -> None:
    """An unclosed code fence or HTML comment, checkbox and heading lines, tables, link definitions,
    Mermaid's own syntax and entity codes, terminal escapes and bidi overrides: Markdown (both
    parsers), Mermaid (its own parser), JSON and CSV read back exactly the tree, and no output holds
    a non-printable character (CSV excepted: it is exact, and escaped only on a terminal)."""
    tree = _nasty_tree()
    check_markdown(tree, tree.to_markdown(), marked)
    check_mermaid(tree, tree.to_mermaid(), mermaid)
    assert TaskTree.from_dict(json.loads(tree.to_json())) == tree
    check_csv(tree, tree.to_csv())
    for fmt in ("json", "markdown", "mermaid"):
        assert_printable(tree.render(fmt), fmt)


def test_the_example_of_the_issue_keeps_its_task_list(marked: NodeReader) -> None:
    """The issue's cases, one by one: a description with an unclosed fence or comment used to swallow
    the task list; criteria that look like checkboxes or headings used to become tasks (one ticked)."""
    for description in ("```\nunclosed", "~~~", "<!-- unclosed", "<div>\n\nraw", "Title\n==="):
        tree = TaskTree(
            project={"name": "P", "description": description, "goals": ["- [x] done", "# heading"]},
            tasks=[
                TreeTask(
                    id="1",
                    parent_id=None,
                    depth=0,
                    title="Root",
                    description=description,
                    acceptance_criteria=["- [x] done", "## not a heading", "1. not a list"],
                    status="done",
                    children=[TreeTask(id="1.1", parent_id="1", depth=1, title="Child", status="done")],
                )
            ],
        )
        check_markdown(tree, tree.to_markdown(), marked)


@SETTINGS
@given(trees())
@pytest.mark.slow
def test_markdown_reads_back_exactly_with_markdown_it_and_marked(marked: NodeReader, tree: TaskTree) -> None:
    """Whatever the text, both parsers read back exactly the tasks (ids, titles, checked state,
    estimates, status), their descriptions, criteria, dependencies and errors, and the project's
    name, description, goals, constraints and error; nothing non-printable is in the output."""
    markdown = tree.to_markdown()
    assert_printable(markdown, "markdown")
    check_markdown(tree, markdown, marked)


@SETTINGS
@given(trees())
@pytest.mark.slow
def test_mermaid_reads_back_exactly_with_mermaids_own_parser(mermaid: NodeReader, tree: TaskTree) -> None:
    """Mermaid's parser reads every label back to exactly the task's id, title (after decoding the
    documented entity codes), estimate and status, every arrow to exactly the subtasks and
    dependencies, the title to exactly the project's name; nothing non-printable is in the output."""
    text = tree.to_mermaid()
    assert_printable(text, "mermaid")
    check_mermaid(tree, text, mermaid)


@example(title="style:#x;")
@example(title="a;b")
@example(title="%%{init: {}}%%")
@SETTINGS
@given(hostile_valid)
@pytest.mark.slow
def test_a_mermaid_title_keeps_every_character(mermaid: NodeReader, title: str) -> None:
    """The defect as reported: a title with ";" (after "style:" and "#") lost it."""
    tree = TaskTree(project={"name": title}, tasks=[TreeTask(id="1", parent_id=None, depth=0, title=title)])
    check_mermaid(tree, tree.to_mermaid(), mermaid)


@SETTINGS
@given(trees(hostile))
@pytest.mark.slow
def test_json_and_csv_read_back_exactly(tree: TaskTree) -> None:
    """JSON: the same tree (lone surrogates too), nothing non-printable written as it is. CSV: the
    csv module reads back every id, title, description, parent and dependency exactly."""
    text = tree.to_json()
    assert_printable(text, "json")
    assert TaskTree.from_dict(json.loads(text)) == tree
    if not any("\ud800" <= c <= "\udfff" for t in tree.iter_tasks() for c in t.title + t.description):
        check_csv(tree, tree.to_csv())


@given(hostile)
def test_terminal_safe_is_printable_and_reversible(text: str) -> None:
    """terminal_safe leaves only printable characters, one line, and the escapes read back exactly;
    json_safe is the same JSON value."""
    shown = terminal_safe(text)
    assert shown.isprintable() and terminal_unescape(shown) == text
    kept = terminal_safe(text, keep_newlines=True)
    assert all(c.isprintable() or c == "\n" for c in kept) and terminal_unescape(kept) == text
    document = json_safe(json.dumps({"k": text, "l": [text]}, indent=2, ensure_ascii=False))
    assert json.loads(document) == {"k": text, "l": [text]}
    assert_printable(document, "json_safe")


def test_terminal_safe_examples() -> None:
    assert terminal_safe("plain text, ünïcode 😀") == "plain text, ünïcode 😀"
    assert terminal_safe("\x1b[2J\u202eab\x00\n\\") == "\\x1b[2J\\u202eab\\x00\\n\\\\"
    assert terminal_safe("\U000e0041\u00a0") == "\\U000e0041\\xa0"
    assert terminal_safe("C:\\dir \x1b", reversible=False) == "C:\\dir \\x1b", "messages keep their backslashes"


# ---------------------------------------------------------------------------------------------
# End to end: a hostile project and a hostile runner id through a real leader, runner and fake-llm.

HOSTILE_NAME = "Evil \x1b[2J\x1b]0;pwned\x07 \u202eedoc\u202c ```"
HOSTILE_RUNNER = "runner-\x1b[31mred\x1b[0m-\u202eabc\u202c\r\nfake line"


def hostile_project() -> dict[str, Any]:
    return {
        "name": HOSTILE_NAME,
        "description": "```\nunclosed fence\n<!-- unclosed comment\n- [x] done\n# Heading\nTitle\n===\n\x1b[2J",
        "goals": ["- [x] ticked goal", "## Goals", "style:#x;", "\u202eevil"],
        "constraints": ["| a | b |\n|---|---|", "[ref]: http://example.com"],
        "tasks": [
            {"title": "Seed; with #59; and \"quotes\" <b>html</b> `tick` \x1b[31mred\x1b[0m", "description": "~~~\nx"},
            {"title": "- [x] seed that looks ticked", "description": "<div>\n\nraw html"},
            {"title": "# seed that looks like a heading", "description": "> quote\n    code"},
        ],
        "max_depth": 2,
    }  # fmt: skip


@pytest.mark.slow
def test_hostile_project_end_to_end(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    tmp_path: Path,
    marked: NodeReader,
    mermaid: NodeReader,
) -> None:
    """A project file full of hostile text, decomposed by a real runner (its id hostile too) through
    a real leader: `status` and `watch` print nothing non-printable and show the id escaped; every
    format of `result` reads back, with the real parsers, to exactly the leader's JSON tree; the
    leader's readable log shows the runner id escaped; `result | head` (a closed pipe) is quiet."""
    base_url = fake_llm("--fanout", "2", "--atomic-depth", "5")
    leader_proc, leader = start_leader("--log-format", "console")
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(hostile_project()))
    submitted = run_cli([*PARADECOM, "submit", "--leader", leader, str(path)])
    assert submitted.returncode == 0, submitted.stderr
    project_id = submitted.stdout.strip()
    start_runner(leader, base_url, "--runner-id", HOSTILE_RUNNER, "--concurrency", "2")

    watched = run_cli([*PARADECOM, "watch", "--leader", leader, project_id])
    assert watched.returncode == 0, watched.stderr
    assert_printable(watched.stdout, "watch")

    def runner_listed() -> str | None:
        table = run_cli([*PARADECOM, "status", "--leader", leader])
        return table.stdout if table.returncode == 0 and "runner-" in table.stdout else None

    table = wait_for(runner_listed, what="the runner in the status table")
    assert_printable(table, "status")
    assert terminal_safe(HOSTILE_RUNNER) in table and terminal_safe(HOSTILE_NAME)[:39] in table
    assert len(table.splitlines()) == 5, "one line per project and per runner"
    listed = json.loads(run_cli([*PARADECOM, "status", "--leader", leader, "--json"]).stdout)
    assert [r["runner_id"] for r in listed["runners"]] == [HOSTILE_RUNNER], "JSON keeps it exact"
    assert listed["projects"][0]["name"] == HOSTILE_NAME

    outputs = {}
    for fmt in ("json", "markdown", "mermaid", "csv"):
        done = run_cli([*PARADECOM, "result", "--leader", leader, project_id, "--format", fmt])
        assert done.returncode == 0, done.stderr
        outputs[fmt] = done.stdout.removesuffix("\n")
    tree = TaskTree.from_dict(json.loads(outputs["json"]))
    assert tree.project["name"] == HOSTILE_NAME and len(list(tree.iter_tasks())) > 3
    assert any("\x1b" in t.title for t in tree.tasks), "the hostile text reached the tree"
    check_markdown(tree, outputs["markdown"], marked)
    check_mermaid(tree, outputs["mermaid"], mermaid)
    check_csv(tree, outputs["csv"])
    for fmt in ("json", "markdown", "mermaid"):
        assert_printable(outputs[fmt], fmt)

    # CSV on a terminal is escaped (it is exact, control characters included, anywhere else).
    on_tty = PtyProc([*PARADECOM, "result", "--leader", leader, project_id, "--format", "csv"])
    try:
        assert on_tty.wait() == 0, on_tty.text()
    finally:
        on_tty.close()
    assert "\x1b" not in on_tty.text() and "\\x1b[31mred" in on_tty.text()

    closed = closed_pipe_run([*PARADECOM, "result", "--leader", leader, project_id, "--format", "markdown"])
    assert closed == (141, ""), closed

    leader_proc.stop()
    log = leader_proc.stderr
    # Escaped once here; the console renderer quotes (repr) a value with spaces, escaping once more.
    assert "runner connected" in log and "x1b[31mred" in log, "the runner id is logged, escaped"
    assert_printable(log, "the leader's console log")


def closed_pipe_run(args: list[str]) -> tuple[int, str]:
    """Run with stdout a pipe whose reading end is closed before the command writes: the first
    write fails, as under `| head` once head has exited. Returns (exit status, stderr)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(args, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    return done.returncode, done.stderr


@pytest.mark.slow
def test_run_with_a_hostile_project_and_head(fake_llm: Callable[..., str], tmp_path: Path, marked: NodeReader) -> None:
    """`paradecom run` (leader and runners in-process, fake-llm) on the hostile project: its Markdown
    reads back exactly; piped into a real `head -n 3` with output far larger than a pipe's buffer it
    exits 141 and prints nothing on stderr but its progress lines (a traceback before the fix)."""
    base_url = fake_llm("--fanout", "2", "--atomic-depth", "5")
    project = hostile_project()
    # Over a megabyte of Markdown: head exits long before the run has written it all.
    project["tasks"] += [{"title": f"Bulk {i}", "description": "x" * 15_000} for i in range(80)]
    project["max_depth"] = 1
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(project))
    env = {**os.environ, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "test-key"}
    run = [*PARADECOM, "run", str(path), "--runners", "2", "--format", "markdown"]

    whole = subprocess.run(run, capture_output=True, text=True, env=env, timeout=300)
    assert whole.returncode == 0, whole.stderr
    assert len(whole.stdout) > 1_000_000
    markdown = whole.stdout.removesuffix("\n")
    assert_printable(markdown, "run --format markdown")
    tree = TaskTree.from_dict(
        json.loads(subprocess.run([*run[:-1], "json"], capture_output=True, text=True, env=env, timeout=300).stdout)
    )
    check_markdown(tree, markdown, marked)

    shell = shlex.join(run) + ' | head -n 3; echo "exit ${PIPESTATUS[0]}" >&2'
    piped = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, env=env, timeout=300)
    assert piped.stdout.splitlines()[0].startswith("# Evil"), piped.stdout[:200]
    # Off a terminal the progress goes to stderr as JSON lines; nothing else may be there.
    *progress, status = piped.stderr.splitlines()
    assert status == "exit 141" and "Traceback" not in piped.stderr, piped.stderr[-2000:]
    assert [json.loads(line)["project_id"] for line in progress], piped.stderr[-2000:]


@pytest.mark.parametrize("command", ["status", "watch"])
def test_commands_that_print_are_quiet_on_a_closed_pipe(
    command: str, fake_llm: Callable[..., str], start_leader: Callable[..., tuple[Proc, str]], tmp_path: Path
) -> None:
    """`status` and `watch` (JSON lines off a terminal) on a closed pipe: exit 141, stderr empty."""
    _, leader = start_leader()
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"name": "Piped", "description": "Into a closed pipe."}))
    project_id = run_cli([*PARADECOM, "submit", "--leader", leader, str(path)]).stdout.strip()
    args = [*PARADECOM, command, "--leader", leader] + ([project_id] if command == "watch" else [])
    assert closed_pipe_run(args) == (141, "")


def test_the_live_display_shows_a_hostile_project_id_escaped() -> None:
    """The rich display (watch and run on a terminal) draws the project id from the leader escaped:
    no terminal escape and no rich markup in it is obeyed."""
    from rich.console import Console

    from paradecom.client.progress import ProgressReporter
    from paradecom.v1 import project_pb2

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system=None)
    hostile_id = "p\x1b]0;pwned\x07\u202e[bold red]x[/]"
    with ProgressReporter(out, console=console) as show:
        show(project_pb2.ProjectSummary(project_id=hostile_id, state=project_pb2.PROJECT_STATE_DONE, done=1, total=1))
    text = out.getvalue()
    assert "\x07" not in text and "\u202e" not in text and "]0;pwned" not in text.replace("\\x1b]0;pwned", "")
    assert "p\\x1b]0;pwned\\x07\\u202e[bold red]x[/] done" in text
