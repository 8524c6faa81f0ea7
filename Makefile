# Two commands do all the set-up: `make demo` and `make test` (each creates .venv if it is missing).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= outputs/demo
export WANDB_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv demo demo-anyres demo-mgm chat chat-web chat-screenshot test test-all lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-lock.txt
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Train the tiny offline model through both stages, then evaluate it (with real and with blank images).
demo: $(STAMP)
	rm -rf $(DEMO)
	$(PY) train.py experiment=demo_pretrain hydra.run.dir=$(DEMO)/pretrain trainer.enable_progress_bar=false
	$(PY) train.py experiment=demo_finetune hydra.run.dir=$(DEMO)/finetune trainer.enable_progress_bar=false \
		stage.init_connector_from=$(DEMO)/pretrain/checkpoints/last.ckpt
	$(PY) eval.py ckpt_path=$(DEMO)/finetune/checkpoints/last.ckpt hydra.run.dir=$(DEMO)/eval

# The same with AnyRes (image=anyres) on synthetic scenes of varied aspect ratios.
demo-anyres: $(STAMP)
	rm -rf $(DEMO)-anyres
	$(PY) train.py experiment=demo_anyres_pretrain hydra.run.dir=$(DEMO)-anyres/pretrain trainer.enable_progress_bar=false
	$(PY) train.py experiment=demo_anyres_finetune hydra.run.dir=$(DEMO)-anyres/finetune trainer.enable_progress_bar=false \
		stage.init_connector_from=$(DEMO)-anyres/pretrain/checkpoints/last.ckpt
	$(PY) eval.py ckpt_path=$(DEMO)-anyres/finetune/checkpoints/last.ckpt hydra.run.dir=$(DEMO)-anyres/eval \
		benchmark.root=$${DATA_ROOT:-data}/synthetic/anyres_seed0_2000_4000_100

# Talk to the demo model (after `make demo`): in the terminal, or on a web page at http://127.0.0.1:7860 (docs/chat.md).
CHAT_CKPT  ?= $(DEMO)/finetune/checkpoints/last.ckpt
CHAT_IMAGE ?= $${DATA_ROOT:-data}/synthetic/seed0_2000_4000_100/images/eval_00006.png
DEMO_STAMP := $(VENV)/.installed-demo

$(DEMO_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[demo]'
	touch $(DEMO_STAMP)

chat: $(STAMP)
	$(PY) -m dc.chat ckpt_path=$(CHAT_CKPT) image=$(CHAT_IMAGE)

chat-web: $(DEMO_STAMP)
	$(PY) -m dc.chat mode=web ckpt_path=$(CHAT_CKPT) image=$(CHAT_IMAGE)

# docs/chat_demo.png: the web demo answering two held-out questions, in headless Chromium (apt-get install chromium chromium-driver).
chat-screenshot: $(DEMO_STAMP)
	$(PY) -m dc.chat.browser --ckpt $(CHAT_CKPT) --image $(CHAT_IMAGE) --out docs/chat_demo.png \
		--question "What colour is the shape?" --question "Where is the shape?"

# The same with Mini-Gemini (encoder=tiny_mgm: tiny CLIP on the interpolated 96 px view + tiny ConvNeXt aux tower,
# patch-info mining composed with DCI).
demo-mgm: $(STAMP)
	rm -rf $(DEMO)-mgm
	$(PY) train.py experiment=demo_mgm_pretrain hydra.run.dir=$(DEMO)-mgm/pretrain trainer.enable_progress_bar=false
	$(PY) train.py experiment=demo_mgm_finetune hydra.run.dir=$(DEMO)-mgm/finetune trainer.enable_progress_bar=false \
		stage.init_connector_from=$(DEMO)-mgm/pretrain/checkpoints/last.ckpt
	$(PY) eval.py ckpt_path=$(DEMO)-mgm/finetune/checkpoints/last.ckpt hydra.run.dir=$(DEMO)-mgm/eval

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q

lint: $(STAMP)
	$(VENV)/bin/ruff check dc tests train.py eval.py experiments
	$(VENV)/bin/ruff format --check dc tests train.py eval.py experiments

test-all: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q -m 'not gpu'

bench: $(STAMP)
	$(PY) -m dc.bench --mode quick

clean:
	rm -rf outputs multirun
