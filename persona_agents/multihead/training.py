"""One training run, end to end: data -> QLoRA + heads -> calibrated, evaluated adapter.

1. validate every record of the data files (before any model loads);
2. build the model (4-bit base or full precision, LoRA, marker rows, heads) and train it
   with `MultiHeadTrainer` (checkpoints under `<out>/checkpoints`, resumable);
3. save the adapter; reload it exactly as inference does (full-precision base, adapter
   merged), refit the heads on its `<STATE>` vectors (`refit.py`), and calibrate the flag
   thresholds on the validation data with it (for what the game keeps after the personas'
   rules: `calibrate.py`), so heads and thresholds fit the model the game runs, not the
   (possibly 4-bit) one that trained; on a GPU if there is one;
4. evaluate on the validation data and record the figures in multihead.json.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import __version__
from ..errors import TrainingConfigError
from ..game import load_game
from .artifacts import load_adapter, save_artifacts, save_heads, write_metadata
from .calibrate import CalibrationPolicy, calibrate_thresholds
from .collator import EncodedDataset, MultiHeadCollator
from .data import Example, file_sha256, load_examples, load_personas_for_data, retrieve_lore
from .evaluate import allowed_table, majority_baseline, predict, score
from .heads import MultiHeadModel
from .modeling import build_trainable_model
from .refit import RefitSettings, allowed_mask, refit_deltas, refit_heads, state_vectors, targets
from .trainer import MultiHeadTrainer, MultiHeadTrainingConfig, build_optimizer
from .vector_cache import StateVectorCache

log = logging.getLogger("persona_agents.multihead")


def _data_record(paths: Sequence[str | Path], examples: Sequence) -> dict[str, Any]:
    """The files and how many turns they gave, and whose turns: the multihead step leaves
    an NPC the heads were not fitted on to the event matcher (multihead/matcher.py)."""
    return {"files": [{"path": str(p), "sha256": file_sha256(p)} for p in paths], "examples": len(examples),
            "npcs": sorted({e.turn.persona.id for e in examples})}


def _warn_thin(examples, flags) -> None:
    from .datacheck import thin_events

    for warning in thin_events(examples, flags):
        log.warning(warning)


def _scoring_device() -> torch.device:
    """Where the saved adapter is scored and its <STATE> vectors computed: this process's
    GPU if it has one (a 3B base takes hours on a CPU), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    from accelerate import PartialState

    return PartialState().device


