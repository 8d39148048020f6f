"""Progress for long steps that are not training loops (sensitivity searches, calibration, exports).

On a terminal a tqdm bar on stderr; anywhere else (CI logs, files) a plain log line at most every
`interval` seconds and one at the end, so a step that works for minutes is never silent and a log
file is not flooded with bar redraws. Quiet runs (-q, logger above INFO) show neither.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
INTERVAL_S = 10.0
_log = logging.getLogger(__name__)


def _on_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _line(desc: str, done: int, total: int | None, unit: str, seconds: float) -> str:
    count = f"{done}/{total}" if total is not None else f"{done}"
    return f"{desc} {count} {unit}, {seconds:.0f} s"


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "working", unit: str = "items",
             log: logging.Logger | None = None, interval: float = INTERVAL_S) -> Iterator[T]:
    """Yield the items of `iterable`, reporting how many are done: a tqdm bar when stderr is a
    terminal, else a line such as "quantize: sensitivity 12/40 layers, 31 s" through `log` at most
    every `interval` seconds, plus one when the loop ends (also when it is left early)."""
    log = log or _log
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not log.isEnabledFor(logging.INFO):
        yield from iterable
        return
    t0 = time.monotonic()
    done = 0
    if _on_terminal():
        from tqdm import tqdm  # lazily: most commands never draw a bar
        bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=sys.stderr, leave=False, dynamic_ncols=True)
    else:
        bar = None
    last = t0
    try:
        for item in iterable:
            yield item
            done += 1
            if bar is not None:
                bar.update(1)
            else:
                now = time.monotonic()
                if now - last >= interval:
                    last = now
                    log.info(_line(desc, done, total, unit, now - t0))
    finally:
        if bar is not None:
            bar.close()
        log.info(_line(desc, done, total, unit, time.monotonic() - t0))


@contextmanager
def ticker(desc: str, log: logging.Logger | None = None, interval: float = INTERVAL_S) -> Iterator[None]:
    """Around one long call that reports nothing itself (a quantizer, a compiler): a line
    "<desc>, 20 s" through `log` every `interval` seconds while it runs, and "<desc> done in 42 s"
    at the end. The heartbeat thread only logs, so the call itself is untouched."""
    log = log or _log
    if not log.isEnabledFor(logging.INFO):
        yield
        return
    t0 = time.monotonic()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            log.info(f"{desc}, {time.monotonic() - t0:.0f} s")

    thread = threading.Thread(target=beat, name=f"ticker: {desc}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    log.info(f"{desc} done in {time.monotonic() - t0:.0f} s")   # not reached when the call raised
