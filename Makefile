# The two commands of the README: `make run` and `make test`. Both create the
# virtualenv in .venv and install the pinned packages on first use.

VENV   ?= .venv
PYTHON := $(VENV)/bin/python
PORT   ?= 8000

.PHONY: run demo-clean test test-fast bench bench-full shapes idle storm attack lint mutate clean \
        chaos chaos-short chaos-plants chaos-ready

run: $(VENV)/.runtime
	PATH="$(abspath $(VENV))/bin:$$PATH" PORT=$(PORT) $(PYTHON) demo.py

# What `make run`'s demo leaves: the database public_status_demo and the role
# public_status_demo_reader in the machine's PostgreSQL, or the embedded one's .data/.
demo-clean: $(VENV)/.runtime
	$(PYTHON) demo.py --clean

test: $(VENV)/.dev
	scripts/ensure-services.sh
	scripts/ensure-tool.sh chromium
	scripts/ensure-tool.sh nginx
	scripts/ensure-tool.sh curl
	scripts/ensure-tool.sh node nodejs
	scripts/ensure-tool.sh npm
	cd tests/node && npm ci --silent --no-audit --no-fund
	scripts/ensure-tool.sh redis-server
	scripts/ensure-tool.sh buildah
	scripts/ensure-tool.sh debootstrap
	scripts/ensure-tool.sh promtool prometheus
	$(PYTHON) -m pytest -n 3 --dist loadfile --durations=15   # files side by side: the suite mostly waits on its processes; the slowest listed
	$(MAKE) --no-print-directory chaos-short

# The in-process tests alone: no gunicorn, no browser. They still read the real
# PostgreSQL, and one runs a redis-server of its own, so both are made ready first.
test-fast: $(VENV)/.dev
	scripts/ensure-services.sh
	scripts/ensure-tool.sh redis-server
	$(PYTHON) -m pytest -m "not e2e and not browser"

bench bench-full: $(VENV)/.dev
	scripts/ensure-services.sh
	scripts/ensure-tool.sh wrk
	$(PYTHON) bench/run.py $(if $(filter bench-full,$@),--full)
	$(if $(filter bench-full,$@),scripts/ensure-tool.sh redis-server && $(PYTHON) bench/shapes.py --full)

# Several workers, several instances on Redis, and launch day (bench/shapes.py): the
# shapes people deploy, measured; bench-full runs the longer version of it.
shapes: $(VENV)/.dev
	scripts/ensure-services.sh
	scripts/ensure-tool.sh wrk
	scripts/ensure-tool.sh redis-server
	$(PYTHON) bench/shapes.py

# What an idle viewer costs (bench/idle.py): memory, fan-out and CPU per stream at 10,000
# and 19,000 streams beside the code before and the floor; launch day; about 15 minutes.
idle: $(VENV)/.dev
	scripts/ensure-services.sh
	scripts/ensure-tool.sh wrk
	$(PYTHON) bench/idle.py

# A deploy of 5,000 streams (bench/storm.py) and the edge probed as an attacker would
# (bench/attack.py): figures printed, raw ones in bench/results/.
storm attack: $(VENV)/.dev
	scripts/ensure-services.sh
	scripts/ensure-tool.sh redis-server
	$(PYTHON) bench/$@.py

# Proof under faults (docs/chaos.md): the deployment as people run it (nginx, two
# instances of two workers, Redis, PostgreSQL), a few hundred real clients, a seeded
# nemesis, and a checker of what every client saw. CHAOS_SECONDS of faults (600) and
# CHAOS_SEED (random, printed) set the run; chaos-short is CI's (under 90 s, the last
# step of `make test`); chaos-plants runs a short one against each planted bug.
CHAOS_SECONDS ?= 600
CHAOS_SEED    ?=

chaos: chaos-ready
	CHAOS_SEED=$(CHAOS_SEED) $(PYTHON) scripts/chaos.py run --seconds $(CHAOS_SECONDS)

chaos-short: chaos-ready
	CHAOS_SEED=$(CHAOS_SEED) $(PYTHON) scripts/chaos.py run --short --seconds 40

chaos-plants: chaos-ready
	CHAOS_SEED=$(CHAOS_SEED) $(PYTHON) scripts/chaos.py plants --seconds 40

chaos-ready: $(VENV)/.dev
	scripts/ensure-tool.sh nginx
	scripts/ensure-tool.sh redis-server
	scripts/ensure-tool.sh chromium
	scripts/ensure-tool.sh iptables
	scripts/ensure-tool.sh tc iproute2
	scripts/ensure-tool.sh initdb postgresql || ls /usr/lib/postgresql/*/bin/initdb
	scripts/ensure-tool.sh node nodejs
	scripts/ensure-tool.sh npm
	test -d tests/node/node_modules/eventsource || (cd tests/node && npm ci --silent --no-audit --no-fund)

lint: $(VENV)/.dev
	$(PYTHON) -m ruff check .

# Plant small bugs in the pure core and the cache's rules, one at a time, and report
# those the in-process tests let through (see docs/tests.md). About 30 minutes.
mutate: $(VENV)/.dev
	scripts/ensure-services.sh
	scripts/ensure-tool.sh redis-server
	$(PYTHON) scripts/mutate.py

$(PYTHON):
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt | $(PYTHON)
	$(PYTHON) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(PYTHON)
	$(PYTHON) -m pip install -q -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

clean:
	rm -rf $(VENV) .pytest_cache
