"""`persona-agents test`: run golden conversation plans against the real pipeline."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from .cli_common import friendly_errors, make_manager, npcs_dir_option, plugins_dir_option, setup_logging


@click.command("test")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@npcs_dir_option
@plugins_dir_option
@click.option("--seed", type=int, default=0, show_default=True,
              help="Base seed; turn n of run k uses seed + 1000k + n.")
@click.option("--repeat", type=int, default=1, show_default=True, help="Run each plan K times with different seeds.")
@click.option("--min-pass-rate", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="With --repeat: the share of runs an expectation must pass.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Write JUnit XML here.")
@click.option("--show-prompt", is_flag=True,
              help="Print each turn's rendered prompt, reply, flag probabilities and deltas (first run only).")
@friendly_errors
def test_plans(paths, npcs_dir, plugins_dir, seed, repeat, min_pass_rate, junit, show_prompt):
    """Run test plans (default: npcs/tests/) on a fresh temporary state store."""
    from .store import StateStore
    from .testplans.loader import load_plans
    from .testplans.report import aggregate, render_table, write_junit
    from .testplans.runner import run_plan
    from .testplans.trace import PromptRecorder

    setup_logging()
    paths = paths or (Path(npcs_dir) / "tests",)
    with tempfile.TemporaryDirectory(prefix="persona-agents-test-") as tmp:
        manager = make_manager(npcs_dir, plugins_dir, StateStore(f"sqlite:///{tmp}/state.db"))
        plans = load_plans(paths, manager.npc_ids(), manager.game.event_names, manager.game.quest_stages,
                           manager.game.extra_axes)
        recorder = None
        if show_prompt:
            recorder = PromptRecorder()
            manager.host.pm.register(recorder, name="persona-agents-test-prompt-recorder")
        click.echo(f"Running {len(plans)} plan(s) x {repeat} run(s)...", err=True)
        runs = []
        with click.progressbar(length=len(plans) * repeat, label="plans", file=click.get_text_stream("stderr")) as bar:
            for loaded in plans:
                for k in range(repeat):
                    # Only the first run is traced: repeats differ by seed, not by prompt setup.
                    observer = _tracer(loaded, seed, recorder) if recorder and k == 0 else None
                    runs.append(run_plan(manager, loaded, seed + 1000 * k, run_index=k, on_turn=observer))
                    bar.update(1)
        manager.store.close()
    aggregates, errors = aggregate(runs)
    click.echo(render_table(aggregates, errors, min_pass_rate))
    failed = sum(1 for a in aggregates if a.rate < min_pass_rate) + len(errors)
    click.echo(f"\n{len(aggregates) - sum(1 for a in aggregates if a.rate < min_pass_rate)} passed, {failed} failed "
               f"({len(plans)} plans, {repeat} run(s) each)")
    if junit:
        write_junit(junit, aggregates, errors, min_pass_rate)
        click.echo(f"JUnit XML written to {junit}", err=True)
    if failed:
        raise SystemExit(1)


def _tracer(loaded, seed, recorder):
    """The --show-prompt observer of one plan's first run: prints each turn as it ends."""
    from .testplans.trace import render_turn_trace

    def trace(number, spec, response):
        click.echo(render_turn_trace(loaded.plan.name, str(loaded.path), seed + number, number, spec.say,
                                     recorder.last, response))
    return trace
