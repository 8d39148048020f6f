"""Pruning: MAC targets, protected layers, round_to, code-free checkpoints, the latency budget,
and the stage end to end on a tiny EfficientNet (depthwise convs and squeeze-excite blocks)."""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.config import RuntimeName
from pipeline.config_load import load_config
from pipeline.models.registry import ModelSpec, build_model, model_preprocessing
from pipeline.prune.budget import BudgetNotMet, search_budget, search_ratio
from pipeline.models.pruned import save_pruned_model
from pipeline.prune.latency import LatencyProbe
from pipeline.prune.structured import (IterativePruner, PruneError, PrunePlan, channel_ratio_for,
                                       macs_and_params, protected_layers, prune_to_macs)

CLASSES = [str(d) for d in range(10)]
SIZE = 32
SPEC = ModelSpec("test_efficientnet", 10, 0.0)   # timm's tiny EfficientNet: depthwise convs + SE
EXAMPLE = torch.zeros(1, 3, SIZE, SIZE)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model(SPEC, "none").eval()


def _pruned(ratio, plan=PrunePlan(round_to=1)):
    model = _model()
    macs0 = macs_and_params(model, EXAMPLE)[0]
    prune_to_macs(model, EXAMPLE, int(macs0 * (1 - ratio)), plan, protected_layers(model, EXAMPLE, plan))
    return model, macs0


def _convs(model):
    return {n: (m.in_channels, m.out_channels) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d)}


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_mac_ratio_target_reached_within_tolerance(ratio):
    model, macs0 = _pruned(ratio)
    removed = 1 - macs_and_params(model, EXAMPLE)[0] / macs0
    # never short of the target; over it by at most about one channel step of this tiny model
    assert ratio <= removed <= ratio + 0.04, f"asked {ratio}, removed {removed:.4f}"
    assert model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 10)


def test_classifier_and_ignored_layers_keep_their_channels():
    keep = "blocks.3.0.conv_pw"
    original = _convs(_model())
    head = _model().classifier
    model, _ = _pruned(0.5, PrunePlan(round_to=1, ignored_layers=(keep,)))
    after = _convs(model)
    assert after[keep] == original[keep]
    assert model.classifier.weight.shape == head.weight.shape      # (out, in): both kept
    shrunk = [n for n in original if after[n][1] < original[n][1]]
    assert len(shrunk) > 5, "the other layers should have been pruned"


def test_unknown_layer_names_fail_with_suggestions():
    with pytest.raises(PruneError, match=r"blocks\.3\.0\.conv_pwx.*did you mean blocks\.3\.0\.conv_pw"):
        protected_layers(_model(), EXAMPLE, PrunePlan(ignored_layers=("blocks.3.0.conv_pwx",)))


def test_layer_ratios_override_one_layer():
    name = "blocks.3.0.conv_pw"
    width = _convs(_model())[name][1]
    model, _ = _pruned(0.3, PrunePlan(round_to=1, layer_ratios={name: 0.5}))
    assert _convs(model)[name][1] == int(width * 0.5)


def test_round_to_makes_pruned_widths_multiples_of_8():
    original = _convs(_model())
    eights, _ = _pruned(0.4, PrunePlan(round_to=8))
    changed = {n: w[1] for n, w in _convs(eights).items() if w[1] != original[n][1]}
    assert changed and all(c % 8 == 0 and c >= 8 for c in changed.values()), changed
    ones, _ = _pruned(0.4, PrunePlan(round_to=1))   # the same request without rounding: odd widths
    assert any(w[1] % 8 for n, w in _convs(ones).items() if w[1] != original[n][1])


def test_iterative_steps_end_at_the_one_shot_widths():
    plan = PrunePlan(round_to=8)
    model = _model()
    macs0 = macs_and_params(model, EXAMPLE)[0]
    protected = protected_layers(model, EXAMPLE, plan)
    ratio = channel_ratio_for(model, EXAMPLE, int(macs0 * 0.6), plan, protected)
    one_shot, _ = _pruned(0.4, plan)
    pruner = IterativePruner(model, EXAMPLE, plan, protected, ratio, steps=3)
    widths = [_convs(model)]
    for _ in range(3):
        pruner.step()
        widths.append(_convs(model))
    assert widths[-1] == _convs(one_shot) != widths[0]
    for before, after in zip(widths, widths[1:]):      # no step widens a layer
        assert all(after[n][1] <= before[n][1] for n in before)
    assert widths[1] != widths[0], "the first step should already prune"


