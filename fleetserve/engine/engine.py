"""The engine: owns the scheduler, the KV-cache manager and the model runner, and turns each step's
sampled tokens into streaming outputs. One replica, one device."""
from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fleetserve.engine.admission import RequestRefused, admission_refusal
from fleetserve.engine.config import EngineConfig
from fleetserve.engine.decode_row_cost import DecodeRowCost
from fleetserve.engine.detokenizer import IncrementalDetokenizer
from fleetserve.engine.kv_cache import KVCacheManager, KVEvent
from fleetserve.engine.kv_handoff import KVExport, KVExports, PrefilledKV
from fleetserve.engine.online_step_cost import OnlineStepCost
from fleetserve.engine.outputs import RequestMetrics, RequestOutput, TokenLogprob
from fleetserve.engine.request import Request, RequestStatus
from fleetserve.engine.runner import ModelRunner
from fleetserve.engine.sampler import SampleResult
from fleetserve.engine.sampling_params import InvalidRequestError, SamplingParams
from fleetserve.engine.scheduler import Scheduler, SchedulerConfig
from fleetserve.engine.speculation import Speculation
from fleetserve.engine.thread_policy import ThreadPolicy
from fleetserve.kernels import cpu as cpu_kernels
from fleetserve.model.config import ModelConfig
from fleetserve.model.gguf_blocks import QuantizedWeight, read_blocks
from fleetserve.model.llama import LlamaModel
from fleetserve.model.loader import TensorSource, cache_root, release_freed_memory, resolve_model
from fleetserve.model.quantized import QuantizedMatmul
from fleetserve.model.tokenizer import Tokenizer
from fleetserve.perf.step_shape import shape_of

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32,
           "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """bf16 matmuls beat fp32 only with native bf16 instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device_and_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if dtype != "auto":
        return resolved, _DTYPES[dtype]
    if resolved.type == "cuda" or cpu_has_fast_bf16():
        return resolved, torch.bfloat16
    return resolved, torch.float32


def pick_kv_cache_dtype(kv_cache_dtype: str, device: torch.device, dtype: torch.dtype) -> torch.dtype:
    if kv_cache_dtype != "auto":
        return _DTYPES[kv_cache_dtype]
    # On a CPU computing in fp32, bf16 storage halves the cache's memory and the bytes each decode reads.
    if device.type == "cpu" and dtype == torch.float32:
        return torch.bfloat16
    return dtype


@dataclass
class RequestState:
    request: Request
    detokenizer: IncrementalDetokenizer
    metrics: RequestMetrics
    pending_logprobs: list[TokenLogprob]


