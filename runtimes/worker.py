"""A process that holds models of one runtime and runs or times them on request.

The benchmark measures each runtime in a process of its own (pipeline.measure.workers starts
them): one runtime's threads, allocator and caches then cannot change another's numbers, and a
file runtime's process imports only that runtime (this module and runtimes/ are torch-free; a
torch model arriving pickled brings torch in). Models are loaded and run through the same
`open_model` and timed by the same `measure` as everywhere else.

Requests are tuples on a multiprocessing connection; every reply is ("ok", value) or
("error", "Type: message", traceback text):
    ("open", key, model, format, runtime, device, threads, precision, pin)
                                            -> {"settings", "fixed_batch", "chunk_limit", "peak_rss_scope", "cuda_events"}
    ("run", key, batch)                                                  -> logits
    ("time", key, batch, warmup, min_iterations, min_seconds)            -> runtimes.harness.LatencyStats
    ("settings", key)                                                    -> the loaded model's settings now
    ("close", key)                                                       -> None
    ("stop",)                                                            -> None, and the process ends
"""
from __future__ import annotations

import traceback

NO_LIMIT = 1 << 30   # asked of Loaded.chunk, it returns the format's and runtime's own limit


def _reset_peak_rss() -> bool:
    """Clear this process's resident-memory high-water mark (Linux: clear_refs 5), so a model's
    peak RSS covers its own loading and runs. False where the kernel does not offer it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _handle(loaded: dict, request: tuple):
    from runtimes.execution import open_model
    from runtimes.harness import measure
    op, args = request[0], request[1:]
    if op == "open":
        key, model, fmt, runtime, device, threads, precision, pin = args
        scope = ("this runtime's worker process: high-water mark reset before loading, includes "
                 "the process baseline" if _reset_peak_rss() else "this runtime's worker process so far")
        model_ = open_model(model, fmt, runtime, device, threads, precision, pin=pin)
        loaded[key] = model_
        return {"settings": model_.settings, "fixed_batch": model_.fixed_batch,
                "chunk_limit": model_.chunk(NO_LIMIT), "peak_rss_scope": scope,
                "cuda_events": hasattr(model_.session, "cuda_stream")}
    if op == "run":
        key, batch = args
        logits = loaded[key].run(batch)
        loaded[key].sync()
        return logits
    if op == "time":
        key, batch, warmup, min_iterations, min_seconds = args
        session = loaded[key].session
        return measure(session, batch, warmup, min_iterations, min_seconds,
                       cuda_events=hasattr(session, "cuda_stream"))
    if op == "settings":
        return loaded[args[0]].settings
    if op == "close":
        loaded.pop(args[0], None)
        return None
    raise ValueError(f"unknown worker request {op!r}")


def serve(conn) -> None:
    """Answer requests on `conn` until ("stop",) or the other end closes."""
    loaded: dict = {}
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request[0] == "stop":
            conn.send(("ok", None))
            return
        try:
            conn.send(("ok", _handle(loaded, request)))
        except Exception as exc:  # the coordinator decides what a failed request means
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
