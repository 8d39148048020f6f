"""Domain-adversarial adaptation: the reversal's sign, the ramp, target labels never reaching training,
and the negative-transfer check."""
import math

import pytest
import torch
import torch.nn as nn

from pipeline.config import Adaptation, Config, DataKind, DataSpec, Strategy
from pipeline.data import load_splits
from pipeline.data.imageset import ImageSet
from pipeline.data.torch_dataset import TorchImageSet, UnlabelledSet
from pipeline.models.layers import param_groups
from pipeline.models.registry import ModelSpec, build_model, model_preprocessing
from pipeline.train.dann import (DomainClassifier, classifier_of, dann_loss, ramp, reverse_gradient,
                                 target_domain, target_top1)
from pipeline.train.loop import FitResult, fit


def test_gradient_reversal_flips_the_sign_reaching_the_features():
    torch.manual_seed(0)
    extractor, critic = nn.Linear(4, 3), nn.Linear(3, 1)
    x = torch.randn(8, 4)

    def grads(coeff):
        extractor.zero_grad(), critic.zero_grad()
        features = extractor(x)
        features.retain_grad()
        critic(reverse_gradient(features, coeff) if coeff is not None else features).sum().backward()
        return features.grad.clone(), extractor.weight.grad.clone(), critic.weight.grad.clone()

    f_plain, w_plain, c_plain = grads(None)
    f_rev, w_rev, c_rev = grads(0.5)
    assert torch.allclose(f_rev, -0.5 * f_plain)            # features get the reversed, scaled gradient
    assert torch.allclose(w_rev, -0.5 * w_plain)            # ... and so does everything below them
    assert torch.allclose(c_rev, c_plain)                   # the domain classifier learns normally
    assert torch.equal(reverse_gradient(x, 3.0), x)          # forward is the identity
    assert not torch.any(grads(0.0)[0])                      # coefficient 0: nothing reaches the features


def test_ramp_schedule():
    assert ramp(0.0) == 0.0
    assert ramp(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1) == pytest.approx(0.986614, abs=1e-6)
    assert ramp(1.0) == pytest.approx(0.999909, abs=1e-6)
    assert ramp(1.0, gamma=10, weight=0.3) == pytest.approx(0.3 * 0.999909, abs=1e-6)
    assert ramp(0.1, gamma=1.0) == pytest.approx(2 / (1 + math.exp(-0.1)) - 1)
    values = [ramp(p / 20) for p in range(21)]
    assert values == sorted(values) and values[1] < 0.5      # rises from 0, steeply, never falls
    assert ramp(-1.0) == 0.0 and ramp(2.0) == ramp(1.0)      # progress is clamped to [0, 1]


def _tiny_cfg() -> Config:
    cfg = Config()
    ft = cfg.finetune
    ft.backbone, ft.weights, ft.input_size, ft.crop_pct = "test_efficientnet", "none", 16, 1.0
    ft.strategy, ft.drop_rate, ft.adaptation = Strategy.full, 0.0, Adaptation.dann
    ft.dann.target, ft.dann.hidden = DataSpec(kind=DataKind.digits), 16
    ft.train.epochs, ft.train.batch_size, ft.train.warmup_epochs = 1, 16, 0
    ft.train.augment.random_resized_crop = (0.7, 1.0)        # target draws augmentation too
    cfg.run.threads = 1
    return cfg


def _dann_steps(target_images: ImageSet) -> tuple[dict, dict, object]:
    """Four DANN steps of a tiny timm model from a fixed seed; (model state, domain state, loss hook)."""
    torch.set_num_threads(1)
    cfg = _tiny_cfg()
    splits = load_splits(cfg.data, 0)
    spec = ModelSpec("test_efficientnet", 10, 0.0)
    torch.manual_seed(0)
    model = build_model(spec, "none")
    pre = model_preprocessing(spec, splits.classes, 16, 1.0)
    source = TorchImageSet(splits.train.subset(range(64)), pre, cfg.finetune.train.augment, 0)
    val = TorchImageSet(splits.val.subset(range(32)), pre, None, 0)
    loss_fn, extra = dann_loss(model, cfg, pre, torch.device("cpu"), target_images=target_images)
    fit(model, source, val, cfg.finetune.train, torch.device("cpu"), 0,
        param_groups(model, 1e-2, 0.0, 1.0) + extra, loss_fn=loss_fn, desc="dann-test")
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {k: v.clone() for k, v in loss_fn.domain.state_dict().items()}, loss_fn)


