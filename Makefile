# The two commands a fresh machine needs: `make demo` and `make test`.
# Both create .venv and install what they need; re-running them installs nothing new.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml requirements/cpu.txt requirements/torchrec-cpu.txt requirements/test.txt | sha1sum | cut -c1-12)

.PHONY: demo test install bench clean

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements/cpu.txt -r requirements/test.txt
	$(PIP) install --no-deps -r requirements/torchrec-cpu.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.stamp-* && touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m recsys.cli env
	$(PY) -m recsys.cli train --config configs/dlrm/synthetic.yaml

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs build *.egg-info
