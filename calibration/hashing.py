"""Content hashes of files: `sha256_file` lives in runtimes/hashing.py (the device runner carries
only runtimes/); this name stays for the pipeline and exporters."""
from __future__ import annotations

from runtimes.hashing import sha256_file

__all__ = ["sha256_file"]
