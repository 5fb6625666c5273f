"""The state heads: a small MLP on the hidden state at the `<STATE>` marker.

`<STATE>` closes the prompt just before the NPC's turn (see `prompt_format.py`), so its
hidden state has read the whole situation (persona, tags, player state, history and the
player's line) and nothing of the reply: the same vector is available from the prefill of
the generate call at inference, so the heads cost no second pass over the reply.

- the delta head: two outputs, `tanh` into [-1, 1]: the turn's (trust, relationship) change;
- the flag head: one logit per flag of the vocabulary (sigmoid gives its probability).

`MultiHeadModel` ties a causal LM and the heads together for training and evaluation: one
forward over prompt + reply gives the LM logits on the reply positions only (the prompt's
logits are never needed, and the 49k-row output matrix is a fifth of the model's compute)
and the heads' outputs at `<STATE>`. Everything runs inside `forward`, so DDP
(`accelerate launch`) sees every parameter used in one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class HeadsConfig:
    """What it takes to rebuild the heads; saved in multihead.json."""

    hidden_size: int
    num_flags: int
    inner_size: int = 256
    dropout: float = 0.1
    #: Numbers of few-shot evidence read beside the <STATE> vector (evidence.py); 0: none.
    evidence_size: int = 0
    #: Width of a trunk of the deltas' own (refit.py `refit_deltas`); 0: the deltas read
    #: the shared trunk.
    delta_inner_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = {"hidden_size": self.hidden_size, "num_flags": self.num_flags,
               "inner_size": self.inner_size, "dropout": self.dropout}
        if self.evidence_size:  # older adapters' metadata stays as it was
            out["evidence_size"] = self.evidence_size
        if self.delta_inner_size:
            out["delta_inner_size"] = self.delta_inner_size
        return out


@dataclass
class StateHeadsOutput:
    """`deltas`: (batch, 2) in [-1, 1], trust then relationship; `flag_logits`: (batch, flags)."""

    deltas: torch.Tensor
    flag_logits: torch.Tensor

    @property
    def flag_probs(self) -> torch.Tensor:
        return torch.sigmoid(self.flag_logits)


class StateHeads(nn.Module):
    shift: torch.Tensor  # buffers, declared for the type checker
    scale: torch.Tensor
    evidence_in: nn.Linear  # only with config.evidence_size
    evidence_flag: nn.Linear
    delta_trunk: nn.Sequential  # only with config.delta_inner_size

    def __init__(self, config: HeadsConfig):
        super().__init__()
        self.config = config
        # Per-feature standardisation, fitted to the training data's <STATE> vectors before
        # the heads are refitted (`refit.py`): an LM's hidden states have a few huge
        # dimensions that would otherwise drown the informative ones. Identity until then.
        self.register_buffer("shift", torch.zeros(config.hidden_size))
        self.register_buffer("scale", torch.ones(config.hidden_size))
        # A shared trunk: which event fires and how the NPC's feelings move are read from
        # the same understanding of the player's line.
        self.trunk = nn.Sequential(
            nn.LayerNorm(config.hidden_size),
            nn.Linear(config.hidden_size, config.inner_size),
            nn.GELU(),
            nn.Dropout(config.dropout),
        )
        self.delta = nn.Linear(config.delta_inner_size or config.inner_size, 2)
        self.flag = nn.Linear(config.inner_size, config.num_flags)
        if config.delta_inner_size:
            # The deltas' own trunk: how far one game's NPCs' feelings move, fitted on that
            # game's turns, beside events read by a trunk fitted on many NPCs.
            self.delta_trunk = nn.Sequential(
                nn.LayerNorm(config.hidden_size),
                nn.Linear(config.hidden_size, config.delta_inner_size),
                nn.GELU(),
                nn.Dropout(config.dropout),
            )
        if config.evidence_size:
            # Evidence enters twice: into the trunk beside the <STATE> vector (what the
            # player says, read with what the writers' examples say), and straight to the
            # flag logits, so a close match to an event's examples counts on an NPC whose
            # <STATE> vectors the trunk never saw.
            self.evidence_in = nn.Linear(config.evidence_size, config.inner_size, bias=False)
            self.evidence_flag = nn.Linear(config.evidence_size, config.num_flags, bias=False)
            nn.init.zeros_(self.evidence_flag.weight)
        # Start from "no change": most turns move nothing, and a zero start keeps the early
        # delta loss from pushing the shared hidden state around.
        nn.init.zeros_(self.delta.weight)
        nn.init.zeros_(self.delta.bias)

    def _standardized(self, state_hidden: torch.Tensor) -> torch.Tensor:
        return (state_hidden.float() - self.shift) * self.scale

    def inner(self, state_hidden: torch.Tensor, evidence: torch.Tensor | None = None) -> torch.Tensor:
        """The shared trunk's features (evidence: see `forward`)."""
        standardized = self._standardized(state_hidden)
        if not self.config.evidence_size:
            return self.trunk(standardized)
        if evidence is None:
            evidence = standardized.new_zeros(standardized.shape[0], self.config.evidence_size)
        norm, linear, act, drop = self.trunk
        return drop(act(linear(norm(standardized)) + self.evidence_in(evidence.float())))

    def forward(self, state_hidden: torch.Tensor, evidence: torch.Tensor | None = None) -> StateHeadsOutput:
        """`evidence`: (batch, evidence_size), for heads built with evidence (zeros when
        not given: a persona without authored lines has none)."""
        inner = self.inner(state_hidden, evidence)
        flag_logits = self.flag(inner)
        if self.config.evidence_size:
            if evidence is None:
                evidence = inner.new_zeros(inner.shape[0], self.config.evidence_size)
            flag_logits = flag_logits + self.evidence_flag(evidence.float())
        return StateHeadsOutput(deltas=torch.tanh(self.delta(self.delta_inner(state_hidden, inner))),
                                flag_logits=flag_logits)

    def delta_inner(self, state_hidden: torch.Tensor, inner: torch.Tensor | None = None) -> torch.Tensor:
        """What the delta readout reads: the deltas' own trunk if they have one, else the
        shared trunk's features (`inner`, computed here if not given)."""
        if self.config.delta_inner_size:
            return self.delta_trunk(self._standardized(state_hidden))
        return inner if inner is not None else self.inner(state_hidden)


