"""Every bad input ends as one line on stderr, with its exit code, naming the thing, the value and
the fix: config files and --set values (through `config show`), weights checkpoints (through
`run finetune`), and the Makefile's CONFIG / SET / ARGS with spaces in their values."""
from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

ALIAS_BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
LONG = "x" * 300

# (id, config file bytes or None for the default config, --set items, exit code, regex of the one line)
CONFIG_CASES = [
    ("not-utf8", b"run:\n  name: caf\xe9\n", [], 2,
     r"config file '.*cfg\.yaml' is not UTF-8 text: byte 0xe9 at line 2 \(offset 16\); "
     r"save the file as UTF-8"),
    ("bad-yaml-file", b"run:\n  name: [oops\n", [], 2,
     r".*cfg\.yaml: not valid YAML: expected ',' or '\]', but got '<stream end>' at line 3, column 1"),
    ("bad-yaml-set", None, ["finetune.train.lr=[1,"], 2,
     r"--set finetune\.train\.lr=\[1,: the value '\[1,' is not valid YAML: expected the node "
     r"content, but found '<stream end>' at line 1, column 4; give a YAML value .*"),
    ("duplicate-key", b"finetune:\n  train:\n    epochs: 3\n    lr: 0.1\n    epochs: 5\n", [], 2,
     r".*cfg\.yaml: key 'epochs' appears twice in one mapping \(lines 3 and 5\); keep one"),
    ("bool-for-float-set", None, ["finetune.train.lr=true"], 2,
     r"--set finetune\.train\.lr=true: finetune\.train\.lr = true is invalid: expected a number, "
     r"not true/false \(YAML reads yes/no/on/off as booleans\)"),
    ("bool-for-int-file", b"finetune:\n  train:\n    epochs: yes\n", [], 2,
     r".*cfg\.yaml: finetune\.train\.epochs = true is invalid: expected an integer, not true/false .*"),
    ("bool-in-list", None, ["benchmark.batch_sizes=[1, on]"], 2,
     r"--set benchmark\.batch_sizes=\[1, on\]: benchmark\.batch_sizes = \[1, true\] is invalid: "
     r"expected an integer, not true/false .*"),
    ("input-size-too-big", None, ["finetune.input_size=4096"], 2,
     r"--set finetune\.input_size=4096: finetune\.input_size = 4096 is invalid: must be <= 2048"),
    ("batch-cannot-fit", None, ["finetune.train.batch_size=100000000", "finetune.input_size=224"], 2,
     r"configs/default\.yaml: finetune\.train\.batch_size = 100000000 at finetune\.input_size = 224 "
     r"needs at least 224,304\.2 GiB \(batch × 3 × 224² × 4 bytes × 4 copies\), more than this "
     r"machine's [\d,.]+ GiB; lower finetune\.train\.batch_size or finetune\.input_size"),
    ("alias-bomb", ALIAS_BOMB.encode(), [], 2,
     r".*cfg\.yaml: aliases expand to 1,234,567,909 values \(at most 100,000\); .*"),
    ("too-many-aliases", ("a: &a 1\nb: [" + ", ".join(["*a"] * 101) + "]\n").encode(), [], 2,
     r".*cfg\.yaml: more than 100 aliases \(\*name\), at line 2; .*"),
    ("alias-cycle", b"a: &a [*a]\n", [], 2,
     r".*cfg\.yaml: an alias refers to a mapping or list that contains it \(a cycle\); .*"),
    ("constraint-once", None, ["finetune.train.epochs=-1"], 2,
     r"--set finetune\.train\.epochs=-1: finetune\.train\.epochs = -1 is invalid: must be >= 1"),
    ("long-value-cut", None, [f"finetune.train.epochs={LONG}"], 2,
     r"--set finetune\.train\.epochs=x{55}\.\.\.: finetune\.train\.epochs = 'x{76}\.\.\. is "
     r"invalid: expected an integer"),
    ("top-level-list", b"- run\n- data\n", [], 2,
     r".*cfg\.yaml: the top level must be a mapping of sections \(run, data, \.\.\.\), "
     r"not \[\"run\", \"data\"\]"),
    ("set-without-equals", None, ["with"], 2,
     r"--set 'with' must look like key\.path=value, e\.g\. prune\.ratio=0\.4 \(make: separate SET "
     r"items with ';' when a value holds spaces\)"),
]


