# evedge — quick start: `make demo` (simulated station, live view), `make test` (everything).
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
SYSTEM_DEPS := socat mosquitto

.PHONY: test demo deps install install-service lint format bench fuzz clean release

# Debian packages the tests need (real peers on loopback): installed when missing, as root.
deps:
	@missing=""; \
	for c in $(SYSTEM_DEPS); do \
	  command -v $$c >/dev/null 2>&1 || [ -x /usr/sbin/$$c ] || missing="$$missing $$c"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "error: the tests need:$$missing — install them with: sudo apt-get install$$missing" >&2; \
	    exit 1; \
	  fi; \
	fi

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,plot]"
	touch $@

install: $(BIN)/.installed

# The systemd service (as root): user, /opt/evedge/venv, /etc/evedge/station.toml, unit.
# Options go in ARGS, e.g. `make install-service ARGS="--now"` or ARGS="--dry-run".
install-service:
	systemd/install.sh $(ARGS)

# A signed update archive of this checkout (dist/evedge-<version>.update): the wheelhouse
# (pip wheel: needs the package index), signed with a test key made on first use in
# build/release-keys (gitignored); its root.pem goes in the test station's [update] root_ca_file.
release: install
	$(BIN)/python -m agent.update.build --keys build/release-keys --out-dir dist

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: deps install lint
	$(BIN)/pytest -q

# Every fuzz suite with >= 10,000 inputs per parser (fixed seed); `make test` runs a slice.
fuzz: deps install
	EVEDGE_FUZZ_N=10000 $(BIN)/pytest -q -m fuzz -p no:cacheprovider --timeout 3600

demo: install
	$(BIN)/evedge demo

# Every benchmark prints its figures and ratios (none asserts a timing); a few minutes in all.
bench: install
	$(BIN)/python bench/poll_efficiency.py
	$(BIN)/python bench/fault_latency.py
	$(BIN)/python bench/ocpp_backlog.py
	$(BIN)/python bench/mqtt_backlog.py
	$(BIN)/python bench/systemd_security.py
	$(BIN)/python bench/kpi_report.py
	$(BIN)/python bench/checkpoint.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/footprint.py
	$(BIN)/python bench/cli_latency.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .ruff_cache .hypothesis
