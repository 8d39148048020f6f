"""A cache file's size and sha256 recorded beside it: the code lives in runtimes/hash_record.py
(TensorRT engine caches are checked on the device too, which carries only runtimes/)."""
from __future__ import annotations

from runtimes.hash_record import SUFFIX, discard, is_record, problem, publish, record_path, write_record

__all__ = ["SUFFIX", "discard", "is_record", "problem", "publish", "record_path", "write_record"]
