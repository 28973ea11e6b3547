"""`fleetserve batch`: a batch file through an in-process engine, answers in OpenAI's output format, failed
lines inline or in --error-file, and files that cannot be a batch refused before the model loads."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fleetserve.model.loader import DEFAULT_MODEL as MODEL

ENGINE_ARGS = ["--dtype", "float32", "--kv-cache-memory", "256MiB", "--threads", "1"]


def fleetserve_batch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetserve.cli", "batch", *args, *ENGINE_ARGS],
                          capture_output=True, text=True, timeout=300)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_runs_both_endpoints_and_answers_bad_lines(tmp_path):
    lines = [{"custom_id": "chat", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}},
             {"custom_id": "text", "method": "POST", "url": "/v1/completions",
              "body": {"prompt": "The sky is", "max_tokens": 3, "temperature": 0}},
             {"custom_id": "bad", "method": "POST", "url": "/v1/completions",
              "body": {"prompt": "x", "max_tokens": -1}}]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines) + "{not json\n")
    inline = fleetserve_batch(str(source), "-o", str(tmp_path / "out.jsonl"))
    assert inline.returncode == 0, inline.stderr
    answers = read_jsonl(tmp_path / "out.jsonl")
    assert [a["custom_id"] for a in answers] == ["chat", "text", "bad", None]
    assert answers[0]["response"]["body"]["object"] == "chat.completion"
    assert answers[1]["response"]["body"]["object"] == "text_completion"
    assert answers[2]["response"]["status_code"] == 400 and answers[2]["error"]["message"]
    assert answers[3]["error"]["code"] == "invalid_json_line"
    assert "4 requests, 2 answered, 2 failed" in inline.stderr

    split = fleetserve_batch(str(source), "-o", str(tmp_path / "ok.jsonl"), "--error-file", str(tmp_path / "err.jsonl"))
    assert split.returncode == 0, split.stderr
    assert [a["custom_id"] for a in read_jsonl(tmp_path / "ok.jsonl")] == ["chat", "text"]
    assert [a["custom_id"] for a in read_jsonl(tmp_path / "err.jsonl")] == ["bad", None]


@pytest.mark.parametrize("content, message", [
    ("hello\n", "not JSONL"),
    ('{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"model": "nope", "prompt": "x"}}\n',
     "'nope'"),
])
def test_refuses_a_file_that_cannot_be_a_batch(tmp_path, content, message):
    source = tmp_path / "in.jsonl"
    source.write_text(content)
    result = fleetserve_batch(str(source), "-o", str(tmp_path / "out.jsonl"))
    assert result.returncode == 2 and message in result.stderr and "fleetserve batch: error" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()
