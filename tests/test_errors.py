"""The error hierarchy, the CLI's exit codes and messages, and the one logging setup."""
from __future__ import annotations

import importlib
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from runtimes import errors

# Every module that defines a project error: imported so that walking the hierarchy finds them all.
MODULES = ("pipeline.config_load", "pipeline.store", "pipeline.data.imageset", "pipeline.models.registry",
           "pipeline.prune.structured", "pipeline.prune.latency", "pipeline.prune.budget",
           "pipeline.stages.check", "exporters", "exporters.spec", "exporters.parity", "exporters.bundle",
           "exporters.onnx_int8_nncf")


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


for _name in MODULES:
    importlib.import_module(_name)
ALL_ERRORS = sorted(set(_subclasses(errors.EdgeshipError)), key=lambda c: f"{c.__module__}.{c.__qualname__}")


def _epilog_codes() -> set[int]:
    from pipeline.cli import EPILOG
    table = EPILOG.split("exit codes")[1]
    return {int(tok) for tok in table.split() if tok.isdigit()}


def test_the_walk_finds_every_project_error():
    names = {c.__name__ for c in ALL_ERRORS}
    assert {"ConfigError", "DataError", "ModelError", "PruneError", "LatencyUnsupported", "BudgetNotMet",
            "StoreLocked", "BudgetFailed", "UnknownExportEdge", "ExportError", "ExportUnavailable",
            "ParityError", "BundleError", "StageFailed", "Unavailable"} <= names


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_error_has_a_documented_exit_code(cls):
    assert cls.exit_code in errors.EXIT_CODES and cls.exit_code not in (0, 1, 130)
    assert cls.exit_code in _epilog_codes()
    kind = next(k for k in cls.__mro__ if k in errors.KINDS)   # each error is of exactly one kind
    assert [k for k in cls.__mro__ if k in errors.KINDS] == [kind] and cls.exit_code == kind.exit_code


def test_kinds_have_distinct_codes_and_every_code_is_documented():
    codes = [k.exit_code for k in errors.KINDS]
    assert len(set(codes)) == len(codes)
    assert set(errors.EXIT_CODES) == _epilog_codes()
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for code in errors.EXIT_CODES:
        assert f"\n| {code} | " in readme, f"README's exit-code table lacks {code}"


def test_builtin_bases_are_kept_for_callers_that_catch_them():
    from exporters import ParityError, UnknownExportEdge
    from pipeline.config_load import ConfigError
    from pipeline.data import DataError
    from pipeline.store import StoreLocked
    assert issubclass(ParityError, AssertionError) and issubclass(UnknownExportEdge, LookupError)
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
    assert issubclass(StoreLocked, RuntimeError) and issubclass(ConfigError, errors.ConfigError)


# ---------------------------------------------------------------- the CLI
def _edgeship(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_cli_config_error_exits_2_with_one_line():
    done = _edgeship("status", "--set", "finetune.train.epochs=-1")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("config error: ") and done.stderr.count("\n") == 1
    assert "finetune.train.epochs = -1 is invalid" in done.stderr and "Traceback" not in done.stderr


def test_cli_data_error_exits_7_naming_the_folder(tmp_path):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    done = _edgeship("run", "finetune", "-c", "configs/imagefolder.yaml", "--set", f"data.root={root}",
                     "--set", f"run.store={tmp_path / 'runs'}")
    assert done.returncode == 7, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"edgeship: data.root '{root}' has no class folders in {root / 'train'}")
    assert "Traceback" not in done.stderr


def test_cli_stage_failure_exits_6_with_the_message(monkeypatch, capsys, restore_logging):
    from exporters import ParityError
    from pipeline import cli, runner

    def refuse(cfg, target=None, force=frozenset()):
        raise ParityError("openvino_int8 top-1 agreement 91.0% is below 99.0%; re-export at fp32")
    monkeypatch.setattr(runner, "run", refuse)
    assert cli.main(["run", "export"]) == 6
    assert capsys.readouterr().err == ("edgeship: openvino_int8 top-1 agreement 91.0% is below 99.0%; "
                                       "re-export at fp32\n")


def test_cli_nncf_method_without_nncf_exits_8_before_training(monkeypatch, capsys, restore_logging, tmp_path):
    from pipeline import cli, runner
    monkeypatch.setitem(sys.modules, "nncf", None)            # `import nncf` raises ImportError
    monkeypatch.setattr(runner, "run", lambda *a, **k: pytest.fail("the run started"))
    assert cli.main(["run", "-c", "configs/default.yaml", "--set", "quantize.method=nncf",
                     "--set", f"run.store={tmp_path / 'runs'}"]) == 8
    assert capsys.readouterr().err == ("edgeship: quantize.method 'nncf': NNCF is not installed; pip "
                                       "install 'edgeship[nncf]', or set quantize.method: onnxruntime\n")
    # a run that stops before quantize does not need it
    monkeypatch.setattr(runner, "run", lambda *a, **k: None)
    assert cli.main(["run", "finetune", "--set", "quantize.method=nncf",
                     "--set", f"run.store={tmp_path / 'runs'}"]) == 0


