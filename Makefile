# Two commands do everything on a fresh machine:
#   make demo   builds the tiny base model, records CarRacing footage, trains and runs every stage
#   make test   lints, then runs the test suite (what CI runs)
# Both create .venv and install the project with its extras first. TORCH selects the torch build to install.
#   make lint   ruff's checks and its format check (settings in pyproject.toml)
#   make format applies ruff's fixes and format
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format clean-demo

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet "$(TORCH)"
	$(VENV)/bin/pip install --quiet -e ".[record,test,dev]"
	touch $@

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash demo.sh

test: lint
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean-demo:
	rm -rf outputs/demo
