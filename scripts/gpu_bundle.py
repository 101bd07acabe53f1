#!/usr/bin/env python3
"""Build ``build/gpu_bundle/``: the Python packages scripts/gpu_smoke.py group 1 needs on a lent GPU machine.

    make gpu-bundle                       # = python -m scripts.gpu_bundle (from the repository root)

The lent machine (Python 3.12, torch cu130, transformers, peft, accelerate) has no bitsandbytes, pydantic or
omegaconf, no pip access, and takes at most 64 MiB of files per call (the repository's files and the paths the
call carries). Put first on ``PYTHONPATH``, this folder supplies what rlvr_temp's learner side imports there:

* ``bitsandbytes`` (this venv's install) trimmed to its Python package, ``libbitsandbytes_cpu.so`` and the
  ``libbitsandbytes_cuda<NNN>.so`` of the device's CUDA (``--cuda``, default 130; the full wheel is 125 MB),
* ``pydantic``, ``annotated_types``, ``typing_inspection``, ``typing_extensions``, ``omegaconf``, ``antlr4``
  (pure Python, this venv's installs),
* ``pydantic_core`` with two compiled modules side by side: this interpreter's (the venv's install) and each
  ``--python-version``'s (default 3.12, the device's), unpacked from the wheel of the exact version the venv's
  pydantic requires. Wheels are downloaded once into ``--cache`` (default ``~/.cache/rlvr_temp/wheels``); a rebuild
  is offline.

PyYAML is left out: transformers depends on it, so the device has it. Each package keeps its ``.dist-info``
(``importlib.metadata`` finds the versions). The build checks the folder against ``--max-mib`` (60) and prints its
size. On the device (docs/cluster.md, "GPU smoke test"; ``carry`` it with the call):

    PYTHONPATH=build/gpu_bundle:. python -m scripts.gpu_smoke --groups 1 --out $OUT/gpu_smoke.json

tests/scripts/test_gpu_bundle.py runs group 1 on the CPU with these packages taken from the bundle only.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "build" / "gpu_bundle"
DEFAULT_CACHE = Path.home() / ".cache" / "rlvr_temp" / "wheels"
# distribution -> its top-level import names (copied with the distribution's .dist-info)
PURE = {
    "pydantic": ["pydantic"],
    "annotated-types": ["annotated_types"],
    "typing-inspection": ["typing_inspection"],
    "typing-extensions": ["typing_extensions.py"],
    "omegaconf": ["omegaconf"],
    "antlr4-python3-runtime": ["antlr4"],
}
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


class BundleError(Exception):
    pass


def _dist_info(dist: md.Distribution) -> Path:
    meta = next((f for f in dist.files or () if f.name == "METADATA" and f.parent.name.endswith(".dist-info")), None)
    if meta is None:
        raise BundleError(f"{dist.metadata['Name']}: no .dist-info in its installed files")
    return Path(str(meta.locate())).parent


def _site(dist: md.Distribution) -> Path:
    return _dist_info(dist).parent


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, ignore=IGNORE)
    else:
        shutil.copy2(src, dst)


def _required_core() -> str:
    """The pydantic_core version this venv's pydantic pins (``pydantic-core==X``)."""
    for req in md.requires("pydantic") or ():
        m = re.match(r"pydantic[-_]core\s*==\s*([\w.]+)", req)
        if m:
            return m.group(1)
    raise BundleError("pydantic does not pin pydantic-core==<version>")


