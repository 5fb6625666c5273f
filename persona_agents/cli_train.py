"""`persona-agents train` and `persona-agents eval`: fine-tune and measure a multi-head adapter."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from .cli_common import friendly_errors, npcs_dir_option, setup_logging
from .lore.embedded_mpnet import EMBEDDED_MPNET as MATCHER_EMBEDDER
from .multihead.calibrate import DEFAULT_MIN_THRESHOLD
from .multihead.hardware import OPTIMIZERS


def _game_flags(flag_names: str | None, npcs_dir) -> str:
    """The flag vocabulary: --flags if given (each name must be an event of the game), else
    the game's events, so an adapter fires only what the game declares (issue 27)."""
    from .errors import TrainingConfigError
    from .game import GAME_FILE, load_game

    game = load_game(npcs_dir)
    if flag_names is None:
        return ",".join(game.event_names)
    unknown = game.unknown_events(_names(flag_names))
    if unknown:
        raise TrainingConfigError(f"--flags: {', '.join(unknown)} not declared by the game in {npcs_dir} "
                                  f"({GAME_FILE} or the default events); declared events: {', '.join(game.events)}")
    return flag_names

DEFAULT_ADAPTER = "training/adapters/smollm2-npc"

# `train`'s options that are fields of MultiHeadTrainingConfig: option name -> field. The
# config is built from this table, and tests/test_cli_train_defaults.py holds every
# option's default to its field's, so the command line and the Python API cannot drift.
CONFIG_FIELDS = {
    "base": "base_model", "quantization": "quantization", "lora_r": "lora_r", "lora_targets": "lora_target_modules",
    "max_length": "max_length", "history_turns": "history_turns", "prompt_version": "prompt_version",
    "grounded_share": "grounded_share", "refusal_lines": "refusal_lines", "retrieve_lore": "retrieve_lore",
    "lm_weight": "lm_loss_weight", "delta_weight": "delta_loss_weight", "flag_weight": "flag_loss_weight",
    "heads_lr": "heads_learning_rate", "epochs": "num_train_epochs", "max_steps": "max_steps",
    "lr": "learning_rate", "batch_size": "per_device_train_batch_size", "grad_accum": "gradient_accumulation_steps",
    "warmup_steps": "warmup_steps", "save_steps": "save_steps", "seed": "seed",
    "heads_refit_epochs": "heads_refit_epochs", "heads_flags_where_allowed": "heads_flags_where_allowed",
    "heads_evidence": "heads_evidence", "heads_refit_part": "heads_refit_part", "lora_alpha": "lora_alpha",
    "bf16": "bf16", "fp16": "fp16",
    "gradient_checkpointing": "gradient_checkpointing", "optim": "optim",
}
# How an option's value becomes its field's (the rest are taken as they are).
CONFIG_CONVERSIONS = {"lora_targets": lambda value: _names(value), "prompt_version": int}


def _quiet_threads() -> None:
    # Must happen before torch loads OpenMP. Idle OpenMP threads that spin instead of
    # sleeping made each training step 4-7x slower on a CPU shared with other processes
    # (training/README.md); sleeping costs nothing measurable on a quiet machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _names(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_min_precision(values: tuple[str, ...], flags: list[str]) -> dict[str, float]:
    """{flag: floor} from --min-precision FLAG=P options, checked before any model loads."""
    floors: dict[str, float] = {}
    for value in values:
        name, sep, number = value.partition("=")
        name = name.strip()
        try:
            floor = float(number) if sep else float("nan")
        except ValueError:
            floor = float("nan")
        if not 0.0 < floor <= 1.0:
            raise click.BadParameter(f"'{value}': expected FLAG=P with P a precision in (0, 1], "
                                     f"e.g. end_conversation=0.8.", param_hint="--min-precision")
        if name not in flags:
            raise click.BadParameter(f"'{name}' is not in the flag vocabulary. Valid flags: {', '.join(flags)}.",
                                     param_hint="--min-precision")
        floors[name] = floor
    return floors