def _free_accelerator_memory() -> None:
    """The training copy's GPU memory back before the scoring copy loads."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _files(paths: str | Path | Sequence[str | Path]) -> list[str | Path]:
    """One path or several (train --validation is repeatable)."""
    return [paths] if isinstance(paths, (str, Path)) else list(paths)


def _refit_settings(config: MultiHeadTrainingConfig) -> RefitSettings | None:
    """The heads refit the config asks for; None when --heads-refit-epochs is 0."""
    if config.heads_refit_epochs <= 0:
        return None
    return RefitSettings(epochs=config.heads_refit_epochs, learning_rate=config.heads_refit_learning_rate,
                         delta_weight=config.delta_loss_weight, seed=config.seed,
                         flags_where_allowed=config.heads_flags_where_allowed, part=config.heads_refit_part)


def finish_heads(adapter_dir: Path, train_examples: Sequence[Example], val_examples: Sequence[Example],
                 refit: RefitSettings | None, batch_size: int = 8,
                 calibration: CalibrationPolicy | None = None, flags: Sequence[str] | None = None,
                 evidence: bool | None = None) -> dict[str, Any]:
    """Reload the saved adapter as inference does; refit the heads on its <STATE> vectors
    (unless `refit` is None); calibrate thresholds (by `calibration`, default
    `CalibrationPolicy()`) and score on the validation examples (the training examples if
    there are none). Saves the heads; returns metadata fields.

    `flags` (a new event vocabulary) and `evidence` (heads that read the writers' example
    lines, evidence.py) change the heads, so they need a refit; None keeps the adapter's."""
    from .heads import HeadsConfig, StateHeads

    policy = calibration or CalibrationPolicy()
    bundle = load_adapter(adapter_dir, merge=True)
    device = _scoring_device()
    bundle.model.to(device)
    old = bundle.heads.config
    flags = list(flags) if flags is not None else list(bundle.flags)
    evidence = bool(old.evidence_size) if evidence is None else evidence
    changed = flags != list(bundle.flags) or evidence != bool(old.evidence_size)
    if changed and refit is None:
        raise TrainingConfigError("A new flag vocabulary or evidence setting needs a heads refit: "
                                  "set --heads-refit-epochs above 0.")
    template = bundle.heads
    if changed:
        from .evidence import evidence_size

        template = StateHeads(HeadsConfig(hidden_size=old.hidden_size, num_flags=len(flags),
                                          inner_size=old.inner_size, dropout=old.dropout,
                                          evidence_size=evidence_size(len(flags)) if evidence else 0))
    tok = bundle.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encode = dict(tokenizer=tok, flags=flags, max_length=int(bundle.meta["max_length"]),
                  history_turns=bundle.history_turns, prompt_version=bundle.prompt_version)
    scored = list(val_examples or train_examples)
    log.info("Scoring %d %s examples with the saved adapter...", len(scored),
        "validation" if val_examples else "training")
    scored_set = EncodedDataset(scored, **encode, strict=False)  # scored whole, as inference sees them
    need_states = refit is not None or evidence
    pred = predict(MultiHeadModel(bundle.model, bundle.heads.to(device)), scored_set, pad, batch_size,
                   keep_states=need_states, progress="Scoring")  # the refit rescores these states
    bundle.heads.cpu()  # the refit and the rescoring run on the <STATE> vectors, on the CPU
    fields: dict[str, Any] = {}
    ev_train = ev_val = None
    if evidence:
        from ..lore.embedder import load_embedder
        from .evidence import evidence_matrix

        log.info("Few-shot evidence: the writers' example lines nearest each player line...")
        embedder = load_embedder("embedded")  # loaded once for both sets
        # Examples worded exactly as the player's line are left out: real players never
        # quote the writers, and a perfect match would teach the heads to wait for one.
        ev_train = torch.from_numpy(evidence_matrix(train_examples, flags, embedder, exclude_same=True))
        ev_val = torch.from_numpy(evidence_matrix(scored, flags, embedder, exclude_same=True))
        fields["evidence"] = {"embedder": "embedded", "source": "persona lines[].examples by event",
                              "size": int(ev_train.shape[1])}
        if not refit:
            pred = pred.rescore(bundle.heads, ev_val)
    if refit is not None:
        log.info("Computing the <STATE> vectors of %d training examples for the heads refit...", len(train_examples))
        # strict=False: only the prompt up to <STATE> is read, and inference renders a long
        # prompt whole; a prompt longer than max_length trains the heads as the game shows it.
        x = state_vectors(bundle.model, EncodedDataset(train_examples, **encode, strict=False), pad, batch_size,
                          progress="<STATE> vectors", cache=StateVectorCache.for_adapter(adapter_dir, bundle.meta))
        assert pred.states is not None  # kept: need_states
        val = (pred.states, *targets(val_examples, flags)) if val_examples else None
        if refit.part == "deltas":
            if changed:
                raise TrainingConfigError("--heads-refit-part deltas keeps the adapter's heads: it cannot change "
                                          "their events or evidence; refit all of them first.")
            heads, fields["heads_refit_deltas"] = refit_deltas(
                bundle.heads, x, targets(train_examples, flags)[1], val=(val[0], val[2]) if val else None,
                settings=refit, val_evidence=ev_val if val_examples else None)
        else:
            masks = ((allowed_mask(train_examples, flags), allowed_mask(val_examples, flags) if val_examples else None)
                     if refit.flags_where_allowed else (None, None))
            heads, fields["heads_refit"] = refit_heads(template, x, *targets(train_examples, flags), val=val,
                                                       settings=refit, mask=masks[0], val_mask=masks[1],
                                                       evidence=ev_train, val_evidence=ev_val if val_examples else None)
        pred = pred.rescore(heads, ev_val)
        save_heads(adapter_dir, heads)
        fields.update(flags=flags, heads=heads.config.to_dict())
    split = "validation" if val_examples else "train"
    if refit is not None and refit.part == "deltas":
        # The flag outputs are unchanged: so are the thresholds calibrated for them.
        report = score(pred, scored, flags, bundle.meta["thresholds"])
        report["baseline"] = majority_baseline(scored, flags)
        fields["deltas_refit_metrics"] = {"split": split, **report}
        return fields
    # What the personas' rules let through on each example (None when no persona has rules).
    allowed = allowed_table(scored, flags) if policy.after_rules else None
    thresholds, f1s = calibrate_thresholds(pred.flag_probs, [[int(n in e.flags) for n in flags] for e in scored], flags,
                                           policy.min_precision, allowed=allowed, min_threshold=policy.min_threshold)
    report = score(pred, scored, flags, thresholds)
    report["baseline"] = majority_baseline(scored, flags)
    fields.update(thresholds=thresholds, calibrated_on=split, calibration_f1=f1s, **policy.metadata(),
                  metrics={"split": split, **report})
    return fields


