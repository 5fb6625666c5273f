"""`persona-agents train` is built from MultiHeadTrainingConfig (issue 32): every option that
sets a config field has that field's default, and every option is either such a field or
one the command handles itself, so a new option cannot quietly drift from the Python API."""

from __future__ import annotations

import dataclasses

from persona_agents.cli_train import CONFIG_CONVERSIONS, CONFIG_FIELDS, train
from persona_agents.multihead.trainer import MultiHeadTrainingConfig

# Options `train` handles itself (files, the run, calibration, the machine).
COMMAND_ONLY = {"data", "validation", "out", "flag_names", "resume", "keep_checkpoints", "heads_only",
                "min_precision", "calibrate_after_rules", "min_threshold", "threads", "npcs_dir", "recipe",
                "dry_run"}


def _field_defaults() -> dict[str, object]:
    return {f.name: f.default for f in dataclasses.fields(MultiHeadTrainingConfig)
            if f.default is not dataclasses.MISSING} | {
        f.name: f.default_factory() for f in dataclasses.fields(MultiHeadTrainingConfig)
        if f.default_factory is not dataclasses.MISSING}


def test_every_option_is_a_config_field_or_the_commands_own():
    options = {param.name for param in train.params}
    assert options == set(CONFIG_FIELDS) | COMMAND_ONLY, (
        f"unclassified: {sorted(options - set(CONFIG_FIELDS) - COMMAND_ONLY)}; "
        f"gone: {sorted((set(CONFIG_FIELDS) | COMMAND_ONLY) - options)}")
    fields = {f.name for f in dataclasses.fields(MultiHeadTrainingConfig)}
    assert set(CONFIG_FIELDS.values()) <= fields


def test_option_defaults_are_the_config_defaults():
    defaults = _field_defaults()
    drifted = []
    for param in train.params:
        if param.name not in CONFIG_FIELDS:
            continue
        as_field = CONFIG_CONVERSIONS.get(param.name, lambda value: value)(param.default)
        if as_field != defaults[CONFIG_FIELDS[param.name]]:
            drifted.append(f"--{param.name.replace('_', '-')}: {param.default!r} vs "
                           f"{CONFIG_FIELDS[param.name]}={defaults[CONFIG_FIELDS[param.name]]!r}")
    assert not drifted, drifted
