"""Benchmarks for evie: `just bench` (all) or `just bench NAME ...`."""
