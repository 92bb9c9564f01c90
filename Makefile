# Two set-up commands (README): `make run` and `make test`. Both create .venv and install first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
FASTMBR_DATA ?= $(abspath ../shared/data)
export FASTMBR_DATA

.PHONY: run test install bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

$(VENV)/.installed: pyproject.toml $(BIN)/python
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[gpu,corruptions,export,test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/fastmbr run

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/fastmbr bench --quick

clean:
	rm -rf $(VENV) build *.egg-info
