"""Model-free speculative decoding: proposers that draft tokens from text already seen (n-gram lookup,
suffix trees), the choice of how many to draft, and the verification of drafts against the model."""
