"""The CI gate: budgets against a real report; exact failure messages, JUnit XML, exit code 5."""
from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET

import pytest

import bench_fixture
from pipeline.gate.budgets import evaluate
from pipeline.stages.check import STAGE, BudgetFailed


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "bench-store"
    manifests = bench_fixture.report(root)
    report = json.loads(manifests["report"].path_of("report_json").read_text())
    return {"root": root, "manifests": manifests, "report": report,
            "rows": {r["id"]: r for r in report["rows"]}}


def _cfg(run, tmp_path, *budgets):
    # The default config's relative budgets are off here; the baseline tests turn them on.
    return bench_fixture.config(run["root"], ["benchmark.batch_sizes=[1]", f"check.junit={tmp_path / 'ci' / 'junit.xml'}",
                                              "check.baseline=null", "check.max_p90_regression=null",
                                              "check.min_accuracy_delta=null", *budgets])


def _fastest(run, runtime):
    """The row a p90 budget on runtime/cpu measures, found independently of the budget code."""
    h = run["report"]["headline"]
    floor = h["teacher_accuracy"] - run["report"]["settings"]["deploy_tolerance"]
    rows = [r for r in run["report"]["rows"] if r["status"] == "ok" and r["runtime"] == runtime
            and r["device"] == "cpu" and r["format"] != "torch" and r["accuracy"] >= floor]
    return min(rows, key=lambda r: r["p90_ms"])


def test_loose_budgets_pass_and_write_junit(run, tmp_path):
    cfg = _cfg(run, tmp_path, "check.min_accuracy=50", "check.max_accuracy_drop=3",
               "check.max_p90_ms={onnxruntime/cpu: 1000, openvino/cpu: 1000, tensorrt/cuda: 5}",
               "check.max_size_mb=100")
    manifest = bench_fixture.run_stage(run["root"], STAGE, cfg, {"report": run["manifests"]["report"]})
    STAGE.publish(manifest, cfg)                     # what the runner does after the commit
    assert manifest.metrics["pass"] == 5 and manifest.metrics["fail"] == 0 and manifest.metrics["skip"] == 1
    suite = ET.parse(tmp_path / "ci" / "junit.xml").getroot().find("testsuite")
    assert suite.get("tests") == "6" and suite.get("failures") == "0" and suite.get("skipped") == "1"
    assert [c.get("name") for c in suite.iter("testcase")] == [
        "min_accuracy", "max_accuracy_drop", "max_p90_ms[onnxruntime/cpu]", "max_p90_ms[openvino/cpu]",
        "max_p90_ms[tensorrt/cuda]", "max_size_mb"]
    skipped = suite.find("testcase[@name='max_p90_ms[tensorrt/cuda]']/skipped")
    assert "not measured here" in skipped.get("message")
    assert (manifest.entry_dir / "junit.xml").read_text() == (tmp_path / "ci" / "junit.xml").read_text()


def test_tight_budget_fails_with_value_and_limit(run, tmp_path):
    cfg = _cfg(run, tmp_path, "check.min_accuracy=50", "check.max_p90_ms={openvino/cpu: 0.001}")
    with pytest.raises(BudgetFailed) as info:
        STAGE.run(_context(run, cfg, tmp_path))
    row = _fastest(run, "openvino")
    expected = (f"FAIL max_p90_ms[openvino/cpu]: measured {row['p90_ms']:.3f} ms, limit <= 0.001 ms "
                f"({row['id']})")
    assert [v.message for v in info.value.failures] == [expected]
    assert str(info.value) == f"1 budget(s) failed:\n  {expected}\nJUnit XML: {tmp_path / 'ci' / 'junit.xml'}"
    suite = ET.parse(tmp_path / "ci" / "junit.xml").getroot().find("testsuite")
    assert suite.get("failures") == "1"
    failure = suite.find("testcase[@name='max_p90_ms[openvino/cpu]']/failure")
    assert failure.get("message") == expected and failure.text == expected
    assert suite.find("testcase[@name='min_accuracy']/failure") is None


