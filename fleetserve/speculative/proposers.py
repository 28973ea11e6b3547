"""The proposer a speculative config names."""
from __future__ import annotations

from fleetserve.speculative.config import SpeculativeConfig
from fleetserve.speculative.ngram import NgramProposer
from fleetserve.speculative.proposer import Proposer
from fleetserve.speculative.suffix_proposer import SuffixProposer


def make_proposer(config: SpeculativeConfig) -> Proposer:
    if config.method == "ngram":
        return NgramProposer(config)
    if config.method == "suffix":
        return SuffixProposer(config)
    raise ValueError(f"no proposer for speculative method {config.method!r}")
