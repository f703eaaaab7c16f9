# The README's two commands are `make demo` (install, then decompose an example project) and
# `make test` (install, then lint and run every test). Everything else is a step of those.
PY := .venv/bin/python
NODE_RUNNER := clients/node-runner
# llama-cpp-python (the `local` extra) compiles llama.cpp. By default for the compiling CPU
# (-march=native): such a build dies with SIGILL wherever an instruction it uses is missing or not
# enabled, as AMX is on some virtual machines that report it; and pip's wheel cache hands the
# build on to every later install. Built for x86-64 with AVX2 instead, it runs on any such machine.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: install proto proto-check lint test test-fast demo bench clean

install: .venv/.installed
.venv/.installed: pyproject.toml tools/package-lock.json
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench,local]'
	@if [ -f $(NODE_RUNNER)/package-lock.json ]; then npm ci --silent --prefix $(NODE_RUNNER); fi
	npm ci --silent --prefix tools   # buf (tests/test_proto_lint.py); marked, mermaid, jsdom (tests/test_output_safety.py)
	@# An editable install compiles none of the repository's modules; where PYTHONDONTWRITEBYTECODE is
	@# set, every command would compile them again (~0.15 s of each start-up).
	$(PY) -m compileall -q paradecom leader runner
	touch $@

proto: install           ## regenerate paradecom/v1 from proto/
	$(PY) scripts/gen_protos.py

proto-check: install     ## fail if the committed stubs are stale
	$(PY) scripts/gen_protos.py --check

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy paradecom leader runner tests bench

test: install lint
	$(PY) -m pytest -n 2

# The edit-run loop: no lint, and not the tests marked slow (lease timeouts, grace periods, long waits).
test-fast: install
	$(PY) -m pytest -n 2 -m "not slow"

demo: install            ## decompose examples/demo.yaml (the embedded model if no endpoint is set)
	scripts/demo.sh

# BENCH_ARGS=--quick for a sanity run (~6 min); the full run takes ~20 min on 2 cores.
bench: .venv/.bench-installed   ## benchmarks: table on stdout, bench/results.json, docs/performance.png
	@command -v redis-server >/dev/null || apt-get install -y -q redis-server \
		|| echo "no redis-server: the Celery comparison will be skipped"
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.plot bench/results.json docs/performance.png
.venv/.bench-installed: .venv/.installed pyproject.toml
	$(PY) -m pip install -q -e '.[dev,bench,local]'
	touch $@

clean:
	rm -rf .venv build *.egg-info .pytest_cache .mypy_cache .ruff_cache
