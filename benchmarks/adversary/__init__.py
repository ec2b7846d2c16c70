"""Attacks on a node, one module each, for benchmarks/adversary_bench.py; each exposes
`measure(seeds=..., quick=False) -> dict` and runs alone as a script."""
