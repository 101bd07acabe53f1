"""rlvr_temp.reward.verify from every calling context, each in a real subprocess.

Workers are launched with ``__main__``'s ``__file__`` / ``__spec__`` hidden, so they never re-run the caller's
main module: a script without ``if __name__ == "__main__":``, ``python -`` (stdin), ``python -c``,
``python -m``, a notebook-like ``__main__`` without ``__file__``, and a Ray actor all score at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
LIMIT_S = 60.0

SNIPPET = textwrap.dedent(
    """
    import sys, time
    t0 = time.monotonic()
    import __main__
    before = (getattr(__main__, "__file__", None), getattr(__main__, "__spec__", None))
    from rlvr_temp.reward.verify import Verifier, score
    print("SCORE", score(r"The answer is \\boxed{1/2}.", "0.5"), flush=True)
    with Verifier(num_workers=1, start_method=START) as v:
        print("SCORE", v.score(r"\\boxed{3.83 \\times 10^{35}}", "3.83e35"), flush=True)
    after = (getattr(__main__, "__file__", None), getattr(__main__, "__spec__", None))
    assert before == after, (before, after)  # __main__ is restored after the workers start
    print("SECONDS", round(time.monotonic() - t0, 2))
    """
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("RAY_AUTH_MODE", "disabled")
    return env


def _run(args: list[str], cwd: Path, stdin: str | None = None) -> str:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=LIMIT_S + 30,
        env=_env(),
    )
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert took < LIMIT_S, f"took {took:.1f} s"
    assert "failed to start" not in proc.stderr
    return proc.stdout


def _snippet(start: str) -> str:
    return f"START = {start!r}\n" + SNIPPET


@pytest.mark.parametrize("start", ["forkserver", "spawn"])
def test_script_without_main_guard(tmp_path, start):
    script = tmp_path / "noguard.py"
    script.write_text(_snippet(start) + 'print("TOP LEVEL RAN", flush=True)\n')
    out = _run([str(script)], tmp_path)
    assert out.count("SCORE 1.0") == 2
    assert out.count("TOP LEVEL RAN") == 1  # the workers did not re-run the script


def test_stdin(tmp_path):
    out = _run(["-"], tmp_path, stdin=_snippet("forkserver"))
    assert out.count("SCORE 1.0") == 2


def test_dash_c(tmp_path):
    out = _run(["-c", _snippet("spawn")], tmp_path)
    assert out.count("SCORE 1.0") == 2


def test_dash_m_module_without_guard(tmp_path):
    (tmp_path / "verify_as_module.py").write_text(_snippet("forkserver"))
    out = _run(["-m", "verify_as_module"], tmp_path)
    assert out.count("SCORE 1.0") == 2


def test_notebook_like_main_without_file(tmp_path):
    # a Jupyter kernel's __main__ has neither __file__ nor a spec; exec() into such a module here
    code = "import types, sys\nm = types.ModuleType('__main__')\nsys.modules['__main__'] = m\n"
    code += f"exec(compile({_snippet('forkserver')!r}, '<ipython-input-1>', 'exec'), m.__dict__)\n"
    out = _run(["-c", code], tmp_path)
    assert out.count("SCORE 1.0") == 2


def test_ray_actor(tmp_path):
    pytest.importorskip("ray")
    script = tmp_path / "ray_actor.py"
    script.write_text(
        textwrap.dedent(
            """
            import ray
            ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)

            @ray.remote
            class Scorer:
                def run(self):
                    from rlvr_temp.reward.verify import score
                    return score(r"\\boxed{1/2}", "0.5")

            print("SCORE", ray.get(Scorer.remote().run.remote(), timeout=50), flush=True)
            ray.shutdown()
            """
        )
    )
    assert "SCORE 1.0" in _run([str(script)], tmp_path)


def test_start_failure_is_one_line_and_quick(tmp_path):
    # a math_verify that cannot be imported, in the working directory: first on the path of `python -c` (and so of
    # the workers it spawns)
    broken = tmp_path / "math_verify"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('math-verify is broken here')\n")
    code = textwrap.dedent(
        """
        from rlvr_temp.reward.verify import Verifier
        try:
            Verifier(num_workers=1)
        except RuntimeError as e:
            print("ERROR", repr(str(e)))
        """
    )
    t0 = time.monotonic()
    out = _run(["-c", code], tmp_path)
    assert time.monotonic() - t0 < 30
    line = next(x for x in out.splitlines() if x.startswith("ERROR"))
    assert "failed to start" in line and "\\n" not in line
