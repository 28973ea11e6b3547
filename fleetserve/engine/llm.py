"""The offline Python API: LLM(model=...).generate(prompts, SamplingParams(...)) and a streaming form."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from fleetserve.engine.config import EngineConfig
from fleetserve.engine.engine import LLMEngine
from fleetserve.engine.outputs import RequestMetrics, RequestOutput, TokenLogprob
from fleetserve.engine.sampling_params import SamplingParams

Prompt = str | list[int]


@dataclass
class Completion:
    request_id: str
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    finish_reason: str | None
    num_cached_tokens: int
    metrics: RequestMetrics
    logprobs: list[TokenLogprob] = field(default_factory=list)


class LLM:
    def __init__(self, model: str | None = None, **engine_options: Any) -> None:
        self.engine = LLMEngine(EngineConfig(model=model, **engine_options))
        self.tokenizer = self.engine.tokenizer

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        return self.tokenizer.encode_chat(messages)

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 priority: Sequence[int] | None = None) -> list[Completion]:
        """One completion per prompt. `priority` (vLLM's argument: one per prompt, lower first) overrides the
        sampling params' priority; it matters under the engine's priority scheduling policy."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        prompts = list(prompts)
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params or SamplingParams() for _ in prompts]
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError(f"got {len(prompts)} prompts but {len(params_list)} sampling params")
        params_list = [_copy(sp) for sp in params_list]
        if priority is not None:
            if len(priority) != len(prompts):
                raise ValueError(f"got {len(prompts)} prompts but {len(priority)} priorities")
            for params, value in zip(params_list, priority):
                params.priority = value
                params.validate()
        ids = [self.engine.add_request(p, sp) for p, sp in zip(prompts, params_list)]
        results: dict[str, Completion] = {}
        logprobs: dict[str, list[TokenLogprob]] = {i: [] for i in ids}
        while self.engine.has_unfinished_requests():
            for out in self.engine.step():
                logprobs[out.request_id].extend(out.new_logprobs)
                if out.finished:
                    results[out.request_id] = _completion(out, logprobs[out.request_id])
        return [results[i] for i in ids]

    def generate_stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yields one delta per step for this request; other queued requests keep running alongside."""
        request_id = self.engine.add_request(prompt, _copy(sampling_params or SamplingParams()))
        finished = False
        try:
            while not finished:
                for out in self.engine.step():
                    if out.request_id == request_id:
                        finished = out.finished
                        yield out
        finally:
            if not finished:
                self.engine.abort_request(request_id)

    def chat(self, messages: list[dict[str, Any]], sampling_params: SamplingParams | None = None) -> Completion:
        return self.generate([self.chat_prompt(messages)], sampling_params)[0]


def _copy(params: SamplingParams) -> SamplingParams:
    return SamplingParams(**{k: getattr(params, k) for k in params.__dataclass_fields__})


def _completion(out: RequestOutput, logprobs: list[TokenLogprob]) -> Completion:
    return Completion(out.request_id, out.prompt_token_ids, out.text, list(out.token_ids), out.finish_reason,
                      out.num_cached_tokens, out.metrics, logprobs)