def _wheel(version: str, py: str, cache: Path, platform: str) -> Path:
    """The cached pydantic_core wheel for Python ``py`` (downloaded into ``cache`` when missing)."""
    tag = "cp" + py.replace(".", "")
    pattern = f"pydantic_core-{version}-{tag}-{tag}-*.whl"
    found = sorted(cache.glob(pattern))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", py]
    cmd += ["--platform", platform, "-d", str(cache), f"pydantic_core=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache.glob(pattern))
    if proc.returncode != 0 or not found:
        raise BundleError(
            f"pydantic_core=={version} for Python {py} is not in {cache} and could not be downloaded "
            f"(offline? run once with network): {(proc.stderr.strip().splitlines() or ['pip failed'])[-1]}"
        )
    return found[0]


def size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def build(out: Path, python_versions: list[str], cache: Path, cuda: str, platform: str, max_mib: float) -> float:
    """Write the bundle to ``out`` (replacing it) and return its size in MiB."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        core = _required_core()
        wheels = [_wheel(core, py, cache, platform) for py in python_versions]  # first: fail early when offline
        for name, tops in PURE.items():
            dist = md.distribution(name)
            for top in tops:
                _copy(_site(dist) / top, tmp / top)
            _copy(_dist_info(dist), tmp / _dist_info(dist).name)
        # pydantic_core: this interpreter's install, plus the other versions' compiled modules
        dist = md.distribution("pydantic_core")
        if dist.version != core:
            raise BundleError(f"the venv's pydantic_core is {dist.version}, pydantic requires {core}")
        _copy(_site(dist) / "pydantic_core", tmp / "pydantic_core")
        _copy(_dist_info(dist), tmp / _dist_info(dist).name)
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                for member in zf.namelist():
                    if member.startswith("pydantic_core/_pydantic_core.") and member.endswith(".so"):
                        (tmp / member).write_bytes(zf.read(member))
        # bitsandbytes: the package without the other CUDA / ROCm / XPU libraries
        dist = md.distribution("bitsandbytes")
        keep = {"libbitsandbytes_cpu.so", f"libbitsandbytes_cuda{cuda}.so"}
        src = _site(dist) / "bitsandbytes"
        if not (src / f"libbitsandbytes_cuda{cuda}.so").exists():
            raise BundleError(f"bitsandbytes {dist.version} has no libbitsandbytes_cuda{cuda}.so")
        shutil.copytree(
            src,
            tmp / "bitsandbytes",
            ignore=lambda d, names: [
                n for n in names if n in ("__pycache__",) or (n.endswith(".so") and n not in keep)
            ],
        )
        _copy(_dist_info(dist), tmp / _dist_info(dist).name)
        (tmp / "BUNDLE.txt").write_text(
            "Built by scripts/gpu_bundle.py; put first on PYTHONPATH (docs/cluster.md, GPU smoke test).\n"
            + "".join(f"{n} {md.version(n)}\n" for n in [*PURE, "pydantic_core", "bitsandbytes"])
            + f"pydantic_core compiled for: {sys.version_info.major}.{sys.version_info.minor} "
            + " ".join(python_versions)
            + f"\nbitsandbytes libraries: {' '.join(sorted(keep))}\n"
        )
        mib = size_mib(tmp)
        if mib > max_mib:
            raise BundleError(f"{mib:.1f} MiB, over the {max_mib:g} MiB cap")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        return mib
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="bundle folder (default: build/gpu_bundle)")
    ap.add_argument("--python-version", action="append", dest="pythons", help="extra ABI of pydantic_core (3.12)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="wheel cache (default: %(default)s)")
    ap.add_argument("--cuda", default="130", help="bitsandbytes CUDA library to keep (default: %(default)s)")
    ap.add_argument("--platform", default="manylinux_2_17_x86_64", help="wheel platform (default: %(default)s)")
    ap.add_argument("--max-mib", type=float, default=60.0, help="size cap (default: %(default)s)")
    args = ap.parse_args(argv)
    pythons = args.pythons or ["3.12"]
    try:
        mib = build(args.out, pythons, args.cache, args.cuda, args.platform, args.max_mib)
    except (BundleError, md.PackageNotFoundError) as exc:
        print(f"gpu_bundle: {exc}", file=sys.stderr)
        return 1
    shown = args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out
    print(f"gpu_bundle: {shown} {mib:.1f} MiB (cap {args.max_mib:g}); pydantic_core for Python {', '.join(pythons)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