def test_each_budget_reports_what_it_measured(run):
    from pipeline.config import Check
    h, rows = run["report"]["headline"], run["rows"]
    deployed = rows[h["deployed"]]
    verdicts = evaluate(run["report"], Check(min_accuracy=99.9, max_accuracy_drop=0.0,
                                              max_size_mb=0.000001, max_p90_ms={"onnxruntime/gpu": 1.0,
                                                                                "nonsense": 1.0}))
    by = {v.name: v for v in verdicts}
    assert by["min_accuracy"].message == (f"FAIL min_accuracy: measured {deployed['accuracy']:.2f} %, "
                                          f"limit >= 99.90 % ({deployed['id']})")
    drop = -h["accuracy_change_points"]
    assert by["max_accuracy_drop"].measured == pytest.approx(drop)
    assert by["max_accuracy_drop"].status == ("fail" if drop > 0 else "pass")
    ci = h["accuracy_change_ci"]          # the drop's interval is said, the budget judges the drop
    assert f"drop {-ci['high']:+.1f} to {-ci['low']:+.1f} points at 95% confidence" in by["max_accuracy_drop"].message
    assert f"[95% CI {ci['low']:+.1f}, {ci['high']:+.1f}] on {ci['images']} val images" in h["text"]
    assert by["max_size_mb"].measured == pytest.approx(deployed["size_bytes"] / 1e6)
    assert by["max_size_mb"].status == "fail"
    assert by["max_p90_ms[onnxruntime/gpu]"].status == "fail"
    assert "no row for 'onnxruntime/gpu'" in by["max_p90_ms[onnxruntime/gpu]"].message
    assert "is not 'runtime/device'" in by["max_p90_ms[nonsense]"].message


def test_an_artifact_not_shipped_is_said_and_never_fails_the_gate(run):
    import copy

    from pipeline.config import Check
    from pipeline.report.headline import headline
    report = copy.deepcopy(run["report"])
    why = "INT8 (plain PTQ) 90.00% vs FP32 92.00%: outside quantize.max_accuracy_drop 1 points"
    for r in report["rows"]:
        if r["precision"] == "int8":
            r["not_deployable"] = why
    report["headline"] = headline(report["rows"], "cpu", report["settings"]["deploy_tolerance"])
    by = {v.name: v for v in evaluate(report, Check(max_p90_ms={"onnxruntime/cpu": 1000.0}))}
    int8 = sorted({r["artifact"] for r in report["rows"] if r["precision"] == "int8"})
    assert int8 and all(by[f"not_shipped[{n}]"].message == f"SKIP not_shipped[{n}]: {why}" for n in int8)
    assert all(by[f"not_shipped[{n}]"].status == "skip" for n in int8)
    budget = by["max_p90_ms[onnxruntime/cpu]"]      # the latency budget judges what may ship
    assert budget.status == "pass" and "int8" not in budget.subject
    assert "int8" not in report["headline"]["deployed"]


def test_latency_budget_relative_to_the_teacher(run):
    from pipeline.config import Check
    report = run["report"]
    teacher = run["rows"][report["headline"]["teacher"]]
    fastest = _fastest(run, "onnxruntime")
    ratio = fastest["p90_ms"] / teacher["p90_ms"]
    loose, tight = (evaluate(report, Check(max_p90_vs_teacher={"onnxruntime/cpu": limit}))[0]
                    for limit in (ratio * 1.01, ratio * 0.99))
    assert loose.status == "pass" and tight.status == "fail" and loose.measured == pytest.approx(ratio)
    assert loose.subject == fastest["id"] and f"teacher {teacher['id']}" in loose.message
    assert loose.message.startswith(f"PASS max_p90_vs_teacher[onnxruntime/cpu]: measured {ratio:.2f} x")


def _cli_check(run, tmp_path, cli, *budgets):
    # The default config's own budgets are cleared: each test states the ones it checks.
    cleared = ["check.min_accuracy=null", "check.max_accuracy_drop=null", "check.max_p90_ms={}",
               "check.max_size_mb=null", "check.max_p90_regression=null", "check.min_accuracy_delta=null"]
    sets = [*bench_fixture.BENCH, f"run.store={run['root']}", "benchmark.batch_sizes=[1]",
            f"check.junit={tmp_path / 'cli-junit.xml'}", *cleared, *budgets]
    args = ["run", "check", "-c", "configs/default.yaml"] + [a for s in sets for a in ("--set", s)]
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=300)


