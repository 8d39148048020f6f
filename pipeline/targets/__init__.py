"""Targets reached over SSH (or this machine, the same way): transport, upload, remote runs, probes."""
