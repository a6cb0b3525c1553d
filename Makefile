# MiniGPT-5: `make demo` and `make test` work on a fresh machine with python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=
DEMO := outputs/demo

.PHONY: install demo test train-uas train-mls bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/minigpt5 data synthetic --out $(DEMO)/data --num 2000 --val-num 200
	@echo "== the tiny Stable Diffusion stand-in (the paper downloads SD 2.1; nothing can be downloaded here)"
	$(BIN)/minigpt5 pretrain-sd fit -c configs/tiny_sd.yaml
	@echo "== stage 1 (UAS): vokens + feature mapper against the frozen tiny SD"
	$(BIN)/minigpt5 fit -c configs/uas.yaml -c configs/model/tiny.yaml -c configs/demo.yaml $(ARGS)
	$(BIN)/python benchmarks/caption_following.py --ckpt $(DEMO)/uas/checkpoints/last.ckpt \
		--out $(DEMO)/uas/caption_following.png
	@echo "== stage 2 (MLS): LoRA + mapper on shape stories, from the stage-1 checkpoint"
	$(BIN)/minigpt5 data synthetic --stories --out $(DEMO)/stories --num 800 --val-num 32 --shard-size 400
	$(BIN)/minigpt5 fit -c configs/uas.yaml -c configs/mls.yaml -c configs/mls_vist.yaml \
		-c configs/model/tiny.yaml -c configs/demo_mls.yaml
	$(BIN)/minigpt5 generate --ckpt $(DEMO)/mls/checkpoints/last.ckpt --greedy --max-new-tokens 24 --max-images 1 \
		--prompt "first a red circle then a blue square" --out $(DEMO)/story
	@echo
	@echo "Demo outputs:"
	@echo "  stage 1 checkpoint: $(DEMO)/uas/checkpoints/last.ckpt"
	@echo "  stage 1 samples:    $(DEMO)/uas/samples/ and $(DEMO)/uas/caption_following.png"
	@echo "  stage 2 checkpoint: $(DEMO)/mls/checkpoints/last.ckpt"
	@echo "  generated story:    $(DEMO)/story/story.html"
	@echo "  TensorBoard:        $(BIN)/tensorboard --logdir $(DEMO)"

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

train-uas: install
	$(BIN)/minigpt5 fit -c configs/uas.yaml -c configs/model/paper.yaml $(ARGS)

# Stage 2 from a stage-1 checkpoint; DATASET is vist or mmdialog.
DATASET ?= vist
STAGE1 ?= outputs/uas/checkpoints/last.ckpt
train-mls: install
	$(BIN)/minigpt5 fit -c configs/uas.yaml -c configs/mls.yaml -c configs/mls_$(DATASET).yaml \
		-c configs/model/paper.yaml --model.init_from=$(STAGE1) $(ARGS)

bench: install
	$(BIN)/python benchmarks/step_breakdown.py $(ARGS)
	$(BIN)/python benchmarks/generation.py
	$(BIN)/python benchmarks/data_path.py

clean:
	rm -rf outputs lightning_logs .pytest_cache