def test_cli_check_exits_5_on_a_tight_budget_and_commits_nothing(run, tmp_path, cli):
    from pipeline.store import Store
    before = {m.key for m in Store(run["root"]).entries("check")}
    done = _cli_check(run, tmp_path, cli, "check.max_size_mb=0.001")
    assert done.returncode == 5, done.stdout + done.stderr
    for stage in ("finetune", "distill", "prune", "quantize", "export", "benchmark", "report"):
        assert f"{stage:<10} cached" in done.stderr      # only the gate ran
    deployed = run["rows"][run["report"]["headline"]["deployed"]]
    expected = (f"FAIL max_size_mb: measured {deployed['size_bytes'] / 1e6:.3f} MB, limit <= 0.001 MB "
                f"({deployed['id']})")
    assert f"check: {expected}" in done.stderr
    assert f"edgeship: 1 budget(s) failed:\n  {expected}\nJUnit XML: {tmp_path / 'cli-junit.xml'}" in done.stderr
    failure = ET.parse(tmp_path / "cli-junit.xml").getroot().find("testsuite/testcase/failure")
    assert failure.get("message") == expected
    assert {m.key for m in Store(run["root"]).entries("check")} == before   # a failing gate is not cached


def test_cli_check_passes_on_loose_budgets_and_republishes_when_cached(run, tmp_path, cli):
    budgets = ("check.min_accuracy=50", "check.max_size_mb=100")
    done = _cli_check(run, tmp_path, cli, *budgets)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "check: 2 passed, 0 failed, 0 skipped" in done.stderr
    suite = ET.parse(tmp_path / "cli-junit.xml").getroot().find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "0"
    (tmp_path / "cli-junit.xml").unlink()             # a fresh CI checkout, the store cached
    again = _cli_check(run, tmp_path, cli, *budgets)
    assert again.returncode == 0 and "check      cached" in again.stderr
    assert "check: PASS min_accuracy: measured" in again.stderr
    assert ET.parse(tmp_path / "cli-junit.xml").getroot().find("testsuite").get("tests") == "2"


def _context(run, cfg, tmp_path):
    from pipeline.stages.base import Context
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return Context(cfg, {"report": run["manifests"]["report"]}, out, run["root"])


def _baseline_file(run, tmp_path, scale: float, **env) -> str:
    """The fixture's report as a baseline whose every latency sample is `scale` times this run's."""
    base = json.loads(json.dumps(run["report"]))
    for row in base["rows"]:
        if row.get("samples_us"):
            row["samples_us"] = [v * scale for v in row["samples_us"]]
            row["p90_ms"] *= scale
    base["environment"].update(env)
    base["noise_floor"] = None        # this run's own floor (measured on a busy host) still widens
    path = tmp_path / "baseline" / "report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(base))
    return str(path.parent)


ABSOLUTE_OFF = ("check.min_accuracy=null", "check.max_accuracy_drop=null", "check.max_p90_ms={}",
                "check.max_size_mb=null")


def test_relative_budgets_fail_a_regression_with_its_interval(run, tmp_path):
    # This run against a baseline five times as fast: every row's p90 grew fivefold.
    cfg = _cfg(run, tmp_path, *ABSOLUTE_OFF, f"check.baseline={_baseline_file(run, tmp_path, 0.2)}",
               "check.max_p90_regression=0.05", "check.min_accuracy_delta=-0.5")
    with pytest.raises(BudgetFailed) as info:
        STAGE.run(_context(run, cfg, tmp_path))
    failed = {v.name: v for v in info.value.failures}
    measured = [r for r in run["report"]["rows"] if r["status"] == "ok"]
    names = {f"max_p90_regression[{r['id']}]" for r in measured}
    # Every row fails unless this busy host's own noise floor widened its interval past the limit.
    assert failed and set(failed) <= names
    suite = ET.parse(tmp_path / "ci" / "junit.xml").getroot().find("testsuite")
    for case in (c for c in suite.iter("testcase") if c.get("name") in names):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert props["verdict"] == ("fail" if case.get("name") in failed else "inconclusive")
        assert (float(props["interval_low"]) > 1.05) == (case.get("name") in failed)
    v = next(iter(failed.values()))
    assert v.interval["low"] > 1.05 and v.measured == pytest.approx(5.0, rel=0.01)
    assert f"ratio {v.measured:.3f} [95% CI {v.interval['low']:.3f}, {v.interval['high']:.3f}]" in str(info.value)
    case = ET.parse(tmp_path / "ci" / "junit.xml").getroot().find(f"testsuite/testcase[@name='{v.name}']")
    assert f"[95% CI {v.interval['low']:.3f}" in case.find("failure").get("message")
    assert float(case.find("properties/property[@name='interval_low']").get("value")) == pytest.approx(
        v.interval["low"], rel=1e-5)


