"""Reporting plan results: a table for people, JUnit XML for CI."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .runner import PlanRun


@dataclass(frozen=True)
class Aggregate:
    """One expectation over K repeated runs."""

    path: str
    plan: str
    turn: int
    name: str
    passes: int
    runs: int
    expected: str
    failures: tuple[str, ...]  # what was got in failing runs

    @property
    def rate(self) -> float:
        return self.passes / self.runs if self.runs else 0.0


def aggregate(runs: list[PlanRun]) -> tuple[list[Aggregate], list[tuple[str, str, str]]]:
    """Per-expectation pass counts across runs, and plan-level errors (path, plan, error)."""
    grouped: dict[tuple, list] = defaultdict(list)
    order: list[tuple] = []
    errors = []
    for run in runs:
        if run.error:
            errors.append((run.path, run.plan.name, f"seed {run.seed}: {run.error}"))
        for check in run.checks:
            key = (run.path, run.plan.name, check.turn, check.name)
            if key not in grouped:
                order.append(key)
            grouped[key].append(check)
    out = []
    for key in order:
        checks = grouped[key]
        n_runs = sum(1 for r in runs if (r.path, r.plan.name) == key[:2])
        out.append(Aggregate(*key, passes=sum(c.passed for c in checks), runs=n_runs, expected=checks[0].expected,
                             failures=tuple(c.got for c in checks if not c.passed)))
    return out, errors


def render_table(aggregates: list[Aggregate], errors, min_rate: float) -> str:
    lines = []
    current = None
    for agg in aggregates:
        if (agg.path, agg.plan) != current:
            current = (agg.path, agg.plan)
            lines.append(f"\n{agg.plan}  ({agg.path})")
        ok = agg.rate >= min_rate
        status = "PASS" if ok else "FAIL"
        rate = f" {agg.passes}/{agg.runs}" if agg.runs > 1 else ""
        line = f"  [{status}]{rate} turn {agg.turn}: {agg.name}"
        if not ok:
            line += f" -- expected {agg.expected}; got {agg.failures[0]}"
        lines.append(line)
    for path, plan, error in errors:
        lines.append(f"\n{plan}  ({path})\n  [ERROR] {error}")
    return "\n".join(lines).lstrip("\n")


def write_junit(path: Path, aggregates: list[Aggregate], errors, min_rate: float) -> None:
    suites = ET.Element("testsuites", name="persona-agents test")
    by_file: dict[str, list] = defaultdict(list)
    for agg in aggregates:
        by_file[agg.path].append(agg)
    for file_path, _, _ in errors:
        by_file.setdefault(file_path, [])
    total = failures = 0
    for file_path, aggs in by_file.items():
        suite = ET.SubElement(suites, "testsuite", name=file_path)
        n_fail = n_err = 0
        for agg in aggs:
            case = ET.SubElement(suite, "testcase", classname=agg.plan, name=f"turn {agg.turn}: {agg.name}")
            if agg.rate < min_rate:
                n_fail += 1
                failure = ET.SubElement(case, "failure", message=f"expected {agg.expected}; got {agg.failures[0]}")
                failure.text = f"passed {agg.passes}/{agg.runs} runs\n" + "\n".join(agg.failures)
        for err_path, plan, error in errors:
            if err_path == file_path:
                n_err += 1
                case = ET.SubElement(suite, "testcase", classname=plan, name="plan run")
                ET.SubElement(case, "error", message=error).text = error
        suite.set("tests", str(len(aggs) + n_err))
        suite.set("failures", str(n_fail))
        suite.set("errors", str(n_err))
        total += len(aggs) + n_err
        failures += n_fail + n_err
    suites.set("tests", str(total))
    suites.set("failures", str(failures))
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
