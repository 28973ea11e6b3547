"""`fleetserve serve`: the OpenAI-compatible HTTP server over one engine.

With --replicas N, N engines behind a router (fleetserve.commands.serve_fleet).

Also runnable on its own, with the same arguments: python -m fleetserve.commands.serve --port 8000
"""
from __future__ import annotations

import argparse
import sys

from fleetserve.commands.batch_arguments import batch_options
from fleetserve.commands.engine_arguments import add_engine_arguments, engine_options
from fleetserve.commands.serve_arguments import add_serve_arguments, server_options
from fleetserve.commands.serve_fleet import add_fleet_arguments, wants_fleet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_engine_arguments(parser)
    add_serve_arguments(parser)
    add_fleet_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if wants_fleet(args):
        from fleetserve.commands import serve_fleet
        return serve_fleet.run(args)
    from fleetserve.api.server import run_server
    from fleetserve.api.state import ServerState
    from fleetserve.engine.config import EngineConfig

    return run_server(ServerState(server_options(args), EngineConfig(**engine_options(args))), batch_options(args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleetserve serve", description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as exc:
        print(f"fleetserve serve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