def test_relative_budgets_pass_against_the_same_run_and_refuse_another_machine(run, tmp_path):
    same = _cfg(run, tmp_path, *ABSOLUTE_OFF, f"check.baseline={_baseline_file(run, tmp_path, 1.0)}",
                "check.max_p90_regression=0.05", "check.min_accuracy_delta=-0.5")
    result = STAGE.run(_context(run, same, tmp_path))
    measured = sum(r["status"] == "ok" for r in run["report"]["rows"])
    statuses = {v["name"]: v["status"] for v in result.metrics["verdicts"]}
    assert result.metrics["fail"] == 0 and len(statuses) == 2 * measured
    # Against itself: accuracy is exact; latency passes or, widened by this busy host's floor, is
    # inconclusive (the default `check.inconclusive: warn` lets the gate pass).
    assert all(s == "pass" for n, s in statuses.items() if n.startswith("min_accuracy_delta"))
    assert all(s in ("pass", "inconclusive") for n, s in statuses.items() if n.startswith("max_p90"))
    other = _cfg(run, tmp_path, *ABSOLUTE_OFF, f"check.baseline={_baseline_file(run, tmp_path, 0.5, threads=64)}",
                 "check.max_p90_regression=0.05")
    result = STAGE.run(_context(run, other, tmp_path))
    assert result.metrics["not_comparable"] == measured and result.metrics["fail"] == 0
    assert all("threads: 64 -> 1" in v["message"] for v in result.metrics["verdicts"])


def test_no_baseline_skips_the_relative_budgets_with_a_note(run, tmp_path):
    cfg = _cfg(run, tmp_path, *ABSOLUTE_OFF, "check.baseline=null", "check.max_p90_regression=0.05")
    result = STAGE.run(_context(run, cfg, tmp_path))
    [v] = result.metrics["verdicts"]
    assert v["status"] == "skip" and v["message"] == (
        "SKIP max_p90_regression: no baseline: relative budgets skipped (set check.baseline to a "
        "report or 'last')")
    last = _cfg(run, tmp_path, *ABSOLUTE_OFF, "check.baseline=last", "check.max_p90_regression=0.05",
                f"run.store={tmp_path / 'empty-store'}")
    alone = _context(run, last, tmp_path)
    alone.store_root = tmp_path / "empty-store"      # a store holding no other report of this run
    [v] = STAGE.run(alone).metrics["verdicts"]
    assert v["status"] == "skip" and "no baseline yet: no other report of run 'default'" in v["message"]
    from runtimes.errors import ConfigError
    missing = _cfg(run, tmp_path, *ABSOLUTE_OFF, f"check.baseline={tmp_path / 'nowhere'}", "check.max_p90_regression=0.05")
    with pytest.raises(ConfigError, match="check.baseline '.*nowhere' holds no report"):
        STAGE.run(_context(run, missing, tmp_path))


