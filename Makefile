# The two commands of the README: `make demo` and `make test`. Each sets up .venv when missing.
# `make test` is the fast suite (under 5 minutes on 2 cores); `make verify` runs the slow
# reproductions (tests marked slow: the claims about methods' quality, torchrun, PostgreSQL).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test verify tools bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch is pinned here for this machine (a CPU build on local disk); the package itself asks torch>=2.4.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/babysit train

# The browser test (tests/test_report_browser.py) renders reports in Debian's chromium: `test`
# installs it when missing; without apt or root that fails quietly and the browser test skips.
# Likewise Debian's postgresql (initdb, pg_ctl under /usr/lib/postgresql/*/bin) for the search
# test that shares a study through a PostgreSQL server it starts on loopback (tests/test_search.py).
test: $(STAMP) tools
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -n 2 -q -m "not slow"

verify: $(STAMP) tools
	$(PY) -m pytest -n 2 -q -m slow

tools:
	@command -v chromium >/dev/null 2>&1 || (DEBIAN_FRONTEND=noninteractive apt-get -qq update \
		&& DEBIAN_FRONTEND=noninteractive apt-get -qq install -y chromium) >/dev/null 2>&1 \
		|| echo "chromium could not be installed: the browser test will skip"
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| (DEBIAN_FRONTEND=noninteractive apt-get -qq update \
		&& DEBIAN_FRONTEND=noninteractive apt-get -qq install -y postgresql) >/dev/null 2>&1 \
		|| echo "postgresql could not be installed: the search test on PostgreSQL will skip"

bench: $(STAMP)
	@for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
