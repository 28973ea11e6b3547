"""A server killed (SIGKILL) or stopped (SIGTERM, which drains and exits 0) in the middle of a batch and
started again on the same SQLite file finishes the batch: lines answered before the stop are not run
again, and every custom_id is answered exactly once."""
from __future__ import annotations

import json
import signal
import sqlite3
import time

import openai
import pytest

from fleetserve.model.loader import DEFAULT_MODEL as MODEL

NUM_LINES = 12


def answered_lines(db_path) -> dict[str, str]:
    """custom_id -> the id of its stored answer."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT custom_id, result FROM batch_lines WHERE outcome IS NOT NULL").fetchall()
    return {custom_id: json.loads(result)["id"] for custom_id, result in rows}


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_stopped_server_resumes_the_batch_after_a_restart(launch_server, tmp_path, stop):
    db_path = tmp_path / "batches.sqlite3"
    args = ["--batch-db", str(db_path), "--batch-concurrency", "2"]
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": MODEL, "messages": [{"role": "user", "content": f"Count from {i} to {i + 30}."}],
                       "max_tokens": 24, "temperature": 0}} for i in range(NUM_LINES)]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()

    first = launch_server(args)
    with openai.OpenAI(base_url=first.api_url, api_key="unused", max_retries=0, timeout=60) as client:
        file_id = client.files.create(file=("batch.jsonl", content), purpose="batch").id
        batch_id = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                         completion_window="24h").id
        deadline = time.monotonic() + 120
        while client.batches.retrieve(batch_id).request_counts.completed < 2:
            assert time.monotonic() < deadline, first.log_text()
            time.sleep(0.05)
    first.process.send_signal(stop)
    assert first.process.wait(60) == (0 if stop == signal.SIGTERM else -signal.SIGKILL), first.log_text()
    before = answered_lines(db_path)
    assert 2 <= len(before) < NUM_LINES, "the batch should stop in the middle; make its lines longer"

    second = launch_server(args)
    with openai.OpenAI(base_url=second.api_url, api_key="unused", max_retries=0, timeout=60) as client:
        deadline = time.monotonic() + 180
        while (batch := client.batches.retrieve(batch_id)).status not in ("completed", "failed", "cancelled"):
            assert time.monotonic() < deadline, second.log_text()
            time.sleep(0.2)
        assert batch.status == "completed", batch
        assert (batch.request_counts.total, batch.request_counts.completed) == (NUM_LINES, NUM_LINES)
        output = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert [line["custom_id"] for line in output] == [f"r{i}" for i in range(NUM_LINES)]
    assert all(line["response"]["status_code"] == 200 for line in output)
    answer_ids = {line["custom_id"]: line["id"] for line in output}
    rerun = [custom_id for custom_id, answer_id in before.items() if answer_ids[custom_id] != answer_id]
    assert not rerun, f"lines answered before the stop ran again: {rerun}"