@click.command()
@click.option("--data", "data", multiple=True, required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Training JSONL file (repeat for several).")
@click.option("--validation", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
              help="Validation JSONL (repeatable): thresholds are calibrated and figures measured on it.")
@click.option("--base", default="embedded", show_default=True,
              help="Base model: 'embedded', a Hugging Face id or a local path.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Adapter folder to write.")
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option("--max-steps", type=int, default=-1, show_default=True,
              help="Stop after N optimizer steps (overrides --epochs).")
@click.option("--lr", type=float, default=2e-4, show_default=True, help="Learning rate of LoRA and marker rows.")
@click.option("--heads-lr", type=float, default=1e-3, show_default=True, help="Learning rate of the state heads.")
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--grad-accum", type=int, default=1, show_default=True, help="Gradient accumulation steps.")
@click.option("--warmup-steps", type=int, default=10, show_default=True)
@click.option("--lora-r", type=int, default=8, show_default=True)
@click.option("--lora-alpha", type=int, default=None, help="LoRA alpha (default: 2 x --lora-r).")
@click.option("--lora-targets", default="q_proj,v_proj", show_default=True,
              help="Comma-separated linear layers for LoRA.")
@click.option("--quantization", type=click.Choice(["nf4", "none"]), default="nf4", show_default=True,
              help="nf4: QLoRA on a 4-bit base; none: LoRA on the full-precision base.")
@click.option("--bf16/--no-bf16", default=False,
              help="bfloat16 mixed precision (the 4-bit layers compute in it too): an Ampere or newer GPU, or a CPU "
                   "with native bfloat16.")
@click.option("--fp16/--no-fp16", default=False,
              help="float16 mixed precision with loss scaling: a CUDA GPU without bf16.")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", "gradient_checkpointing", default=None,
              help="Recompute each decoder layer's activations in the backward pass: far less memory for about a "
                   "third more compute (a large base on a GPU). Default: off.")
@click.option("--optim", type=click.Choice(OPTIMIZERS), default="adamw_torch", show_default=True,
              help="Optimizer. The bitsandbytes ones keep 8-bit states (adamw_bnb_8bit) and/or page them to host "
                   "memory when the GPU runs short (paged_adamw_8bit, paged_adamw_32bit).")
@click.option("--max-length", type=int, default=768, show_default=True,
              help="Longest training sequence in tokens (prompt version 2 needs about 450-730 for the sample and "
                   "generalist NPCs; 1 about 310-440).")
@click.option("--history-turns", type=int, default=4, show_default=True, help="Earlier exchanges in each prompt.")
@click.option("--grounded-share", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Prompt version 2: share of examples trained with the writers' fitting lines after the decision.")
@click.option("--refusal-lines/--no-refusal-lines", default=True, show_default=True,
              help="Prompt version 2: train on the writers' refusal lines as replies where the rules refuse.")
@click.option("--prompt-version", type=click.Choice(["1", "2", "3"]), default="2", show_default=True,
              help="Sectioned prompt version: 2 shows the persona's events and example lines and writes the game's "
                   "decision before the reply (decide, then speak); 3 is 2 with the conversation before the turn's "
                   "own parts (a turn reuses the last one's cache); 1 is the seed's layout.")
@click.option("--retrieve-lore/--no-retrieve-lore", default=True, show_default=True,
              help="Add the lore each NPC's retrieve step finds, as inference does.")
@click.option("--flags", "flag_names", default=None,
              help="The flag vocabulary, comma-separated, in head order (default: the events of the game in "
                   "--npcs-dir: its _game.yaml, or the default eight).")
@click.option("--lm-weight", type=float, default=1.0, show_default=True)
@click.option("--delta-weight", type=float, default=10.0, show_default=True)
@click.option("--flag-weight", type=float, default=1.0, show_default=True)
@click.option("--save-steps", type=int, default=50, show_default=True, help="Checkpoint every N steps (for --resume).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in OUT/checkpoints.")
@click.option("--keep-checkpoints", is_flag=True, help="Keep OUT/checkpoints after a successful run.")
@click.option("--heads-refit-epochs", type=int, default=300, show_default=True,
              help="After training, refit the heads on the final model's <STATE> vectors (0: off).")
@click.option("--heads-flags-where-allowed/--heads-flags-everywhere", "heads_flags_where_allowed", default=True,
              show_default=True,
              help="In the heads refit, no flag loss where the persona's rules close the flag for want of trust, "
                   "relationship, an item or an action: the rules keep that gate, the head learns whether the NPC "
                   "means to act. Stage gates and never-allowed flags keep their loss.")
@click.option("--heads-evidence/--no-heads-evidence", "heads_evidence", default=None,
              help="Heads that read few-shot evidence: the persona's authored lines' example player lines nearest "
                   "the player's line, per event (a new NPC improves by writing examples, not by retraining). "
                   "Default: the adapter's setting (off for a new adapter).")
@click.option("--heads-refit-part", type=click.Choice(["all", "deltas"]), default="all", show_default=True,
              help="With --heads-only: 'deltas' keeps everything the flags read and their thresholds, and fits how far "
                   "trust and relationship move a trunk of its own, on this data (a game's own NPCs after a refit on "
                   "many).")
@click.option("--heads-only", is_flag=True,
              help="Do not train: refit the heads and recalibrate the thresholds of the adapter in OUT "
                   "(with --heads-refit-epochs 0: recalibrate only).")
@click.option("--min-precision", "min_precision", multiple=True, metavar="FLAG=P",
              help="Calibrate FLAG's threshold for the best F1 among those with validation precision >= P, "
                   "for a flag whose false alarm costs more than a miss (repeat per flag). "
                   "E.g. end_conversation=0.8.")
@click.option("--calibrate-after-rules/--calibrate-raw", "calibrate_after_rules", default=True, show_default=True,
              help="Choose thresholds for the F1 of what the game keeps after the personas' flag rules "
                   "(a flag the rules forbid never fires), or for the raw head output.")
@click.option("--min-threshold", type=click.FloatRange(0.0, 1.0), default=DEFAULT_MIN_THRESHOLD, show_default=True,
              help="No threshold under this probability: the rules say when an NPC may act, the model must "
                   "still say it means to.")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice).")
