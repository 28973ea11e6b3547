"""The flags of one `fleetserve serve` server beyond the engine's; every default is ServerOptions' own."""
from __future__ import annotations

import argparse

from fleetserve.api.state import ServerOptions
from fleetserve.commands.batch_arguments import add_batch_arguments
from fleetserve.commands.route import LOG_LEVELS


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=ServerOptions.host,
                        help="address to bind (0.0.0.0 for all interfaces)")
    parser.add_argument("--port", type=int, default=ServerOptions.port)
    parser.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                        help="model name(s) clients send; the first is reported in responses and metrics "
                             "(default: the --model value, or SmolLM2-135M-Instruct)")
    parser.add_argument("--max-queue", type=int, default=ServerOptions.max_queue,
                        help="waiting requests beyond which new ones get 429 with Retry-After")
    parser.add_argument("--shutdown-timeout", type=float, default=ServerOptions.shutdown_timeout_s, metavar="SECONDS",
                        help="on SIGTERM, how long in-flight requests may run before they are aborted")
    parser.add_argument("--max-body-bytes", default=ServerOptions.max_body_bytes,
                        help="largest request body accepted (413 beyond), e.g. 4MiB or 1000000")
    parser.add_argument("--kv-transfer-timeout", type=float, default=ServerOptions.kv_transfer_timeout_s,
                        metavar="SECONDS", help="disaggregated prefill: how long this replica may take to fetch a "
                        "prompt's KV from the prefill replica before it computes the prompt itself")
    parser.add_argument("--log-level", default=ServerOptions.log_level, choices=LOG_LEVELS)
    parser.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    add_batch_arguments(parser)


def server_options(args: argparse.Namespace) -> ServerOptions:
    from fleetserve.engine.config import parse_size
    return ServerOptions(host=args.host, port=args.port, served_model_names=args.served_model_name or [],
                         max_queue=args.max_queue, shutdown_timeout_s=args.shutdown_timeout,
                         max_body_bytes=parse_size(args.max_body_bytes), log_level=args.log_level,
                         access_log=not args.no_access_log, kv_transfer_timeout_s=args.kv_transfer_timeout)

