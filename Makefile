# Two commands do all the set-up on a fresh machine (a virtual environment is made on first use):
#   make demo   a real fine-tune of ImageNet tf_efficientnet_lite0 on 50 BreastMNIST images, offline
#   make test   the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
WEIGHTS := weights/tf_efficientnet_lite0.safetensors
export WANDB_MODE ?= offline

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(WEIGHTS): | $(STAMP)
	$(VENV)/bin/smallmed-convert-lite0 $(WEIGHTS)

demo: $(STAMP) $(WEIGHTS)
	$(PY) train.py --config configs/paper_recipe.yaml

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs wandb weights
