from fleetserve.sim.block_hashes import UNIQUE_HASH_BASE, request_block_hashes, shared_prefix_hashes
from fleetserve.workload.spec import RequestSpec


def spec(prompt: int, prefix_ids: list[int], block: int = 64, output: int = 10, name: str = "a") -> RequestSpec:
    return RequestSpec(name, 0.0, prompt, output, prefix_ids=prefix_ids, prefix_block_tokens=block if prefix_ids else 0)


def test_requests_sharing_prefix_ids_share_exactly_the_blocks_inside_the_prefix():
    a, a_len = request_block_hashes(spec(200, [1, 2]), 16, 210, uid=0)
    b, b_len = request_block_hashes(spec(300, [1, 2, 3]), 16, 310, uid=1)
    assert a_len == 8 and b_len == 12  # 128 shared tokens of a; 192 of b
    assert a[:8] == b[:8]
    assert not set(a[8:]) & set(b)


def test_a_different_earlier_prefix_id_changes_every_later_block():
    a = shared_prefix_hashes(spec(128, [1, 2]), 16)
    b = shared_prefix_hashes(spec(128, [9, 2]), 16)
    assert not set(a) & set(b)


def test_a_partly_used_last_prefix_block_is_shared_up_to_the_shorter_prompt():
    short = shared_prefix_hashes(spec(40, [7], block=512), 16)
    long = shared_prefix_hashes(spec(600, [7], block=512), 16)
    assert len(short) == 2 and long[:2] == short and len(long) == 32


def test_blocks_without_prefix_ids_are_unique_and_cover_prompt_and_output():
    hashes, shared = request_block_hashes(spec(100, []), 16, 100 + 60, uid=3)
    other, _ = request_block_hashes(spec(100, []), 16, 160, uid=4)
    assert shared == 0 and len(hashes) == 10
    assert min(hashes) >= UNIQUE_HASH_BASE and not set(hashes) & set(other)


def test_hashes_are_the_same_in_every_run():
    assert request_block_hashes(spec(256, [5, 6]), 16, 300, uid=7) == request_block_hashes(spec(256, [5, 6]), 16,
                                                                                          300, uid=7)
