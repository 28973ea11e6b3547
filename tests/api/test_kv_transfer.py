"""Disaggregated prefill between two real servers, driven as vLLM's disaggregation proxy drives them: the prefill
request with max_tokens=1 returns kv_transfer_params, which the decode request carries.

Cut and corrupted transfers go through a real TCP relay between the two servers that closes the connection
or flips a byte: a network fault, provoked, not a fake server."""
from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from tests.api.conftest import launch

LONG_PROMPTS = [
    "Write a detailed report on the history of bridges, from wooden beams over streams to stone arches, iron "
    "trusses and the suspension bridges of today, with the engineers who built them. " * 4,
    "List the planets of the solar system in order from the sun and give for each one its size, its moons, "
    "the length of its day and year, and what its surface or atmosphere is made of. " * 3,
]
SHARED_PREFIX = ("You are a careful assistant who answers questions about the weather, the seasons and the "
                 "climate of cities around the world, in short plain sentences. " * 3)
RELAY_HEADER_BYTES = 200  # past the payload's header, inside the KV body


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kv_transfer")
    from tests.api.conftest import ENGINE_ARGS
    prefill = launch(ENGINE_ARGS, folder / "prefill.log")
    try:
        decode = launch(ENGINE_ARGS, folder / "decode.log")
    except BaseException:
        prefill.terminate(5)
        raise
    yield prefill, decode
    decode.terminate(10)
    prefill.terminate(10)


def complete(server, prompt: str, max_tokens: int = 24, **extra) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
    response = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def prefill_then_decode(prefill, decode, prompt: str, max_tokens: int = 24, rewrite=None) -> dict:
    """What vLLM's toy proxy does (tests/v1/kv_connector/nixl_integration/toy_proxy_server.py)."""
    first = complete(prefill, prompt, 1, kv_transfer_params={
        "do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None, "remote_block_ids": None,
        "remote_host": None, "remote_port": None})
    params = first["kv_transfer_params"]
    assert params["do_remote_prefill"] is True and params["remote_port"] == prefill.port
    if rewrite is not None:
        params = rewrite(params)
    return complete(decode, prompt, max_tokens, kv_transfer_params=params)


def test_decoding_from_transferred_kv_gives_the_colocated_tokens(servers):
    prefill, decode = servers
    for prompt in LONG_PROMPTS:
        colocated = complete(prefill, prompt)
        assert colocated["usage"]["completion_tokens"] > 4
        before = decode.metrics()
        disaggregated = prefill_then_decode(prefill, decode, prompt)
        after = decode.wait_idle()
        assert disaggregated["choices"][0]["text"] == colocated["choices"][0]["text"]
        assert disaggregated["usage"]["completion_tokens"] == colocated["usage"]["completion_tokens"]
        assert after["fleetserve:kv_imports_total"] == before.get("fleetserve:kv_imports_total", 0) + 1
        # The prompt crosses many blocks, and all of it came over the wire.
        imported = after["fleetserve:kv_imported_tokens_total"] - before.get("fleetserve:kv_imported_tokens_total", 0)
        assert imported == colocated["usage"]["prompt_tokens"] > 5 * 16
        assert after["fleetserve:kv_cache_free_blocks"] == after["fleetserve:kv_cache_total_blocks"]
    samples = prefill.wait_idle()
    assert samples["fleetserve:kv_exports_pending"] == 0
    assert samples["fleetserve:kv_cache_free_blocks"] == samples["fleetserve:kv_cache_total_blocks"]


def test_a_prefix_cached_on_the_decode_side_is_not_sent_again(servers):
    prefill, decode = servers
    complete(decode, SHARED_PREFIX + "What is the weather like in Oslo in May?", 4)  # caches the shared prefix
    prompt = SHARED_PREFIX + "The seasons of Melbourne differ from those of London because"
    colocated = complete(prefill, prompt)
    assert colocated["usage"]["completion_tokens"] == 24
    before = decode.metrics()
    disaggregated = prefill_then_decode(prefill, decode, prompt)
    after = decode.wait_idle()
    assert disaggregated["choices"][0]["text"] == colocated["choices"][0]["text"]
    imported = after["fleetserve:kv_imported_tokens_total"] - before["fleetserve:kv_imported_tokens_total"]
    assert 0 < imported < colocated["usage"]["prompt_tokens"] - 32
    assert disaggregated["usage"]["prompt_tokens_details"]["cached_tokens"] >= 32


