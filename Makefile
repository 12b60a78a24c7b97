# w2v — the README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The runtime only (w2v_serve, no torch) and KenLM for the bundled model's LM: what `make demo` needs.
RUNTIME_STAMP := $(VENV)/.runtime-installed
# fortunes (sentences) and wamerican (a word list for the LM) feed the default-model recipe.
# `w2v data synth` speaks with espeak-ng, flite and festival (festvox-*: festival's English voices;
# the *16k ones, whose 8k twins conflict with them) and may take WordNet's example sentences.
SYSTEM_PACKAGES := espeak-ng sox libsndfile1 irstlm fortunes wamerican iproute2 \
                   flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts wordnet-base \
                   chromium chromium-driver
FESTIVAL_VOICES := /usr/share/festival/voices/english/kal_diphone /usr/share/festival/voices/english/ked_diphone \
                   /usr/share/festival/voices/us/cmu_us_slt_arctic_hts
LEXICON := /usr/share/dict/american-english

.PHONY: setup sysdeps test bench demo proto cli-docs clean

# System packages (apt, as root); skipped when they are already there.
sysdeps:
	@missing=""; \
	command -v espeak-ng >/dev/null || missing=1; \
	command -v sox >/dev/null || missing=1; \
	command -v ip >/dev/null || missing=1; \
	command -v flite >/dev/null || missing=1; \
	command -v festival >/dev/null || missing=1; \
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || missing=1; \
	for d in $(FESTIVAL_VOICES); do [ -d $$d ] || missing=1; done; \
	[ -f /usr/share/wordnet/data.noun ] || missing=1; \
	[ -x /usr/lib/irstlm/bin/build-lm.sh ] || [ -x /usr/bin/build-lm.sh ] || missing=1; \
	[ -d /usr/share/games/fortunes ] && [ -f $(LEXICON) ] || missing=1; \
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
	$(PY) -m pip install -q -e '.[all,test,ray]'
	touch $(STAMP) $(RUNTIME_STAMP)

$(RUNTIME_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -e '.[lm]'
	touch $(RUNTIME_STAMP)

setup: sysdeps $(STAMP)

# lint-imports first: the layout's contracts (pyproject [tool.importlinter]) fail fast.
test: setup
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

bench: setup
	$(PY) -m bench

# The gRPC API's generated code (committed) from w2v_serve/service/proto/w2v.proto.
proto: setup
	$(PY) -m w2v_serve.service.proto.generate

# docs/cli.md from the argparse parsers (tests/test_cli_reference.py fails when it is out of date).
cli-docs:
	$(PY) -m w2v_serve.cli.reference --out docs/cli.md

# The runtime and KenLM only (no torch, no apt packages): a newcomer waits minutes, not the training stack.
demo: $(RUNTIME_STAMP)
	@echo "reference:  $$(cat samples/sample.txt)"
	@printf "transcript: "; $(VENV)/bin/w2v transcribe samples/sample.wav

# The bundled default model, from nothing: corpus, training, export, LM, evaluation, bundle.
# Resumable: every step keeps its output, the training run resumes from its last checkpoint.
W2V := $(VENV)/bin/w2v
RUN := runs/default_model
default-model: setup
	$(W2V) data synth --out data/synth --engines espeak-ng --train 10000 --dev 300 --test 300 --seed 0
	$(W2V) finetune configs/default_model/finetune.yaml
	# Stage 2 sees every usable training sentence; synth is deterministic, the first 10000 stay.
	$(W2V) data synth --out data/synth --engines espeak-ng --train 14652 --dev 300 --test 300 --seed 0
	$(W2V) finetune configs/default_model/finetune_more.yaml
	$(W2V) export $(RUN)/finetune_more/checkpoint_last.pt --out $(RUN)/export --int8
	$(W2V) lm build data/synth/train.wrd --order 3 --lexicon $(LEXICON) --out $(RUN)/lm/lm.arpa
	$(PY) -m training.bundle --model $(RUN)/export --corpus data/synth --lm $(RUN)/lm/lm.arpa \
	  --train-dir $(RUN)/finetune --train-dir $(RUN)/finetune_more --out w2v_serve/models/default

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
