"""Counts of drafted and accepted tokens, as vLLM exports them (vllm:spec_decode_*)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpeculationStats:
    num_drafts: int = 0  # verifications (a request's drafts checked in one step)
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)  # [i]: verifications that accepted draft i

    def record(self, drafted: int, accepted: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += drafted
        self.num_accepted_tokens += accepted
        if len(self.accepted_per_position) < accepted:
            self.accepted_per_position.extend([0] * (accepted - len(self.accepted_per_position)))
        for position in range(accepted):
            self.accepted_per_position[position] += 1

    def add(self, other: SpeculationStats) -> None:
        """Count another's drafts too (a fleet's replicas in one sum)."""
        self.num_drafts += other.num_drafts
        self.num_draft_tokens += other.num_draft_tokens
        self.num_accepted_tokens += other.num_accepted_tokens
        missing = len(other.accepted_per_position) - len(self.accepted_per_position)
        if missing > 0:
            self.accepted_per_position.extend([0] * missing)
        for position, count in enumerate(other.accepted_per_position):
            self.accepted_per_position[position] += count

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_per_draft(self) -> float:
        """Mean accepted drafts per verification (the tokens a verification step gives are this plus one)."""
        return self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0

    def as_dict(self) -> dict[str, float | int | list[int]]:
        return {"num_drafts": self.num_drafts, "num_draft_tokens": self.num_draft_tokens,
                "num_accepted_tokens": self.num_accepted_tokens, "acceptance_rate": round(self.acceptance_rate, 4),
                "mean_accepted_per_draft": round(self.mean_accepted_per_draft, 4),
                "accepted_per_position": list(self.accepted_per_position)}
