"""`persona-agents serve`: the HTTP API for game servers (FastAPI + uvicorn)."""

from __future__ import annotations

import click

from .cli_common import (
    db_option,
    friendly_errors,
    make_manager,
    npcs_dir_option,
    open_store,
    plugins_dir_option,
    setup_logging,
)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs an API key.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@npcs_dir_option
@plugins_dir_option
@db_option
@click.option("--api-key", envvar="PERSONA_AGENTS_API_KEY", default=None, show_envvar=True,
              help="Require this key (Authorization: Bearer KEY, or X-API-Key) on every endpoint but /healthz. "
              "Prefer the environment variable: command lines are visible to other users.")
@click.option("--rate-limit", default="60/min", show_default=True,
              help="Turns per player in a sliding window: N/sec, N/min or N/hour, or 'off'.")
@click.option("--max-body-kb", default=64, show_default=True, type=click.IntRange(1, 10_240),
              help="Largest request body accepted (larger: 413).")
@click.option("--turn-workers", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Threads that run turns (health checks and state reads have their own).")
@click.option("--player-turns", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Turns one player may have running at once; the rest queue behind them.")
@click.option("--player-queue", default=4, show_default=True, type=click.IntRange(0, 1024),
              help="Turns one player may have waiting; more are refused with 429 and Retry-After.")
@click.option("--max-waiting", default=64, show_default=True, type=click.IntRange(1, 100_000),
              help="Turns waiting for a worker, all players together; more are refused with 503 and Retry-After.")
@click.option("--no-warm-up", is_flag=True, help="Do not load models at startup (they load on first use).")
@click.option("--torch-threads", type=click.IntRange(1, 512), default=None,
              help="Threads per model computation (default: torch's, one per core). On a CPU shared with other "
              "busy processes, 1 avoids oversubscription stalls.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@friendly_errors
def serve(host, port, npcs_dir, plugins_dir, db_url, api_key, rate_limit, max_body_kb, turn_workers, player_turns,
          player_queue, max_waiting, no_warm_up, torch_threads, log_level):
    """Serve the NPCs over HTTP: turns, streamed turns, the seed's /ask, state; docs at /docs."""
    try:
        import uvicorn

        from .server import ServerSettings, create_app
    except ModuleNotFoundError as exc:
        # The HTTP stack is the `server` extra: a CLI-only install has no FastAPI.
        raise click.ClickException(
            f"`serve` needs the HTTP server packages, and '{exc.name}' is not installed. "
            "Install them with: pip install 'persona-agents[server]'") from exc
    from .server.auth import is_loopback
    from .server.ratelimit import parse_rate_limit
    from .server.scheduler import SchedulerSettings

    if api_key is not None and not api_key.strip():
        raise click.BadParameter("the API key is empty.", param_hint="--api-key")
    if not api_key and not is_loopback(host):
        raise click.UsageError(
            f"Refusing to listen on {host} without an API key: anyone who can reach it could talk to your NPCs "
            "and change players' state. Set PERSONA_AGENTS_API_KEY (or --api-key), or listen on 127.0.0.1."
        )
    try:
        limit = parse_rate_limit(rate_limit)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--rate-limit") from None
    setup_logging()
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    store = open_store(db_url)
    manager = make_manager(npcs_dir, plugins_dir, store=store)
    settings = ServerSettings(api_key=api_key or None, rate_limit=limit, max_body_bytes=max_body_kb * 1024,
                              warm_up=not no_warm_up,
                              scheduler=SchedulerSettings(workers=turn_workers, per_player=player_turns,
                                                          player_queue=player_queue, max_waiting=max_waiting))
    app = create_app(manager, settings)
    click.echo(
        f"persona-agents: {len(manager.npc_ids())} NPC(s) from {npcs_dir}, state in {store.safe_url}; "
        f"API key {'required' if api_key else 'off (loopback only)'}; rate limit {limit or 'off'} per player. "
        f"Docs at http://{host}:{port}/docs",
        err=True,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)
