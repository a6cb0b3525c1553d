# MiniGPT-5: `make demo` and `make test` work on a fresh machine with python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=
DEMO := outputs/demo

.PHONY: install demo chat reproduce test train-uas train-mls eval bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,chat]'  # chat: Gradio, for `make chat` and the suite's browser test
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/minigpt5 data synthetic --out $(DEMO)/data --num 2000 --val-num 200
	$(BIN)/minigpt5 data synthetic --stories --out $(DEMO)/stories --num 800 --val-num 48 --hard-num 48 --shard-size 400
	$(BIN)/minigpt5 data synthetic --dialogues --out $(DEMO)/dialogues --num 1200 --val-num 60 --hard-num 60 --shard-size 600
	@echo "== the tiny Stable Diffusion stand-in (the paper downloads SD 2.1; nothing can be downloaded here)"
	$(BIN)/minigpt5 pretrain-sd fit -c configs/tiny_sd.yaml
	@echo "== the tiny language model stand-in (the paper downloads Vicuna), on the world's training text"
	$(BIN)/minigpt5 pretrain-lm fit -c configs/tiny_lm.yaml
	@echo "== the tiny image reader stand-in (the paper reads pictures with BLIP-2 and MiniGPT-4's projection, frozen)"
	$(BIN)/minigpt5 pretrain-vision fit -c configs/tiny_vision.yaml
	@echo "== stage 1 (UAS): vokens + feature mapper against the frozen tiny SD, under the frozen tiny LM"
	$(BIN)/minigpt5 fit -c configs/uas.yaml -c configs/model/tiny.yaml -c configs/demo.yaml $(ARGS)
	$(BIN)/python benchmarks/caption_following.py --ckpt $(DEMO)/uas/checkpoints/last.ckpt \
		--out $(DEMO)/uas/caption_following.png
	@echo "== stage 2 (MLS): LoRA + mapper on the world's stories and dialogues, from the stage-1 checkpoint"
	$(BIN)/minigpt5 fit -c configs/uas.yaml -c configs/mls.yaml -c configs/mls_vist.yaml \
		-c configs/model/tiny.yaml -c configs/demo_mls.yaml
	@echo "== free generation on held-out stories and dialogues, scored by the world's rules"
	$(BIN)/minigpt5 eval --ckpt $(DEMO)/mls/checkpoints/last.ckpt --protocol synthetic-vist \
		--shards $(DEMO)/stories/val-000000.tar --out $(DEMO)/story --examples 24 --no-progress
	$(BIN)/minigpt5 eval --ckpt $(DEMO)/mls/checkpoints/last.ckpt --protocol synthetic-dialog \
		--shards $(DEMO)/dialogues/val-000000.tar --out $(DEMO)/dialogue --examples 24 --no-progress
	@echo
	@echo "Demo outputs:"
	@echo "  stage 1 checkpoint: $(DEMO)/uas/checkpoints/last.ckpt"
	@echo "  stage 1 samples:    $(DEMO)/uas/samples/ and $(DEMO)/uas/caption_following.png"
	@echo "  stage 2 checkpoint: $(DEMO)/mls/checkpoints/last.ckpt"
	@echo "  held-out stories:   $(DEMO)/story/results.md and the page $(DEMO)/story/examples_minigpt5_g2.html"
	@echo "  held-out dialogues: $(DEMO)/dialogue/results.md and $(DEMO)/dialogue/examples_minigpt5_g2.html"
	@echo "  TensorBoard:        $(BIN)/tensorboard --logdir $(DEMO)"

# The demo's stage-2 model in the browser (http://127.0.0.1:7860; ARGS: more `minigpt5 chat` flags).
CHAT_CKPT := $(DEMO)/mls/checkpoints/last.ckpt
chat: install
	@test -f $(CHAT_CKPT) || { echo "make chat: $(CHAT_CKPT) not found; run make demo first (it trains that model)"; exit 2; }
	$(BIN)/minigpt5 chat --ckpt $(CHAT_CKPT) --decoding world $(ARGS)

# The paper's questions in miniature (about 30-45 minutes on 2 cores): variants trained from the
# demo's data and stand-ins, scored on the held-out splits -> outputs/reproduce/results.md.
reproduce: install
	@test -d $(DEMO)/tiny_lm/model || $(MAKE) demo
	$(BIN)/minigpt5 reproduce --assets $(DEMO) --out outputs/reproduce $(ARGS)

# The suite in TEST_WORKERS processes (pytest-xdist), each test with one intra-op thread
# (tests/conftest.py): the tests are small and mostly single-threaded, so two processes keep
# two cores busy (docs/status.md, "The suite's time"). TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

