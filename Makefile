# The two commands of the README: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test bench setup clean rules stack

$(BIN)/livekit-exporter: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,agents]'
	touch $@

setup: $(BIN)/livekit-exporter

demo: setup
	$(BIN)/livekit-exporter demo

# The demo, Debian's prometheus (with the bundle's rules) and alertmanager, on free loopback ports;
# Ctrl+C stops them all. Needs `apt-get install prometheus prometheus-alertmanager`.
# STACK_ENV=FILE: the secrets from FILE instead of .env (as `docker compose --env-file FILE`).
stack: setup
	$(BIN)/python -m livekit_exporter.stack $(if $(STACK_ENV),--env-file $(STACK_ENV))

test: setup
	$(BIN)/python -m pytest -q

# make bench [BENCH_ARGS="--quick --out /tmp/bench"]: every benchmark, bench/report.md and .json
bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache

# Regenerate prometheus/prometheus.yml, prometheus/rules/, grafana/, the chart's carried copies (charts/livekit-exporter/files/,
# Chart.yaml, README.md) and docs/{alerts,runbooks,dashboards}.md from prometheus/mixin.yml.
rules: setup
	$(BIN)/python -m livekit_exporter.mixin
