"""Targets over SSH, against a real sshd on 127.0.0.1 (tests/sshd_fixture.py).

The config section, the probe (`edgeship targets`), content-addressed uploads, remote jobs with
their faults (stopped server, refused key, unknown host key, no numpy, missing runtime, a
connection killed mid-run, a run past its timeout), rows, budgets and headlines of targets.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

import sshd_fixture
from pipeline.config_load import ConfigError, load_config

NO_SSHD = sshd_fixture.why_no_sshd()
needs_sshd = pytest.mark.skipif(NO_SSHD is not None, reason=NO_SSHD or "")


@pytest.fixture(scope="module")
def device_python():
    python, why = sshd_fixture.remote_venv()
    if python is None:
        pytest.skip(why)
    return python


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if NO_SSHD:
        pytest.skip(NO_SSHD)
    server = sshd_fixture.Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_probes():
    from pipeline.targets.probe import forget
    forget()


def _write_config(tmp_path, targets: list[dict]) -> Path:
    import yaml
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"targets": targets}))
    return path


# ---------------------------------------------------------------- config
def test_target_env_expansion_and_missing_variable(monkeypatch):
    monkeypatch.setenv("EDGESHIP_TEST_HOST", "jetson.lab")
    monkeypatch.setenv("EDGESHIP_TEST_PORT", "2222")
    cfg = load_config(None, ['targets=[{name: j, host: "${EDGESHIP_TEST_HOST}", port: "${EDGESHIP_TEST_PORT}"}]'])
    assert (cfg.targets[0].host, cfg.targets[0].port, cfg.targets[0].workdir) == ("jetson.lab", 2222, "~/.edgeship")
    monkeypatch.delenv("EDGESHIP_TEST_HOST")
    with pytest.raises(ConfigError, match=r"targets\[0\]\.host .*environment variable EDGESHIP_TEST_HOST, "
                                          r"which is not set; export EDGESHIP_TEST_HOST="):
        load_config(None, ['targets=[{name: j, host: "${EDGESHIP_TEST_HOST}"}]'])


@pytest.mark.parametrize("item, message", [
    ("[{name: j}]", "kind ssh and needs a host"),
    ("[{name: j, host: a}, {name: j, host: b}]", "the name(s) j appear more than once"),
    ("[{name: j, host: '-oProxyCommand=x'}]", "must not be empty, start with '-'"),
    ("[{name: j, host: a, runtimes: [tensorflow]}]", "expected one of 'tensorrt', 'onnxruntime' or 'openvino'"),
    ("[{name: j, host: a, devices: ['GPU 0']}]", "a device is a short lower-case name"),
])
def test_bad_targets_are_config_errors(item, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"targets={item}"])
    assert message in str(e.value)


def test_default_configs_have_no_targets_and_keep_their_benchmark_key():
    from pipeline.stages.benchmark import params
    cfg = load_config("configs/default.yaml")
    assert cfg.targets == [] and "targets" not in params(cfg)
    assert load_config("configs/jetson.yaml").targets == []


def test_ssh_command_is_an_argument_list_with_host_key_checks(tmp_path):
    from pipeline.targets.ssh import Transport
    cfg = load_config(None, ["targets=[{name: j, host: 'jet;rm', user: nvidia, port: 2222, "
                             "identity_file: /k, known_hosts: /kh}]"])
    argv = Transport(cfg.targets[0]).argv("echo hi")
    assert argv[:3] == ["ssh", "-o", "BatchMode=yes"] and "StrictHostKeyChecking=yes" in argv
    assert "UserKnownHostsFile=/kh" in argv and argv[argv.index("-p") + 1] == "2222"
    assert argv[-3:] == ["--", "jet;rm", "echo hi"]      # the host is one argument, after "--"


# ---------------------------------------------------------------- probe / `edgeship targets`
@needs_sshd
def test_probe_reports_versions_and_a_stable_fingerprint(sshd, device_python):
    from pipeline.targets.probe import probe
    first, second = probe(sshd.target(python=str(device_python))), probe(sshd.target(python=str(device_python)))
    assert first.problem is None and first.runtime_problems == {}
    assert re.fullmatch(r"\d+\.\d+\.\d+", first.facts["python"])
    assert re.fullmatch(r"\d+\.\d+.*", first.facts["numpy"]["version"])
    assert first.facts["runtimes"]["onnxruntime"]["version"].startswith("1.")
    assert re.fullmatch(r"[0-9a-f]{64}", first.fingerprint) and first.fingerprint == second.fingerprint


@needs_sshd
def test_cli_targets_ok_then_each_fault_with_its_fix(sshd, device_python, tmp_path, cli):
    good = sshd.target(python=str(device_python), required=True).model_dump(mode="json")
    bad_key = {**good, "name": "badkey", "identity_file": str(sshd.other_key)}
    empty_kh = tmp_path / "empty_known_hosts"
    empty_kh.write_text("")
    unknown = {**good, "name": "hostkey", "known_hosts": str(empty_kh)}
    no_numpy = {**good, "name": "nonumpy", "python": str(sshd_fixture.bare_venv())}
    no_python = {**good, "name": "nopython", "python": "/nonexistent/python3"}
    no_ov = {**good, "name": "noov", "runtimes": ["onnxruntime", "openvino"]}
    down = {**good, "name": "down", "port": sshd_fixture._free_port()}
    ok = subprocess.run(cli("targets", "-c", str(_write_config(tmp_path, [good]))), capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert re.search(r"loopback\s+ssh\s+required ok\s+python \d.*numpy \d.*onnxruntime 1\.\d+", ok.stdout)
    p = subprocess.run(cli("targets", "-c", str(_write_config(tmp_path, [good, bad_key, unknown, no_numpy,
                                                                         no_python, no_ov, down]))),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 8, p.stderr
    lines = dict(line.split(None, 1) for line in p.stdout.splitlines())
    assert "the key was refused" in lines["badkey"] and "ssh-copy-id -i" in lines["badkey"]
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty_kh}" in lines["hostkey"]
    assert "has no numpy" in lines["nonumpy"] and "-m pip install numpy" in lines["nonumpy"]
    assert "no Python at targets.python '/nonexistent/python3'" in lines["nopython"]
    assert "MISSING openvino is not importable" in lines["noov"] and "pip install openvino" in lines["noov"]
    assert "unreachable" in lines["down"] and "Connection refused" in lines["down"]
    assert "edgeship: required target(s) badkey, hostkey, nonumpy, nopython, noov, down cannot be measured" in p.stderr


# ---------------------------------------------------------------- uploads
@needs_sshd
def test_upload_once_content_addressed_and_a_killed_upload_looks_incomplete(sshd, tmp_path):
    from pipeline.targets.ship import Upload, present, ship
    from pipeline.targets.ssh import Transport
    target = sshd.target(workdir=str(tmp_path / "work"))
    t = Transport(target)
    src = tmp_path / "bundle"
    (src / "sub").mkdir(parents=True)
    (src / "model.onnx").write_bytes(b"\x01" * 5000)
    (src / "sub" / "x.txt").write_text("x")
    npz = tmp_path / "abc.npz"
    npz.write_bytes(b"npz-bytes")
    uploads = [Upload("bundles/abc", src, "onnx_fp32"), Upload("val/abc.npz", npz)]
    assert ship(t, target.workdir, uploads, 60)["sent"] == ["bundles/abc", "val/abc.npz"]
    again = ship(t, target.workdir, uploads, 60)
    assert again == {"sent": [], "present": ["bundles/abc", "val/abc.npz"]}
    work = tmp_path / "work"
    assert (work / "bundles/abc/onnx_fp32/model.onnx").read_bytes() == b"\x01" * 5000
    assert (work / "bundles/abc/onnx_fp32/sub/x.txt").read_text() == "x"
    assert (work / "val/abc.npz").read_bytes() == b"npz-bytes"
    # An upload killed mid-way leaves a .partial-* folder without the marker, never the item.
    partial = work / "bundles" / ".partial-zzzz"
    (partial / "onnx_fp32").mkdir(parents=True)
    assert present(t, target.workdir, [Upload("bundles/zzzz", src, "onnx_fp32")]) == set()
    # A stream that breaks off (tar gets half an archive) leaves no item either.
    broken = t.run(f"cd {work} && mkdir -p bundles && tmp=$(mktemp -d bundles/.partial-XXXXXX) && "
                   '{ tar -xf - -C "$tmp" || { rm -rf "$tmp"; exit 1; }; }', stdin=b"not a tar")
    assert broken.rc == 1 and sorted(p.name for p in (work / "bundles").iterdir()) == [".partial-zzzz", "abc"]


# ---------------------------------------------------------------- remote jobs and their faults
_FAKE = ("import json, sys, time; a = sys.argv; req = json.load(open(a[a.index('--request') + 1])); "
         "time.sleep(float(req.get('sleep', 0))); "
         "json.dump({'version': 1, 'items': [{'name': i['name'], 'status': 'ok', 'accuracy': 91.5, "
         "'rows': [{'batch': 1, 'p50_ms': 1.0, 'p90_ms': 1.5}]} for i in req['items']]}, "
         "open(a[a.index('--out') + 1], 'w'))")


def _job(sshd, tmp_path, program, request=None, **target):
    from pipeline.targets.remote import run_job
    from pipeline.targets.ssh import Transport
    t = Transport(sshd.target(workdir=str(tmp_path / "work"), **target))
    (tmp_path / "work" / "runner").mkdir(parents=True, exist_ok=True)
    return run_job(t, request or {"version": 1, "items": [{"name": "a"}]}, "runner", program)


@needs_sshd
def test_job_result_comes_home_and_the_job_folder_goes(sshd, tmp_path):
    result = _job(sshd, tmp_path, ("-c", _FAKE))
    assert result["items"] == [{"name": "a", "status": "ok", "accuracy": 91.5,
                                "rows": [{"batch": 1, "p50_ms": 1.0, "p90_ms": 1.5}]}]
    assert list((tmp_path / "work" / "jobs").iterdir()) == []


@needs_sshd
def test_job_past_its_timeout_is_stopped_on_the_device(sshd, tmp_path):
    import time
    from pipeline.targets.ssh import TargetError
    t0 = time.time()
    with pytest.raises(TargetError) as e:
        _job(sshd, tmp_path, ("-c", _FAKE), {"version": 1, "items": [{"name": "a"}], "sleep": 60}, timeout_s=2)
    assert e.value.status == "failed" and "ran past targets.timeout_s = 2 s" in str(e.value)
    assert time.time() - t0 < 20 and list((tmp_path / "work" / "jobs").iterdir()) == []


@needs_sshd
def test_connection_killed_mid_run_keeps_nothing(sshd, tmp_path):
    import threading
    import time
    from pipeline.targets.ssh import TargetError
    killed = []
    threading.Timer(2.0, lambda: killed.append(sshd.kill_sessions())).start()
    t0 = time.time()
    with pytest.raises(TargetError) as e:
        _job(sshd, tmp_path, ("-c", _FAKE), {"version": 1, "items": [{"name": "a"}], "sleep": 60})
    assert killed and killed[0] >= 1 and time.time() - t0 < 30
    assert e.value.status == "failed" and "nothing from this run was kept" in str(e.value)


@pytest.mark.parametrize("script, message", [
    ("import sys; sys.stderr.write('Traceback: boom\\n'); sys.exit(3)", "the runner exited with 3: Traceback: boom"),
    ("import sys; a = sys.argv; open(a[a.index('--out') + 1], 'w').write('{\"version\": 1, \"items\": [{\"name\": \"a\", \"status\": \"ok\", \"accuracy\": 1.0}]}')",
     "item a says ok but has no complete latency rows"),
    ("import sys; a = sys.argv; open(a[a.index('--out') + 1], 'w').write('{\"vers')", "result.json is not readable JSON"),
])
@needs_sshd
def test_broken_runner_results_are_refused(sshd, tmp_path, script, message):
    from pipeline.targets.ssh import TargetError
    with pytest.raises(TargetError) as e:
        _job(sshd, tmp_path, ("-c", script))
    assert e.value.status == "failed" and message in str(e.value)


# ---------------------------------------------------------------- rows, budgets, headlines
def _candidate(tmp_path):
    from pipeline.artifact import Format
    from pipeline.measure.artifacts import Candidate
    bundle = tmp_path / "export" / "onnx_int8"
    bundle.mkdir(parents=True)
    (bundle / "model.onnx").write_bytes(b"m" * 1000)
    manifest = SimpleNamespace(outputs={"onnx_int8": SimpleNamespace(metadata={"bundle_sha256": "ab" * 32})},
                               path_of=lambda name: bundle)
    return Candidate("onnx_int8", "quantize", "onnx_int8", Format.onnx, "int8", bundle / "model.onnx",
                     "cd" * 32, "pruned", None, manifest=manifest)


@needs_sshd
def test_unreachable_and_no_numpy_targets_give_their_rows_the_reason(sshd, tmp_path):
    from pipeline.measure.remote_rows import remote_rows
    cfg = load_config(None, [])
    down = sshd.target(name="down", port=sshd_fixture._free_port(), required=True)
    bare = sshd.target(name="bare", python=str(sshd_fixture.bare_venv()), devices=["cpu", "cuda"])
    cfg.targets = [down, bare]
    rows = remote_rows([_candidate(tmp_path)], cfg, val=None, log=lambda m: None)
    assert [(r["device"], r["status"], r["batch"]) for r in rows] == [
        ("down/cpu", "unavailable", None), ("bare/cpu", "unavailable", None), ("bare/cuda", "unavailable", None)]
    assert "unreachable" in rows[0]["reason"] and rows[0]["target_required"] is True
    assert "has no numpy" in rows[1]["reason"] and rows[1]["id"] == "onnx_int8@onnxruntime/bare/cpu/b-"


@needs_sshd
def test_missing_runner_is_a_reason_not_a_crash(sshd, device_python, tmp_path, monkeypatch):
    from pipeline.measure import remote_rows as rr
    monkeypatch.setattr(rr, "RUNNER_FILE", tmp_path / "runtimes" / "device_runner.py")  # an old checkout
    cfg = load_config(None, [])
    cfg.targets = [sshd.target(python=str(device_python))]
    rows = rr.remote_rows([_candidate(tmp_path)], cfg, val=None, log=lambda m: None)
    assert [(r["status"], r["reason"]) for r in rows] == [("unavailable", rr.NO_RUNNER)]
    assert re.fullmatch(r"[0-9a-f]{64}", rows[0]["target_fingerprint"])


def _report(rows):
    return {"rows": rows, "headline": None, "settings": {"deploy_tolerance": 1.0}}


def _row(artifact, runtime, device, p90, status="ok", target=None, required=False, acc=90.0, reason=None):
    return {"id": f"{artifact}@{runtime}/{device}/b1", "artifact": artifact, "runtime": runtime,
            "device": device, "batch": 1, "status": status, "format": "onnx", "accuracy": acc,
            "p50_ms": p90 and p90 * 0.8, "p90_ms": p90, "p99_ms": p90, "size_bytes": 1000,
            "target": target, "target_required": required, "reason": reason, "energy_mj": 12.5}


def test_budgets_name_a_target_and_a_required_target_must_be_measured():
    from pipeline.config import Check
    from pipeline.gate.budgets import evaluate
    rows = [_row("onnx_int8", "onnxruntime", "loopback/cpu", 1.8, target="loopback", required=True),
            _row("onnx_fp32", "onnxruntime", "loopback/cpu", 2.5, target="loopback", required=True),
            _row("onnx_int8", "onnxruntime", "jetson/cuda", None, "unavailable", "jetson", True,
                 reason="target 'jetson': unreachable")]
    verdicts = {v.name: v for v in evaluate(_report(rows), Check(max_p90_ms={"onnxruntime/loopback": 2.0,
                                                                            "onnxruntime/loopback/cpu": 1.5}))}
    assert verdicts["max_p90_ms[onnxruntime/loopback]"].status == "pass"
    assert verdicts["max_p90_ms[onnxruntime/loopback]"].measured == 1.8
    assert verdicts["max_p90_ms[onnxruntime/loopback/cpu]"].status == "fail"
    assert verdicts["required_target[loopback]"].status == "pass"
    assert verdicts["required_target[jetson]"].status == "fail"
    assert "required target 'jetson' was not measured: target 'jetson': unreachable" in \
        verdicts["required_target[jetson]"].message


def test_each_target_gets_its_own_headline_with_energy():
    from pipeline.render.tables import MEASURED_HEADERS, headline_table, measured
    from pipeline.report.headline import headlines
    teacher = {**_row("teacher", "torch", "cpu", 10.0, acc=92.0), "format": "torch"}
    local = _row("onnx_int8", "onnxruntime", "cpu", 2.0, acc=91.5)
    remote = [_row("onnx_int8", "onnxruntime", "loopback/cpu", 3.0, target="loopback", acc=91.4),
              _row("onnx_fp32", "onnxruntime", "loopback/cpu", 2.5, target="loopback", acc=89.0)]
    heads = headlines([teacher, local, *remote], "cpu", 1.0)
    assert [h["target"] for h in heads] == ["cpu", "loopback"]
    h = heads[1]
    assert h["deployed"] == "onnx_int8@onnxruntime/loopback/cpu/b1" and h["speedup_p90"] is None
    assert "12.5 mJ per batch" in h["text"] and "no speed-up is quoted" in h["text"]
    assert headline_table(h)[1] == ["p90 latency (ms)", "-", "3.000", ""]
    line = measured({"rows": [{**remote[0], "stage": "quantize", "precision": "int8", "mean_ms": 2.0,
                               "throughput_ips": 300.0}]})[0]
    assert line[MEASURED_HEADERS.index("Energy mJ")] == "12.5"


# ---------------------------------------------------------------- end to end
@needs_sshd
def test_loopback_target_end_to_end(sshd, device_python, tiny_store, tmp_path, cli):
    """The tiny pipeline with a loopback target: the device runner, shipped with the bundles,
    scores each ONNX bundle on the "device" exactly as onnxruntime scores it here."""
    import shutil

    import numpy as np
    import yaml
    from conftest import TINY_CONFIG
    from runtimes.stats import SAMPLE_LIMIT
    shutil.copytree(tiny_store, tmp_path / "runs")       # the stages up to export are cached there
    cfg = yaml.safe_load(open(TINY_CONFIG))
    cfg["targets"] = [sshd.target(python=str(device_python)).model_dump(mode="json")]
    cfg["benchmark"]["runtimes"] = ["torch", "onnxruntime"]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run(cli("run", "benchmark", "-c", str(path), "--set", f"run.store={tmp_path / 'runs'}"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [results] = [p for p in (tmp_path / "runs" / "benchmark").glob("*/results.json")
                 if not (tiny_store / p.relative_to(tmp_path / "runs")).exists()]
    document = json.loads(results.read_text())
    rows = {r["id"]: r for r in document["rows"]}
    from pipeline.gate import intervals
    widen = intervals.margin(document["noise_floor"], "p50")

    def protocol(row: dict) -> str:
        # The timing protocol in a row's methodology (runtimes.harness), without the run count,
        # which depends on how fast the runs were, and without the minimums: a local row spreads
        # them over interleaved rounds (pipeline.measure.rounds), the device runner times a
        # remote row in one block of the whole minimums.
        [text] = re.findall(r"\d+ warm-up runs, .*?\(includes loading\)\.", row["methodology"])
        text = re.sub(r"\(\d+ runs, [\d.]+ s\)", "(N runs)", text)
        return re.sub(r"at least \d+ runs and [\d.]+ s of timed inference", "at least the minimums", text)

    for name in ("onnx_fp32", "onnx_int8"):
        here, there = rows[f"{name}@onnxruntime/cpu/b1"], rows[f"{name}@onnxruntime/loopback/cpu/b1"]
        assert there["status"] == "ok" and there["accuracy"] == here["accuracy"]
        assert there["accuracy_images"] == here["accuracy_images"]
        assert there["p90_ms"] > 0 and there["runtime_version"] == here["runtime_version"]
        # the same bytes, measured the same way, on the target named as the device
        assert (there["target"], there["device"]) == ("loopback", "loopback/cpu") and there["target_fingerprint"]
        assert (there["sha256"], there["batch"], there["threads"]) == (here["sha256"], here["batch"], here["threads"])
        assert there["bundle_check"]["passed"]       # the device's outputs match the golden ones
        # the fields the baseline gate compares data by: remote rows are judged like local ones
        assert (there["val_split"], there["input_size"]) == (here["val_split"], here["input_size"])
        # How fast the device is relative to here is a benchmark's question, not a unit test's: on
        # a loaded host the remote/local p50 ratio was 3.1 with nothing wrong, and the run's A/A
        # floor measures drift inside one process while the runner is another. What this test can
        # show without a clock is that the remote p50 times the model, not the transport:
        # - the runner timed it with the protocol the local row was timed with (the same warm-up
        #   and minimums, each run timed around session.run() + sync() on the device), not a
        #   wall clock around the SSH job;
        assert protocol(there) == protocol(here)
        assert there["methodology"].startswith("Measured on target 'loopback' ") and \
            "by the device runner" in there["methodology"]
        # - its samples are those timed runs, at least min_iterations of them in one SSH job: one
        #   per run (all kept below SAMPLE_LIMIT runs, a subset beyond), summing to the timed total
        #   (each rounded to 1 us), and its p50 is their median.
        samples = there["samples_us"]
        assert there["samples_total"] == there["iterations"] >= cfg["benchmark"]["min_iterations"]
        assert len(samples) == min(there["samples_total"], SAMPLE_LIMIT)
        if len(samples) == there["samples_total"]:
            assert sum(samples) == pytest.approx(there["total_s"] * 1e6, abs=len(samples))
            assert there["p50_ms"] == pytest.approx(float(np.median(samples)) / 1e3, abs=1e-3)
        # - and it is judged with intervals like a local row: per-run samples give it a p50
        #   interval and a ratio to the local row.
        ratio = intervals.ratio(there, here, "p50", widen)
        assert ratio is not None and ratio.low <= ratio.estimate <= ratio.high
        assert intervals.percentile(there, "p50") is not None
