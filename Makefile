# Two entry points: `make demo` runs the daemon on its built-in demo, `make test` runs every check.
# Both set up what they need (Debian packages, a virtualenv) and are safe to run again.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBS := fping iproute2 procps prometheus prometheus-alertmanager mosquitto openssl podman runc debootstrap

.PHONY: demo test lint typecheck unit bench-accuracy bench-cost bench-scale bench-delivery bench-attacks clean debs

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,lab]'
	touch $(STAMP)

debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "note: not root, cannot install:$$missing (tests needing them will skip)"; fi; \
	fi

demo: $(STAMP) debs
	$(BIN)/vcmon demo

lint: $(STAMP)
	$(BIN)/ruff check vcmon vcmon_lab tests bench exporters/schemas/generate.py
	$(BIN)/ruff format --check vcmon vcmon_lab tests bench exporters/schemas/generate.py

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) debs
	$(BIN)/pytest -q

test: lint typecheck unit

bench-accuracy: $(STAMP) debs
	$(BIN)/python -m bench.accuracy

bench-cost: $(STAMP) debs
	$(BIN)/python -m bench.cost

bench-scale: $(STAMP) debs
	$(BIN)/python -m bench.scale

bench-delivery: $(STAMP)
	$(BIN)/python -m bench.delivery

bench-attacks: $(STAMP) debs
	$(BIN)/python -m bench.attacks

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
