"""The machine a measured result belongs to: part of the cache key of machine-dependent stages.

A latency measured on one CPU says nothing about another, so the benchmark stage's key includes
this fingerprint: the CPU model and flags, GPUs and drivers, library versions, OS and Python.
Readings that drift between runs (clocks, temperatures) are left out, or every run would miss.
"""
from __future__ import annotations

import copy
from functools import lru_cache


@lru_cache(maxsize=1)
def _fingerprint() -> dict:
    # Probing runs nvidia-smi and imports torch: once per process is enough.
    from runtimes.environment import describe_environment, fingerprint
    return fingerprint(describe_environment())


def environment_fingerprint() -> dict:
    """The stable description of this machine and its software (a fresh copy each call)."""
    return copy.deepcopy(_fingerprint())


def describe(threads: int | None = None) -> dict:
    """The full environment record stored next to measured results (clocks and temperatures too)."""
    from runtimes.environment import describe_environment
    return describe_environment(threads)
