"""Benchmarks of sinkhorn-attacks: ``python -m benchmarks [--quick] [--out docs/benchmarks/cpu.json]``."""