@click.option("--recipe", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="A YAML file of these options for one base and machine (training/recipes/); options given on "
                   "the command line win over it.")
@click.option("--dry-run", is_flag=True,
              help="With --recipe: run the recipe's code paths here in minutes: a tiny random model of its "
                   "architecture (written to OUT/dry-run-base) instead of the base, its dry_run options, and what "
                   "this device cannot run mapped to what it can (listed before training).")
@npcs_dir_option
@friendly_errors
def train(data, validation, out, flag_names, resume, keep_checkpoints, heads_only, min_precision,
          calibrate_after_rules, min_threshold, threads, recipe, dry_run, npcs_dir, **config_options):
    """Fine-tune a base model into a multi-head NPC adapter (reply + deltas + flags).

    Example: persona-agents train --data training/data/train.jsonl
    --validation training/data/validation.jsonl --out training/adapters/my-npcs
    """
    _quiet_threads()
    setup_logging()
    import torch

    from .multihead.calibrate import CalibrationPolicy
    from .multihead.trainer import MultiHeadTrainingConfig
    from .multihead.training import refit_adapter, train_adapter

    if threads:
        torch.set_num_threads(threads)
    if recipe is not None:
        config_options = _with_recipe(recipe, dry_run, out, config_options)
    elif dry_run:
        raise click.UsageError("--dry-run runs a recipe: give --recipe FILE (e.g. training/recipes/"
                               "qwen2.5-3b-instruct.yaml).")
    flag_names = _game_flags(flag_names, npcs_dir)
    fields = {CONFIG_FIELDS[name]: CONFIG_CONVERSIONS.get(name, lambda v: v)(value)
              for name, value in config_options.items()}
    if heads_only and _given_default("prompt_version"):
        # A refit renders the prompts the adapter was trained on, unless told otherwise
        # (--prompt-version 3 on a version 2 adapter: the same markers, reordered).
        from .multihead.artifacts import read_metadata

        fields["prompt_version"] = int(read_metadata(out)["prompt_format_version"])
    config = MultiHeadTrainingConfig(output_dir=str(out / "checkpoints"), flags=_names(flag_names),
                                     npcs_dir=str(npcs_dir), disable_tqdm=False, **fields)
    policy = CalibrationPolicy(min_precision=parse_min_precision(min_precision, config.flags),
                               after_rules=calibrate_after_rules, min_threshold=min_threshold)
    if config.heads_refit_part != "all" and not (heads_only and config.heads_refit_epochs > 0):
        raise click.UsageError("--heads-refit-part deltas refits part of an adapter's heads: give --heads-only "
                               "(and --heads-refit-epochs above 0).")
    if heads_only:
        meta = refit_adapter(list(data), out, config, validation=validation, calibration=policy)
    else:
        meta = train_adapter(list(data), out, config, validation=validation, resume=True if resume else None,
                             keep_checkpoints=keep_checkpoints, calibration=policy)
    if not meta:  # not the main process of a multi-process run
        return
    if config.heads_refit_part == "deltas":
        m, info = meta["deltas_refit_metrics"], meta["heads_refit_deltas"]
        click.echo(f"Updated {out} (deltas refitted on a trunk of their own; LoRA, flag outputs and thresholds kept).\n"
                   f"On {m['split']} ({m['n_examples']} examples): delta MAE trust {m['delta_mae_trust']:.4f} / "
                   f"relationship {m['delta_mae_relationship']:.4f}; delta loss {info['validation_delta_loss_before']} "
                   f"before, {info['validation_delta_loss']} after.")
        return
    m = meta["metrics"]
    if heads_only:
        refitted = config.heads_refit_epochs > 0
        done = "heads refitted and thresholds recalibrated" if refitted else "thresholds recalibrated"
        what = f"Updated {out} ({done}; LoRA kept)."
    else:
        size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
        what = (f"Wrote {out} ({size / 1e6:.1f} MB; trained {meta['training']['steps']} steps in "
                f"{meta['training']['seconds'] / 60:.1f} min, quantization {meta['quantization']}"
                f"{'; heads refitted' if meta.get('heads_refit') else ''}).")
    click.echo(
        f"{what}\n"
        f"On {m['split']} ({m['n_examples']} examples): flag micro-F1 {m['flag_micro_f1']:.3f} "
        f"(majority baseline {m['baseline']['flag_micro_f1']:.3f}), macro-F1 {m['flag_macro_f1']:.3f}, "
        f"delta MAE trust {m['delta_mae_trust']:.4f} / relationship {m['delta_mae_relationship']:.4f}, "
        f"reply LM loss {m['lm_loss']:.3f}.")
    ruled = m.get("after_rules")
    basis = "the F1 after the personas' flag rules" if meta.get("calibration_after_rules") else "the raw F1"
    click.echo(f"Thresholds calibrated for {basis}, none under {meta.get('calibration_min_threshold', 0.0):g}"
               + (f"; after the rules: flag micro-F1 {ruled['flag_micro_f1']:.3f}." if ruled else "."))
    for name, floor in (meta.get("calibration_min_precision") or {}).items():
        click.echo(f"{name}: threshold {meta['thresholds'][name]:.3f} calibrated under precision >= {floor:g}.")


