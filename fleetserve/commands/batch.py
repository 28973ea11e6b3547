"""`fleetserve batch INPUT.jsonl -o OUTPUT.jsonl`: run an OpenAI batch file through an engine in this
process, with no HTTP port (as `vllm run-batch` does).

Every line goes through the server's own app in-process, as the offline service class, so it is checked
and answered exactly as POST /v1/chat/completions or /v1/completions would; a line's url picks the
endpoint. Answers are written in input order, in OpenAI's batch output format; failed lines go inline in
the output (as vllm run-batch writes them), or to --error-file when given. A file that is not JSONL,
repeats a custom_id or names a model this engine does not serve is refused before anything runs.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from fleetserve.api.batch_config import BatchOptions
from fleetserve.commands.engine_arguments import add_engine_arguments, engine_options


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="the batch file: OpenAI JSONL, one request a line ('-' for standard input)")
    p.add_argument("-o", "--output", required=True, help="where the answers go, one JSON line per request "
                   "('-' for standard output)")
    p.add_argument("--error-file", default=None, help="write failed lines here instead of inline in the output")
    p.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                   help="model name(s) the lines may ask for (default: the --model value, or SmolLM2-135M-Instruct)")
    p.add_argument("--concurrency", type=int, default=BatchOptions.max_concurrent_lines, metavar="N",
                   help="lines run at once")
    add_engine_arguments(p)


def run(args: argparse.Namespace) -> int:
    from fleetserve.api.batch_input import parse_input, unknown_models
    from fleetserve.api.server import configure_logging, create_app
    from fleetserve.api.state import ServerOptions, ServerState
    from fleetserve.engine.config import EngineConfig

    options = BatchOptions(max_concurrent_lines=args.concurrency)
    content = sys.stdin.buffer.read() if args.input == "-" else Path(args.input).read_bytes()
    lines, errors = parse_input(content, None)
    state = ServerState(ServerOptions(served_model_names=args.served_model_name or [], log_level="warning"),
                        EngineConfig(**engine_options(args)))
    errors = errors or unknown_models(lines, state.model_names)
    if errors:
        raise ValueError(f"{args.input}: " + "; ".join(error["message"] for error in errors[:5]))
    configure_logging("warning")
    app = create_app(state)
    state.start_loading()
    if not state.wait_loaded():
        print(f"fleetserve batch: the model failed to load: {state.load_error}", file=sys.stderr)
        return 1
    results = asyncio.run(_run_lines(app, state, lines, options))
    answers = [(line.refusal and ("error", line.refusal)) or results[line.index] for line in lines]
    failed = sum(outcome == "error" for outcome, _ in answers)
    _write(args.output, [answer for outcome, answer in answers if args.error_file is None or outcome == "output"])
    if args.error_file is not None:
        _write(args.error_file, [answer for outcome, answer in answers if outcome == "error"])
    print(f"fleetserve batch: {len(lines)} requests, {len(lines) - failed} answered, {failed} failed",
          file=sys.stderr)
    return 0


async def _run_lines(app: object, state: object, lines: list, options: BatchOptions) -> dict[int, tuple[str, dict]]:
    from fleetserve.api.batch_execution import in_process_client, run_lines

    results: dict[int, tuple[str, dict]] = {}

    def record(index: int, outcome: str, result: dict) -> None:
        results[index] = (outcome, result)

    pending = [(line.index, line.custom_id, line.request) for line in lines if line.refusal is None]
    try:
        async with in_process_client(app) as client:
            await run_lines(client, pending, asyncio.Semaphore(options.max_concurrent_lines), record,
                            lambda: False, options.retry_delay_s)
    finally:
        await state.shutdown_engine(0)  # type: ignore[attr-defined]
    return results


def _write(path: str, answers: list[dict]) -> None:
    text = "".join(json.dumps(answer) + "\n" for answer in answers)
    if path == "-":
        sys.stdout.write(text)
    else:
        Path(path).write_text(text)
