# observer-bus — every target installs what it needs, idempotently.
# make demo : local Kafka + six organization nodes + observers + auditor, then the verdict
# make test : unit tests + integration tests against a real local Kafka broker

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: help venv web test test-faults fuzz cluster-up cluster-down basemap browser unit check lint typecheck proto proto-check demo demo-trust kafka-up kafka-down kafka-fetch bench native clean

help:  ## show the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: no python3.11 or python3 on PATH; install Python 3.11+ or pass make PYTHON=/path/to/python3"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)  ## create .venv and install observer-bus with dev dependencies

NATIVE_SRC := $(wildcard bus/_native/Cargo.toml bus/_native/Cargo.lock bus/_native/pyproject.toml bus/_native/src/*.rs)
NATIVE_STAMP := $(VENV)/.native-stamp

native: $(STAMP)  ## the optional compiled Ed25519 verifier obus_ed25519 (Rust; rebuilt when its sources change; skipped without a working cargo)
	@if cargo --version >/dev/null 2>&1; then $(MAKE) --no-print-directory $(NATIVE_STAMP); \
	else echo "no working cargo (none on PATH, or rustup has no default toolchain): skipping the compiled verifier obus_ed25519 (PyNaCl verifies)"; fi

$(NATIVE_STAMP): $(STAMP) $(NATIVE_SRC)
	$(PY) -m pip install --quiet 'maturin>=1.7,<2'
	rm -rf bus/_native/target/wheels
	cd bus/_native && ../../$(VENV)/bin/maturin build --release --quiet -i ../../$(PY) -o target/wheels
	$(PY) -m pip install --quiet --force-reinstall --no-deps bus/_native/target/wheels/obus_ed25519-*.whl
	@touch $@

kafka-fetch:  ## download Apache Kafka jars via Maven into .cache/kafka (idempotent)
	deploy/local/kafka.sh fetch

kafka-up:  ## start a single-node KRaft broker on 127.0.0.1 (or use $$OBUS_BOOTSTRAP)
	deploy/local/kafka.sh up

kafka-down:  ## stop the broker started by kafka-up
	deploy/local/kafka.sh down

# The observers' web form (nodes/observer_web, served by the gateway at /app/): npm ci from the
# lockfile, the rules exported from the Python modules, TypeScript generated from schemas/,
# type-checked and bundled into nodes/observer_web/dist. Rebuilt only when an input changed.
WEB := nodes/observer_web
WEB_BUILT := $(WEB)/dist/version.txt
WEB_INPUTS := $(WEB)/package.json $(WEB)/buf.gen.yaml $(WEB)/build.mjs $(WEB)/export_rules.py \
	$(WEB)/tsconfig.json $(WEB)/tsconfig.sw.json $(wildcard $(WEB)/src/*.ts $(WEB)/static/*) \
	$(wildcard schemas/obus/v1/*.proto bus/*.py) nodes/observer/device.py nodes/gateway/service.py

$(WEB)/node_modules/.package-lock.json: $(WEB)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "error: npm is needed for the web form; run: apt-get install -y nodejs npm"; exit 1; }
	cd $(WEB) && npm ci --no-audit --no-fund
	@touch $@

$(WEB_BUILT): $(STAMP) $(WEB)/node_modules/.package-lock.json $(WEB_INPUTS)
	$(PY) $(WEB)/export_rules.py $(WEB)/build/rules.json
	cd $(WEB) && npm run --silent build

web: $(WEB_BUILT)  ## the observers' web form: npm ci (lockfile), generate, bundle; skips when up to date

proto: $(STAMP)  ## regenerate bus/_pb from schemas/
	$(PY) schemas/generate.py

proto-check: $(STAMP)  ## fail when the generated code is stale or a schema change breaks the last release
	$(PY) schemas/generate.py --check
	$(PY) schemas/breaking.py

lint: $(STAMP)  ## ruff, and the import contracts of .importlinter (pure core, layers, no circles)
	$(VENV)/bin/ruff check bus nodes tests bench
	$(VENV)/bin/ruff format --check bus nodes tests bench
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)  ## mypy --strict on bus, nodes, tests and bench
	$(VENV)/bin/mypy

check: lint typecheck proto-check  ## all static checks

unit: $(STAMP)  ## unit tests only (no broker)
	$(PY) -m pytest tests/unit -q

test: $(STAMP) kafka-fetch native web  ## all tests; integration tests start their own broker on a free port
	@$(MAKE) --no-print-directory browser || echo "warning: no chromium: the dashboard's browser test will fail (see above)"
	$(PY) -m pytest -q

test-faults: $(STAMP) kafka-fetch  ## kill -9/SIGSTOP brokers of a 3-node cluster, crash nodes, full disk; figures in var/faults/
	$(PY) -m pytest -q -s -m faults tests/faults

FUZZ_RUNS ?= 1000000
fuzz: $(STAMP)  ## $(FUZZ_RUNS) fuzz inputs over every decoder and verifier (atheris, else Hypothesis)
	@$(PY) -m pip install --quiet 'atheris>=2.3,<4' 2>/dev/null || echo "atheris does not install here: fuzzing with Hypothesis"
	$(PY) -m tests.fuzz.run --runs $(FUZZ_RUNS)

cluster-up:  ## 3-node KRaft cluster on 127.0.0.1:19092-19094 (SECURE=1: TLS + SASL/SCRAM + ACLs)
	deploy/local/cluster.sh up $(if $(SECURE),--secure)
	@if [ -n "$(SECURE)" ]; then set -x; $(PY) -m nodes.cli acls apply --orgs un,osce,eu,nato,csto,sco --bootstrap "$$(deploy/local/cluster.sh bootstrap)" --security-protocol SASL_SSL --ssl-cafile "$$(deploy/local/cluster.sh cafile)" --sasl-username admin --sasl-password-file var/kafka-cluster/secrets/admin.password; fi

cluster-down:  ## stop the cluster started by cluster-up
	deploy/local/cluster.sh down

basemap: $(STAMP)  ## rebuild the dashboard's offline basemap (Natural Earth 1:50m via npm world-atlas 2.0.2)
	@tmp=$$(mktemp -d) && (cd $$tmp && npm pack --silent world-atlas@2.0.2 >/dev/null && tar xzf world-atlas-2.0.2.tgz) \
	  && $(PY) -m nodes.org_node.dashboard.basemap $$tmp/package/countries-50m.json; status=$$?; rm -rf $$tmp; exit $$status

browser:  ## Debian's chromium for the dashboard's browser test (idempotent; apt-get as root or sudo)
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the dashboard's browser test"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  { $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium >/dev/null; } \
	  || { echo "error: could not install chromium; run: apt-get install -y chromium"; exit 1; }; }
	@chromium --version 2>/dev/null

demo: $(STAMP) kafka-fetch native web  ## start Kafka, six org nodes, observers and an auditor; seals, final verdicts, the result
	$(PY) -m nodes.cli demo --dir var/demo

demo-trust: $(STAMP) kafka-fetch  ## mandate rotation 4 of 6, a revocation, a restricted report, on seals; six nodes agree
	$(PY) -m nodes.demo.trust_mission

bench: $(STAMP) kafka-fetch native  ## ratios to the Ed25519 ceiling; table + bench/results/*.json (BENCH_ARGS="--sizes 100000,1000000 --profile")
	$(PY) -m bench.run $(BENCH_ARGS)

clean:  ## remove venv, caches and local state (keeps downloaded Kafka jars in .cache)
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
