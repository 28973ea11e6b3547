import pytest

from fleetserve.fleet.key_heat import KeyHeat


def test_a_key_in_every_request_has_the_whole_share_from_the_start():
    heat = KeyHeat(half_life=64)
    assert heat.share("system") == 0.0
    for _ in range(3):
        heat.count(["system"])
        assert heat.share("system") == pytest.approx(1.0)


def test_shares_follow_the_mix_and_forget_at_the_half_life():
    heat = KeyHeat(half_life=100)
    for i in range(2000):
        heat.count(["a" if i % 2 else "b"])
    assert heat.share("a") == pytest.approx(0.5, abs=0.01)
    for _ in range(100):
        heat.count(["c"])
    # 100 requests later "a" and "b" carry half of what they did, "c" the rest.
    assert heat.share("a") == pytest.approx(0.25, abs=0.01)
    assert heat.share("c") == pytest.approx(0.5, abs=0.01)


def test_memory_stays_bounded_and_keeps_the_hot_keys():
    heat = KeyHeat(half_life=50, max_keys=100)
    for i in range(5000):
        heat.count(["hot", f"cold-{i}"])
    assert len(heat._counts) <= 100
    assert heat.share("hot") == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs", [{"half_life": 0}, {"max_keys": 0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        KeyHeat(**kwargs)
