"""Transfer on small data: the cached-feature probe, auto's choice, LP-FT never below its probe,
mixup/cutmix, the weight average, and the usable-core count behind run.threads: auto."""
import pytest
import torch

from pipeline.config import Augment, Strategy, Train
from pipeline.train.transfer import choose_strategy, separability


def _blobs(n_per_class: int, classes: int, dim: int, seed: int, spread: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 3
    x = torch.cat([c + spread * torch.randn(n_per_class, dim, generator=g) for c in centres])
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return x * 7 + 40, y          # far from standardised: the fit must fold its scaling back


def test_probe_fits_separable_features_and_folds_standardisation_back():
    from pipeline.train.probe import fit_probe
    train, val = _blobs(30, 4, 16, seed=1), _blobs(20, 4, 16, seed=2)
    result = fit_probe(train, val, 4, [1e-3, 0.1, 10.0])
    assert result.val_top1 == 100.0 and result.train_top1 == 100.0
    assert [s["l2"] for s in result.scores] == [1e-3, 0.1, 10.0]
    logits = val[0] @ result.weight.T + result.bias           # raw features, no standardisation
    assert (logits.argmax(1) == val[1]).all()


def test_probe_keeps_the_l2_that_scores_best_on_val():
    from pipeline.train.probe import fit_probe
    train, val = _blobs(8, 3, 64, seed=3, spread=4.0), _blobs(40, 3, 64, seed=4, spread=4.0)
    result = fit_probe(train, val, 3, [1e-4, 1.0, 100.0])
    best = max(result.scores, key=lambda s: (s["val_top1"], -s["val_loss"]))
    assert result.l2 == best["l2"] and result.val_top1 == best["val_top1"]


def test_auto_rules():
    assert separability(20.0, 5) == 0.0 and separability(100.0, 5) == 1.0
    assert choose_strategy(4, 5, 90.0)[0] == Strategy.linear_probe          # too few to fine-tune
    assert choose_strategy(70, 5, 99.8)[0] == Strategy.linear_probe         # already separated
    strategy, reason = choose_strategy(70, 5, 91.4)
    assert strategy == Strategy.lp_ft and "91.40%" in reason
    assert choose_strategy(70, 10, 40.0)[0] == Strategy.gradual_unfreeze    # far domain, little data
    assert choose_strategy(800, 10, 40.0)[0] == Strategy.full              # far domain, plenty


@pytest.mark.slow
def test_lp_ft_never_ships_worse_than_its_probe():
    """A fine-tuning phase with a destructive learning rate: the probed head is kept."""
    from pipeline.config import Config
    from pipeline.train.teacher import train_teacher
    cfg = Config()
    ft = cfg.finetune
    ft.backbone, ft.input_size, ft.crop_pct, ft.drop_rate = "efficientnet_lite0", 32, 1.0, 0.0
    ft.strategy = Strategy.lp_ft
    ft.train = Train(epochs=1, batch_size=64, lr=5.0, warmup_epochs=0,
                     augment=Augment(random_resized_crop=None))
    cfg.run.threads = 2
    torch.set_num_threads(2)
    model, _, pre, result = train_teacher(cfg, torch.device("cpu"), "pretrained", "test")
    probe = result.record["probe"]["val_top1"]
    assert probe > 60.0                                   # frozen ImageNet features separate digits
    start = result.fit.history[0]                         # the probed network, scored as epoch 0
    assert start["epoch"] == 0 and start["val_top1"] == pytest.approx(probe, abs=1e-4)
    assert result.fit.history[1]["val_top1"] < probe      # lr 5 wrecked the network ...
    assert result.fit.best_epoch == 0 and result.fit.best_top1 == start["val_top1"]   # ... so the probe ships
    assert result.record["kept"] == "linear_probe" and result.record["chosen"] == "lp_ft"
    from pipeline.data import load_splits
    from pipeline.data.torch_dataset import TorchImageSet
    from pipeline.train.loop import evaluate
    val = TorchImageSet(load_splits(cfg.data, 0).val, pre, None)
    assert evaluate(model, val, torch.device("cpu"))["top1"] == pytest.approx(probe)


def test_mixer_mixes_images_and_labels_alike():
    """Image i is filled with the value i and is the only image of class i, so the mean value of
    a mixed image must equal its soft label's expected class index."""
    from pipeline.train.mixing import Mixer
    assert Mixer.from_augment(Augment(), 4, 0) is None
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 8, 8).contiguous()
    y = torch.arange(4)
    for aug in (Augment(mixup=0.4), Augment(cutmix=1.0), Augment(mixup=0.4, cutmix=1.0)):
        mixer = Mixer.from_augment(aug, 4, seed=5)
        for step in range(6):
            xm, soft = mixer(x, y, step)
            assert torch.allclose(soft.sum(1), torch.ones(4))
            assert torch.allclose(xm.mean(dim=(1, 2, 3)), soft @ torch.arange(4.0), atol=1e-5)
            assert torch.equal(xm, mixer(x, y, step)[0])            # a function of (seed, step)
        assert not torch.equal(mixer(x, y, 0)[0], mixer(x, y, 1)[0])