def _given_default(name: str) -> bool:
    """Whether the option `name` of the running command was left at its default."""
    from click.core import ParameterSource

    return click.get_current_context().get_parameter_source(name) in (None, ParameterSource.DEFAULT)


def _with_recipe(recipe: Path, dry_run: bool, out: Path, options: dict) -> dict:
    """The config options with the recipe's (and, for --dry-run, its dry run's) under the
    ones given on the command line; for --dry-run, fitted to this machine (said on stderr)."""
    from click.core import ParameterSource

    from .multihead.recipe import load_recipe, prepare_dry_run

    ctx = click.get_current_context()
    params = {p.name: p for p in ctx.command.params if p.name in CONFIG_FIELDS}
    loaded = load_recipe(recipe, params, ctx)
    given = {name for name in options
             if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}
    settings = {**loaded.options, **(loaded.dry_run_options if dry_run else {})}
    options = {**options, **{name: value for name, value in settings.items() if name not in given}}
    if dry_run:
        options, lines = prepare_dry_run(loaded, options, out, base_given="base" in given)
        for line in lines:
            click.echo(line, err=True)
    return options


@click.command("eval")
@click.option("--data", "data", multiple=True, required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Labelled JSONL file(s) in the training format.")
@click.option("--adapter", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=f"Adapter folder (default: {DEFAULT_ADAPTER} in the project, beside the NPC folder).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object with every figure.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--base-lm/--no-base-lm", default=True, show_default=True,
              help="Also measure the base model's reply LM loss without the adapter (a second pass).")
@click.option("--without-lines", is_flag=True,
              help="Give heads that read few-shot evidence none, as for personas without authored lines "
                   "(the 'persona only' figure of a new NPC).")
@click.option("--read-events", type=click.Choice(["auto", "heads", "matcher"]), default="auto", show_default=True,
              help="Who decides the events, as the multihead step's `read_events`: `auto` (the adapter's event "
                   "matcher for NPCs its heads were not fitted on and events it has no head for), `heads`, "
                   "`matcher`.")
@npcs_dir_option
@friendly_errors
def evaluate(data, adapter, as_json, batch_size, base_lm, npcs_dir, without_lines, read_events):
    """Measure an adapter on labelled data: flag F1, delta MAE, reply LM loss, and a majority baseline."""
    _quiet_threads()
    setup_logging()
    from .multihead.artifacts import read_metadata
    from .multihead.data import file_sha256, load_examples, load_personas_for_data, retrieve_lore
    from .multihead.evaluate import evaluate_adapter, format_report

    adapter = adapter or Path(npcs_dir).parent / DEFAULT_ADAPTER
    meta = read_metadata(adapter)
    from .game import load_game

    # The adapter's events and the game's: a label of an event the adapter does not know
    # is scored as a miss (evaluate_adapter), not refused.
    game = load_game(npcs_dir)
    vocabulary = list(dict.fromkeys([*meta["flags"], *game.event_names]))
    examples = load_examples(data, vocabulary, load_personas_for_data(npcs_dir), game.extra_axes)
    if meta.get("retrieve_lore"):
        examples = retrieve_lore(examples, npcs_dir)
    report = evaluate_adapter(adapter, examples, batch_size=batch_size, base_lm_loss=base_lm,
                              without_lines=without_lines, game_events=game.event_names, read_events=read_events)
    report["data"] = [{"path": str(p), "sha256": file_sha256(p)} for p in data]
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False))
    else:
        click.echo(format_report(report))


