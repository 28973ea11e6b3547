"""The Batch API's flags, shared by `serve` (one replica, or the router of `serve --replicas N`) and `route`;
every default is BatchOptions' own."""
from __future__ import annotations

import argparse

from fleetserve.api.batch_config import BatchOptions


def add_batch_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--batch-db", default=BatchOptions.db_path, metavar="PATH",
                        help="the Batch API's SQLite file (files, batches, per-line results) "
                             "(default: batches.sqlite3 in the cache directory)")
    parser.add_argument("--batch-concurrency", type=int, default=BatchOptions.max_concurrent_lines, metavar="N",
                        help="batch lines run at once (as the offline service class)")
    parser.add_argument("--no-batch-api", action="store_true",
                        help="serve no /v1/files and /v1/batches (the replicas of `serve --replicas N` leave them "
                             "to the router)")


def batch_options(args: argparse.Namespace) -> BatchOptions | None:
    if args.no_batch_api:
        return None
    return BatchOptions(db_path=args.batch_db, max_concurrent_lines=args.batch_concurrency)