def _reply_examples(examples: list[Example], personas: dict, config: MultiHeadTrainingConfig) -> list[Example]:
    """What the LoRA pass trains on: the examples, and on prompt version 2 a share of them
    with the writers' fitting lines shown, plus the writers' refusal lines (grounding.py).
    The heads are refitted on `examples` alone."""
    if config.prompt_version < 2:
        return examples
    from ..lore.embedder import load_embedder
    from .grounding import attach_grounding, refusal_examples

    out = examples
    if config.grounded_share > 0 and any(e.turn.persona.lines for e in examples):
        out = attach_grounding(examples, load_embedder("embedded"), share=config.grounded_share)
    if config.refusal_lines:
        refusals = refusal_examples(list(personas.values()))
        log.info("Refusals: %d reply examples from the writers' refusal lines.", len(refusals))
        out = [*out, *refusals]
    return out


def train_adapter(data: Sequence[str | Path], out: str | Path, config: MultiHeadTrainingConfig,
                  validation: str | Path | Sequence[str | Path] | None = None, resume: str | bool | None = None,
                  keep_checkpoints: bool = False, calibration: CalibrationPolicy | None = None) -> dict[str, Any]:
    """Train, calibrate, evaluate and save; returns the written metadata."""
    from transformers import set_seed

    out = Path(out)
    flags = list(config.flags)
    personas = load_personas_for_data(config.npcs_dir)
    if not personas:
        log.warning("No personas found in %s: prompts use minimal personas (id only). Inference renders the "
                    "persona files, so train with the same --npcs-dir the game uses.", config.npcs_dir)
    axes = load_game(config.npcs_dir).extra_axes  # shown in the prompt's state, as at inference
    train_examples = load_examples(data, flags, personas, axes)
    val_examples = load_examples(_files(validation), flags, personas, axes) if validation else []
    _warn_thin(train_examples, flags)
    if config.retrieve_lore and personas:
        both = retrieve_lore(train_examples + val_examples, config.npcs_dir)
        train_examples, val_examples = both[:len(train_examples)], both[len(train_examples):]
    if resume is True and not any(Path(str(config.output_dir)).glob("checkpoint-*")):
        raise TrainingConfigError(f"--resume: no checkpoint in {config.output_dir}. Start without --resume.")

    set_seed(config.seed)
    built = build_trainable_model(
        config.base_model, flags, quantization=config.quantization, lora_r=config.lora_r,
        lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=config.lora_target_modules,
        heads_inner=config.heads_inner_size, heads_dropout=config.heads_dropout,
        prompt_version=config.prompt_version, compute_dtype=config.compute_dtype)
    if built.quantization != config.quantization:
        log.warning("Training with quantization '%s' (asked for '%s').", built.quantization, config.quantization)
    tokenizer = built.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    reply_examples = _reply_examples(train_examples, personas, config)
    train_set = EncodedDataset(reply_examples, tokenizer, flags, config.max_length, config.history_turns,
                               prompt_version=config.prompt_version)
    lengths = sorted(len(f["input_ids"]) for f in train_set.features)
    log.info("%d training examples (tokens: median %d, max %d), %d validation examples; base %s, quantization %s, "
             "compute %s, optimizer %s%s.", len(train_set), lengths[len(lengths) // 2], lengths[-1], len(val_examples),
             built.base["name"], built.quantization, config.compute_dtype, config.optim_name,
             ", gradient checkpointing" if config.checkpointing else "")
    trainer = MultiHeadTrainer(
        model=built.model, args=config, data_collator=MultiHeadCollator(pad), train_dataset=train_set,
        processing_class=tokenizer, optimizers=(build_optimizer(built.model, config), None))
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - started
    if not trainer.is_world_process_zero():
        return {}

    history = [h for h in trainer.state.log_history if "loss" in h]
    meta: dict[str, Any] = {
        "flags": flags,
        "thresholds": {name: 0.5 for name in flags},
        "calibrated_on": None,
        "heads_refit": None,
        "base": built.base,
        "quantization": built.quantization,
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha or 2 * config.lora_r,
                 "target_modules": list(config.lora_target_modules)},
        "max_length": config.max_length,
        "history_turns": config.history_turns,
        "prompt_format_version": config.prompt_version,
        "reply_examples": {"grounded": sum(bool(e.grounding) for e in reply_examples),
                           "refusal_lines": sum(bool(e.refused) for e in reply_examples)},
        "retrieve_lore": bool(config.retrieve_lore and personas),
        "training": {
            "data": _data_record(data, train_examples),
            "validation": _data_record(_files(validation), val_examples) if validation else None,
            "epochs": config.num_train_epochs, "max_steps": config.max_steps, "steps": trainer.state.global_step,
            "learning_rate": config.learning_rate, "heads_learning_rate": config.heads_learning_rate,
            "batch_size": config.per_device_train_batch_size, "grad_accum": config.gradient_accumulation_steps,
            "processes": config.world_size, "precision": config.compute_dtype, "optim": config.optim_name,
            "gradient_checkpointing": config.checkpointing,
            "loss_weights": {"lm": config.lm_loss_weight, "delta": config.delta_loss_weight,
                             "flag": config.flag_loss_weight},
            "seconds": round(train_seconds, 1), "final_train_loss": round(result.training_loss, 4),
            "last_logged": history[-1] if history else None, "seed": config.seed,
        },
        "persona_agents_version": __version__,
    }
    meta = save_artifacts(out, built.model.lm, built.model.heads, tokenizer, meta)
    del trainer, built  # free the training copy before loading the inference one
    _free_accelerator_memory()

    if not val_examples:
        log.warning("No --validation data: thresholds are calibrated on the training data (optimistic).")
    refit = _refit_settings(config)
    meta.update(finish_heads(out, train_examples, val_examples, refit, calibration=calibration,
                             evidence=bool(config.heads_evidence)))
    written = write_metadata(out, meta)
    checkpoints = Path(str(config.output_dir))
    if not keep_checkpoints and checkpoints.is_dir() and checkpoints.resolve().is_relative_to(out.resolve()):
        shutil.rmtree(checkpoints, ignore_errors=True)
    return written



