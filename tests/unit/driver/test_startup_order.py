"""The driver starts the learner only once the engines are up when they share GPUs (vLLM sizes its KV cache from
the free memory it profiles at start-up). Fake actors stand in for both; everything else is the real
``Trainer.__init__``."""

from __future__ import annotations

import types

import pytest

from rlvr_temp.config.schema import load_config
from rlvr_temp.driver import trainer as trainer_mod


class Stop(Exception):
    """Ends ``Trainer.__init__`` once the learner has been started."""


@pytest.mark.gpu_contract
@pytest.mark.parametrize("gpus, first", [(True, "engines ready"), (False, "learner started")])
def test_learner_starts_after_the_engines_are_up_on_gpus(monkeypatch, tmp_path, gpus, first):
    """On GPUs the engines report ready before the learner starts (before: both at once, so the learner's
    allocations raced vLLM's memory profiling); on CPU both start at once, as before."""
    events: list[str] = []
    ready = object()

    def fake_get(refs, **_):
        if isinstance(refs, list) and refs and all(r is ready for r in refs):
            events.append("engines ready")
        return refs

    def fake_learner(*a, **k):
        events.append("learner started")
        raise Stop

    worker = types.SimpleNamespace(incarnation=types.SimpleNamespace(remote=lambda: ready))
    monkeypatch.setattr(trainer_mod, "init_ray", lambda cfg: None)
    monkeypatch.setattr(trainer_mod, "check_ray_cluster", lambda cfg: None)  # `plan`'s checks: test_plan.py's
    monkeypatch.setattr(trainer_mod, "start_workers", lambda *a, **k: [worker])
    monkeypatch.setattr(trainer_mod, "start_learner", fake_learner)
    monkeypatch.setattr(trainer_mod, "release", lambda cfg: events.append("placement released"))
    monkeypatch.setattr(trainer_mod.ray, "get", fake_get)
    monkeypatch.setattr(trainer_mod.ray, "kill", lambda actor: events.append("engine killed"))
    overrides = [f"trainer.run_dir={tmp_path / 'run'}", "rollout.num_workers=1"]
    if gpus:
        overrides += ["ray.rollout_gpus=1", "ray.learner_gpus=1"]
    cfg = load_config("recipes/demo/base.yaml", overrides)
    assert cfg.uses_gpus() is gpus
    with pytest.raises(Stop):
        trainer_mod.Trainer(cfg)
    assert events[0] == first
    # a learner that failed to start: the engines and their placement group go with the run
    assert events[-2:] == ["engine killed", "placement released"]
