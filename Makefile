# The two README commands. Each creates .venv on first use.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: demo test test-all install clean

$(VENV_STAMP): pyproject.toml setup.py
	python3 -m venv .venv
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(VENV_STAMP)

install: $(VENV_STAMP)

demo: $(VENV_STAMP)
	.venv/bin/privkit demo --out runs/demo --overwrite

test: $(VENV_STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

test-all: $(VENV_STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m ''

clean:
	rm -rf runs .pytest_cache build *.egg-info
