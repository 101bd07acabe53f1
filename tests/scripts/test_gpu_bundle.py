"""``make gpu-bundle`` (scripts/gpu_bundle.py) makes group 1 of scripts/gpu_smoke.py run with the lent GPU machine's
imports: group 1 ``--small`` on the CPU (test_gpu_smoke.py's run and assertions), in a subprocess where pydantic,
pydantic_core, omegaconf, antlr4, bitsandbytes (and annotated_types, typing_inspection, typing_extensions) import
from the bundle only and vLLM and Ray not at all (tests/scripts/bundle_only/sitecustomize.py).

The bundle is the one ``make gpu-bundle`` writes, built into a temporary folder from the wheel cache: its
pydantic_core holds the compiled module of this interpreter (the venv's) beside the device's (3.12), so the same
folder serves both; bitsandbytes keeps its CPU library beside the CUDA one, so group 1 runs here. Skipped only when
the cp312 pydantic_core wheel is neither cached nor downloadable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import gpu_bundle
from tests.scripts.test_gpu_smoke import _smoke, check_group1

ROOT = Path(__file__).resolve().parents[2]
BUNDLE_ONLY = Path(__file__).resolve().parent / "bundle_only"
FROM_BUNDLE = ("pydantic", "pydantic_core", "omegaconf", "bitsandbytes", "annotated_types", "typing_inspection")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "gpu_bundle"
    try:
        mib = gpu_bundle.build(out, ["3.12"], gpu_bundle.DEFAULT_CACHE, "130", "manylinux_2_17_x86_64", 60.0)
    except gpu_bundle.BundleError as exc:
        if "could not be downloaded" in str(exc):
            pytest.skip(f"the bundle's wheels are not cached and cannot be downloaded: {exc}")
        raise
    assert 0 < mib <= 60
    return out


def test_bundle_contents(bundle: Path) -> None:
    bnb = sorted(p.name for p in (bundle / "bitsandbytes").glob("*.so"))
    assert bnb == ["libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so"]
    cores = sorted(p.name.split(".")[1] for p in (bundle / "pydantic_core").glob("_pydantic_core.*.so"))
    assert "cpython-312-x86_64-linux-gnu" in cores and len(cores) == 2, cores
    for top in (*FROM_BUNDLE, "antlr4", "typing_extensions.py"):
        assert (bundle / top).exists(), top
    assert not list(bundle.rglob("__pycache__"))
    assert gpu_bundle.size_mib(bundle) <= 60


@pytest.mark.slow  # about 50 s: the whole of group 1 in a subprocess
def test_group1_with_the_bundle_only(bundle: Path, tmp_path: Path) -> None:
    log = tmp_path / "imports.json"
    env = {
        "PYTHONPATH": os.pathsep.join([str(BUNDLE_ONLY), str(bundle), str(ROOT)]),
        "RLVR_TEMP_BUNDLE_ONLY": str(bundle),
        "RLVR_TEMP_BUNDLE_LOG": str(log),
    }
    proc, report, checks = _smoke(tmp_path, "1", 600, env)
    check_group1(proc, report, checks)
    # where the packages came from
    assert checks["processor_math"]["metrics"]["vllm_interface"] == "stub"
    loaded = json.loads(log.read_text())["loaded"]
    assert not [n for n in loaded if n.partition(".")[0] in ("vllm", "ray")], loaded
    for top in FROM_BUNDLE:
        assert top in loaded, f"{top} was not imported"
    real = os.path.realpath(bundle)
    outside = {n: f for n, f in loaded.items() if f and not os.path.realpath(f).startswith(real + os.sep)}
    assert not outside, outside


def test_offline_without_cache_fails_in_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_FIND_LINKS="")
    cmd = [sys.executable, "-m", "scripts.gpu_bundle", "--out", str(tmp_path / "b"), "--cache", str(tmp_path / "no")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and not (tmp_path / "b").exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_bundle: pydantic_core==") and "offline?" in lines[0], lines
