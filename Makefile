# The two commands a new user needs:  `make run`  and  `make test`.
# Both set up everything first (a virtualenv in .venv with the pinned packages,
# the Kafka jars from Maven Central on first use) and are safe to repeat.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat settings.ini setup.py tools/lab/overrides.json | cksum | cut -d' ' -f1)
BENCH_STAMP := $(VENV)/.bench-$(shell cat settings.ini setup.py | cksum | cut -d' ' -f1)

.PHONY: help setup browser toxiproxy run test test-fast check-export export readme docs lab bench example

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

$(STAMP): settings.ini setup.py tools/lab/overrides.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name sales-prediction-kafka --display-name 'Python (sales-prediction-kafka)' >/dev/null
	mkdir -p $(VENV)/share/jupyter/lab/settings && cp tools/lab/overrides.json $(VENV)/share/jupyter/lab/settings/  # no news prompt
	rm -f $(VENV)/.installed-*; touch $@

setup: $(STAMP)  ## create .venv and install the project with its dev tools

run: setup  ## generate nothing by hand: train, evaluate and stream on the embedded sample and a local Kafka
	$(BIN)/sales-kafka run

check-export: setup  ## the library (and its copy of nbs/pipelines/) must equal the notebooks
	$(BIN)/nbdev_export
	$(BIN)/python tools/sync_pipelines.py
	@git diff --exit-code -- sales_prediction_kafka || (echo 'sales_prediction_kafka/ differs from nbs/: run make export and commit' >&2; exit 1)
	@test -z "$$(git status --porcelain -- sales_prediction_kafka)" || (git status --porcelain -- sales_prediction_kafka; echo 'untracked exported files: run make export and commit' >&2; exit 1)

browser:  ## install Debian's chromium for the browser tests (apt; skipped when present)
	sh tools/install_browser.sh

toxiproxy:  ## build Shopify's Toxiproxy for the network-fault tests (go install; skipped when present; no Go: a clear error)
	sh tools/install_toxiproxy.sh

test: setup browser toxiproxy check-export  ## everything (CI): every notebook cell and every test tier, against a real local broker
	$(BIN)/nbdev_test --flags 'kafka slow'
	$(BIN)/pytest

test-fast: setup  ## about 2 minutes, no broker, browser or JupyterLab: notebook cells without kafka/slow flags, unmarked tests
	$(BIN)/nbdev_test
	$(BIN)/pytest -m 'not kafka and not browser and not lab and not slow and not faults'

export: setup  ## format the code (ruff), export the library from the notebooks, clean them, copy nbs/pipelines/ into the package
	$(BIN)/ruff format -q .
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	$(BIN)/nbdev_clean --fname nbs/pipelines
	$(BIN)/python tools/sync_pipelines.py  # the package's copy of nbs/pipelines/, for installed wheels

readme: setup  ## write README.md from nbs/index.ipynb (nbdev_readme needs Quarto, which cannot be installed here)
	$(BIN)/jupyter nbconvert --to markdown --stdout nbs/index.ipynb 2>/dev/null | sed '/<style scoped>/,/<\/style>/d' > README.md  # a table, not its CSS as text

docs: setup  ## render the docs site into _docs/ (open _docs/index.html; works offline)
	$(BIN)/python tools/build_docs.py

lab: setup  ## JupyterLab with the project's kernel; the library is installed editable
	$(BIN)/jupyter lab --allow-root --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate

example: setup  ## refresh the committed example run in outputs/example (a default run, streamed to the local broker)
	rm -rf outputs/example
	$(BIN)/sales-kafka run --out outputs  # a run folder beside outputs/example, so its relative paths stay right after the move
	mv outputs/2*/ outputs/example && rm -f outputs/index.html

# the `bench` extra (skforecast, the other side of bench/backtest.py) only here: `make setup` installs `.[dev]` alone.
# skforecast 0.26 requires pandas<3, so this step may move .venv's pandas to 2.x (pip decides; BENCHMARKS.md section 10).
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	rm -f $(VENV)/.bench-*; touch $@

bench: setup $(BENCH_STAMP)  ## run the benchmarks (ratios side by side in one run; results in bench/results/, table in BENCHMARKS.md)
	$(BIN)/python -m bench