def _one_line(done: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("name, text, sets, code, pattern", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_input_is_one_line(cli, tmp_path, name, text, sets, code, pattern):
    config = "configs/default.yaml"
    if text is not None:
        config = str(tmp_path / "cfg.yaml")
        (tmp_path / "cfg.yaml").write_bytes(text)
    done = subprocess.run(cli("config", "show", "-c", config, *[a for s in sets for a in ("--set", s)]),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr[-3000:]
    line = _one_line(done)
    assert re.fullmatch("config error: " + pattern, line), line
    assert "Input should" not in line and len(line) < 400


def test_merge_keys_may_override_and_a_bom_is_fine(tmp_path):
    """What the strict reader must still accept: a UTF-8 BOM, and '<<: *anchor' overridden below."""
    from pipeline.config_load import load_config
    p = tmp_path / "cfg.yaml"
    p.write_text("\ufefffinetune:\n  train: &t {epochs: 3, lr: 0.1}\ndistill:\n  train:\n    <<: *t\n"
                 "    epochs: 4\n", encoding="utf-8")
    cfg = load_config(p)
    assert (cfg.finetune.train.epochs, cfg.distill.train.epochs, cfg.distill.train.lr) == (3, 4, 0.1)


# ---------------------------------------------------------------- weights checkpoints
def _lite0_state(seed: int) -> dict:
    import torch
    from pipeline.models.registry import ModelSpec, build_model
    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in build_model(ModelSpec("efficientnet_lite0", 7), "none")
            .state_dict().items()}


def _write_weights(path, kind: str) -> None:
    import torch
    from safetensors.torch import save_file
    if kind == "junk":
        path.write_bytes(b"this is not a checkpoint at all")
    elif kind == "module":
        torch.save(torch.nn.Linear(2, 2), path)
    elif kind == "list":
        torch.save([1, 2], path)
    elif kind == "foreign":
        save_file({"foo.weight": torch.zeros(3, 3)}, str(path))
    elif kind.startswith("lite0-"):
        save_file(_lite0_state(int(kind.split("-")[1])), str(path))


EXPECTED = (r"expected a \.safetensors file \(safetensors\.torch\.save_file\) or a torch state dict "
            r"\(torch\.save\(model\.state_dict\(\), path\)\)")
WEIGHTS_CASES = [
    ("missing", "w.safetensors", None,
     r"finetune\.weights '.*w\.safetensors' does not exist; give pretrained, none, or the path of .*"),
    ("junk", "w.safetensors", "junk",
     r"finetune\.weights '.*w\.safetensors' is not a checkpoint \(read as safetensors: Error while "
     r"deserializing header: .*\); " + EXPECTED),
    ("pickled-module", "w.pt", "module",
     r"finetune\.weights '.*w\.pt' is not a checkpoint \(read as a torch file: it pickles objects, "
     r"not only tensors, and checkpoints load as data, never code\); " + EXPECTED),
    ("not-a-dict", "w.pt", "list",
     r"finetune\.weights '.*w\.pt' is not a checkpoint \(read as a torch file: it holds a list, not "
     r"named tensors\); " + EXPECTED),
    ("no-matching-tensors", "w.safetensors", "foreign",
     r"finetune\.weights '.*w\.safetensors' fills only 0 of 294 backbone tensors of "
     r"efficientnet_lite0 \(fewer than half; names or shapes differ\): point finetune\.weights at a "
     r"checkpoint of efficientnet_lite0, or set finetune\.allow_partial_weights: true .*"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, filename, kind, pattern", WEIGHTS_CASES, ids=[c[0] for c in WEIGHTS_CASES])
def test_bad_weights_are_one_line(cli, tiny_args, tmp_path, name, filename, kind, pattern):
    path = tmp_path / filename
    if kind:
        _write_weights(path, kind)
    done = subprocess.run(cli("run", "finetune", "-q", *tiny_args, "--set", f"finetune.weights={path}"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    assert re.fullmatch("config error: " + pattern, _one_line(done)), done.stderr
    assert not (tmp_path / "runs" / "finetune").exists() or \
        not list((tmp_path / "runs" / "finetune").glob("*/manifest.json"))


@pytest.mark.slow
def test_weights_content_is_in_the_key_and_partial_loads_are_counted(cli, tiny_args, tmp_path):
    path = tmp_path / "w.safetensors"
    run = cli("run", "finetune", *tiny_args, "--set", f"finetune.weights={path}")

    def finetune(*extra) -> str:
        done = subprocess.run(run + list(extra), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stderr

    _write_weights(path, "foreign")
    log = finetune("--set", "finetune.allow_partial_weights=true")
    assert "finetune   running" in log
    assert f"finetune.weights '{path}': loaded 0 of 294 backbone tensors of efficientnet_lite0, " \
           "0 of 2 head tensors" in log
    assert "294 backbone tensors of efficientnet_lite0 start from random weights" in log

    _write_weights(path, "lite0-1")        # new content, same path: a new model
    log = finetune()
    assert "finetune   running" in log and "cached" not in log
    assert "loaded 294 of 294 backbone tensors of efficientnet_lite0, 0 of 2 head tensors" in log
    assert "random weights" not in log

    _write_weights(path, "foreign")         # the first content again: its result is reused
    log = finetune("--set", "finetune.allow_partial_weights=true")
    assert "finetune   cached" in log and "running" not in log
    assert len(list((tmp_path / "runs" / "finetune").glob("*/manifest.json"))) == 2


# ---------------------------------------------------------------- the Makefile
def _make_line(*assignments: str) -> list[str]:
    """The edgeship command `make -n finetune` would run, split as the shell splits it."""
    # Run as a top-level make: under `make test` the inherited MAKEFLAGS would add
    # "Entering/Leaving directory" lines around the command.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    done = subprocess.run(["make", "--no-print-directory", "-n", "finetune", *assignments],
                          capture_output=True, text=True, timeout=60, check=True, env=env)
    return shlex.split(done.stdout.strip().splitlines()[-1])[1:]


def test_make_keeps_spaces_in_config_set_and_args():
    assert _make_line("SET=finetune.train.lr=0.1; data.root=/path with  spaces;run.name=it's;",
                      "CONFIG=my configs/x.yaml", "ARGS=--force finetune --set 'run.store=/a b'") == [
        "-m", "pipeline", "run", "finetune", "-c", "my configs/x.yaml",
        "--set", "finetune.train.lr=0.1", "--set", " data.root=/path with  spaces", "--set", "run.name=it's",
        "--force", "finetune", "--set", "run.store=/a b"]
    assert _make_line("SET=prune.ratio=0.4 benchmark.batch_sizes=[1,8]") == [
        "-m", "pipeline", "run", "finetune", "-c", "configs/default.yaml",
        "--set", "prune.ratio=0.4", "--set", "benchmark.batch_sizes=[1,8]"]
    assert _make_line() == ["-m", "pipeline", "run", "finetune", "-c", "configs/default.yaml"]


def test_a_set_item_with_a_leading_space_loads():
    from pipeline.config_load import load_config
    cfg = load_config(None, [" data.root=/path with  spaces", "data.kind=imagefolder"])
    assert cfg.data.root == "/path with  spaces"
