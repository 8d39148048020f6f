"""Run the device runner on a target with one request, and bring its result.json home.

One round trip: the request goes in on stdin, the runner runs under the remote `timeout` (so a
run past targets.timeout_s is stopped on the device too, not only abandoned here), its log goes to
stderr, and result.json comes back on stdout only when the runner exited 0. The job folder is
removed either way. A result is used only when it parses and answers the request; anything else
(a killed runner, a dropped connection, a timeout) is a TargetError and no number is kept.
"""
from __future__ import annotations

import json
import shlex
import uuid

from pipeline.config_targets import Target
from pipeline.targets.ssh import TargetError, Transport, rpath

RESULT_VERSION = 1
STATUSES = ("ok", "failed", "unavailable")
GRACE_S = 30          # the local wait beyond the remote timeout: transfer and clean-up
KILL_AFTER_S = 10     # remote `timeout -k`: SIGKILL this long after SIGTERM is ignored
RUNNER = ("-m", "runtimes.device_runner")


def job_command(target: Target, runner_dir: str, job: str, program=RUNNER) -> str:
    """The shell command run in the work folder for one job (every value quoted)."""
    j = shlex.quote(job)
    run = " ".join([f'PYTHONPATH="$PWD"/{shlex.quote(runner_dir)}', "timeout", "-k", str(KILL_AFTER_S),
                    str(int(target.timeout_s)), rpath(target.python), *map(shlex.quote, program),
                    "--request", f"{j}/request.json", "--out", f"{j}/result.json"])
    return (f"cd {rpath(target.workdir)} && mkdir -p {j} && cat > {j}/request.json && "
            f"{{ {run} </dev/null 1>&2; rc=$?; if [ $rc -eq 0 ]; then cat {j}/result.json; fi; "
            f"rm -rf {j}; exit $rc; }}")


def _tail(err: str, lines: int = 3) -> str:
    return " | ".join(err.strip().splitlines()[-lines:])[-400:]


def run_job(transport: Transport, request: dict, runner_dir: str, program=RUNNER) -> dict:
    """The runner's result for `request`, checked against it; TargetError with the reason else."""
    t = transport.target
    job = f"jobs/{uuid.uuid4().hex[:16]}"
    command = job_command(t, runner_dir, job, program)
    try:
        done = transport.run(command, stdin=json.dumps(request).encode(), timeout=t.timeout_s + GRACE_S)
    except TargetError as e:
        # The connection dropped or the wait ran out: whatever the device did is not a result.
        _clean(transport, job)
        raise TargetError(f"{e}; nothing from this run was kept", "failed") from None
    if done.rc == 124 or done.rc == 137:
        raise TargetError(f"target '{t.name}': the runner ran past targets.timeout_s = "
                          f"{t.timeout_s:g} s and was stopped there; raise it (TensorRT engine "
                          "builds can take minutes) or measure fewer artifacts", "failed")
    if done.rc != 0:
        killed = f" (killed by signal {done.rc - 128})" if done.rc > 128 else ""
        raise TargetError(f"target '{t.name}': the runner exited with {done.rc}{killed}: "
                          f"{_tail(done.err) or 'no message'}", "failed")
    return check_result(done.out, request, t.name)


def _clean(transport: Transport, job: str) -> None:
    try:
        transport.run(f"cd {rpath(transport.target.workdir)} && rm -rf {shlex.quote(job)}",
                      timeout=transport.target.connect_timeout_s + 5)
    except TargetError:
        pass  # the device is gone; the stale job folder is cleared on a later run (ship.present)


def check_result(raw: bytes, request: dict, name: str) -> dict:
    """result.json parsed and checked: version, one entry per requested item with a known status,
    and latency rows for every item that says ok."""
    try:
        result = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise TargetError(f"target '{name}': result.json is not readable JSON ({e}); "
                          "nothing from this run was kept", "failed") from None
    if not isinstance(result, dict) or result.get("version") != RESULT_VERSION:
        got = result.get("version") if isinstance(result, dict) else type(result).__name__
        raise TargetError(f"target '{name}': result.json has version {got!r}, expected "
                          f"{RESULT_VERSION}; the runner and this pipeline differ", "failed")
    wanted = {item["name"] for item in request["items"]}
    items = result.get("items")
    if not isinstance(items, list):
        raise TargetError(f"target '{name}': result.json has no items list", "failed")
    for item in items:
        if not isinstance(item, dict) or item.get("name") not in wanted:
            raise TargetError(f"target '{name}': result.json answers an item that was not asked "
                              f"for ({str(item)[:80]})", "failed")
        if item.get("status") not in STATUSES:
            raise TargetError(f"target '{name}': item {item['name']} has status "
                              f"{item.get('status')!r}, not one of {', '.join(STATUSES)}", "failed")
        if item["status"] == "ok" and not isinstance(item.get("accuracy"), (int, float)):
            raise TargetError(f"target '{name}': item {item['name']} says ok but has no accuracy",
                              "failed")
        if item["status"] == "ok":
            for row in item.get("rows") or [None]:
                if not isinstance(row, dict) or not all(isinstance(row.get(k), (int, float))
                                                        for k in ("batch", "p50_ms", "p90_ms")):
                    raise TargetError(f"target '{name}': item {item['name']} says ok but has no "
                                      "complete latency rows", "failed")
    return result
