"""The multi-head generator: a causal LM with a LoRA adapter, plus state heads that read
the hidden state at the prompt's `<STATE>` marker and predict the turn's deltas (trust,
relationship) and flags.

    data.py        JSONL records (the seed's format) -> validated Examples (Turns)
    collator.py    Examples -> token ids, reply-only labels, <STATE> index, targets
    heads.py       StateHeads, MultiHeadModel (one forward: reply logits + heads), losses
    modeling.py    tokenizer with markers, 4-bit/full base, LoRA with marker rows
    trainer.py     MultiHeadTrainingConfig (TrainingArguments), MultiHeadTrainer (Trainer)
    refit.py       after training: the heads refitted on the final model's <STATE> vectors
    calibrate.py   per-flag thresholds maximising F1 after the game's rules (floors on
                   precision and on the threshold)
    artifacts.py   save/load the adapter folder (checks base model and flag vocabulary)
    evaluate.py    flag F1, delta MAE, reply LM loss, and a majority baseline
    training.py    one run end to end (what `persona-agents train` calls)

The generate step that uses an adapter is `persona_agents/default_plugins/multihead_generator.py`.
Heavy imports (torch, transformers, peft) happen inside these modules, never here.
"""