def _with_targets(images: ImageSet, targets: list[int]) -> ImageSet:
    return ImageSet(ids=list(images.ids), targets=targets, classes=list(images.classes), load=images.load,
                    fingerprint=images.fingerprint)


def test_target_labels_never_reach_training():
    target = load_splits(DataSpec(kind=DataKind.digits), 0).val.subset(range(48))
    poisoned = _with_targets(target, [(t + 3) % 10 for t in target.targets][::-1])
    garbage = _with_targets(target, [9] * len(target))
    state, domain, hook = _dann_steps(target)
    # what training holds of the target: images only, no label attribute to read by mistake
    assert isinstance(hook.target.dataset, UnlabelledSet)
    assert not hasattr(hook.target.dataset, "targets") and not hasattr(hook.target.dataset, "classes")
    assert isinstance(hook.target.dataset[0], torch.Tensor)
    for other in (poisoned, garbage):
        state2, domain2, _ = _dann_steps(other)
        assert all(torch.equal(state[k], state2[k]) for k in state)
        assert all(torch.equal(domain[k], domain2[k]) for k in domain)
    # the check can fail: other target *images* do change the trained weights
    elsewhere = load_splits(DataSpec(kind=DataKind.digits), 0).val.subset(range(100, 148))
    state3, _, _ = _dann_steps(elsewhere)
    assert any(not torch.equal(state[k], state3[k]) for k in state if state[k].is_floating_point())


def test_dann_loss_hook_shapes_and_feature_tap():
    cfg = _tiny_cfg()
    model = build_model(ModelSpec("test_efficientnet", 10, 0.0), "none")
    assert classifier_of(model) is model.get_classifier()
    pre = model_preprocessing(ModelSpec("test_efficientnet", 10), [str(d) for d in range(10)], 16, 1.0)
    target = load_splits(DataSpec(kind=DataKind.digits), 0).val.subset(range(20))
    loss_fn, extra = dann_loss(model, cfg, pre, torch.device("cpu"), target_images=target)
    assert isinstance(loss_fn.domain, DomainClassifier)
    assert sum(p.numel() for g in extra for p in g["params"]) == \
        sum(p.numel() for p in loss_fn.domain.parameters())
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    loss, logits = loss_fn(model, x, y, torch.arange(16), 0.5)
    assert logits.shape == (16, 10) and loss.ndim == 0      # source logits only go back to the loop
    loss.backward()
    assert loss_fn.domain.net[0].weight.grad is not None
    first = loss_fn.target.next()
    assert first.shape[1:] == (3, 16, 16)                    # a 20-image target cycles endlessly
    for _ in range(5):
        assert loss_fn.target.next().ndim == 4


def test_plain_folder_target_is_unlabelled(tmp_path):
    from PIL import Image
    for i in range(3):
        (tmp_path / "shots" / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10, 12), (i * 40, 0, 0)).save(tmp_path / "shots" / f"d{i % 2}" / f"{i}.png")
    (tmp_path / "shots" / "notes.txt").write_text("not an image")
    spec = DataSpec(kind=DataKind.imagefolder, root=str(tmp_path / "shots"))
    images, held_out = target_domain(spec, 0)
    assert len(images) == 3 and held_out is None and images.image(0).size == (10, 12)
    cfg = _tiny_cfg()
    cfg.finetune.dann.target = spec
    model = build_model(ModelSpec("test_efficientnet", 10, 0.0), "none")
    pre = model_preprocessing(ModelSpec("test_efficientnet", 10), [str(d) for d in range(10)], 16, 1.0)
    assert target_top1(model, cfg, pre, torch.device("cpu")) is None     # nothing to score with


