"""OpenVINO leaves the main thread a usable signal stack, however its sessions are made and freed.

Each `openvino.Core`'s CPU plugin swaps the thread's alternate signal stack for one it maps, and
puts back the one it found when it dies; Cores freed out of order left the stack pointing at
unmapped memory, and the next handled signal killed the process with a silent SIGSEGV (the whole
suite in one interpreter died at the first subprocess after the OpenVINO tests). The check runs in
a child process with faulthandler on, as pytest has it, so a regression is an exit code here.
"""
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("openvino")

CHILD = textwrap.dedent("""
    import ctypes, faulthandler, gc, signal
    faulthandler.enable()
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    from runtimes import openvino_runtime

    class Stack(ctypes.Structure):
        _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

    def stack_is_mapped():
        st = Stack()
        assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(st)) == 0
        for line in open("/proc/self/maps"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= st.sp < hi:
                return True
        return False

    def model():
        x = ops.parameter([1, 3, 4, 4], np.float32)
        return ov.Model([ops.relu(x)], [x])

    openvino_runtime.devices()                          # each of these used to make its own Core
    first = openvino_runtime.load(model(), "cpu", threads=1)
    second = openvino_runtime.load(model(), "cpu", threads=1, inference_precision="f32")
    openvino_runtime.pinned_options("fp16", "cpu")
    first.run(np.ones((1, 3, 4, 4), np.float32))
    del first                                           # freed in the order they were made
    gc.collect()
    del second
    gc.collect()
    print("mapped" if stack_is_mapped() else "unmapped", flush=True)
    got = []
    signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))   # Python handlers use the alt stack
    signal.raise_signal(signal.SIGUSR1)
    print("handled", len(got), flush=True)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_sessions_made_and_freed_leave_a_mapped_signal_stack():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"child exited {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.split("\n")[:2] == ["mapped", "handled 1"], done.stdout
