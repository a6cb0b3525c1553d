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
	@echo
	@echo "Demo outputs:"
	@echo "  checkpoint:   $(DEMO)/uas/checkpoints/last.ckpt"
	@echo "  sample grids: $(DEMO)/uas/samples/"
	@echo "  TensorBoard:  $(BIN)/tensorboard --logdir $(DEMO)"

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

clean:
	rm -rf outputs lightning_logs .pytest_cache
