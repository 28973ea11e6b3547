"""A roofline step-time model: a step is as slow as its FLOPs or its bytes, plus a fixed per-step cost."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fleetserve.model.config import ModelConfig
from fleetserve.perf.hardware import GiB, Hardware, HardwareKind
from fleetserve.perf.model import StepShape

# What a step costs beyond its math. On a GPU it is the CPU side of the step (scheduling, building input
# tensors, sampling, detokenizing), ~1-3 ms in Python engines such as vLLM once CUDA graphs hide kernel
# launches. On a CPU, torch eager dispatches every op from Python (~10-20 us each, ~20 ops a layer, ~30 layers),
# and the same scheduling work competes with the math for two cores.
DEFAULT_STEP_OVERHEAD_S: dict[HardwareKind, float] = {"gpu": 2e-3, "cpu": 10e-3}

# The KV reserve is sized like vLLM's memory profiling run: one step at the full token budget.
DEFAULT_MAX_BATCHED_TOKENS = 8192
DEFAULT_MAX_SAMPLING_SEQS = 256
LOGIT_BYTES = 4  # logits are upcast to fp32 before sampling


def default_activation_reserve_bytes(config: ModelConfig, dtype_bytes: int,
                                     max_batched_tokens: int = DEFAULT_MAX_BATCHED_TOKENS,
                                     max_sampling_seqs: int = DEFAULT_MAX_SAMPLING_SEQS) -> int:
    """Peak activation memory of one full step, which must stay free beside weights and KV cache."""
    # The widest live tensors per token are the MLP's gate and up projections, beside a few hidden-size
    # buffers (residual, normed input, attention output, q/k/v).
    per_token = (2 * config.intermediate_size + 4 * config.hidden_size) * dtype_bytes
    logits = max_sampling_seqs * config.vocab_size * LOGIT_BYTES
    return max_batched_tokens * per_token + logits


@dataclass(frozen=True)
class StepEstimate:
    flops: float
    bytes_moved: float
    compute_s: float
    memory_s: float
    overhead_s: float
    total_s: float  # the slower of compute and memory, plus the overhead: what step_time answers

    @property
    def bound(self) -> Literal["compute", "memory"]:
        return "compute" if self.compute_s > self.memory_s else "memory"


class RooflineModel:
    def __init__(self, model_config: ModelConfig, hardware: Hardware, dtype_bytes: int = 2,
                 compute_efficiency: float = 0.6, bandwidth_efficiency: float = 0.8,
                 step_overhead_s: float | None = None, memory_utilization: float = 0.9,
                 activation_reserve_bytes: int | None = None) -> None:
        if dtype_bytes <= 0:
            raise ValueError(f"dtype_bytes must be positive, got {dtype_bytes!r}")
        for label, fraction in (("compute_efficiency", compute_efficiency),
                                ("bandwidth_efficiency", bandwidth_efficiency),
                                ("memory_utilization", memory_utilization)):
            if not 0 < fraction <= 1:
                raise ValueError(f"{label} must be in (0, 1], got {fraction!r}")
        if step_overhead_s is None:
            step_overhead_s = DEFAULT_STEP_OVERHEAD_S[hardware.kind]
        if step_overhead_s < 0:
            raise ValueError(f"step_overhead_s must not be negative, got {step_overhead_s!r}")
        if activation_reserve_bytes is None:
            activation_reserve_bytes = default_activation_reserve_bytes(model_config, dtype_bytes)
        if activation_reserve_bytes < 0:
            raise ValueError(f"activation_reserve_bytes must not be negative, got {activation_reserve_bytes!r}")

        self.model_config = model_config
        self.hardware = hardware
        self.dtype_bytes = dtype_bytes
        self.compute_efficiency = compute_efficiency
        self.bandwidth_efficiency = bandwidth_efficiency
        self.step_overhead_s = step_overhead_s
        self.memory_utilization = memory_utilization
        self.activation_reserve_bytes = activation_reserve_bytes
        self.name = f"roofline/{hardware.name}"
        self.usable_flops_s = hardware.peak_bf16_flops * compute_efficiency
        self.usable_bytes_s = hardware.memory_bandwidth_bytes_s * bandwidth_efficiency

        embedding_params = model_config.vocab_size * model_config.hidden_size
        embedding_tables = 1 if model_config.tie_word_embeddings else 2
        self.lm_head_params = embedding_params
        self.body_params = model_config.num_parameters - embedding_tables * embedding_params
        self.weight_bytes = model_config.num_parameters * dtype_bytes
        # An untied input embedding is gathered a row per token, not streamed; a tied one is read as the LM head.
        untied_input_embedding = 0 if model_config.tie_word_embeddings else embedding_params
        self.weight_bytes_read_per_step = (model_config.num_parameters - untied_input_embedding) * dtype_bytes
        self.kv_bytes_per_token = model_config.kv_bytes_per_token(dtype_bytes)
        # QK^T and PV are each 2 FLOPs per (query, key, head dim) and happen in every layer and head.
        self.attention_flops_per_pair = (4 * model_config.num_hidden_layers * model_config.num_attention_heads
                                         * model_config.head_dim)

    def step_time(self, shape: StepShape) -> float:
        durations, _ = self._priced_steps(shape.prefill_tokens, shape.num_prefill_seqs, shape.decode_seqs,
                                          shape.context_tokens, 1)
        return durations[0]

    def decode_step_durations(self, decode_seqs: int, first_context_tokens: int, num_steps: int) -> list[float]:
        durations, _ = self._priced_steps(0, 0, decode_seqs, first_context_tokens, num_steps)
        return durations

    def estimate(self, shape: StepShape) -> StepEstimate:
        durations, (flops, bytes_moved, compute_s, memory_s) = self._priced_steps(
            shape.prefill_tokens, shape.num_prefill_seqs, shape.decode_seqs, shape.context_tokens, 1)
        overhead_s = 0.0 if shape.is_empty else self.step_overhead_s
        return StepEstimate(flops, bytes_moved, compute_s, memory_s, overhead_s, durations[0])

    def _priced_steps(self, prefill_tokens: int, prefill_seqs: int, decode_seqs: int, first_context_tokens: int,
                      num_steps: int) -> tuple[list[float], tuple[float, float, float, float]]:
        """The roofline, written once: the seconds of each of `num_steps` steps of one batch, every sequence
        adding its new tokens to its context each step (one step of any shape, or a run of decodes), and
        the last step's (flops, bytes moved, compute seconds, memory seconds).

        `prefill_seqs` counts the sequences the prefill tokens belong to, at least one when there are any.
        """
        new_tokens = prefill_tokens + decode_seqs
        if new_tokens == 0:
            return [0.0] * num_steps, (0.0, 0.0, 0.0, 0.0)
        seqs = decode_seqs + prefill_seqs
        # vLLM computes logits at the last position of every scheduled sequence, partial prefills included.
        fixed_flops = 2 * self.body_params * new_tokens + 2 * self.lm_head_params * seqs
        # Attended pairs as attended_pairs() counts them; each prefill chunk also attends, causally, to itself.
        chunk = prefill_tokens / prefill_seqs if prefill_seqs else 0.0
        own_chunk_pairs = prefill_seqs * chunk * (chunk + 1) / 2
        # Hoisted: this loop prices every skipped decode step of the simulator.
        per_pair, flops_per_s = self.attention_flops_per_pair, self.usable_flops_s
        weights, per_token, bytes_per_s = self.weight_bytes_read_per_step, self.kv_bytes_per_token, self.usable_bytes_s
        overhead = self.step_overhead_s
        durations: list[float] = []
        append = durations.append
        context = first_context_tokens
        flops = bytes_moved = compute_s = memory_s = 0.0
        for _ in range(num_steps):
            cached_per_seq = (context - new_tokens) / seqs
            flops = fixed_flops + per_pair * (decode_seqs * (cached_per_seq + 1)
                                              + (prefill_tokens * cached_per_seq + own_chunk_pairs))
            bytes_moved = weights + per_token * (context + new_tokens)
            compute_s = flops / flops_per_s
            memory_s = bytes_moved / bytes_per_s
            append((compute_s if compute_s > memory_s else memory_s) + overhead)
            context += new_tokens
        return durations, (flops, bytes_moved, compute_s, memory_s)

    def kv_capacity_tokens(self) -> int:
        usable = self.hardware.memory_bytes * self.memory_utilization
        free = usable - self.weight_bytes - self.activation_reserve_bytes
        if free < self.kv_bytes_per_token:
            raise ValueError(
                f"model does not fit on {self.hardware.name}: weights need {_gib(self.weight_bytes)} "
                f"plus {_gib(self.activation_reserve_bytes)} activation reserve, but only {_gib(usable)} "
                f"is usable ({self.memory_utilization:.0%} of {_gib(self.hardware.memory_bytes)}), "
                f"leaving no room for KV cache ({self.kv_bytes_per_token} bytes per token)")
        return int(free // self.kv_bytes_per_token)


def attended_pairs(shape: StepShape) -> float:
    """(query token, key token) pairs that attention scores this step.

    The shape carries only totals, so the KV cached before this step is spread evenly over the sequences
    and the prefill tokens evenly over the prefill sequences. This is exact for a pure decode step and for a
    single prefill sequence; a mixed step is approximate. RooflineModel's step pricing counts the same pairs
    with the same float operations (a test holds its FLOPs to these pairs).
    """
    seqs = shape.decode_seqs + shape.num_prefill_seqs
    if seqs == 0:
        return 0.0
    cached_per_seq = (shape.context_tokens - shape.new_tokens) / seqs
    decode_pairs = shape.decode_seqs * (cached_per_seq + 1)
    prefill_pairs = 0.0
    if shape.num_prefill_seqs:
        chunk = shape.prefill_tokens / shape.num_prefill_seqs
        # each chunk attends to its cached prefix and, causally, to itself
        prefill_pairs = shape.prefill_tokens * cached_per_seq + shape.num_prefill_seqs * chunk * (chunk + 1) / 2
    return decode_pairs + prefill_pairs


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / GiB:.1f} GiB"
