"""The wheels the GPU check carries (.ci/gpu_wheels.py): the list against every import of the
pipeline, the 60 MiB size check with synthetic folders, the install plan and an offline install."""
from __future__ import annotations

import ast
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".ci"))
import gpu_wheels  # noqa: E402

PACKAGES = ("pipeline", "exporters", "runtimes", "calibration")


def _third_party_imports() -> set[str]:
    """Top-level modules the four packages import (inside functions too), outside the project
    and the standard library."""
    names = set()
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - set(PACKAGES)


def test_every_import_is_in_the_image_carried_or_optional():
    from importlib.metadata import packages_distributions
    dists = packages_distributions()
    carried = {w.name for w in gpu_wheels.read_list()}
    allowed = carried | set(gpu_wheels.IMAGE) | set(gpu_wheels.OPTIONAL)
    missing = {}
    for module in _third_party_imports():
        names = {gpu_wheels.normalise(d) for d in dists.get(module, [module])}
        if not names & allowed:
            missing[module] = sorted(names)
    assert missing == {}
    assert {"pydantic", "pydantic-core", "torch-pruning"} <= carried


def test_the_list_pins_the_gpu_configs_weights_and_what_pydantic_needs():
    from pipeline.config_load import load_config
    from pipeline.models.packaged import PACKAGED
    wheels = {w.name: w for w in gpu_wheels.read_list()}
    cfg = load_config(ROOT / "tests" / "configs" / "gpu.yaml")
    for backbone, weights in ((cfg.finetune.backbone, cfg.finetune.weights),
                              (cfg.distill.student, cfg.distill.weights)):
        assert weights == "pretrained"
        assert wheels[gpu_wheels.normalise(PACKAGED[backbone][0])].when == "always"
    assert all(wheels[n].when == "always" for n in ("pydantic", "pydantic-core", "annotated-types",
                                                   "typing-inspection", "typing-extensions"))
    assert "openvino" not in wheels and "tensorrt" not in wheels and len(wheels) == 13
    # pydantic pins its core exactly: where this venv holds the listed pydantic, its pin is the list's
    from importlib.metadata import requires, version
    if version("pydantic") == wheels["pydantic"].version:
        assert f"pydantic-core=={wheels['pydantic-core'].version}" in requires("pydantic")


def test_list_lines_are_checked(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("# c\npydantic==2.0  always\nTqdm==4.0 if-missing  # why\n")
    assert gpu_wheels.read_list(path) == [gpu_wheels.Wheel("pydantic", "2.0", "always"),
                                          gpu_wheels.Wheel("tqdm", "4.0", "if-missing")]
    path.write_text("pydantic==2.0 sometimes\n")
    with pytest.raises(gpu_wheels.WheelError, match=r"list.txt:1: 'pydantic==2.0 sometimes' is not "):
        gpu_wheels.read_list(path)
    path.write_text("pydantic==2.0\npydantic==2.1\n")
    with pytest.raises(gpu_wheels.WheelError, match=r"list.txt:2: pydantic is listed twice"):
        gpu_wheels.read_list(path)


# ---------------------------------------------------------------- the size check

WHEELS = [gpu_wheels.Wheel("pydantic-core", "2.50.5", "always"),
          gpu_wheels.Wheel("tqdm", "4.70.1", "if-missing")]


def _folder(tmp_path, sizes: dict[str, int]) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    for name, size in sizes.items():
        with open(folder / name, "wb") as f:
            f.truncate(size)     # sparse: the size check reads sizes, not content
    return folder


CORE = "pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.whl"
TQDM = "tqdm-4.70.1-py3-none-any.whl"


def test_size_check_passes_under_the_limit_and_names_the_total_over_it(tmp_path):
    folder = _folder(tmp_path, {CORE: 40 * 2**20, TQDM: 15 * 2**20})
    found = gpu_wheels.check(folder, WHEELS)
    assert {w.name: p.name for w, p in found.items()} == {"pydantic-core": CORE, "tqdm": TQDM}
    assert gpu_wheels.total_bytes(folder) == 55 * 2**20
    (folder / "notes.txt").write_bytes(b"x" * (6 * 2**20))   # anything in the folder travels
    with pytest.raises(gpu_wheels.WheelError) as caught:
        gpu_wheels.check(folder, WHEELS)
    assert str(caught.value).startswith(f"{folder} holds 61.0 MiB, over the 60 MiB that may travel")
    assert gpu_wheels.LIMIT_BYTES == 60 * 2**20


def test_missing_and_stray_wheels_are_named_with_the_fix(tmp_path):
    folder = _folder(tmp_path, {CORE: 10})
    with pytest.raises(gpu_wheels.WheelError, match=r"lacks tqdm==4\.70\.1; run `python3 \.ci/gpu_wheels\.py download`"):
        gpu_wheels.check(folder, WHEELS)
    (folder / TQDM).write_bytes(b"")
    (folder / "tqdm-4.60.0-py3-none-any.whl").write_bytes(b"")
    with pytest.raises(gpu_wheels.WheelError, match=r"does not list: tqdm-4\.60\.0-py3-none-any\.whl; remove"):
        gpu_wheels.check(folder, WHEELS)
    with pytest.raises(gpu_wheels.WheelError, match=r"does not exist; run"):
        gpu_wheels.check(tmp_path / "nowhere", WHEELS)


def test_install_plan_keeps_what_the_image_has_for_if_missing_wheels(tmp_path):
    found = {w: tmp_path / f"{w.name}.whl" for w in WHEELS}
    plan = gpu_wheels.to_install(found, have={"pydantic-core": "2.0.0", "tqdm": "4.66.0"}.get)
    assert plan["pydantic-core"]["installed"] and plan["pydantic-core"]["image_version"] == "2.0.0"
    assert not plan["tqdm"]["installed"] and plan["tqdm"]["why"] == "the image has 4.66.0"
    plan = gpu_wheels.to_install(found, have=lambda name: None)
    assert plan["tqdm"]["installed"] and plan["tqdm"]["why"] == "the image has none"


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel holding module `name` (VALUE = version)."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}.py", f"VALUE = {version!r}\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def test_install_puts_wheels_in_the_target_without_an_index(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    wheels = [gpu_wheels.Wheel("edgeship-probe-a", "1.0", "always"),
              gpu_wheels.Wheel("edgeship-probe-b", "2.0", "if-missing")]
    _wheel(folder, "edgeship_probe_a", "1.0")
    _wheel(folder, "edgeship_probe_b", "2.0")
    found = gpu_wheels.check(folder, wheels)
    plan = gpu_wheels.install(found, tmp_path / "site", have={"edgeship-probe-b": "1.5"}.get)
    assert [n for n, p in plan.items() if p["installed"]] == ["edgeship-probe-a"]
    assert (tmp_path / "site" / "edgeship_probe_a.py").read_text() == "VALUE = '1.0'\n"
    assert not (tmp_path / "site" / "edgeship_probe_b.py").exists()


