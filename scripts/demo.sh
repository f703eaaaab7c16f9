#!/usr/bin/env bash
# `make demo`: decompose examples/webshop.yaml with a local leader and 3 runners.
# With OPENAI_BASE_URL (or OPENAI_API_KEY) set, that endpoint does the work; otherwise this starts
# the fake OpenAI-compatible server that ships with ParaDecom and points the runners at it.
set -euo pipefail
cd "$(dirname "$0")/.."
PARADECOM=.venv/bin/paradecom
project=${1:-examples/webshop.yaml}

if [ -z "${OPENAI_BASE_URL:-}" ] && [ -z "${OPENAI_API_KEY:-}" ]; then
  out=$(mktemp)
  $PARADECOM fake-llm --listen 127.0.0.1:0 --latency 0.5 >"$out" 2>/dev/null &
  fake=$!
  trap 'kill $fake 2>/dev/null; rm -f "$out"' EXIT
  for _ in $(seq 100); do grep -q '^listening ' "$out" && break; sleep 0.1; done
  export OPENAI_BASE_URL="http://$(awk '/^listening/ {print $2}' "$out")/v1" OPENAI_API_KEY=unused
  echo "no LLM endpoint configured: using fake-llm at $OPENAI_BASE_URL" >&2
fi
$PARADECOM run "$project" --runners 3 --format markdown