def _change_prompt_version(out: Path, meta: dict[str, Any], version: int) -> None:
    """Refit the heads of an adapter on another prompt version with the same markers
    (2 and 3: the same sections, the conversation moved). The LoRA keeps the version it was
    trained on, recorded as `lora_prompt_format_version`; the refit reads the new one."""
    from ..markers import section_markers

    was = int(meta["prompt_format_version"])
    if version == was:
        return
    if section_markers(version) != section_markers(was):
        raise TrainingConfigError(
            f"{out}: the adapter was trained on sectioned prompt version {was}, whose markers version {version} "
            f"does not share; a heads refit cannot change between them. Retrain (without --heads-only) with "
            f"--prompt-version {version}, or refit with --prompt-version {was}.")
    meta.setdefault("lora_prompt_format_version", was)
    meta["prompt_format_version"] = version
    write_metadata(out, meta)  # the refit reloads the adapter as inference will read it


def refit_adapter(data: Sequence[str | Path], out: str | Path, config: MultiHeadTrainingConfig,
                  validation: str | Path | Sequence[str | Path] | None = None,
                  calibration: CalibrationPolicy | None = None,
                  ) -> dict[str, Any]:
    """Keep an adapter's LoRA weights; refit its heads and recalibrate its thresholds on
    `data` / `validation` (e.g. new labels for the same replies). With
    `config.heads_refit_epochs` 0 the heads are kept too and only the thresholds are
    recalibrated (a few minutes: no <STATE> vectors of the training data). Returns the
    metadata."""
    from .artifacts import read_metadata

    out = Path(out)
    meta = read_metadata(out)
    _change_prompt_version(out, meta, config.prompt_version)
    # The config's vocabulary (train --flags, default the game's events): heads refitted
    # for another vocabulary continue from the adapter's LoRA (issue 26's workflow).
    flags = list(config.flags) if config.flags else list(meta["flags"])
    personas = load_personas_for_data(config.npcs_dir)
    axes = load_game(config.npcs_dir).extra_axes
    train_examples = load_examples(data, flags, personas, axes)  # checked even when only validation is scored
    val_examples = load_examples(_files(validation), flags, personas, axes) if validation else []
    if _refit_settings(config) is not None and config.heads_refit_part == "all":  # a deltas refit learns no event
        _warn_thin(train_examples, flags)
    refit = _refit_settings(config)
    if meta.get("retrieve_lore") and personas:
        if refit is None and val_examples:  # recalibration scores validation only: no lore for the rest
            val_examples = retrieve_lore(val_examples, config.npcs_dir)
        else:
            both = retrieve_lore(train_examples + val_examples, config.npcs_dir)
            train_examples, val_examples = both[:len(train_examples)], both[len(train_examples):]
    meta.update(finish_heads(out, train_examples, val_examples, refit, calibration=calibration, flags=flags,
                             evidence=config.heads_evidence))
    if refit is not None and refit.part == "deltas":
        # The heads' refit data and calibration set stay recorded as they were.
        meta["training"]["deltas_refit_data"] = {
            "train": _data_record(data, train_examples),
            "validation": _data_record(_files(validation), val_examples) if validation else None}
        return write_metadata(out, meta)
    if refit is not None:
        meta["training"]["heads_refit_data"] = _data_record(data, train_examples)
    meta["training"]["validation"] = _data_record(_files(validation), val_examples) if validation else None
    return write_metadata(out, meta)
