# The two commands: `make demo` and `make test`. Both create the virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
DEMO_SUBJECTS ?= 5
DEMO_NPROCS ?= 2

LOCK_VENV ?= /tmp/cordlesion-lock-venv

.PHONY: venv test test-containers test-sct lint lock demo clean

# The locks pin the whole tree (requirements*.txt list the direct dependencies): installed with
# --no-deps, so exactly what they list and nothing else (no torchvision: see .ci/lock.py).
$(STAMP): requirements.lock requirements-test.lock pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --no-deps -r requirements.lock -r requirements-test.lock
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# After editing requirements.txt or requirements-test.txt: resolve them in a fresh venv, write the locks.
lock:
	rm -rf $(LOCK_VENV)
	python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q -r requirements.txt -r requirements-test.txt
	$(LOCK_VENV)/bin/python .ci/lock.py
	rm -rf $(LOCK_VENV)

# Builds the Dockerfile with podman and runs the image read-only on phantoms (root, podman, mmdebstrap:
# .ci/run installs them; asked for, a missing one FAILS with the reason). Not part of `make test`: minutes.
test-containers: $(STAMP)
	CORDLESION_TEST_CONTAINERS=1 $(PY) -m pytest -q -raP tests/test_podman.py

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -ra -m "not sct_oracle"

# The real SCT 7.3 as the oracle (tests marked sct_oracle): installs it from ../shared/peers/sct once
# (tests/sct_real.py; ~3 min, 2.4 GB in $$SCT_ORACLE_ROOT, default /tmp/sct-oracle), then compares.
test-sct: $(STAMP)
	CORDLESION_TEST_SCT=1 $(PY) -m pytest -q -ra -m sct_oracle

# Phantom dataset -> participant level (demo models) -> group level; prints where everything is.
demo: $(STAMP)
	$(PY) -m bidsapp.demo $(DEMO_DIR)/bids --subjects $(DEMO_SUBJECTS) --seed 1
	$(PY) run.py $(DEMO_DIR)/bids $(DEMO_DIR)/cordlesion participant --demo --nprocs $(DEMO_NPROCS) \
		--omp-nthreads 1 -w $(DEMO_DIR)/work --disc-labels $(DEMO_DIR)/bids/derivatives/labels
	$(PY) run.py $(DEMO_DIR)/bids $(DEMO_DIR)/cordlesion group -w $(DEMO_DIR)/work \
		--disc-labels $(DEMO_DIR)/bids/derivatives/labels
	@echo ""
	@echo "Input phantom dataset:  $(abspath $(DEMO_DIR))/bids (ground truth in derivatives/groundtruth)"
	@echo "Lesion derivatives:     $(abspath $(DEMO_DIR))/cordlesion/sub-*/**/anat/*_label-lesion_*"
	@echo "Per-image logs:         $(abspath $(DEMO_DIR))/cordlesion/logs/"
	@if [ -f $(DEMO_DIR)/cordlesion/qc/index.html ]; then \
		echo "QC index:               $(abspath $(DEMO_DIR))/cordlesion/qc/index.html"; fi
	@if [ -f $(DEMO_DIR)/cordlesion/group/lesions.tsv ]; then \
		echo "Lesion table:           $(abspath $(DEMO_DIR))/cordlesion/group/lesions.tsv"; fi
	@if [ -f $(DEMO_DIR)/cordlesion/group/lesion_levels.tsv ]; then \
		echo "Lesion load per level:  $(abspath $(DEMO_DIR))/cordlesion/group/lesion_levels.tsv"; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