@click.command("fit-matcher")
@click.option("--adapter", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=f"Adapter folder (default: {DEFAULT_ADAPTER} in the project, beside the NPC folder); the matcher "
                   "is fitted on the turns its heads were fitted on and saved into it.")
@click.option("--also-into", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Another adapter folder whose heads were fitted on the same turns: the same matcher goes there too.")
@click.option("--dev-npcs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A JSONL file of labelled turns: its NPCs are left out of the fit and scored instead (a "
                   "development figure; nothing is saved).")
@click.option("--dev-examples", default="", metavar="K,K,...",
              help="With --dev-npcs: also score the NPCs left out with at most K example player lines per event "
                   "(e.g. 1,2,3,5): how many a writer must give.")
@click.option("--fewer-examples-share", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Share of the training turns read with each event cut to 1-5 example player lines.")
@click.option("--without-lines-share", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Share of the training turns read as if the persona had no example lines.")
@click.option("--embedder", default=MATCHER_EMBEDDER, show_default=True,
              help="The sentence model the matcher reads lines with: the embedded all-mpnet-base-v2, the lore's "
                   "'embedded' (all-MiniLM-L6-v2, 5x faster a line, a little worse on new NPCs), or a "
                   "sentence-transformers folder.")
@click.option("--quick", is_flag=True, hidden=True, help="A few turns and epochs: the code paths only.")
@npcs_dir_option
@friendly_errors
def fit_matcher_cmd(adapter, also_into, dev_npcs, dev_examples, fewer_examples_share, without_lines_share, embedder,
                    quick, npcs_dir):
    """Fit the adapter's event matcher: events read by their meaning and the writers' example lines, for NPCs
    the heads never saw and events the adapter has no head for (25 minutes on 2 cores for 6,900 turns, 8.5 with
    `--embedder embedded`)."""
    _quiet_threads()
    setup_logging()
    from .multihead.matcher import save_matcher
    from .multihead.matcher_fit import check_same_heads_data, fit_adapter_matcher

    adapter = adapter or Path(npcs_dir).parent / DEFAULT_ADAPTER
    check_same_heads_data(adapter, also_into)
    left_out: list[str] = []
    if dev_npcs is not None:
        left_out = sorted({json.loads(line)["npc_id"] for line in dev_npcs.read_text(encoding="utf-8").splitlines()
                           if line.strip()})
    try:
        counts = [int(k) for k in dev_examples.split(",") if k.strip()]
    except ValueError:
        raise click.BadParameter(f"{dev_examples!r}: give whole numbers separated by commas, e.g. 1,2,3,5",
                                 param_hint="--dev-examples") from None
    if counts and dev_npcs is None:
        raise click.BadParameter("needs --dev-npcs: the examples are cut on the NPCs left out",
                                 param_hint="--dev-examples")
    run = fit_adapter_matcher(adapter, npcs_dir, left_out, quick=quick, without_lines_share=without_lines_share,
                              dev_examples=counts, fewer_examples_share=fewer_examples_share, embedder=embedder)
    click.echo(json.dumps(run.summary, indent=2))
    if run.model is None:
        return
    for folder in (adapter, *also_into):
        save_matcher(folder, run.model, run.summary["threshold"], run.record)
        click.echo(f"Saved the event matcher into {folder}")