def test_pruned_checkpoint_round_trip_in_a_fresh_process(tmp_path):
    model, _ = _pruned(0.5)
    pre = model_preprocessing(SPEC, CLASSES, SIZE, 1.0)
    artifact = save_pruned_model(model, SPEC, pre, tmp_path)
    folder = tmp_path / artifact.path
    assert json.loads((folder / "model.json").read_text())["pruned"] is True
    x = torch.randn(4, 3, SIZE, SIZE)
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        expected = model(x).numpy()
    code = ("import sys, numpy as np, torch; torch.set_num_threads(1); "
            "from pipeline.models.loading import load_checkpoint; "
            "m = load_checkpoint(sys.argv[1]); x = torch.from_numpy(np.load(sys.argv[2])); "
            "np.save(sys.argv[3], m(x).detach().numpy()); "
            "print(m.blocks[3][0].conv_pw.out_channels)")
    done = subprocess.run([sys.executable, "-c", code, str(folder), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) == model.blocks[3][0].conv_pw.out_channels
    assert int(done.stdout.split()[-1]) < _model().blocks[3][0].conv_pw.out_channels
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


def test_search_ratio_picks_the_least_pruning_that_meets_the_budget():
    def latency(ratio):      # a monotone stand-in for a measured curve, to check the bisection
        return {"p50_ms": 10.0 * (1 - ratio), "p90_ms": 11.0 * (1 - ratio)}
    found = search_ratio(latency, budget_ms=6.0, max_ratio=0.8, bisections=8, where="x/cpu")
    assert 0.4 <= found.ratio <= 0.4 + 0.8 / 2**8 and all(t["p50_ms"] > 0 for t in found.trials)
    assert search_ratio(latency, budget_ms=10.0, max_ratio=0.8, bisections=8, where="x/cpu").ratio == 0.0


def test_budget_not_met_names_the_best_reached(tmp_path):
    model = _model()
    pre = model_preprocessing(SPEC, CLASSES, SIZE, 1.0)
    plan = PrunePlan(round_to=1)
    cfg = load_config(None, ["prune.latency_budget_ms=0.0001", "prune.budget_max_ratio=0.5",
                             "prune.measure_seconds=0.05"])
    probe = LatencyProbe(RuntimeName.onnxruntime, "cpu", threads=1, seconds=0.05)
    with pytest.raises(BudgetNotMet) as err:
        search_budget(model, EXAMPLE, plan, protected_layers(model, EXAMPLE, plan), pre, probe,
                      cfg.prune, tmp_path, log=lambda *_: None)
    message = str(err.value)
    assert message.startswith("no pruning ratio up to 0.5 met latency_budget_ms=0.0001 on onnxruntime/cpu; "
                              "best reached ")
    best = float(message.split("best reached ")[1].split(" ms")[0])
    assert best > 0.0001 and "at ratio" in message


def _run_stage(cfg, pre, tmp_path):
    """finetune/distill entries holding tiny untrained models, then the prune stage on them."""
    from pipeline.models.loading import save_model
    from pipeline.stages.base import Context
    from pipeline.stages.prune import STAGE
    from pipeline.store import Manifest, Store
    store = Store(cfg.run.store)
    inputs = {}
    for stage, seed in (("finetune", 1), ("distill", 2)):
        staging = store.staging_dir(stage, stage)
        art = save_model(_model(seed), SPEC, pre, staging)
        inputs[stage] = store.commit(staging, Manifest(stage, 1, stage, {}, {}, {"model": art}))
    out = tmp_path / "out"
    out.mkdir()
    return STAGE.run(Context(cfg=cfg, inputs=inputs, out_dir=out, store_root=store.root)), out


def test_prune_stage_end_to_end(tmp_path):
    """finetune/distill entries with tiny models, then the stage: MACs, latency, accuracy, reload."""
    from pipeline.models.loading import load_model
    from pipeline.store import Manifest

    cfg = load_config(None, [f"run.store={tmp_path / 'runs'}", "run.threads=1", "prune.ratio=0.4",
                             "prune.steps=2", "prune.importance=taylor", "prune.round_to=1",
                             "prune.recover.epochs=1", "prune.recover.augment.random_resized_crop=null",
                             "prune.measure_seconds=0.05", "prune.measure_rounds=1",
                             "prune.budget_threads=1", "prune.max_accuracy_drop=null"])
    pre = model_preprocessing(SPEC, CLASSES, SIZE, 1.0)
    result, out = _run_stage(cfg, pre, tmp_path)
    m = result.metrics
    assert 0.4 <= m["summary"]["macs_removed"] <= 0.43 and len(m["steps"]) == 2
    assert m["steps"][0]["macs_removed"] < m["steps"][1]["macs_removed"]
    for block in (m["before"], m["after"], *m["steps"]):
        assert block["latency"]["p50_ms"] > 0 and block["latency"]["p90_ms"] >= block["latency"]["p50_ms"]
    assert 0 <= m["after"]["val_top1"] <= 100 and "speedup_p50" in m["summary"]
    for step in m["steps"]:             # heads refitted to the pruned features are candidates
        scores = step["refit_head"]["val_top1"]
        assert list(scores) == ["recovered", "refit before recovery", "refit after recovery"]
        assert scores["recovered"] == max(h["val_top1"] for h in step["recovery"]["history"])
        assert step["val_top1"] == max(scores.values()) == scores[step["refit_head"]["kept"]]
        assert step["accuracy_change"]["points"] == pytest.approx(step["val_top1"] - m["before"]["val_top1"], abs=1e-3)
    manifest = Manifest("prune", 1, "k", {}, {}, result.outputs, entry_dir=out)
    reloaded, reloaded_pre = load_model(manifest)
    assert reloaded_pre == pre
    assert macs_and_params(reloaded, EXAMPLE)[0] == m["after"]["macs"]


def test_importance_auto_measures_every_criterion_and_uses_the_cheapest_per_ms(tmp_path):
    cfg = load_config(None, [f"run.store={tmp_path / 'runs'}", "run.threads=1", "prune.ratio=0.4",
                             "prune.steps=1", "prune.importance=auto", "prune.round_to=1",
                             "prune.recover.epochs=1", "prune.recover.augment.random_resized_crop=null",
                             "prune.measure_seconds=0.05", "prune.measure_rounds=2",
                             # timed in torch: no ONNX export per candidate (seconds each)
                             "prune.budget_runtime=torch",
                             "prune.budget_threads=1", "prune.max_accuracy_drop=null"])
    result, _ = _run_stage(cfg, model_preprocessing(SPEC, CLASSES, SIZE, 1.0), tmp_path)
    m = result.metrics
    search = m["importance_search"]
    # Global scores of this untrained network may empty a layer before the target: such a
    # candidate is recorded as unusable with the reason, the others are measured.
    assert sorted([*search["candidates"], *search["unusable"]]) == sorted(
        f"{k}/{scope}" for k in ("taylor", "l2", "bn_scale") for scope in ("global", "uniform"))
    assert all(n.endswith("/global") and "cannot prune" in why for n, why in search["unusable"].items())
    assert all(f"{k}/uniform" in search["candidates"] for k in ("taylor", "l2", "bn_scale"))
    top1_0 = search["unpruned_val_top1"]
    for c in search["candidates"].values():
        assert 0.4 <= c["macs_removed"] <= 0.45 and 0 <= c["val_top1"] <= 100 and c["p50_ms"] > 0
        assert c["verdict"] in ("faster", "slower", "within noise")
        assert c["ms_saved"] == pytest.approx(search["unpruned_p50_ms"] - c["p50_ms"], abs=1e-4)

    def cost(c):    # the rule in pipeline.prune.criterion_search, restated
        lost = max(0.0, top1_0 - c["val_top1"])
        faster = c["verdict"] == "faster" and c["ms_saved"] > 0
        return (not faster, lost / c["ms_saved"] if faster else lost, lost)
    chosen = min(search["candidates"], key=lambda n: cost(search["candidates"][n]))
    assert search["chosen"] == chosen and search["reason"]
    kind, scope = chosen.split("/")
    assert m["importance"] == kind and m["global_pruning"] == (scope == "global")


def test_accuracy_budget_keeps_the_last_step_that_holds_it():
    from pipeline.prune.steps import accuracy_budget, within_budget
    steps = [{"step": 1, "val_top1": 89.5, "macs_removed": 0.2}, {"step": 2, "val_top1": 87.0, "macs_removed": 0.4}]
    assert within_budget(steps[0], 90.0, 1.0) and steps[0]["accuracy_drop_points"] == 0.5
    assert not within_budget(steps[1], 90.0, 1.0) and steps[1]["accuracy_drop_points"] == 3.0
    assert within_budget(steps[1], 90.0, None)                     # no budget: anything goes
    record = accuracy_budget(steps, 1, 3, 90.0, 1.0)
    assert record["backed_off"] and record["steps_kept"] == 1
    assert record["warning"].startswith("prune backed off: step 2 of 3 lost 3.00 points (> "
                                        "prune.max_accuracy_drop 1); shipping step 1 (20.0% of MACs removed")
    assert "the unpruned student (90.00%)" in accuracy_budget(steps, 0, 3, 90.0, 1.0)["warning"]
    assert accuracy_budget(steps, 2, 2, 90.0, 1.0)["warning"] is None


def test_prune_stage_backs_off_when_a_step_loses_too_much(tmp_path, monkeypatch):
    """A trained tiny student; step 2's recovered model is broken for real (its head zeroed, so it
    predicts one class): the stage must ship step 1's model and say why."""
    import pipeline.prune.recover as recover_module
    from pipeline.config import Augment, Train
    from pipeline.data import load_splits
    from pipeline.data.torch_dataset import TorchImageSet
    from pipeline.models.layers import param_groups
    from pipeline.stages.base import Context
    from pipeline.models.loading import load_model, save_model
    from pipeline.stages.prune import STAGE
    from pipeline.store import Manifest, Store
    from pipeline.train.loop import evaluate, fit

    cfg = load_config(None, [f"run.store={tmp_path / 'runs'}", "run.threads=1", "prune.ratio=0.3",
                             "prune.steps=2", "prune.round_to=1", "prune.recover.epochs=1",
                             "prune.recover.augment.random_resized_crop=null", "prune.measure_seconds=0.05",
                             "prune.measure_rounds=1", "prune.budget_threads=1", "prune.max_accuracy_drop=30",
                             "prune.refit_head=false"])   # a refitted head would repair the break
    pre = model_preprocessing(SPEC, CLASSES, SIZE, 1.0)
    splits = load_splits(cfg.data, 0)
    student = _model(2)
    train = Train(epochs=2, batch_size=64, lr=0.01, warmup_epochs=0, augment=Augment(random_resized_crop=None))
    fit(student, TorchImageSet(splits.train, pre), TorchImageSet(splits.val, pre), train, torch.device("cpu"),
        0, param_groups(student, 0.01, 0.0, 1.0))
    store = Store(cfg.run.store)
    inputs = {}
    for stage, model in (("finetune", student), ("distill", student)):
        staging = store.staging_dir(stage, stage)
        art = save_model(copy.deepcopy(model), SPEC, pre, staging)
        inputs[stage] = store.commit(staging, Manifest(stage, 1, stage, {}, {}, {"model": art}))

    real_recover = recover_module.recover

    def recover_then_break_step_two(model, train_set, val_set, *args, **kwargs):
        result = real_recover(model, train_set, val_set, *args, **kwargs)
        if args[-2].endswith("2/2"):                     # desc
            with torch.no_grad():
                model.classifier.weight.zero_()
                model.classifier.bias.zero_()
            result.best_top1 = evaluate(model, val_set, torch.device("cpu"))["top1"]
        return result
    monkeypatch.setattr(recover_module, "recover", recover_then_break_step_two)

    out = tmp_path / "out"
    out.mkdir()
    result = STAGE.run(Context(cfg=cfg, inputs=inputs, out_dir=out, store_root=store.root))
    m = result.metrics
    assert m["before"]["val_top1"] > 45.0, "the trained student must be good enough for a drop to show"
    s1, s2 = m["steps"]
    assert s1["accuracy_drop_points"] <= 30 < s2["accuracy_drop_points"]
    for step in (s1, s2):                # each step against the unpruned student, image by image
        change = step["accuracy_change"]
        assert change["points"] == pytest.approx(-step["accuracy_drop_points"], abs=1e-3)
    assert s2["accuracy_change"]["verdict"] == "lower"          # a one-class model: beyond the noise
    budget = m["accuracy_budget"]
    assert budget["steps_kept"] == 1 and budget["backed_off"] and "shipping step 1" in budget["warning"]
    assert m["after"]["val_top1"] == s1["val_top1"] and m["after"]["macs"] == s1["macs"]
    reloaded, _ = load_model(Manifest("prune", 1, "k", {}, {}, result.outputs, entry_dir=out))
    assert macs_and_params(reloaded, EXAMPLE)[0] == s1["macs"]
