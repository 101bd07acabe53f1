"""Libraries' benign warnings are dropped in every process, narrowly, and a CLI error stays one line on any CPU.

bitsandbytes warns at import on CPUs with AVX512-BF16 only (its hub-downloaded 4-bit kernel cannot load
offline). The subprocess tests force that import path on whatever CPU runs them, so a machine without the
instruction set catches what used to break the one-line error contract on machines with it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlvr_temp.benign_logs import BENIGN_WARNINGS, DropPrefix, drop_benign_warnings

ROOT = Path(__file__).resolve().parents[3]
BNB_WARNING = "Failed to load CPU gemm_4bit_forward from kernels-community"

#: run first in a child interpreter: bitsandbytes then takes the path it takes on a CPU with AVX512-BF16, and the
#: hub kernel fails to load as it does offline, whether or not the `kernels` package is installed
FORCE_AVX512_BF16 = """
import importlib.machinery, sys

sys.modules["kernels"] = None  # `from kernels import get_kernel` raises ImportError


class ForceAvx512Bf16:
    # bitsandbytes.backends.cpu.ops asks bitsandbytes.functional.has_avx512bf16() once, at import
    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.functional":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.has_avx512bf16 = lambda: True

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, ForceAvx512Bf16())
"""


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "empty_cache"), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-c", FORCE_AVX512_BF16 + code], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def test_each_benign_warning_is_dropped_and_nothing_else_from_its_logger():
    drop_benign_warnings()  # again: the package's import already did, and it stays one filter per logger
    for name, prefix in BENIGN_WARNINGS.items():
        log = logging.getLogger(name)
        assert [f.prefix for f in log.filters if isinstance(f, DropPrefix)] == [prefix]
        benign = logging.LogRecord(name, logging.WARNING, __file__, 1, prefix + ": %s (details)", ("x",), None)
        other = logging.LogRecord(name, logging.WARNING, __file__, 1, "Something else: " + prefix, None, None)
        assert not log.filter(benign) and log.filter(other)
    # a sibling logger of the same library keeps everything
    sibling = logging.getLogger("bitsandbytes.nn.modules")
    record = logging.LogRecord(sibling.name, logging.WARNING, __file__, 1, BNB_WARNING, None, None)
    assert sibling.filter(record)


@pytest.mark.parametrize("what", ["bitsandbytes alone", "bitsandbytes after rlvr_temp"])
def test_the_forced_avx512_bf16_import_warns_unless_the_package_came_first(what, tmp_path):
    code = "import bitsandbytes" if what == "bitsandbytes alone" else "import rlvr_temp, bitsandbytes"
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if what == "bitsandbytes alone":  # the simulation reaches the warning on this CPU, whatever it is
        assert BNB_WARNING in proc.stderr
    else:
        assert BNB_WARNING not in proc.stderr and "gemm_4bit_forward" not in proc.stderr


def test_a_cli_error_is_the_only_line_on_the_avx512_bf16_path(tmp_path, error_line):
    """`rlvr-temp export` of a run that does not exist imports the learner (and bitsandbytes) in the CLI's process
    before it fails: stderr is the one error line, nothing else. (The driver's commands never import bitsandbytes:
    tests/unit/core/test_imports.py.)"""
    args = ["export", str(tmp_path / "no_such_run"), str(tmp_path / "out")]
    run = f"from rlvr_temp.cli import main\ncode = main({args!r})\n"
    proc = _python(run + "print('bitsandbytes' in sys.modules)\nsys.exit(code)", tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stdout.strip() == "True"  # the path went through bitsandbytes' import
    assert proc.stderr.strip().splitlines() == [error_line(proc.stderr)]
    assert "no such run directory" in proc.stderr
