"""The torch_compile runtime: same logits as eager PyTorch, compile time apart from latency,
and measured by the benchmark beside the other runtimes."""
import numpy as np
import pytest

import runtimes
from runtimes import torch_compile_runtime as tc

pytestmark = pytest.mark.skipif(tc.unavailable("cpu") is not None, reason=str(tc.unavailable("cpu")))


@pytest.fixture(scope="module")
def tiny():
    import torch
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()


def test_compiled_logits_match_eager_and_compile_time_is_reported_once_per_shape(tiny):
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    eager = runtimes.get("torch").load(tiny, "cpu", 1).run(x)
    session = tc.load(tiny, "cpu", 1)
    assert session.settings["compile_seconds"] is None          # nothing compiled before a call
    np.testing.assert_allclose(session.run(x), eager, atol=1e-4)
    first = session.settings["compile_seconds"]
    assert first > 0 and session.settings["compiled_shapes"] == [[1, 3, 16, 16]]
    session.run(x)
    assert session.settings["compile_seconds"] == first         # the same shape does not recompile
    assert not any(p.is_cuda for p in tiny.parameters()) and not tiny.training  # caller's module untouched


def test_benchmark_measures_torch_models_with_torch_compile_and_keeps_compile_out_of_latency(tiny):
    from pipeline.config import Benchmark
    from pipeline.measure.targets import targets_for
    from runtimes.execution import open_model
    from runtimes.harness import measure

    assert ("torch_compile", "cpu") in {(t.runtime, t.device) for t in targets_for("torch", Benchmark())}
    loaded = open_model(tiny, "torch", "torch_compile", "cpu", threads=1)
    assert loaded.chunk(64) == 1                                  # scoring reuses the latency shape
    x = np.zeros((1, 3, 20, 20), np.float32)                      # a shape not compiled before
    stats = measure(loaded.session, x, warmup=1, min_iterations=5, min_seconds=0.0)
    compile_s = loaded.settings["compile_seconds"]
    assert compile_s > 0 and stats.max_ms / 1e3 < compile_s     # the compiling call was warm-up


CHILD = """
import json, os
import numpy as np, torch
from runtimes import torch_compile_runtime as tc
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                        torch.nn.Conv2d(8, 16, 3, padding=1, groups=8), torch.nn.ReLU6(),
                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
try:
    out = tc.load(m, "cpu", 1).run(x)
    with torch.no_grad():
        result = {"max_abs": float(np.abs(out - m(torch.from_numpy(x)).numpy()).max())}
except Exception as exc:
    result = {"error": f"{type(exc).__name__}: {exc}", "exit_code": getattr(exc, "exit_code", None)}
result["cache"] = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
print(json.dumps(result))
"""


def test_kernels_cached_under_another_cpu_capability_are_not_reused_or_are_refused(tmp_path):
    # torch 2.14's inductor cache does not key its CPU kernels by ATEN_CPU_CAPABILITY: AVX-512
    # kernels reused under ATEN_CPU_CAPABILITY=avx2 gave NaN or wrong logits. The runtime gives a
    # capability set by hand its own cache folder, and checks every first call against eager.
    import json
    import os
    import shutil
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "TORCHINDUCTOR_CACHE_DIR")}

    def child(**env):
        done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300,
                              env={**base, "TMPDIR": str(tmp_path), **env})
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = child()                                         # fills the default cache (this CPU's kernels)
    assert first["max_abs"] < 1e-4
    avx2 = child(ATEN_CPU_CAPABILITY="avx2")
    assert avx2["max_abs"] < 1e-4 and avx2["cache"] == f"{first['cache']}-avx2"
    chosen = str(tmp_path / "chosen")                        # a folder chosen by hand is kept ...
    shutil.copytree(first["cache"], chosen)                  # (holding this CPU's kernels)
    reused = child(TORCHINDUCTOR_CACHE_DIR=chosen, ATEN_CPU_CAPABILITY="avx2")
    assert reused["cache"] == chosen
    if "error" in reused:                                    # ... and a wrong kernel is refused, not measured
        assert reused["exit_code"] == 6
        assert reused["error"].startswith("ParityError: torch.compile's output differs from eager PyTorch "
                                          "on the same batch: max |Δ| = ")
        assert f"inductor's kernel cache is {chosen}, and kernels it cached under another " in reused["error"]
    else:
        assert reused["max_abs"] < 1e-4