@dataclass
class MultiHeadForward:
    """One forward's result: LM logits at the reply positions (flattened over the batch)
    with their target token ids, and the heads' outputs at `<STATE>`."""

    reply_logits: torch.Tensor
    reply_targets: torch.Tensor
    heads: StateHeadsOutput
    state_hidden: torch.Tensor


def backbone_and_lm_head(lm: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(the decoder stack that ends with the final norm, the output projection) of a
    causal LM, a peft-wrapped one included."""
    base: Any = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # type: ignore[operator]  # peft
    return base.get_decoder(), base.get_output_embeddings()


class MultiHeadModel(nn.Module):
    """A causal LM plus state heads, for training (`MultiHeadTrainer`) and evaluation."""

    # Our losses are batch means: Trainer must divide them by the accumulation steps.
    accepts_loss_kwargs = False
    # Read by Trainer when it resumes from a checkpoint.
    _keys_to_ignore_on_save = None

    def __init__(self, lm: nn.Module, heads: StateHeads):
        super().__init__()
        self.lm = lm
        self.heads = heads

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **options) -> None:
        """Gradient checkpointing of the LM's decoder layers (the Trainer calls this for
        `gradient_checkpointing=True`), non-reentrant: the final hidden state the heads read
        is outside the checkpoints, and its gradient reaches every layer's LoRA weights
        (tests/test_training_recipe.py compares them with and without)."""
        from .modeling import enable_checkpointing

        base: Any = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm  # type: ignore[operator]
        enable_checkpointing(base, activation_checkpointing_kwargs, **options)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **options) -> None:
        """transformers 4's name of `activation_checkpointing_enable`."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **options)

    def forward(self, input_ids, attention_mask, labels, state_index, **_unused) -> MultiHeadForward:
        decoder, lm_head = backbone_and_lm_head(self.lm)
        # No KV cache: one pass over whole sequences (and checkpointed layers recompute).
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        state_hidden = hidden[rows, state_index]
        # Position t predicts token t+1; only reply tokens (labels != -100) count.
        targets = labels[:, 1:]
        keep = targets != -100
        reply_logits = lm_head(hidden[:, :-1][keep]).float()
        return MultiHeadForward(
            reply_logits=reply_logits,
            reply_targets=targets[keep],
            heads=self.heads(state_hidden),
            state_hidden=state_hidden,
        )

    def state_dict(self, *args, **kwargs):
        # Checkpoints hold only what trains (LoRA, the marker rows, the heads): a few MB
        # instead of the frozen (possibly 4-bit) base. Trainer resumes with strict=False.
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        trainable = {prefix + name for name, p in self.named_parameters() if p.requires_grad}
        if not trainable:  # an evaluation copy: nothing trains, keep the usual behaviour
            return full
        return type(full)((k, v) for k, v in full.items() if k in trainable)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Loads a checkpoint of the trainable weights: the frozen base is not in it, so
        only missing *trainable* weights count as missing."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        missing = [k for k in result.missing_keys if k in trainable]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"checkpoint mismatch: missing {missing}, unexpected {result.unexpected_keys}")
        return type(result)(missing, result.unexpected_keys)


@dataclass
class MultiHeadLosses:
    lm: torch.Tensor
    delta: torch.Tensor
    flag: torch.Tensor


def multihead_losses(out: MultiHeadForward, delta_targets: torch.Tensor, flag_targets: torch.Tensor,
                     flag_pos_weight: float | None = None) -> MultiHeadLosses:
    """LM cross-entropy over the reply tokens, delta MSE, flag BCE-with-logits (batch means)."""
    lm = nn.functional.cross_entropy(out.reply_logits, out.reply_targets)
    delta = nn.functional.mse_loss(out.heads.deltas, delta_targets.to(out.heads.deltas))
    pos_weight = None
    if flag_pos_weight is not None:
        pos_weight = torch.full((flag_targets.shape[-1],), flag_pos_weight, device=flag_targets.device)
    flag = nn.functional.binary_cross_entropy_with_logits(
        out.heads.flag_logits, flag_targets.to(out.heads.flag_logits), pos_weight=pos_weight)
    return MultiHeadLosses(lm=lm, delta=delta, flag=flag)
