"""`fleetserve profile` end to end on the real engine, with a nine-point grid (one per fitted feature)."""
import pytest

from fleetserve.cli import main
from fleetserve.perf import engine_profiler
from fleetserve.perf.engine_profiler import GridPoint
from fleetserve.perf.profiled import ProfiledModel


@pytest.mark.slow
def test_profile_writes_a_model_the_simulator_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engine_profiler, "default_grid", lambda seqs, tokens: [
        GridPoint(1, 16), GridPoint(4, 32), GridPoint(2, 16, 32, 0), GridPoint(0, 0, 64, 0), GridPoint(8, 16),
        GridPoint(3, 64, 16, 16), GridPoint(2, 48), GridPoint(12, 16), GridPoint(0, 0, 200, 0)])
    out = tmp_path / "profile.json"
    code = main(["profile", "--out", str(out), "--threads", "1", "--steps", "1", "--kv-cache-memory", "64MiB"])
    assert code == 0, capsys.readouterr().err
    profile = ProfiledModel.load(out)
    assert profile.hardware == "cpu" and len(profile.samples) == 9
    assert profile.measured_on["threads"] == 1 and profile.measured_on["model_config"]["hidden_size"] > 0
    assert profile.kv_capacity_tokens() == profile.measured_on["engine"]["kv_blocks"] * 16
    assert "wrote" in capsys.readouterr().out
    code = main(["sim", "--synthetic", "rate=2,n=20,prompt=fixed:64,output=fixed:8", "--fleet", "cpu:2",
                 "--perf", str(out), "--json", str(tmp_path / "sim.json")])
    assert code == 0, capsys.readouterr().err
