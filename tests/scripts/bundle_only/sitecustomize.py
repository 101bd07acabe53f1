"""Loaded at start-up by a subprocess whose PYTHONPATH starts with this folder (tests/scripts/test_gpu_bundle.py).

Imports as on the lent GPU machine: the packages that machine lacks (``ONLY``) come from the bundle folder
``RLVR_TEMP_BUNDLE_ONLY`` and nowhere else; vLLM and Ray are not found at all. The path finder is replaced by one
that filters it (so ``importlib.util.find_spec`` answers None for refused names, as where they are not installed).
At exit, every loaded module of those names and its file are written to ``RLVR_TEMP_BUNDLE_LOG`` (JSON).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from importlib.machinery import PathFinder

BUNDLE = os.path.realpath(os.environ["RLVR_TEMP_BUNDLE_ONLY"])
ONLY = {
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_inspection",
    "typing_extensions",
    "omegaconf",
    "antlr4",
    "bitsandbytes",
}
REFUSED = {"vllm", "ray"}


class BundleOnlyFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in REFUSED:
            return None
        if top in ONLY and "." not in name:
            path = [BUNDLE]
        return PathFinder.find_spec(name, path, target)

    @classmethod
    def find_distributions(cls, *args, **kwargs):
        return PathFinder.find_distributions(*args, **kwargs)

    @classmethod
    def invalidate_caches(cls):
        PathFinder.invalidate_caches()


sys.meta_path[sys.meta_path.index(PathFinder)] = BundleOnlyFinder


@atexit.register
def _log() -> None:
    out = os.environ.get("RLVR_TEMP_BUNDLE_LOG")
    if not out:
        return
    loaded = {
        name: getattr(module, "__file__", None)
        for name, module in list(sys.modules.items())
        if name.partition(".")[0] in ONLY | REFUSED
    }
    with open(out, "w") as f:
        json.dump({"bundle": BUNDLE, "loaded": loaded}, f, indent=1)
