"""YAML as a writer would write it: keys in the order given, multi-line text as a block."""

from __future__ import annotations

import re
from typing import Any

import yaml

_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_ .'-]*$")


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value.strip("\n"):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


def _list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.SequenceNode:
    # Short lists of plain strings on one line, as the sample files write them: [a, b, c].
    flow = bool(value) and all(isinstance(v, str) and _PLAIN.match(v) for v in value) \
        and sum(len(v) + 2 for v in value) < 80
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


_Dumper.add_representer(str, _str)
_Dumper.add_representer(list, _list)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100, default_flow_style=False)