def test_weight_average_trails_the_weights():
    from pipeline.train.ema import WeightAverage
    model = torch.nn.Linear(2, 1)
    avg = WeightAverage(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    avg.update(model)
    d = min(0.9, 2 / 11)                              # ramped decay at the first update
    assert torch.allclose(avg.module.weight, start * d + (start + 1.0) * (1 - d))
    assert not avg.module.weight.requires_grad


def test_usable_cores_reads_cgroup_quotas(tmp_path, monkeypatch):
    from runtimes import cpus
    mount = tmp_path / "cg"
    (mount / "ci" / "job").mkdir(parents=True)
    (mount / "ci" / "cpu.max").write_text("300000 100000\n")       # the parent grants 3 cores
    (mount / "ci" / "job" / "cpu.max").write_text("150000 100000\n")  # the job 1.5
    proc = tmp_path / "cgroup"
    proc.write_text("0::/ci/job\n")
    assert cpus.cgroup_cpu_quota(str(proc), str(mount)) == 1.5
    (mount / "ci" / "job" / "cpu.max").write_text("max 100000\n")
    assert cpus.cgroup_cpu_quota(str(proc), str(mount)) == 3.0
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "docker").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "docker" / "cpu.cfs_quota_us").write_text("200000")
    (v1 / "cpu,cpuacct" / "docker" / "cpu.cfs_period_us").write_text("100000")
    proc.write_text("4:cpu,cpuacct:/docker\n")
    assert cpus.cgroup_cpu_quota(str(proc), str(v1)) == 2.0
    proc.write_text("4:cpu,cpuacct:/\n")
    assert cpus.cgroup_cpu_quota(str(proc), str(v1)) is None
    monkeypatch.setattr(cpus, "cgroup_cpu_quota", lambda: 0.5)
    assert cpus.usable_cores() == 1


def test_threads_auto_resolves_to_usable_cores():
    from pipeline.config import Run
    from runtimes.cpus import usable_cores
    assert Run().threads == "auto" and Run().thread_count() == usable_cores()
    assert Run(threads=3).thread_count() == 3
    for bad in (0, "many", True):
        with pytest.raises(ValueError, match=f"run.threads must be a number of threads >= 1 or 'auto', got {bad!r}"):
            Run(threads=bad)


def test_fit_with_weight_average_keeps_the_scored_average(capsys, stderr_logs):
    from pipeline.config import DataSpec
    from pipeline.data import load_splits
    from pipeline.data.torch_dataset import TorchImageSet
    from pipeline.models.layers import param_groups
    from pipeline.models.registry import ModelSpec, build_model, model_preprocessing
    from pipeline.train.loop import evaluate, fit
    torch.manual_seed(0)
    torch.set_num_threads(1)
    spec = ModelSpec("test_efficientnet", 10)
    model = build_model(spec, "none")
    splits = load_splits(DataSpec(kind="digits"), 0)
    pre = model_preprocessing(spec, splits.classes, 16, 1.0)
    train = TorchImageSet(splits.train.subset(range(256)), pre, Augment(random_resized_crop=None, mixup=0.2))
    val = TorchImageSet(splits.val.subset(range(128)), pre)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(model, train, val, Train(epochs=2, batch_size=64, lr=0.01, warmup_epochs=0, ema=0.9),
                 torch.device("cpu"), 0, param_groups(model, 0.01, 0.0, 1.0))
    assert "(weight average)" in capsys.readouterr().err
    assert evaluate(model, val, torch.device("cpu"))["top1"] == pytest.approx(result.best_top1)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(v.is_contiguous() for v in model.state_dict().values())   # NCHW again after training
