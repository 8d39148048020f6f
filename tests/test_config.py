"""Config errors name the key, the file, the value and the fix; --set is checked the same way."""
import json
import subprocess
import sys

import pytest

from pipeline.config import Config, Strategy
from pipeline.config_load import ConfigError, load_config


def write(tmp_path, text):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_defaults_validate_and_shipped_configs_load():
    assert load_config("configs/default.yaml").finetune.backbone == "efficientnet_lite2"
    cfg = load_config("configs/imagefolder.yaml")
    assert cfg.finetune.input_size == 224 and cfg.distill.student == "auto"


def test_unknown_key_names_key_file_and_closest(tmp_path):
    p = write(tmp_path, "finetune:\n  strategi: full\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "unknown key 'finetune.strategi'" in msg
    assert "did you mean 'finetune.strategy'" in msg


def test_unknown_nested_key_suggests_nested_path(tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean 'finetune\.train\.epochs'"):
        load_config(write(tmp_path, "finetune:\n  epochz: 3\n"))


def test_wrong_type_names_key_value_and_expected(tmp_path):
    p = write(tmp_path, "finetune:\n  train:\n    epochs: ten\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}: finetune.train.epochs = 'ten' is invalid: expected an integer" == str(e.value)


def test_bad_enum_lists_choices(tmp_path):
    with pytest.raises(ConfigError, match="expected one of 'linear_probe', 'lp_ft', 'full', 'gradual_unfreeze' or 'auto'"):
        load_config(write(tmp_path, "finetune:\n  strategy: half\n"))


def test_set_override_is_type_checked():
    cfg = load_config(None, ["finetune.strategy=linear_probe", "prune.ratio=0.4"])
    assert cfg.finetune.strategy is Strategy.linear_probe and cfg.prune.ratio == 0.4
    with pytest.raises(ConfigError, match=r"^--set prune\.ratio=abc: prune\.ratio = 'abc' is invalid: "
                                           "expected a number"):
        load_config(None, ["prune.ratio=abc"])
    with pytest.raises(ConfigError, match="unknown key 'prune.ratoi'; did you mean 'prune.ratio'"):
        load_config(None, ["prune.ratoi=0.3"])
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config(None, ["prune.ratio"])


def test_imagefolder_needs_root_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="data.root is required when data.kind is 'imagefolder'"):
        load_config(None, ["data.kind=imagefolder"])
    with pytest.raises(ConfigError, match="config file '.*nope.yaml' does not exist"):
        load_config(tmp_path / "nope.yaml")
    deep = tmp_path.joinpath(*["a-long-folder-name"] * 8, "nope.yaml")   # a long path keeps its file name
    with pytest.raises(ConfigError, match=r"config file '\.\.\..*a-long-folder-name/nope.yaml' does not exist"):
        load_config(deep)


@pytest.mark.parametrize("value", ["''", "'  '"])
def test_empty_run_store_is_refused_from_file_and_set(tmp_path, value):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"run.store={value}"])
    assert str(err.value) == (f"--set run.store={value}: run.store {value} is empty: set it to the "
                              f"folder the artifact store lives in (default: runs)")
    path = tmp_path / "c.yaml"
    path.write_text(f"run:\n  store: {value}\n")
    with pytest.raises(ConfigError, match=f"^{path}: run.store {value} is empty"):
        load_config(path)


def test_cli_config_show_and_schema(tmp_path):
    show = subprocess.run([sys.executable, "-m", "pipeline", "config", "show", "-c", "configs/default.yaml",
                           "--set", "prune.steps=5"], capture_output=True, text=True, check=True)
    assert "steps: 5" in show.stdout and "backbone: efficientnet_lite2" in show.stdout
    schema = subprocess.run([sys.executable, "-m", "pipeline", "config", "schema"],
                            capture_output=True, text=True, check=True)
    assert set(json.loads(schema.stdout)["properties"]) == set(Config.model_fields)
    bad = subprocess.run([sys.executable, "-m", "pipeline", "status", "--set", "finetune.epochs=3"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown key 'finetune.epochs'" in bad.stderr


def test_each_error_is_one_line_naming_its_origin(tmp_path):
    p = write(tmp_path, "finetune:\n  train:\n    epochs: 0\n    lr: -1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, ["prune.steps=on"])
    assert str(e.value).splitlines() == [
        f"{p}: finetune.train.epochs = 0 is invalid: must be >= 1",
        f"{p}: finetune.train.lr = -1 is invalid: must be > 0",
        "--set prune.steps=on: prune.steps = true is invalid: expected an integer, not true/false "
        "(YAML reads yes/no/on/off as booleans)"]


def test_booleans_stay_out_of_numbers_on_assignment_too():
    from pydantic import ValidationError
    cfg = Config()
    with pytest.raises(ValidationError, match="expected a number, not true/false"):
        cfg.prune.ratio = True
    cfg.prune.ratio, cfg.export.dynamic_batch = 0.3, True       # numbers and real booleans still go
    assert (cfg.prune.ratio, cfg.export.dynamic_batch) == (0.3, True)
