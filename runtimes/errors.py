"""The one error hierarchy: a base class and a few kinds, each with the exit code the CLI returns.

It lives in `runtimes` because every package may import `runtimes` but `runtimes` imports no other
package, and it imports only the standard library so the CLI can catch errors without loading a
backend. Project errors subclass one kind here (often beside a builtin such as ValueError that
callers already catch); the CLI catches `EdgeshipError` once and exits with `exit_code`.
"""
from __future__ import annotations

# Every exit code the `edgeship` command returns; the CLI epilog and the README list the same.
EXIT_CODES: dict[int, str] = {
    0: "done",
    1: "unexpected error (traceback printed)",
    2: "bad config or usage",
    4: "store locked or damaged",
    5: "a check budget failed (see the JUnit XML)",
    6: "a stage refused its input or missed its goal (message says why)",
    7: "bad input data (the message names the path)",
    8: "a backend, runtime or device is unavailable here (the message says how to fix it)",
    130: "interrupted",
}


class EdgeshipError(Exception):
    """Base of every error edgeship raises on purpose; its message names the thing, the value and
    the fix, so the CLI prints it as one line without a traceback."""

    exit_code = 1


class ConfigError(EdgeshipError):
    """A config value or command-line usage that cannot work (unknown key, wrong type, bad name)."""

    exit_code = 2


class StoreError(EdgeshipError):
    """The artifact store cannot be used: locked by another run, or its content is damaged."""

    exit_code = 4


class GateFailed(EdgeshipError):
    """The deployment gate ran and one or more budgets failed."""

    exit_code = 5


class StageFailed(EdgeshipError):
    """A stage refused its input or could not meet its goal (accuracy budget, parity, export)."""

    exit_code = 6


class DataError(EdgeshipError):
    """Input data that cannot be used as configured (missing folder, unreadable image, ...)."""

    exit_code = 7


class Unavailable(EdgeshipError):
    """A backend, runtime or device that cannot be used on this machine; the message says what to
    install or which config value to change."""

    exit_code = 8


KINDS: tuple[type[EdgeshipError], ...] = (ConfigError, StoreError, GateFailed, StageFailed, DataError,
                                          Unavailable)
