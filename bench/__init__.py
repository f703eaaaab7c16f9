"""Benchmarks and soaks that run real ParaDecom processes (for example `python -m bench.chaos`)."""