def test_streamed_decode_request_streams_the_prefilled_first_token_first(servers):
    prefill, decode = servers
    prompt = LONG_PROMPTS[0] + " Begin with the Romans."
    colocated = complete(prefill, prompt, 12)
    first = complete(prefill, prompt, 1, kv_transfer_params={"do_remote_decode": True})
    body = {"prompt": prompt, "max_tokens": 12, "temperature": 0, "stream": True,
            "kv_transfer_params": first["kv_transfer_params"]}
    text = ""
    with httpx.stream("POST", f"{decode.base_url}/v1/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                import json
                text += json.loads(line[6:])["choices"][0]["text"]
    assert text == colocated["choices"][0]["text"]
    assert text.startswith(first["choices"][0]["text"])


class Relay:
    """A TCP relay on loopback to `port`; it closes both connections, or flips one byte, once `fault_at` bytes
    of the answer have passed."""

    def __init__(self, port: int, mode: str, fault_at: int) -> None:
        self.target, self.mode, self.fault_at = port, mode, fault_at
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _serve(self, client_reader, client_writer) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(reader, writer, answer: bool) -> None:
            passed = 0
            try:
                while data := await reader.read(65536):
                    if answer and passed + len(data) > self.fault_at:
                        if self.mode == "cut":
                            writer.write(data[:self.fault_at - passed])
                            await writer.drain()
                            break
                        at = self.fault_at - passed
                        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
                        self.fault_at = 1 << 62
                    passed += len(data)
                    writer.write(data)
                    await writer.drain()
            finally:
                writer.close()

        await asyncio.gather(pipe(client_reader, upstream_writer, False), pipe(upstream_reader, client_writer, True),
                             return_exceptions=True)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.mark.parametrize("mode", ["cut", "corrupt"])
def test_a_cut_or_corrupted_transfer_still_gives_the_right_answer(servers, mode):
    prefill, decode = servers
    relay = Relay(prefill.port, mode, RELAY_HEADER_BYTES + 4096)
    prompt = LONG_PROMPTS[1] + f" ({mode})"
    try:
        colocated = complete(prefill, prompt)
        before = decode.metrics()
        answer = prefill_then_decode(prefill, decode, prompt, rewrite=lambda p: {**p, "remote_port": relay.port})
    finally:
        relay.close()
    after = decode.wait_idle()
    assert answer["choices"][0]["text"] == colocated["choices"][0]["text"]
    reason = "fetch_failed" if mode == "cut" else "bad_payload"
    key = f'fleetserve:kv_import_fallbacks_total{{reason="{reason}"}}'
    assert after[key] == before.get(key, 0) + 1
    assert after["fleetserve:kv_cache_free_blocks"] == after["fleetserve:kv_cache_total_blocks"]
    samples = prefill.wait_idle()
    assert samples["fleetserve:kv_exports_pending"] == 0


def test_params_for_another_prompt_are_not_imported(servers):
    prefill, decode = servers
    first = complete(prefill, LONG_PROMPTS[0] + " One.", 1, kv_transfer_params={"do_remote_decode": True})
    other = LONG_PROMPTS[0] + " Two."
    answer = complete(decode, other, kv_transfer_params=first["kv_transfer_params"])
    assert answer["choices"][0]["text"] == complete(prefill, other)["choices"][0]["text"]
    assert decode.metrics()['fleetserve:kv_import_fallbacks_total{reason="other_prompt"}'] >= 1


def test_a_prefill_request_must_not_stream(servers):
    prefill, _ = servers
    response = httpx.post(f"{prefill.base_url}/v1/completions", timeout=30, json={
        "prompt": "Hello", "max_tokens": 1, "stream": True, "kv_transfer_params": {"do_remote_decode": True}})
    assert response.status_code == 400
    assert "stream=false" in response.json()["error"]["message"]


def test_the_kv_is_fetched_once(servers):
    prefill, _ = servers
    first = complete(prefill, LONG_PROMPTS[0] + " Once.", 1, kv_transfer_params={"do_remote_decode": True})
    url = f"{prefill.base_url}/v1/kv_transfer/{first['kv_transfer_params']['remote_request_id']}"
    assert httpx.get(url, timeout=30).status_code == 200
    second = httpx.get(url, timeout=30)
    assert second.status_code == 404 and "already fetched" in second.json()["error"]["message"]


def test_a_prefill_replica_gone_before_the_fetch_means_a_local_prefill(servers):
    """Last in the module: it stops the prefill server."""
    prefill, decode = servers
    prompt = LONG_PROMPTS[1] + " Gone."
    colocated = complete(prefill, prompt)
    first = complete(prefill, prompt, 1, kv_transfer_params={"do_remote_decode": True})
    prefill.process.kill()
    prefill.process.wait()
    before = decode.metrics()
    answer = complete(decode, prompt, kv_transfer_params=first["kv_transfer_params"])
    assert answer["choices"][0]["text"] == colocated["choices"][0]["text"]
    after = decode.wait_idle()
    key = 'fleetserve:kv_import_fallbacks_total{reason="fetch_failed"}'
    assert after[key] == before.get(key, 0) + 1
    assert after["fleetserve:kv_cache_free_blocks"] == after["fleetserve:kv_cache_total_blocks"]
