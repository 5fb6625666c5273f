"""`MultiHeadTrainingConfig` and `MultiHeadTrainer`: the transformers Trainer, plus heads.

loss = lm_loss_weight * LM cross-entropy on the reply tokens
     + delta_loss_weight * MSE of the delta head
     + flag_loss_weight * BCE-with-logits of the flag head

The Trainer does everything else (devices via accelerate, progress bar, checkpoints,
resume, gradient accumulation, bf16/fp16 autocast, gradient checkpointing through
`MultiHeadModel.activation_checkpointing_enable`), so `accelerate launch` scales the same
command. The options a device cannot run (fp16 without CUDA, bf16 on a GPU or CPU without
it, a bitsandbytes optimizer bitsandbytes cannot run here) are refused with the fix
(hardware.py).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainingArguments

from ..errors import TrainingConfigError
from ..flags import DEFAULT_FLAGS
from ..prompt_format import SECTIONED_FORMAT_VERSION, SECTIONED_FORMAT_VERSIONS
from .hardware import BNB_OPTIMIZERS, bf16_problem, cuda_available, fp16_problem, optim_problem
from .heads import multihead_losses
from .modeling import QUANTIZATIONS


@dataclass
class MultiHeadTrainingConfig(TrainingArguments):
    """TrainingArguments plus the base, LoRA, heads and loss options of a multi-head run."""

    base_model: str = field(default="embedded",
        metadata={"help": "Base causal LM: 'embedded', a Hugging Face id or a local path."})
    flags: list[str] = field(default_factory=lambda: list(DEFAULT_FLAGS),
                             metadata={"help": "The flag vocabulary, in head order (a studio may use its own events)."})
    quantization: str = field(default="nf4",
        metadata={"help": "Base weights while training: 'nf4' (QLoRA, 4-bit) or 'none'."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (default: 2 * lora_r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"],
                                           metadata={"help": "Linear layers that get LoRA updates."})
    max_length: int = field(default=768,
        metadata={"help": "Longest sequence (prompt + reply) in tokens; history is trimmed first."})
    prompt_version: int = field(default=SECTIONED_FORMAT_VERSION, metadata={
        "help": "Sectioned prompt version to train on (2: the persona's events and example lines in the prompt, "
                "and the game's decision before the reply; 1: the seed's layout)."})
    grounded_share: float = field(default=0.5, metadata={
        "help": "Prompt version 2: share of training examples shown the writers' lines that fit them after the "
                "decision (grounded mode); the rest train without (authored and free modes)."})
    refusal_lines: bool = field(default=True, metadata={
        "help": "Prompt version 2: add the writers' refusal lines (persona `lines:` with `refuses:`) as reply "
                "examples, each said where the rules refuse the event."})
    history_turns: int = field(default=4,
        metadata={"help": "Earlier exchanges rendered in <CTX> (inference should use the same)."})
    lm_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the reply's LM cross-entropy."})
    delta_loss_weight: float = field(default=10.0, metadata={
        "help": "Weight of the delta MSE. Deltas are small numbers (most within +-0.1), so their MSE is "
                "small too; the weight brings its gradient to the scale of the other losses."})
    flag_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the flag BCE-with-logits."})
    flag_pos_weight: float | None = field(default=None,
        metadata={"help": "BCE weight of positive flag labels (rare events)."})
    heads_inner_size: int = field(default=256, metadata={"help": "Width of the heads' hidden layer."})
    heads_dropout: float = field(default=0.1, metadata={"help": "Dropout in the heads."})
    heads_learning_rate: float = field(default=1e-3, metadata={
        "help": "Learning rate of the heads: they start from scratch, the LoRA update from a trained model."})
    heads_refit_epochs: int = field(default=300, metadata={
        "help": "After training, refit the heads on the final model's <STATE> vectors for up to N epochs "
                "(early stopping on validation); 0 keeps the jointly trained heads."})
    heads_refit_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the heads refit."})
    heads_flags_where_allowed: bool = field(default=True, metadata={
        "help": "In the heads refit, no flag loss where the persona's rules close the flag for want of trust, "
                "relationship, an item or an action: the rules keep that gate, the head learns whether the NPC "
                "means to act (refit.py `allowed_mask`)."})
    heads_refit_part: str = field(default="all", metadata={
        "help": "What a heads refit fits: 'all' (fresh heads), or 'deltas' (keep everything the flags read, and "
                "their thresholds; fit the deltas a trunk of their own, e.g. on a game's own NPCs after a refit on "
                "many: refit.py `refit_deltas`)."})
    heads_evidence: bool | None = field(default=None, metadata={
        "help": "Heads that read few-shot evidence: how close the player's line is to the example lines the "
                "persona's authored lines give for each event (multihead/evidence.py); None keeps the adapter's "
                "setting in a heads-only refit, and means off for a new adapter."})
    npcs_dir: str = field(default="npcs",
        metadata={"help": "Persona folder whose personas render the training prompts."})
    retrieve_lore: bool = field(default=True, metadata={
        "help": "Fill each prompt's LORE lines with the NPC's own retrieve step, as inference does."})
    # Trainer defaults that do not fit this model: our batches carry targets the model's
    # forward does not take, and evaluation reports losses only (figures come from
    # `persona-agents eval`).
    remove_unused_columns: bool = field(default=False,
        metadata={"help": "Must stay False (the batch holds head targets)."})
    prediction_loss_only: bool = field(default=True, metadata={"help": "Must stay True."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Learning rate of the LoRA update and marker rows."})
    # One pass over the data: a LoRA on a small model overfits a studio's few thousand
    # turns in more, and a CPU run is hours per epoch (`persona-agents train` has the same
    # defaults, checked by tests/test_cli_train_defaults.py).
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training data."})
    warmup_steps: float = field(default=10, metadata={"help": "Steps of learning-rate warm-up."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Batch size per device."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_steps: float = field(default=50, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})
    train_sampling_strategy: str = field(default="group_by_length", metadata={
        "help": "'group_by_length' batches sequences of similar length: less padding, less CPU time."})
    optim: str = field(default="adamw_torch", metadata={
        "help": "Optimizer: adamw_torch, adamw_torch_fused, or a bitsandbytes AdamW with 8-bit states "
                "(adamw_bnb_8bit) and/or paged to host memory under GPU memory pressure (paged_adamw_8bit, "
                "paged_adamw_32bit)."})
    # TrainingArguments' field, redeclared for one default across transformers versions
    # (4.x: False, 5.x: None, the deprecated alias of `activation_checkpointing`).
    gradient_checkpointing: bool | None = field(default=None, metadata={
        "help": "Recompute each decoder layer's activations in the backward pass instead of keeping them: "
                "about a third more compute for far less activation memory (non-reentrant checkpoints; the "
                "heads read the final hidden state, outside them)."})

    def __post_init__(self):
        problems = []
        if self.quantization not in QUANTIZATIONS:
            problems.append(f"quantization '{self.quantization}' is unknown; choose one of {', '.join(QUANTIZATIONS)}")
        if not self.flags or len(set(self.flags)) != len(self.flags):
            problems.append("flags must be a non-empty list of distinct names")
        if self.lora_r < 1:
            problems.append(f"lora_r must be at least 1, got {self.lora_r}")
        if self.max_length < 64:
            problems.append(f"max_length {self.max_length} is too short for a sectioned prompt (at least 64)")
        if self.history_turns < 0:
            problems.append("history_turns must be >= 0")
        if not 0.0 <= self.grounded_share <= 1.0:
            problems.append(f"grounded_share must be within 0..1, got {self.grounded_share}")
        if self.prompt_version not in SECTIONED_FORMAT_VERSIONS:
            problems.append(f"prompt_version {self.prompt_version} is unknown; choose one of "
                            f"{', '.join(map(str, SECTIONED_FORMAT_VERSIONS))}")
        weights = (self.lm_loss_weight, self.delta_loss_weight, self.flag_loss_weight)
        if min(weights) < 0 or max(weights) == 0:
            problems.append("loss weights must be >= 0 and not all zero")
        if self.remove_unused_columns:
            problems.append("remove_unused_columns=True would drop the head targets from every batch")
        if not self.prediction_loss_only:
            problems.append("prediction_loss_only must be True (use `persona-agents eval` for metrics)")
        if self.fp16 and self.bf16:
            problems.append("bf16 and fp16 together: choose one (bf16 where the device has it)")
        elif self.bf16 or self.fp16:
            problem = bf16_problem() if self.bf16 else fp16_problem()
            if problem:
                problems.append(problem)
        problem = optim_problem(self.optim_name)
        if problem:
            problems.append(problem)
        if problems:
            raise TrainingConfigError("Invalid training options:\n  " + "\n  ".join(problems))
        if not cuda_available():
            self.dataloader_pin_memory = False  # pinned memory only helps copies to an accelerator
            if self.bf16:
                self.use_cpu = True  # TrainingArguments takes bf16 without a GPU only so
        if self.gradient_checkpointing is not None and getattr(self, "activation_checkpointing", False) is None:
            # transformers 5 renamed the option: set the new name, without the deprecation warning.
            self.activation_checkpointing = self.gradient_checkpointing
        super().__post_init__()

    @property
    def optim_name(self) -> str:
        """`optim` as a string (TrainingArguments makes it an enum)."""
        return str(getattr(self.optim, "value", self.optim))

    @property
    def compute_dtype(self) -> str:
        """The dtype the 4-bit layers compute in: the mixed precision's, else float32."""
        return "bfloat16" if self.bf16 else "float16" if self.fp16 else "float32"

    @property
    def checkpointing(self) -> bool:
        return bool(self.gradient_checkpointing or getattr(self, "activation_checkpointing", False))


