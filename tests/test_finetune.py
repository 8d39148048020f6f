"""The finetune stage for real: strategies, kill-and-resume, and the torchrun (DDP) path."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.config import Strategy
from pipeline.models.layers import layer_groups, param_groups
from pipeline.models.registry import ModelSpec, build_model
from pipeline.train.freezing import Freezer, trainable_groups


def manifest(store: Path, stage="finetune") -> dict:
    [path] = list((store / stage).glob("*/manifest.json"))
    return json.loads(path.read_text())


def weights(store: Path) -> dict:
    from safetensors.torch import load_file
    [path] = list((store / "finetune").glob("*/model/model.safetensors"))
    return load_file(str(path))


def test_gradual_unfreeze_schedule_and_layer_decay():
    assert [trainable_groups(Strategy.gradual_unfreeze, 5, e, 2) for e in range(10)] == \
        [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert trainable_groups(Strategy.linear_probe, 5, 9, 1) == 1
    assert trainable_groups(Strategy.full, 5, 0, 1) == 5
    model = build_model(ModelSpec("efficientnet_lite0", 10), "none")
    groups = layer_groups(model)
    assert groups[-1] == ["classifier.weight", "classifier.bias"] and groups[0][0] == "conv_stem.weight"
    pg = param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.5)
    head = [g for g in pg if any(p is model.classifier.weight for p in g["params"])][0]
    stem = [g for g in pg if any(p is model.conv_stem.weight for p in g["params"])][0]
    assert head["lr"] == 1.0 and stem["lr"] == pytest.approx(0.5 ** (len(groups) - 1))
    assert all(g["weight_decay"] == 0.0 for g in pg if all(p.ndim <= 1 for p in g["params"]))
    freezer = Freezer(model, Strategy.gradual_unfreeze, 1)
    freezer.apply(model, 0)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == groups[-1]
    freezer.apply(model, 1)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(groups[-1] + groups[-2])


@pytest.mark.slow
def test_linear_probe_trains_head_only_and_learns(cli, tiny_args, tmp_path):
    subprocess.run(cli("run", "finetune", *tiny_args), check=True, capture_output=True)
    m = manifest(tmp_path / "runs")
    assert m["metrics"]["val_top1"] > 60.0          # frozen ImageNet features separate digits
    assert m["metrics"]["strategy"]["kept"] == "linear_probe" and m["metrics"]["best_epoch"] == 0
    assert m["outputs"]["model"]["metadata"]["preprocessing"]["input_size"] == 32
    trained = weights(tmp_path / "runs")
    fresh = build_model(ModelSpec("efficientnet_lite0", 10), "pretrained").state_dict()
    assert torch.equal(trained["conv_stem.weight"], fresh["conv_stem.weight"])   # frozen
    assert torch.equal(trained["bn1.running_mean"], fresh["bn1.running_mean"])   # stats frozen too
    assert trained["classifier.weight"].shape == (10, 1280)
    again = subprocess.run(cli("run", "finetune", *tiny_args), check=True, capture_output=True, text=True)
    assert "finetune   cached" in again.stderr


@pytest.mark.slow
def test_killed_run_commits_nothing_and_resumes(cli, tiny_args, tmp_path):
    store = tmp_path / "runs"
    proc = subprocess.Popen(cli("run", "finetune", *tiny_args), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((store / "finetune").glob(".staging-*/*")) \
            and not list((store / "finetune").glob(".staging-*")):
        time.sleep(0.05)
    time.sleep(1.0)               # mid-stage: data loaded, model training
    assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list((store / "finetune").glob("*/manifest.json"))
    status = subprocess.run(cli("status", *tiny_args), capture_output=True, text=True, check=True)
    assert status.stdout.startswith("finetune   not run")
    rerun = subprocess.run(cli("run", "finetune", *tiny_args), capture_output=True, text=True, check=True)
    assert "finetune   done" in rerun.stderr
    assert len(list((store / "finetune").glob("*/manifest.json"))) == 1
    assert not list((store / "finetune").glob(".staging-*"))


@pytest.mark.slow
def test_ddp_two_processes_match_one(cli, tiny_args, tmp_path):
    # LP-FT: the probe, then every layer trains. BatchNorm keeps its statistics, so a rank's half
    # batch normalises exactly as the whole batch does in one process.
    trained = [a if not a.startswith("finetune.strategy=") else "finetune.strategy=lp_ft"
               for a in tiny_args] + ["--set", "finetune.train.freeze_norm_stats=true", "--set", "finetune.train.lr=0.0005"]
    one = [a if not a.startswith("run.store=") else f"run.store={tmp_path / 'one'}" for a in trained]
    two = [a if not a.startswith("run.store=") else f"run.store={tmp_path / 'two'}" for a in trained]
    subprocess.run(cli("run", "finetune", *one), check=True, capture_output=True)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--standalone", "-m", "pipeline", "run", "finetune", *two],
                         capture_output=True, text=True)
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    a, b = manifest(tmp_path / "one"), manifest(tmp_path / "two")
    assert a["key"] == b["key"]
    assert [r["epoch"] for r in a["metrics"]["history"]] == [r["epoch"] for r in b["metrics"]["history"]] == [0, 1, 2]
    for ra, rb in zip(a["metrics"]["history"], b["metrics"]["history"]):
        if ra["epoch"] > 0:                                # epoch 0 is the probed model, before training
            # every layer trains: summation order differs between one and two processes
            assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=5e-3)
        assert rb["val_top1"] == pytest.approx(ra["val_top1"], abs=1.0)    # a few images of 450
    wa, wb = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert torch.allclose(wa["classifier.weight"], wb["classifier.weight"], atol=1e-3)