def test_target_top1_scores_held_out_split():
    cfg = _tiny_cfg()
    model = build_model(ModelSpec("test_efficientnet", 10, 0.0), "none")
    pre = model_preprocessing(ModelSpec("test_efficientnet", 10), [str(d) for d in range(10)], 16, 1.0)
    top1 = target_top1(model, cfg, pre, torch.device("cpu"))
    assert 0.0 <= top1 <= 100.0
    wrong = model_preprocessing(ModelSpec("test_efficientnet", 10), list("abcdefghij"), 16, 1.0)
    with pytest.raises(ValueError, match="differ from the source classes"):
        target_top1(model, cfg, wrong, torch.device("cpu"))


def test_negative_transfer_verdict_and_scratch_config():
    from pipeline.train.negative_transfer import scratch_config, verdict
    cfg = Config()
    cfg.finetune.strategy, cfg.finetune.layer_decay = Strategy.gradual_unfreeze, 0.7
    scratch = scratch_config(cfg)
    assert (scratch.finetune.weights, scratch.finetune.strategy, scratch.finetune.layer_decay) == \
        ("none", Strategy.full, 1.0)
    assert scratch.finetune.train == cfg.finetune.train and scratch.run.seed == cfg.run.seed
    assert cfg.finetune.weights == "pretrained"                     # the original is untouched
    good = verdict(95.0, 80.0, "efficientnet_lite2")
    assert good["negative_transfer"] is False and good["warning"] is None and good["gain_points"] == 15.0
    bad = verdict(70.0, 82.5, "efficientnet_lite2")
    assert bad["negative_transfer"] is True
    assert "NEGATIVE TRANSFER" in bad["warning"] and "82.50%" in bad["warning"] and "70.00%" in bad["warning"]


def test_scratch_baseline_trains_and_warns(capsys, stderr_logs):
    from pipeline.train.negative_transfer import scratch_baseline
    cfg = _tiny_cfg()
    cfg.finetune.adaptation = Adaptation.none
    cfg.finetune.train.augment.random_resized_crop = None
    torch.set_num_threads(1)
    pretrained = FitResult(best_top1=0.0, best_epoch=1, seconds=600.0,     # any real run beats 0%
                           history=[{"epoch": 1, "val_top1": 0.0, "seconds": 0.0}])
    out = scratch_baseline(cfg, torch.device("cpu"), pretrained)
    assert out["scratch_top1"] > 0.0 and out["negative_transfer"] is True
    assert len(out["scratch_history"]) == 1 and out["scratch_budget_seconds"] == 150.0
    assert "WARNING: NEGATIVE TRANSFER" in capsys.readouterr().err


def test_scratch_run_stops_at_its_time_budget():
    from pipeline.train.negative_transfer import best_within, scratch_baseline
    cfg = _tiny_cfg()
    cfg.finetune.adaptation = Adaptation.none
    cfg.finetune.train.epochs = 50
    torch.set_num_threads(1)
    pretrained = FitResult(best_top1=90.0, best_epoch=2, seconds=4.0, history=[
        {"epoch": 1, "val_top1": 40.0, "seconds": 0.5}, {"epoch": 2, "val_top1": 90.0, "seconds": 3.0}])
    out = scratch_baseline(cfg, torch.device("cpu"), pretrained)
    assert out["scratch_stopped_by_budget"] is True and out["scratch_budget_seconds"] == 1.0
    assert out["scratch_seconds"] < 10.0          # one second of training, then one val pass
    # judged against what the pretrained run had reached after the same training time
    assert out["pretrained_top1_same_budget"] == best_within(pretrained.history, out["scratch_seconds"])
    assert best_within(pretrained.history, 0.1) is None and best_within(pretrained.history, 5) == 90.0