def build_optimizer(model: torch.nn.Module, config: MultiHeadTrainingConfig) -> torch.optim.Optimizer:
    """The optimizer of `config.optim` (AdamW, or bitsandbytes' 8-bit and/or paged AdamW) with
    two learning rates: the adapter's and the (fresh) heads'."""
    heads: list[torch.nn.Parameter] = []
    adapter: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (heads if name.startswith("heads.") else adapter).append(p)
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(config)
    groups = [{"params": adapter, "lr": config.learning_rate}, {"params": heads, "lr": config.heads_learning_rate}]
    optimizer = cls(groups, **{**kwargs, "weight_decay": config.weight_decay})
    if config.optim_name in BNB_OPTIMIZERS and "8bit" in config.optim_name:
        # As the Trainer does for embedding matrices: the marker rows keep 32-bit states.
        from bitsandbytes.optim import GlobalOptimManager

        manager = GlobalOptimManager.get_instance()
        for name, p in model.named_parameters():
            if p.requires_grad and "trainable_tokens" in name:
                manager.override_config(p, "optim_bits", 32)
    return optimizer


class MultiHeadTrainer(Trainer):
    """Trainer whose loss adds the delta and flag heads; logs each head's loss."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        delta_targets, flag_targets = inputs.pop("delta"), inputs.pop("flags")
        out = model(**inputs)
        args: MultiHeadTrainingConfig = self.args
        losses = multihead_losses(out, delta_targets, flag_targets, args.flag_pos_weight)
        total = (args.lm_loss_weight * losses.lm + args.delta_loss_weight * losses.delta
                 + args.flag_loss_weight * losses.flag)
        sums = self.__dict__.setdefault("_head_losses", defaultdict(lambda: defaultdict(list)))
        mode = "train" if model.training else "eval"
        for name in ("lm", "delta", "flag"):
            sums[mode][f"{name}_loss"].append(float(getattr(losses, name).detach()))
        return (total, out) if return_outputs else total

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        sums = self.__dict__.get("_head_losses")
        if sums:
            mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
            prefix = "eval_" if mode == "eval" else ""
            for name, values in sums[mode].items():
                if values:
                    logs[prefix + name] = round(sum(values) / len(values), 4)
            sums[mode].clear()
        super().log(logs, start_time)
