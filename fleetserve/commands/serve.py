"""`fleetserve serve`: the OpenAI-compatible HTTP server over one engine.

Also runnable on its own, with the same arguments: python -m fleetserve.commands.serve --port 8000
"""
from __future__ import annotations

import argparse
import sys

DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's own arguments; the engine's come from fleetserve.cli.add_engine_arguments."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for all interfaces)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                        help="model name(s) clients send; the first is reported in responses and metrics "
                             "(default: the --model value, or SmolLM2-135M-Instruct)")
    parser.add_argument("--max-queue", type=int, default=1024,
                        help="waiting requests beyond which new ones get 429 with Retry-After")
    parser.add_argument("--shutdown-timeout", type=float, default=DEFAULT_SHUTDOWN_TIMEOUT_S, metavar="SECONDS",
                        help="on SIGTERM, how long in-flight requests may run before they are aborted")
    parser.add_argument("--max-body-bytes", default="4MiB",
                        help="largest request body accepted (413 beyond), e.g. 4MiB or 1000000")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    from fleetserve.fleet.launcher import add_fleet_arguments
    add_fleet_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "replicas", 1) > 1:
        from fleetserve.fleet.launcher import run_fleet
        return run_fleet(args)
    from fleetserve.api.server import run_server
    from fleetserve.api.state import ServerOptions, ServerState
    from fleetserve.cli import engine_options
    from fleetserve.engine.config import EngineConfig, parse_size

    options = ServerOptions(host=args.host, port=args.port, served_model_names=args.served_model_name or [],
                            max_queue=args.max_queue, shutdown_timeout_s=args.shutdown_timeout,
                            max_body_bytes=parse_size(args.max_body_bytes), log_level=args.log_level,
                            access_log=not args.no_access_log)
    return run_server(ServerState(options, EngineConfig(**engine_options(args))))


def main(argv: list[str] | None = None) -> int:
    from fleetserve.cli import add_engine_arguments
    parser = argparse.ArgumentParser(prog="fleetserve serve", description=__doc__.splitlines()[0])
    add_engine_arguments(parser)
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as exc:
        print(f"fleetserve serve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
