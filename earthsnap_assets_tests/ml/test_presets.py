"""Presets by name: a run's explicit settings win, unset ones come from the preset (EARTHSNAP_PRESET or the
run's `preset:`), the data side's resolution follows it, and an unknown name is an error."""

import pytest

from earthsnap_assets.defs.settings import ChildTuningConfig, TrainingConfig, TuningConfig
from earthsnap_assets.ml.models import validate_backbone
from earthsnap_assets.ml.presets import PRESETS, preset
from earthsnap_assets.ml.weights import hub_repo, kind_of
from earthsnap_assets.resources.dataset import DatasetSettings


def test_every_preset_names_real_architectures_and_weights():
    for p in PRESETS.values():
        for kind in ("parent", "child"):
            values = p.values(kind)
            assert all(validate_backbone(b) for b in values["backbone_choices"])
            if kind_of(values["weights"]) == "hub":
                assert hub_repo(values["weights"]).startswith("timm/")
    with pytest.raises(ValueError, match="unknown training preset 'tpu'"):
        preset("tpu")


def test_the_cpu_preset_is_the_default_and_a_runs_own_values_win(monkeypatch):
    monkeypatch.delenv("EARTHSNAP_PRESET", raising=False)
    assert TrainingConfig().base().batch_size == PRESETS["cpu"].parent["batch_size"]
    assert ChildTuningConfig().space().epochs == tuple(PRESETS["cpu"].values("child")["epoch_choices"])
    assert ChildTuningConfig().budget().trials == 0  # the demo's preset trains its measured values, no search
    child = ChildTuningConfig().base()
    assert (child.drop_rate, child.weight_decay, child.batch_size, child.keep) == (0.2, 0.1, 16, "last")
    assert TrainingConfig().base().keep == "best"
    tuned = TuningConfig(backbone_choices=["resnet10t"], trials=2)
    assert tuned.space().backbones == ("resnet10t",) and tuned.budget().trials == 2
    assert TrainingConfig(batch_size=8).base().batch_size == 8


def test_the_gpu_preset_by_environment_or_by_run(monkeypatch):
    monkeypatch.setenv("EARTHSNAP_PRESET", "gpu")
    gpu = TrainingConfig().base()
    assert gpu.layer_decay == 0.75 and gpu.freeze_epochs == 1
    assert TrainingConfig().weights_source() == "timm:convnext_tiny.in12k_ft_in1k"
    assert DatasetSettings().resolution() == 224 and DatasetSettings(image_size=96).resolution() == 96
    assert TrainingConfig(layer_decay=1.0).base().layer_decay is None  # 1.0 switches the preset's decay off
    assert TrainingConfig(preset="cpu").base().layer_decay is None
    monkeypatch.setenv("EARTHSNAP_PRESET", "cpu")
    assert DatasetSettings().resolution() == 96


def test_zero_trials_is_no_search_and_returns_the_presets_values():
    from earthsnap_assets.ml.tuning import TuningBudget
    from earthsnap_assets.pipeline.starting_weights import StartingPoint
    from earthsnap_assets.pipeline.training import run_tuning

    config = TuningConfig(preset="cpu")
    base, space = config.base(), config.space()
    chosen = run_tuning(None, None, None, "parent", None, space, TuningBudget(trials=0), base, None)  # type: ignore[arg-type]
    assert chosen == {"backbone": "test_resnet", "lr": 3e-3, "weight_decay": 0.05, "epochs": 40, "searched": False}
    parent_start = StartingPoint(None, "parent", backbone="test_convnext")
    child = run_tuning(None, None, None, "parent", None, space, TuningBudget(trials=0), base, None, parent_start)  # type: ignore[arg-type]
    assert child["backbone"] == "test_convnext"  # weights fit their own architecture
