# Two commands do everything on a fresh machine:
#   make demo   builds the tiny base model, records CarRacing footage, trains and runs every stage
#   make test   runs the test suite (what CI runs)
# Both create .venv and install the project first. TORCH selects the torch build to install.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean-demo

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet "$(TORCH)"
	$(VENV)/bin/pip install --quiet -r requirements.txt -e .
	touch $@

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash demo.sh

test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" python -m pytest -q

clean-demo:
	rm -rf outputs/demo
