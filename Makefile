# w2v — the README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SYSTEM_PACKAGES := espeak-ng sox libsndfile1 irstlm fortunes

.PHONY: setup sysdeps test bench demo proto clean

# System packages (apt, as root); skipped when they are already there.
sysdeps:
	@missing=""; \
	command -v espeak-ng >/dev/null || missing=1; \
	command -v sox >/dev/null || missing=1; \
	[ -x /usr/lib/irstlm/bin/build-lm.sh ] || [ -x /usr/bin/build-lm.sh ] || missing=1; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0 'numpy<2'
	$(PY) -m pip install -q -e '.[all,test]'
	touch $(STAMP)

setup: sysdeps $(STAMP)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m bench

# The gRPC API's generated code (committed) from w2v_serve/proto/w2v.proto.
proto: setup
	$(PY) -m w2v_serve.proto.generate

demo: setup
	$(VENV)/bin/w2v transcribe samples/sample.wav

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
