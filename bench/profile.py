"""Profiling the leader while a workload runs: py-spy attached to the leader's pid.

    python -m bench.run --profile DIR ...   # a py-spy profile of the leader for each leader-cost run
    python -m bench.profile DIR/leader-r1.txt  # where the time went, as text

py-spy (`pip install py-spy`, in the `bench` extra) samples the process from outside, so the leader
runs unmodified. Two files per profile: `.svg` (a flame graph to open in a browser) and `.txt`
(collapsed stacks, one `frame;frame;... count` per line) that `summarize` reads.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")

# Where a frame's file says the time goes; the first rule that matches a stack, leaf first, wins.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("sqlite (store queries and commits)", ("leader/store.py",)),
    ("protobuf (building and (de)serializing messages)", ("_pb2", "protobuf", "message.py")),
    ("json (counters, lists in rows)", ("json/",)),
    ("logging", ("structlog", "logging/")),
    ("openai SDK, httpx, pydantic (the LLM call)", ("openai/", "httpx/", "httpcore/", "pydantic", "anyio/", "h11/")),
    ("grpc (transport, aio server)", ("grpc/", "grpc\\", "cygrpc")),
    ("event loop, incl. native grpc and protobuf work run by its callbacks", ("asyncio/", "selectors.py")),
]


def py_spy() -> str | None:
    """The py-spy executable beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def record(pid: int, out_base: Path, rate: int = 250) -> Iterator[None]:
    """py-spy record of `pid` while the block runs: `out_base`.txt (collapsed) and `out_base`.svg."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy not found: pip install py-spy (or the bench extra)")
    out_base.parent.mkdir(parents=True, exist_ok=True)
    raw = out_base.with_suffix(".txt")
    proc = subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--format", "raw", "-o", str(raw), "--rate", str(rate), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    if raw.exists():
        flamegraph(raw, out_base.with_suffix(".svg"))


def flamegraph(raw: Path, svg: Path) -> None:
    """An SVG flame graph from collapsed stacks (a minimal one, no external tool needed)."""
    stacks = list(_read(raw))
    total = sum(n for _, n in stacks) or 1
    tree: dict[str, Any] = {"n": 0, "kids": {}}
    for frames, n in stacks:
        node = tree
        node["n"] += n
        for f in frames:
            node = node["kids"].setdefault(f, {"n": 0, "kids": {}})
            node["n"] += n
    width, row = 1600.0, 16
    rects: list[str] = []
    depth_max = 0

    def draw(node: dict[str, Any], x: float, depth: int) -> None:
        nonlocal depth_max
        depth_max = max(depth_max, depth)
        for name, kid in sorted(node["kids"].items(), key=lambda kv: -kv[1]["n"]):
            w = width * kid["n"] / total
            if w >= 0.5:
                label = name if len(name) * 6.5 < w else name[: max(0, int(w / 6.5) - 2)] + ".." if w > 20 else ""
                hue = 20 + (hash(name) % 40)
                title = f"{name} — {kid['n']} samples ({100 * kid['n'] / total:.1f}%)"
                rects.append(
                    f'<g><title>{_esc(title)}</title><rect x="{x:.1f}" y="{{Y{depth}}}" width="{w:.1f}" '
                    f'height="{row - 1}" fill="hsl({hue},80%,60%)"/><text x="{x + 2:.1f}" y="{{T{depth}}}" '
                    f'font-size="11" font-family="monospace">{_esc(label)}</text></g>'
                )
                draw(kid, x, depth + 1)
            x += w

    draw(tree, 0.0, 0)
    height = (depth_max + 2) * row
    body = "\n".join(rects)
    for d in range(depth_max + 1):
        y = height - (d + 1) * row
        body = body.replace(f"{{Y{d}}}", str(y)).replace(f"{{T{d}}}", str(y + row - 4))
    svg.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}">'
        f'<rect width="100%" height="100%" fill="white"/>{body}</svg>\n'
    )


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _read(raw: Path) -> Iterator[tuple[list[str], int]]:
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def _short(frame: str) -> str:
    m = _FRAME_RE.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('func')} ({path})"


def _func(frame: str) -> str:
    """The frame without its line number: one entry per function."""
    m = _FRAME_RE.match(frame)
    return _short(frame) if not m else _short(f"{m.group('func')} ({m.group('file')})")


def summarize(raw: Path, top: int = 25) -> dict[str, Any]:
    """Inclusive and self time per function and per category, in % of the samples."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    total = 0
    for frames, n in _read(raw):
        total += n
        funcs = [_func(f) for f in frames]
        for f in set(funcs):
            inclusive[f] += n
        if funcs:
            own[funcs[-1]] += n
        categories[_category(frames)] += n
    pct = 100.0 / (total or 1)
    return {
        "samples": total,
        "categories": {k: round(v * pct, 1) for k, v in categories.most_common()},
        "inclusive": [(f, round(v * pct, 1)) for f, v in inclusive.most_common(top)],
        "self": [(f, round(v * pct, 1)) for f, v in own.most_common(top)],
    }


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                return name
    return "other Python (ParaDecom's own logic)"


def render(summary: dict[str, Any]) -> str:
    lines = [f"{summary['samples']} samples", "", "by category (leaf frame first):"]
    lines += [f"  {v:5.1f}%  {k}" for k, v in summary["categories"].items()]
    lines += ["", "inclusive (a function and what it calls):"]
    lines += [f"  {v:5.1f}%  {f}" for f, v in summary["inclusive"]]
    lines += ["", "self (the function's own code):"]
    lines += [f"  {v:5.1f}%  {f}" for f, v in summary["self"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("raw", nargs="+", type=Path, help="collapsed-stack files written by py-spy --format raw")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    for raw in args.raw:
        print(f"== {raw}")
        print(render(summarize(raw, args.top)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
