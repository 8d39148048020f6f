"""Experiments that back the documentation's claims with measurements (not part of `make all`)."""
