"""The GPU check's one JSON summary, read from what its steps left: the store's manifests and
results, the pytest JUnit XML, the logs, and a CPU record of the same stages when one exists.

Reads files only (no torch, no pydantic), so it runs, and is tested, anywhere.
"""
from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline.stage_order import STAGE_NAMES  # noqa: E402  (imports nothing itself)

SCHEMA = 1
ROW_FIELDS = ("id", "artifact", "precision", "runtime", "device", "batch", "status", "p50_ms",
              "p90_ms", "accuracy", "agreement_reference", "compile_s", "reason")
LINES = 12             # lines kept of each failure
PIPELINE_LOG, TESTS_LOG, TESTS_XML = "pipeline.log", "gpu-tests.log", "gpu-tests.xml"
TESTS_STEP = "gpu_tests"    # every other step is an `edgeship run` with its log


def is_cuda(device: str) -> bool:
    """"cuda", "cuda:1" and "cuda-graph" are CUDA devices; a remote target's are not this GPU."""
    return "/" not in device and device.lower().split(":", 1)[0].split("-", 1)[0] == "cuda"


def entries(store: Path) -> list[tuple[str, dict]]:
    """(label, manifest) of every committed entry in `store`, in pipeline order and, within a
    stage, in the order they finished. A stage's later entries (the torch_compile pass runs the
    benchmark again) are labelled with their runtimes: `benchmark[torch_compile]`."""
    out = []
    for stage in STAGE_NAMES:
        found = []
        for path in (store / stage).glob("*/manifest.json"):
            try:
                found.append(json.loads(path.read_text()) | {"_dir": str(path.parent)})
            except (OSError, ValueError):
                continue
        found.sort(key=lambda m: m.get("timings", {}).get("finished", 0))
        for i, m in enumerate(found):
            runtimes = ",".join(m.get("params", {}).get("benchmark", {}).get("runtimes", []))
            out.append((stage if i == 0 else f"{stage}[{runtimes or i + 1}]", m))
    return out


def stage_times(found: list[tuple[str, dict]]) -> dict[str, float]:
    return {label: m["timings"]["seconds"] for label, m in found if "seconds" in m.get("timings", {})}


def compare_stages(cuda: dict[str, float], record: dict | None) -> list[dict]:
    """Each stage that ran here, its seconds beside the CPU record's, and CPU time over this one."""
    cpu = (record or {}).get("stages", {})
    out = []
    for stage, seconds in cuda.items():
        row = {"stage": stage, "cuda_s": seconds, "cpu_s": cpu.get(stage), "cpu_over_cuda": None}
        if row["cpu_s"] is not None and seconds > 0:
            row["cpu_over_cuda"] = round(row["cpu_s"] / seconds, 2)
        out.append(row)
    return out


def results_of(found: list[tuple[str, dict]]) -> dict | None:
    """The rows of every benchmark entry together, or None when the benchmark never finished."""
    rows, seen = [], False
    for _, m in found:
        path = Path(m["_dir"]) / "results.json"
        if m.get("stage") == "benchmark" and path.is_file():
            rows += json.loads(path.read_text()).get("rows", [])
            seen = True
    return {"rows": rows} if seen else None


def cuda_rows(results: dict | None) -> list[dict]:
    """Every benchmark row on a CUDA device: latency and accuracy, or its status and reason."""
    rows = (results or {}).get("rows", [])
    return [{k: r.get(k) for k in ROW_FIELDS} for r in rows if is_cuda(r.get("device", ""))]


def row_counts(results: dict | None) -> dict[str, int]:
    rows = (results or {}).get("rows", [])
    return {s: sum(r.get("status") == s for r in rows) for s in ("ok", "unavailable", "failed")}


def headline(found: list[tuple[str, dict]]) -> dict | None:
    """The report's headline (the deployed model vs the teacher on the config's target)."""
    path = next((Path(m["_dir"]) / "report.json" for _, m in found if m.get("stage") == "report"), None)
    if not path or not path.is_file():
        return None
    return json.loads(path.read_text()).get("headline")


