# Auto Invest Oracle — execution backend. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
PY := .venv/bin/python
# The import contracts of pyproject.toml ([tool.importlinter]): which room may import which.
LINT_IMPORTS := .venv/bin/lint-imports --no-cache --no-logo
# Ports of the local stack (`make run DB_PORT=55432 …`, or the same names in the environment).
DB_PORT ?= 54322
SANDBOX_PORT ?= 54330
TRADING_EXECUTE_PORT ?= 54331
SCAN_SCHEDULER_PORT ?= 54332

.PHONY: setup run demo test lint db db-down db-reset sandbox bench fuzz soak rls-matrix release

setup: ## install what is missing (venv, PostgreSQL 15 + pg_cron + pgTAP, Supabase CLI)
	@scripts/setup.sh

run: setup ## the whole system live, paper mode: PostgreSQL (kept), sandbox, both functions, a local cron; Ctrl+C stops all
	@$(PY) -m stack run --db-port $(DB_PORT) --sandbox-port $(SANDBOX_PORT) \
		--trading-execute-port $(TRADING_EXECUTE_PORT) --scan-scheduler-port $(SCAN_SCHEDULER_PORT)

demo: setup ## the same stack on a throwaway cluster and free ports, a bounded scenario, a summary; exit 0 when complete
	@$(PY) -m stack demo

test: setup ## the whole suite: ruff, mypy, the import contracts, pytest (database, pgTAP via pg_prove, Supabase CLI, exchange, sandbox)
	$(PY) -m ruff check .
	$(PY) -m mypy shared sandbox console stack functions scripts
	$(LINT_IMPORTS)
	$(PY) -m pytest

# The fuzzers with a long budget and a fresh random seed per run (CI runs each with a small fixed,
# derandomized budget as part of `make test`). A failure prints the seed to replay it with
# `$(PY) -m pytest --hypothesis-seed=<seed> tests/test_fuzz_….py`.
FUZZ_EXAMPLES ?= 2000
fuzz: setup ## the HTTP and RPC fuzzers, FUZZ_EXAMPLES (default 2000) random examples per test
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -p no:cacheprovider --timeout=0 \
		--hypothesis-show-statistics tests/test_fuzz_http.py tests/test_fuzz_rpc.py

# The chaos soak for SOAK_SECONDS (default 600) with SOAK_SEED (default: a fresh random one), the
# summary printed (CI runs tests/test_soak.py with a fixed seed and step budget in `make test`).
# A failure prints the line that replays it: `make soak SOAK_SEED=<seed> SOAK_SECONDS=<s>`.
SOAK_SECONDS ?= 600
SOAK_SEED ?= $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
soak: setup ## the chaos soak: random traffic, exchange faults and SIGKILLs, then every invariant
	SOAK_SEED=$(SOAK_SEED) SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -p no:cacheprovider \
		--timeout=0 -s -k invariant tests/test_soak.py

rls-matrix: setup ## observe the RLS matrix on a throwaway cluster and write it into README.md
	$(PY) -m scripts.rls_matrix --readme README.md

# Released migrations never change (scripts/release.py): a release lists every migration not
# released yet, with the sha256 of its bytes, in supabase/released-migrations.json; `make test`
# then fails if one of them changes or a new one sorts before them. Commit the manifest.
release: setup ## release every migration not released yet as NAME (make release NAME=v1)
	@if [ -z "$(NAME)" ]; then echo "usage: make release NAME=<name>  (e.g. NAME=v1)" >&2; exit 2; fi
	$(PY) -m scripts.release cut "$(NAME)"

lint: setup ## ruff, mypy and the import contracts
	$(PY) -m ruff check .
	$(PY) -m mypy shared sandbox console stack functions scripts
	$(LINT_IMPORTS)

db: setup ## start the project-local PostgreSQL on $(DB_PORT) (local + migrations + seed) and print its URL
	@$(PY) -m stack db --port $(DB_PORT) --seed

db-down:
	@$(PY) -m stack db-down --port $(DB_PORT)

db-reset: setup
	@$(PY) -m stack db-reset --port $(DB_PORT) --seed

sandbox: setup ## the local Bitvavo sandbox on 127.0.0.1:$(SANDBOX_PORT)
	$(PY) -m sandbox.bitvavo --host 127.0.0.1 --port $(SANDBOX_PORT)

# Benchmarks: never part of `make test`. Each prints a table of ratios measured in the same run.
BENCH_PY := .bench-venv/bin/python
BENCHMARKS := bench/scheduler.py bench/claim_path.py bench/budget.py bench/http_execute.py \
	bench/scan_scale.py bench/scan_burst.py

bench: setup ## benchmarks in a bench-only environment (.bench-venv, bench/node_modules); prints the tables
	@bench/setup.sh
	@set -e; for b in $(BENCHMARKS); do echo "==> $$b" >&2; $(BENCH_PY) $$b; done

# Deployable Cloud Functions directories: build/trading_execute/, build/scan_scheduler/ (main.py,
# requirements.txt, the vendored modules of shared each needs; the scanner's has no trade client).
.PHONY: bundle
bundle: setup ## one deployable directory per function under build/ (scripts/bundle.py)
	$(PY) -m scripts.bundle --out build