def test_inconclusive_remeasure_asks_for_a_new_measurement_against_the_same_baseline(run, tmp_path):
    from pipeline.gate.remeasure import RemeasureNeeded
    # A baseline exactly 5% faster: every p90 ratio sits on the 1.05 limit, so its interval
    # straddles it.
    baseline = _baseline_file(run, tmp_path, 1 / 1.05)
    cfg = _cfg(run, tmp_path, *ABSOLUTE_OFF, f"check.baseline={baseline}",
               "check.max_p90_regression=0.05", "check.inconclusive=remeasure")
    with pytest.raises(RemeasureNeeded) as info:
        STAGE.run(_context(run, cfg, tmp_path))
    assert info.value.baseline == str(tmp_path / "baseline" / "report.json")
    assert info.value.subjects and set(info.value.subjects) <= set(run["rows"])
    assert info.value.exit_code == 5 and "inconclusive against" in str(info.value)


def test_run_gated_forces_the_benchmark_then_warns(run, tmp_path, caplog):
    from pipeline.config_check import Inconclusive
    from pipeline.gate.remeasure import RemeasureNeeded, run_gated
    cfg = _cfg(run, tmp_path, "check.baseline=last", "check.inconclusive=remeasure",
               "check.remeasure_times=2")
    calls = []

    def runner(cfg, target, force):     # the runner's signature; the check's answer is scripted
        calls.append((cfg.check.baseline, cfg.check.inconclusive, sorted(force)))
        if cfg.check.inconclusive == Inconclusive.remeasure:
            raise RemeasureNeeded(["onnx_fp32@onnxruntime/cpu/b1"], "/store/report/abc/report.json")
        return ["outcomes"]

    with caplog.at_level("WARNING"):
        assert run_gated(cfg, "check", frozenset({"prune"}), runner) == ["outcomes"]
    assert calls == [("last", Inconclusive.remeasure, ["prune"]),
                     ("/store/report/abc/report.json", Inconclusive.remeasure, ["benchmark"]),
                     ("/store/report/abc/report.json", Inconclusive.remeasure, ["benchmark"]),
                     ("/store/report/abc/report.json", Inconclusive.warn, [])]
    assert "re-measuring (1 of 2)" in caplog.text and "re-measuring (2 of 2)" in caplog.text
    assert "still inconclusive after 2 re-measurement(s)" in caplog.text


def test_a_cpu_burner_gives_no_false_fail_and_the_report_flags_the_host(run, tmp_path, cli):
    """The fixture's benchmark measured again, for real, while a process this test starts keeps one
    core busy: against the quiet run every verdict is pass, inconclusive or not comparable, never
    fail, and the new report flags the noisy host."""
    import shutil
    import sys
    store = tmp_path / "store"
    shutil.copytree(run["root"], store)     # --force benchmark must not touch the module's store
    baseline = run["manifests"]["report"].path_of("report_json").relative_to(run["root"])
    sets = [*bench_fixture.BENCH, f"run.store={store}", "benchmark.batch_sizes=[1]",
            f"check.baseline={store / baseline}", "check.max_p90_regression=0.05",
            "check.min_accuracy_delta=-0.5", "check.inconclusive=warn",
            f"check.junit={tmp_path / 'junit.xml'}", *ABSOLUTE_OFF]
    before = {p for stage in ("check", "report") for p in (store / stage).glob("*/*.json")}
    burner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 300\n"
                               "while time.time() < end:\n    pass\n"])
    try:
        done = subprocess.run(cli("run", "check", "-c", "configs/default.yaml", "--force", "benchmark",
                                  *[a for s in sets for a in ("--set", s)]),
                              capture_output=True, text=True, timeout=600)
    finally:
        burner.kill()
        burner.wait()
    assert done.returncode == 0, done.stderr[-3000:]
    # the entries this run made (earlier tests of this module left others in the store)
    [entry] = [p for p in (store / "check").glob("*/check.json") if p not in before]
    verdicts = json.loads(entry.read_text())
    latency = [v for v in verdicts if v["name"].startswith("max_p90_regression")]
    assert latency and all(v["status"] in ("pass", "inconclusive", "not comparable") for v in latency)
    assert all(v["status"] == "pass" for v in verdicts if v["name"].startswith("min_accuracy_delta"))
    [report] = [p for p in (store / "report").glob("*/report.json") if p not in before]
    noisy = json.loads(report.read_text())["noisy_host"]
    assert noisy["noisy"] and any("other processes" in r for r in noisy["reasons"]), noisy
    assert "host was noisy while this report was measured" in done.stderr
