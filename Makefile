# edgeship: `make all` runs the whole pipeline on CONFIG; `make test` runs the test suite.
CONFIG ?= configs/default.yaml
VENV   ?= .venv
PY     := $(VENV)/bin/python
EDGESHIP := $(PY) -m pipeline
EXTRAS ?= openvino,nncf,dev
SET    ?=
SETARGS := $(foreach s,$(SET),--set $(s))

.DEFAULT_GOAL := help
.PHONY: help setup all finetune distill prune quantize export benchmark report check status test test-fast clean

help: ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: CONFIG=$(CONFIG)  SET='key=value ...'  VENV=$(VENV)"

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $@

setup: $(VENV)/.installed ## create .venv and install edgeship with its extras (idempotent)

all: setup ## run the whole pipeline on CONFIG (the main job)
	$(EDGESHIP) run -c $(CONFIG) $(SETARGS)

finetune: setup ## fine-tune the pretrained backbone (teacher)
	$(EDGESHIP) run finetune -c $(CONFIG) $(SETARGS)

distill: setup ## distil the teacher into the student
	$(EDGESHIP) run distill -c $(CONFIG) $(SETARGS)

prune: setup ## prune the student and recover accuracy
	$(EDGESHIP) run prune -c $(CONFIG) $(SETARGS)

quantize: setup ## INT8 Q/DQ ONNX from calibration data
	$(EDGESHIP) run quantize -c $(CONFIG) $(SETARGS)

export: setup ## ONNX, OpenVINO IR and TensorRT engines
	$(EDGESHIP) run export -c $(CONFIG) $(SETARGS)

benchmark: setup ## accuracy and latency of every artifact on every runtime
	$(EDGESHIP) run benchmark -c $(CONFIG) $(SETARGS)

report: setup ## report.json / report.md / report.html
	$(EDGESHIP) run report -c $(CONFIG) $(SETARGS)

check: setup ## budgets -> exit code and JUnit XML (CI gate)
	$(EDGESHIP) run check -c $(CONFIG) $(SETARGS)

status: setup ## cached / stale / not run, per stage
	$(EDGESHIP) status -c $(CONFIG) $(SETARGS)

# Each test file runs in a fresh interpreter: one process that has run the whole suite through
# torch, ONNX Runtime, OpenVINO and NNCF has crashed in malloc near its end (heap corruption
# inside a native library), and a crash would hide every result after it.
test: setup ## run the test suite, each file in its own interpreter
	@failed=""; for f in tests/test_*.py; do \
	  echo "== $$f"; $(PY) -m pytest -q -p no:cacheprovider "$$f" || failed="$$failed $$f"; \
	done; \
	if [ -n "$$failed" ]; then echo "FAILED:$$failed"; exit 1; fi; echo "all test files passed"

clean: ## remove the artifact store (runs/) and caches; keeps .venv
	rm -rf runs .pytest_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