class LLMEngine:
    def __init__(self, config: EngineConfig | None = None, **overrides) -> None:
        config = config or EngineConfig(**overrides)
        self.config = config
        self.thread_policy = ThreadPolicy(config.num_threads, cpu_kernels.set_threads)
        self.model_path = resolve_model(config.model, config.cache_dir)
        self.model_name = config.model or self.model_path.name
        self.model_config = ModelConfig.from_file(self.model_path / "config.json")
        self.tokenizer = Tokenizer(self.model_path)
        self.device, self.dtype = pick_device_and_dtype(config.device, config.dtype)
        self.max_model_len = min(config.max_model_len or self.model_config.max_position_embeddings,
                                 self.model_config.max_position_embeddings)
        model = LlamaModel(self.model_config, self.dtype, self.device)
        quantized, quantized_matmul = self._quantized_weights(config)
        decode_layers = cpu_kernels.load_decode_layers(cache_root(config.cache_dir)) if quantized_matmul else None
        model.load_weights(TensorSource(self.model_path), quantized, quantized_matmul, decode_layers)
        self.weight_format = "gguf" if quantized_matmul is not None else "dense"
        release_freed_memory()
        self.model = model
        self.kv_cache_dtype = pick_kv_cache_dtype(config.kv_cache_dtype, self.device, self.dtype)
        bytes_per_block = config.block_size * self.model_config.kv_bytes_per_token(self.kv_cache_dtype.itemsize)
        num_blocks = config.kv_cache_bytes // bytes_per_block
        if num_blocks < 2:
            raise ValueError(f"kv_cache_memory={config.kv_cache_memory!r} holds {num_blocks} blocks of "
                             f"{bytes_per_block} bytes; give at least {2 * bytes_per_block} bytes")
        self.kv_cache = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching,
                                       config.record_kv_events)
        # Fitted to the steps as they run, only when a step-time bound or speculation asks for predictions.
        self.step_cost = OnlineStepCost() if config.max_step_ms is not None or config.speculative else None
        self.scheduler = Scheduler(SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens,
                                                   self.max_model_len, policy=config.scheduling,
                                                   max_step_ms=config.max_step_ms), self.kv_cache, self.step_cost)
        self.runner = ModelRunner(model, num_blocks, config.block_size, config.seed, self.kv_cache_dtype,
                                  cache_root(config.cache_dir))
        eos = set(self.model_config.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(eos)
        self.states: dict[str, RequestState] = {}
        self.kv_exports = KVExports(config.kv_export_ttl_s, config.kv_export_max_bytes)
        self._exporting: set[str] = set()  # requests whose prompt KV is kept for a decode replica once prefilled
        self.num_imported_tokens_total = 0
        self._ids = itertools.count()
        self.num_prompt_tokens_total = 0
        self.num_generation_tokens_total = 0
        self.speculation = None
        self.decode_row_cost: DecodeRowCost | None = None
        if config.speculative:
            assert self.step_cost is not None
            self.decode_row_cost = DecodeRowCost(self.step_cost)
            # With GGUF-block weights a row's arithmetic depends only on which kernel its step takes.
            same_kernel_rows = quantized_matmul.same_kernel_rows if quantized_matmul else None
            self.speculation = Speculation(config.speculative, self.decode_row_cost,
                                           same_kernel_rows=same_kernel_rows)

    def _quantized_weights(self, config: EngineConfig) -> tuple[dict[str, QuantizedWeight], QuantizedMatmul | None]:
        if config.weight_format == "dense":
            return {}, None
        why_not = None
        if self.device.type != "cpu" or self.dtype != torch.float32:
            why_not = f"they run on the CPU in float32, and this engine runs on {self.device} in {self.dtype}"
        elif not (quantized := read_blocks(self.model_path)):
            why_not = f"the model at {self.model_path} was not converted from a GGUF file with Q4_0/Q4_1/Q8_0 blocks"
        elif (library := cpu_kernels.load_quantized(cache_root(config.cache_dir))) is None:
            why_not = "their C kernels could not be compiled here (is a C compiler installed?)"
        if why_not is None:
            return quantized, QuantizedMatmul(library)
        if config.weight_format == "gguf":
            raise ValueError(f"weight_format='gguf' cannot be used: {why_not}; pass weight_format='dense'")
        return {}, None

    # --- requests -------------------------------------------------------------------------------

    def new_request_id(self) -> str:
        return f"req-{os.getpid()}-{next(self._ids)}"

    def tokenize_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        return list(prompt)

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if not prompt_token_ids:
            raise InvalidRequestError("the prompt is empty; send at least one token of text", "prompt")
        vocab = self.model_config.vocab_size
        bad = next((t for t in prompt_token_ids if not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError(f"prompt token id {bad!r} is outside the vocabulary [0, {vocab})", "prompt")
        refusal = admission_refusal(len(prompt_token_ids), params.max_tokens, self.max_model_len)
        if refusal is not None:
            raise InvalidRequestError(refusal.message, refusal.param)

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None, arrival_time: float | None = None, export_kv: bool = False,
                    resume_token_ids: list[int] | None = None) -> str:
        """Queue a request; with `export_kv`, its prompt's KV and first token are kept in `kv_exports` for a
        decode replica when its prefill ends (disaggregated prefill). With `resume_token_ids` it continues a
        generation begun elsewhere: they are its output so far (Request.resume_output), computed with the
        prompt as a preempted request's are, and their text is not released again."""
        request = self._new_request(prompt, params, request_id, arrival_time)
        detokenizer = IncrementalDetokenizer(self.tokenizer, request.sampling_params.stop)
        if resume_token_ids:
            request.resume_output(resume_token_ids, self.model_config.vocab_size, self.max_model_len)
            detokenizer.resume(resume_token_ids)
            if detokenizer.stopped_on is not None:
                raise InvalidRequestError(f"resume_token_ids already contain the stop string "
                                          f"{detokenizer.stopped_on!r}; there is nothing left to resume",
                                          "resume_token_ids")
        try:
            self.scheduler.add_request(request)
        except RequestRefused as exc:
            raise InvalidRequestError(exc.refusal.message, exc.refusal.param) from exc
        if resume_token_ids:
            self.num_prompt_tokens_total += request.num_prompt_tokens  # no step of it starts from no output
        self._track(request, export_kv, detokenizer)
        return request.request_id

    def add_prefilled_request(self, prompt: str | list[int], params: SamplingParams | None, request_id: str | None,
                              arrival_time: float | None, prefilled: PrefilledKV) -> RequestOutput:
        """Queue a request whose prompt a prefill replica computed: its KV goes into this cache (sharing the
        prefix blocks held here) and its first token is returned at once, as the request's first output.
        Where the blocks do not fit now, or the prefix blocks counted on were evicted meanwhile, the request
        computes its prompt here instead; its output is the same."""
        request = self._new_request(prompt, params, request_id, arrival_time)
        request.output_token_ids.append(prefilled.first_token_id)
        num_prompt = request.num_prompt_tokens
        if not request.check_stop_after_token(self.max_model_len):
            try:
                held = self.scheduler.add_prefilled_request(request, num_prompt)
            except RequestRefused as exc:
                raise InvalidRequestError(exc.refusal.message, exc.refusal.param) from exc
            if held is not None and held < prefilled.start:
                self.scheduler.imports.drop(request)
            elif held is not None:
                self.runner.write_kv(self.kv_cache.block_table(request.request_id), held,
                                     prefilled.kv[held - prefilled.start:])
                self.num_imported_tokens_total += num_prompt - held
                request.num_cached_prompt_tokens = held
        state = self._track(request, False)
        now = time.monotonic()
        state.metrics.first_token_time = state.metrics.last_token_time = now
        self.num_prompt_tokens_total += num_prompt
        new_ids = self._take_tokens(state, [SampleResult(prefilled.first_token_id)], request.is_finished)
        if request.is_finished:
            return self._finish(state, now, new_ids)
        return self._delta(state, new_ids)

    def _new_request(self, prompt: str | list[int], params: SamplingParams | None, request_id: str | None,
                     arrival_time: float | None) -> Request:
        params = params or SamplingParams()
        prompt_token_ids = self.tokenize_prompt(prompt)
        self.validate(prompt_token_ids, params)
        request_id = request_id or self.new_request_id()
        if request_id in self.states:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", "request_id")
        if params.max_tokens is None:
            params.max_tokens = self.max_model_len - len(prompt_token_ids)
        return Request(request_id, prompt_token_ids, params, self.eos_token_ids,
                       arrival_time if arrival_time is not None else time.monotonic())

    def _track(self, request: Request, export_kv: bool,
               detokenizer: IncrementalDetokenizer | None = None) -> RequestState:
        detokenizer = detokenizer or IncrementalDetokenizer(self.tokenizer, request.sampling_params.stop)
        state = RequestState(request, detokenizer, RequestMetrics(request.arrival_time), [])
        if export_kv:
            self._exporting.add(request.request_id)
        self.states[request.request_id] = state
        return state

    def abort_request(self, request_ids: str | list[str]) -> list[RequestOutput]:
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        ended = self.scheduler.finish_requests(ids, RequestStatus.FINISHED_ABORTED)
        now = time.monotonic()
        return [self._finish(self.states[r.request_id], now, []) for r in ended if r.request_id in self.states]

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def take_kv_events(self) -> list[KVEvent]:
        return self.kv_cache.take_events()

    # --- stepping --------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        started = time.perf_counter()
        out = self.scheduler.schedule()
        if out.is_empty:
            return []
        now = time.monotonic()
        for item in out.scheduled:
            metrics = self.states[item.request.request_id].metrics
            if metrics.first_scheduled_time is None:
                metrics.first_scheduled_time = now
        self.thread_policy.before_step()
        results = self.runner.execute(out, self.kv_cache)
        if self._exporting:
            self._export_prefilled(results)
        sampled: dict[str, int | list[int]] = {}
        outputs_before: dict[str, int] = {}
        for item in out.scheduled:
            request_id = item.request.request_id
            if request_id in results:
                tokens = results[request_id]
                sampled[request_id] = tokens[0].token_id if len(tokens) == 1 else [t.token_id for t in tokens]
                outputs_before[request_id] = item.request.num_output_tokens
                if item.drafts and self.speculation is not None:
                    self.speculation.verified(request_id, item.drafts, len(tokens) - 1)
        finished = {r.request_id for r in self.scheduler.update_from_output(out, sampled)}
        now = time.monotonic()
        outputs: list[RequestOutput] = []
        for item in out.scheduled:
            request = item.request
            request_id = request.request_id
            if request_id not in results:
                continue
            before = outputs_before[request_id]
            state = self.states[request_id]
            new_ids = self._take_tokens(state, results[request_id][:request.num_output_tokens - before],
                                        request_id in finished)
            if before == 0:
                self.num_prompt_tokens_total += request.num_prompt_tokens
            metrics = state.metrics
            if metrics.first_token_time is None:
                metrics.first_token_time = now
            metrics.last_token_time = now
            if request.is_finished:
                outputs.append(self._finish(state, now, new_ids))
            else:
                outputs.append(self._delta(state, new_ids))
        if self.speculation is not None:
            self.speculation.propose(self.scheduler, self.max_model_len)
        if self.step_cost is not None:
            shape, seconds = shape_of(out), time.perf_counter() - started
            self.step_cost.observe(shape, seconds)
            if self.decode_row_cost is not None:
                self.decode_row_cost.observe(shape, seconds)
        return outputs

    def _export_prefilled(self, results: dict[str, list[SampleResult]]) -> None:
        """Keep the prompt KV of requests marked for export whose prefill ended in this step (read before
        any block of theirs can be freed and reused)."""
        for request_id in [r for r in self._exporting if r in results]:
            self._exporting.discard(request_id)
            request = self.states[request_id].request
            kv = self.runner.read_kv(self.kv_cache.block_table(request_id), 0, request.num_prompt_tokens)
            self.kv_exports.put(request_id, KVExport(request.prompt_token_ids, results[request_id][0].token_id, kv))

    def _take_tokens(self, state: RequestState, results: list[SampleResult], finished: bool) -> list[int]:
        """Feed this step's new tokens to the request's detokenizer; a stop string ends the request at the
        token that completes it, and the tokens after it (from accepted drafts) are dropped."""
        request = state.request
        new_ids: list[int] = []
        for result in results:
            new_ids.append(result.token_id)
            self.num_generation_tokens_total += 1
            state.detokenizer.add_token(result.token_id)
            if result.logprob is not None:
                state.pending_logprobs.append(TokenLogprob(result.token_id, result.logprob, result.top_logprobs))
            if state.detokenizer.stopped_on is None:
                continue
            dropped = len(results) - len(new_ids)
            if dropped:
                del request.output_token_ids[-dropped:]
            if not finished:
                self.scheduler.finish_requests([request.request_id], RequestStatus.FINISHED_STOPPED)
                request.stop_reason = state.detokenizer.stopped_on
            elif dropped:  # the scheduler ended it at a later token: the stop string came first
                request.status = RequestStatus.FINISHED_STOPPED
                request.stop_reason = state.detokenizer.stopped_on
            break
        return new_ids

    def _delta(self, state: RequestState, new_ids: list[int], finished: bool = False) -> RequestOutput:
        request = state.request
        logprobs, state.pending_logprobs = state.pending_logprobs, []
        return RequestOutput(
            request_id=request.request_id, prompt_token_ids=request.prompt_token_ids,
            new_token_ids=new_ids, new_text=state.detokenizer.take_delta(finished), new_logprobs=logprobs,
            token_ids=list(request.output_token_ids), text=state.detokenizer.text, finished=finished,
            finish_reason=request.finish_reason if finished else None,
            num_cached_tokens=request.num_cached_prompt_tokens, metrics=state.metrics,
            stop_reason=request.stop_reason)

    def _finish(self, state: RequestState, now: float, new_ids: list[int]) -> RequestOutput:
        state.metrics.finished_time = now
        self.states.pop(state.request.request_id, None)
        self._exporting.discard(state.request.request_id)
        if self.speculation is not None:
            self.speculation.release(state.request.request_id, state.request.output_token_ids)
        return self._delta(state, new_ids, finished=True)