def test_nncf_quantizer_without_nncf_raises_unavailable(monkeypatch, tmp_path):
    from exporters.onnx_int8_nncf import NNCFUnavailable, quantize_onnx_nncf
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(ImportError) as err:                   # callers catching ImportError still do
        quantize_onnx_nncf(tmp_path / "m.onnx", tmp_path / "q.onnx", None)
    assert isinstance(err.value, NNCFUnavailable) and err.value.exit_code == 8


@pytest.mark.slow
def test_cli_prune_of_an_unknown_layer_exits_6(cli, tiny_args, tmp_path):
    student = ["distill.student=test_efficientnet", "distill.weights=none", "distill.train.epochs=1",
               "distill.train.batch_size=64", "distill.train.warmup_epochs=0", "distill.compare_alone=false",
               "distill.train.augment.random_resized_crop=null", "prune.ignored_layers=[blocks.9.no_such]"]
    done = subprocess.run(cli("run", "prune", *tiny_args, *[a for s in student for a in ("--set", s)]),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 6, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("edgeship: prune.ignored_layers names layer "
                                                           "'blocks.9.no_such'")


def test_unexpected_errors_keep_their_traceback(monkeypatch, restore_logging):
    from pipeline import cli, runner

    def crash(cfg, target=None, force=frozenset()):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(runner, "run", crash)
    with pytest.raises(ZeroDivisionError):
        cli.main(["run", "finetune"])


# ---------------------------------------------------------------- logging
def _talk():
    log = logging.getLogger("pipeline.stages.talk")
    log.debug("a debug line")
    log.info("an info line")
    log.warning("a warning line")
    # A library that leaves its logger to the application (nncf, once imported, prints through its
    # own handler, so it is not the example here).
    logging.getLogger("urllib3").debug("a library's debug line")
    return 0


@pytest.mark.parametrize("argv, shown, hidden", [
    (["runtimes"], ["an info line", "WARNING: a warning line"], ["a debug line"]),
    (["-q", "runtimes"], ["WARNING: a warning line"], ["an info line", "a debug line"]),
    (["runtimes", "-q"], ["WARNING: a warning line"], ["an info line"]),
    (["-v", "runtimes"], ["a debug line", "an info line"], ["a library's debug line"]),
    (["runtimes", "-v"], ["a debug line"], ["a library's debug line"]),
    (["-v", "runtimes", "-v"], ["a debug line", "a library's debug line"], []),
])
def test_verbosity_flags_before_or_after_the_command(argv, shown, hidden, monkeypatch, capsys, restore_logging):
    from pipeline import cli
    monkeypatch.setitem(cli.COMMANDS, "runtimes", lambda args: _talk())
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == ""                        # log lines never land on stdout
    lines = captured.err.splitlines()
    for text in shown:
        assert text in lines, captured.err
    for text in hidden:
        assert text not in lines, captured.err


def test_an_exporter_log_line_reaches_stderr(capfd, restore_logging):
    import exporters.onnx_export
    from pipeline import logs
    logs.configure(0)
    exporters.onnx_export.log.info("onnx export %s: %s", "model.onnx", "parity ok")
    assert capfd.readouterr().err == "onnx export model.onnx: parity ok\n"


# ---------------------------------------------------------------- progress
def test_progress_logs_at_most_every_interval_and_at_the_end(caplog, monkeypatch):
    from types import SimpleNamespace
    from runtimes import progress as progress_mod
    clock = iter([0.0, 1.0, 12.0, 13.0, 30.0, 31.0, 40.0])   # start, after each item, the end
    monkeypatch.setattr(progress_mod, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    log = logging.getLogger("exporters.test_progress")
    with caplog.at_level(logging.INFO, logger=log.name):
        items = list(progress_mod.progress(range(5), desc="quantize: sensitivity", unit="layers", log=log))
    assert items == [0, 1, 2, 3, 4]
    assert [r.getMessage() for r in caplog.records] == [
        "quantize: sensitivity 2/5 layers, 12 s", "quantize: sensitivity 4/5 layers, 30 s",
        "quantize: sensitivity 5/5 layers, 40 s"]


def test_progress_is_silent_when_quiet(caplog):
    from runtimes.progress import progress, ticker
    log = logging.getLogger("exporters.test_quiet")
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert list(progress(iter("abc"), desc="x", log=log)) == ["a", "b", "c"]
        with ticker("calibrating", log=log):
            pass
    assert caplog.records == []


def test_ticker_beats_while_a_call_runs(caplog):
    import time
    from runtimes.progress import ticker
    log = logging.getLogger("exporters.test_ticker")
    with caplog.at_level(logging.INFO, logger=log.name):
        with ticker("quantize: calibrating", log=log, interval=0.05):
            time.sleep(0.18)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) >= 3 and messages[0].startswith("quantize: calibrating, ")
    assert messages[-1].startswith("quantize: calibrating done in ")
