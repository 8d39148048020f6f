"""The one logging setup: plain message lines on stderr, so stdout carries only a command's result.

Library modules log through `logging.getLogger(__name__)`; `edgeship` calls `configure` once with
the count of -v minus the count of -q. Standard library only, so `edgeship --help` stays instant.
"""
from __future__ import annotations

import logging
import sys

# Libraries that talk a lot at INFO/DEBUG; their lines show only at -vv.
NOISY = ("nncf", "openvino", "torch", "torch_pruning", "onnxscript", "matplotlib", "PIL", "urllib3")
PROJECT = ("pipeline", "exporters", "runtimes", "calibration")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at emit time, so a redirected or captured stderr (pytest's
    capsys, a CI wrapper) receives the lines too."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass  # StreamHandler.__init__ assigns one; the property always answers sys.stderr


class _Formatter(logging.Formatter):
    """The bare message; warnings and errors keep their level in front ("WARNING: ...") so they
    stand out in a CI log."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname}: {text}"


def level_for(verbosity: int) -> int:
    """The project's log level for a verbosity (-q → -1 → WARNING, 0 → INFO, 1 or more → DEBUG)."""
    if verbosity < 0:
        return logging.WARNING
    return logging.INFO if verbosity == 0 else logging.DEBUG


def configure(verbosity: int = 0) -> None:
    """Send log records to stderr as bare message lines: INFO and above by default, WARNING and
    above at verbosity < 0 (-q), DEBUG at 1 (-v), and third-party DEBUG too at 2 (-vv).

    Idempotent: a second call replaces the handler it installed, leaving other handlers alone."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(_Formatter("%(message)s"))
    root.addHandler(handler)
    level = level_for(verbosity)
    root.setLevel(level if verbosity >= 2 else max(level, logging.WARNING))
    for name in PROJECT:
        logging.getLogger(name).setLevel(level)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity >= 2 else max(level, logging.WARNING))
