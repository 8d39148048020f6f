# edgeship: `make all` runs the whole pipeline on CONFIG; `make test` runs the test suite.
CONFIG ?= configs/default.yaml
VENV   ?= .venv
PY     := $(VENV)/bin/python
EDGESHIP := $(PY) -m pipeline
EXTRAS ?= openvino,nncf,dev
SET    ?=
ARGS   ?=

# Every value reaches the shell single-quoted, so spaces, '$' and quotes in it stay as written.
# SET items are separated by whitespace (SET='a=1 b=2'), or by ';' when SET holds one, so a value
# may contain spaces: SET='data.root=/path with spaces; finetune.train.lr=0.1'. ARGS is passed to
# edgeship as it is written (shell syntax): ARGS="--set 'data.root=/a b' --force prune".
empty :=
space := $(empty) $(empty)
tab   := $(empty)	$(empty)
quote = '$(subst ','\'',$(1))'
ifneq ($(findstring ;,$(SET)),)
SETITEMS := $(subst ;, ,$(subst $(tab),@TAB@,$(subst $(space),@SP@,$(SET))))
SETITEMS := $(foreach s,$(SETITEMS),$(if $(subst @SP@,,$(subst @TAB@,,$(s))),$(s)))
SETARGS := $(foreach s,$(SETITEMS),--set $(call quote,$(subst @TAB@,$(tab),$(subst @SP@,$(space),$(s)))))
else
SETARGS := $(foreach s,$(SET),--set $(call quote,$(s)))
endif
RUNARGS = -c $(call quote,$(CONFIG)) $(SETARGS) $(ARGS)

.DEFAULT_GOAL := help
.PHONY: help setup all finetune distill prune quantize export benchmark report check status targets test test-deps clean gpu-wheels gpu-check

help: ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: CONFIG=$(CONFIG)  SET='key=value ...' (';' between items keeps spaces in values)"
	@echo "             ARGS='edgeship arguments, as written'  VENV=$(VENV)"

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $@

setup: $(VENV)/.installed ## create .venv and install edgeship with its extras (idempotent)

all: setup ## run the whole pipeline on CONFIG (the main job)
	$(EDGESHIP) run $(RUNARGS)

finetune: setup ## fine-tune the pretrained backbone (teacher)
	$(EDGESHIP) run finetune $(RUNARGS)

distill: setup ## distil the teacher into the student
	$(EDGESHIP) run distill $(RUNARGS)

prune: setup ## prune the student and recover accuracy
	$(EDGESHIP) run prune $(RUNARGS)

quantize: setup ## INT8 Q/DQ ONNX from calibration data
	$(EDGESHIP) run quantize $(RUNARGS)

export: setup ## ONNX, OpenVINO IR and TensorRT engines
	$(EDGESHIP) run export $(RUNARGS)

benchmark: setup ## accuracy and latency of every artifact on every runtime
	$(EDGESHIP) run benchmark $(RUNARGS)

report: setup ## report.json / report.md / report.html
	$(EDGESHIP) run report $(RUNARGS)

check: setup ## budgets -> exit code and JUnit XML (CI gate)
	$(EDGESHIP) run check $(RUNARGS)

status: setup ## cached / stale / not run, per stage
	$(EDGESHIP) status $(RUNARGS)

targets: setup ## check every target of CONFIG: reachable, Python, numpy, runtimes, fingerprint
	$(EDGESHIP) targets $(RUNARGS)

# The target tests talk to a real sshd on 127.0.0.1; install it where apt can (they skip otherwise).
test-deps: ## install what the tests need beyond Python packages (openssh-server, when apt exists)
	@if [ ! -x /usr/sbin/sshd ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get install -y openssh-server || echo "test-deps: openssh-server not installed; the target tests will skip"; \
	fi

# The suite runs in TEST_WORKERS pytest-xdist workers: most tests run one thread (the tiny configs
# set run.threads=1), so two workers keep a 2-core runner busy. Each test file stays in one worker
# (tests/conftest.py), so torch, OpenVINO and the shared fixtures load once per worker; a worker
# that dies from a signal fails its test and is replaced, so the other files' results stand. If
# pytest itself dies (exit 128 + signal), every file then runs in its own interpreter and the
# target fails. (The crash this guards against was OpenVINO's CPU plugin restoring an unmapped
# signal stack when Cores were freed out of order; runtimes/openvino_runtime.core() keeps one
# Core per process, and tests/test_openvino_signal_stack.py holds that.) TEST_WORKERS=0 runs the
# suite in one interpreter.
TEST_WORKERS ?= 2

test: setup test-deps ## run the test suite (file by file after a crash); ends with the 20 slowest tests
	@$(PY) -X faulthandler -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --durations=20; rc=$$?; \
	if [ $$rc -lt 128 ]; then exit $$rc; fi; \
	echo "make test: the test interpreter died (exit $$rc); running each file in its own interpreter"; \
	failed=""; for f in tests/test_*.py; do \
	  echo "== $$f"; $(PY) -X faulthandler -m pytest -q -p no:cacheprovider "$$f" || failed="$$failed $$f"; \
	done; \
	echo "make test: failed after a crash (exit $$rc); files that fail on their own:$${failed:- none}"; exit 1

# The GPU check runs where there is no .venv: a lent GPU machine's own python3, with the wheels of
# .ci/gpu_wheels.txt carried in .gpu-wheels/ (README: "Checking the GPU paths"). OUT names the
# folder its summary.json goes to; its exit code is 8 where there is no CUDA device.
GPU_PY ?= python3
OUT    ?= gpu-check

gpu-wheels: ## download the wheels the GPU check carries into .gpu-wheels/ (needs pip and network)
	$(GPU_PY) .ci/gpu_wheels.py download

gpu-check: ## on an NVIDIA GPU: every CUDA path of the pipeline, summary in OUT/summary.json
	$(GPU_PY) .ci/gpu_check.py --out $(call quote,$(OUT))

clean: ## remove the artifact store (runs/) and caches; keeps .venv
	rm -rf runs .pytest_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
