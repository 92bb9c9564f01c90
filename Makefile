# Two set-up commands (README): `make run` and `make test`. Both create .venv and install everything first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEB_DEPS := libturbojpeg0-dev libopencv-dev pkg-config

.PHONY: run test install bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

# torch/torchvision are the x86_64 builds this machine holds on disk (no download); DALI, Triton, ONNX, the
# corruption fork come from the package registry. FFCV compiles against Debian's libturbojpeg and OpenCV:
# they are installed when we are root; without them the ffcv loader reports itself unavailable.
$(VENV)/.installed: pyproject.toml $(BIN)/python
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[gpu,corruptions,export,repro,test]'
	-@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! dpkg -s $(DEB_DEPS) >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_DEPS)) >/dev/null \
		|| echo "warning: could not install $(DEB_DEPS); the ffcv loader will be unavailable"; fi
	-@$(BIN)/pip install -q ffcv==1.0.2 || echo "warning: ffcv did not install; the ffcv loader will be unavailable"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/fastmbr run

test: install
	FASTMBR_DATA="$${FASTMBR_DATA:-$(abspath ../shared/data)}" $(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/fastmbr bench --quick

clean:
	rm -rf $(VENV) build *.egg-info
