# The two README commands (`make demo`, `make test`) and the developer checks.
VENV ?= $(CURDIR)/.venv
PY = $(VENV)/bin/python

.PHONY: setup demo demo-ceph test pep8 genconfig bench fuzz

setup:
	tools/setup-env.sh test

# Command 1: a real local Glance 33 with our plugins, a sample import, the result.
demo: setup
	$(PY) tools/demo.py

# The same, with a real single-node Ceph as a third store (rbd_sparse).
demo-ceph: setup
	$(PY) tools/demo.py --ceph

# Command 2: every test layer: pure (real images), flow (real taskflow),
# functional (real Glance, real Ceph).
test: setup
	tools/run-tests.sh

pep8: setup
	$(PY) tools/license-headers.py --check
	$(VENV)/bin/ruff check glance_imgplugins tests benchmarks tools fuzz
	$(VENV)/bin/mypy glance_imgplugins
	$(VENV)/bin/mypy --strict glance_imgplugins/inspection.py glance_imgplugins/decompression.py glance_imgplugins/qemu_img.py glance_imgplugins/injection_rules.py glance_imgplugins/guest.py glance_imgplugins/signature.py glance_imgplugins/multistore glance_imgplugins/cmd/multistore.py fuzz/checks.py fuzz/run.py

genconfig: setup
	$(VENV)/bin/oslo-config-generator --config-file etc/oslo-config-generator/glance-imgplugins.conf

# Benchmarks: never part of the tests; results go into doc/source/benchmarks.rst.
bench: setup
	tools/setup-env.sh ceph
	$(VENV)/bin/pip install -q -r benchmarks/requirements.txt
	$(PY) -m benchmarks

# Coverage-guided fuzzing of the inspection core and the rules loader, all
# targets at once for FUZZ_TIME seconds each (default 600); crashes land in
# fuzz/work/crashes/<target>/.  Never part of the tests (a 30 s smoke run is).
FUZZ_TIME ?= 600
fuzz: setup
	$(VENV)/bin/pip install -q -r fuzz/requirements.txt
	$(PY) -m fuzz.run --time $(FUZZ_TIME)