def first_lines(text: str, n: int = LINES) -> list[str]:
    return [line for line in text.strip().splitlines() if line.strip()][:n]


def pipeline_failure(log: Path, rc: int | None, where: str = "pipeline") -> dict | None:
    """The stage that was running when an `edgeship run` stopped, and the end of its log (an
    `edgeship: ...` line, or a traceback ending in the exception)."""
    if rc == 0:
        return None
    text = log.read_text(errors="replace") if log.is_file() else ""
    running = re.findall(r"^(\w+)\s+running\s+key", text, re.M)
    done = set(re.findall(r"^(\w+)\s+done\s+key", text, re.M))
    stage = next((s for s in reversed(running) if s not in done), None)
    lines = [line for line in text.splitlines() if line.strip()]
    start = max((i for i, line in enumerate(lines) if line.startswith("Traceback")), default=None)
    tail = lines[start:] if start is not None else lines
    what = ("timed out" if rc is None else f"exit {rc}") + (f" in {stage}" if stage else "")
    return {"where": where, "what": what, "lines": tail[-LINES:]}


def junit(xml_path: Path) -> tuple[dict, list[dict]]:
    """(counts and skip reasons, failures) of a pytest JUnit XML file."""
    if not xml_path.is_file():
        return {"ran": False}, []
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    skips, failures = [], []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
        outcome = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts["passed"] += 1
        elif outcome.tag == "skipped":
            counts["skipped"] += 1
            skips.append({"test": test, "reason": outcome.get("message", "")})
        else:
            counts["failed" if outcome.tag == "failure" else "errors"] += 1
            failures.append({"where": "gpu tests", "what": test,
                             "lines": first_lines(f"{outcome.get('message', '')}\n{outcome.text or ''}")})
    return {"ran": True, **counts, "skips": skips}, failures


def row_failures(results: dict | None) -> list[dict]:
    return [{"where": "benchmark", "what": r["id"], "lines": first_lines(str(r.get("reason")))}
            for r in (results or {}).get("rows", []) if r.get("status") == "failed"]


def build(machine: dict, steps: dict[str, dict], store: Path, logs: Path, record: dict | None,
          record_path: Path, extra_failures: list[dict] = (), **more) -> dict:
    """The summary of one GPU check. `steps` holds each step's record (rc, seconds, log, ...);
    `logs` is the folder holding the steps' logs and gpu-tests.xml."""
    found = entries(store)
    results = results_of(found)
    tests, test_failures = junit(logs / TESTS_XML)
    failures = list(extra_failures)
    for name, step in steps.items():
        if name != TESTS_STEP and "log" in step:
            failure = pipeline_failure(logs / step["log"], step["rc"], name)
            failures += [failure] if failure else []
    failures += row_failures(results) + test_failures
    rc, tests_log = steps.get(TESTS_STEP, {"rc": 0})["rc"], logs / TESTS_LOG
    if rc != 0 and not test_failures:   # a timeout, a crash or nothing selected: no failure in the XML
        what = "timed out" if rc is None else f"pytest exit {rc}" + (" (no test selected)" if rc == 5 else "")
        text = tests_log.read_text(errors="replace") if tests_log.is_file() else ""
        failures.append({"where": "gpu tests", "what": what, "lines": text.strip().splitlines()[-LINES:]})
    return {"schema": SCHEMA, "machine": machine, "steps": steps,
            "stages": compare_stages(stage_times(found), record),
            "cpu_record": ({"path": str(record_path), **{k: v for k, v in record.items() if k != "stages"}}
                           if record else f"none at {record_path}: CPU times not compared"),
            "cuda_rows": cuda_rows(results), "rows": row_counts(results),
            "headline": headline(found), "gpu_tests": tests, "failures": failures, **more}


def read_record(path: Path) -> dict | None:
    """A CPU record (`gpu_check.py --record-cpu`), or None when there is none or it is unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("stages"), dict) else None


def write(summary: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    return path
