# The two commands of the README: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test bench setup clean rules

$(BIN)/livekit-exporter: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,agents]'
	touch $@

setup: $(BIN)/livekit-exporter

demo: setup
	$(BIN)/livekit-exporter demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache

# Regenerate prometheus/prometheus.yml, prometheus/rules/, grafana/ and docs/{alerts,runbooks}.md from prometheus/mixin.yml.
rules: setup
	$(BIN)/python -m livekit_exporter.mixin