train-uas: install
	$(BIN)/minigpt5 fit -c configs/uas.yaml -c configs/model/paper.yaml $(ARGS)

# Stage 2 from a stage-1 checkpoint; DATASET is vist or mmdialog.
DATASET ?= vist
STAGE1 ?= outputs/uas/checkpoints/last.ckpt
train-mls: install
	$(BIN)/minigpt5 fit -c configs/uas.yaml -c configs/mls.yaml -c configs/mls_$(DATASET).yaml \
		-c configs/model/paper.yaml --model.init_from=$(STAGE1) $(ARGS)

# `make eval CKPT=... PROTOCOL=cc3m|vist|mmdialog SHARDS=...` evaluates a checkpoint (ARGS: more
# `minigpt5 eval` flags). Without CKPT it runs the tiny preset end to end on this machine:
# synthetic data, short stage-1 and stage-2 runs, then every protocol with tiny extractors.
EVAL := outputs/eval
EVAL_TINY := --extractors tiny --steps 25 --max-new-tokens 24 --no-progress
ifdef CKPT
eval: install
	$(BIN)/minigpt5 eval --ckpt $(CKPT) --protocol $(PROTOCOL) --shards '$(SHARDS)' --out $(EVAL)/$(PROTOCOL) $(ARGS)
else
eval: install
	$(BIN)/minigpt5 data synthetic --out $(EVAL)/pairs --num 512 --val-num 24 --size 32
	$(BIN)/minigpt5 data synthetic --stories --out $(EVAL)/stories --num 128 --val-num 6 --size 32
	$(BIN)/minigpt5 data synthetic --dialogues --out $(EVAL)/dialogues --num 4 --val-num 6 --size 32
	$(BIN)/minigpt5 fit -c configs/uas.yaml -c configs/model/tiny.yaml --trainer.default_root_dir=$(EVAL)/uas \
		--trainer.max_steps=100 --data.train_shards=$(EVAL)/pairs/train-000000.tar --trainer.enable_progress_bar=false
	$(BIN)/minigpt5 fit -c configs/uas.yaml -c configs/mls.yaml -c configs/mls_vist.yaml -c configs/model/tiny.yaml \
		--model.init_from=$(EVAL)/uas/checkpoints/last.ckpt --trainer.default_root_dir=$(EVAL)/mls --trainer.max_steps=40 \
		--data.train_shards=$(EVAL)/stories/train-000000.tar --data.batch_size=8 --data.num_workers=1 \
		--trainer.enable_progress_bar=false
	$(BIN)/minigpt5 eval --ckpt $(EVAL)/uas/checkpoints/last.ckpt --protocol cc3m --shards $(EVAL)/pairs/val-000000.tar \
		--systems minigpt5 sd2 --guidance-scale 1 2 7.5 --out $(EVAL)/cc3m $(EVAL_TINY)
	$(BIN)/minigpt5 eval --ckpt $(EVAL)/mls/checkpoints/last.ckpt --protocol vist --shards $(EVAL)/stories/val-000000.tar \
		--systems minigpt5 sd2 --sd2-text story --out $(EVAL)/vist $(EVAL_TINY)
	$(BIN)/minigpt5 eval --ckpt $(EVAL)/mls/checkpoints/last.ckpt --protocol mmdialog \
		--shards $(EVAL)/dialogues/val-000000.tar --out $(EVAL)/mmdialog $(EVAL_TINY)
	@echo
	@echo "Results tables (tiny extractors: the numbers only show the pipeline works):"
	@echo "  $(EVAL)/cc3m/results.md  $(EVAL)/vist/results.md  $(EVAL)/mmdialog/results.md (and .json, samples_*.png)"
endif

bench: install
	$(BIN)/python benchmarks/step_breakdown.py $(ARGS)
	$(BIN)/python benchmarks/generation.py
	$(BIN)/python benchmarks/peers.py
	$(BIN)/python benchmarks/padding.py
	$(BIN)/python benchmarks/activation_checkpointing.py
	$(BIN)/python benchmarks/data_path.py
	$(BIN)/python benchmarks/quantized_memory.py
	@if [ -f $(DEMO)/uas/checkpoints/last.ckpt ]; then $(BIN)/python benchmarks/sampler_steps.py; \
	else echo "benchmarks/sampler_steps.py skipped: it reads the demo's stage-1 checkpoint (make demo first)"; fi

clean:
	rm -rf outputs lightning_logs .pytest_cache
