"""Benchmarks, each a module run with ``python -m benchmarks.<name>`` from the repository root (``make bench``
runs ``python -m benchmarks.run_all``): speed as ratios against a baseline measured in the same run, written to
docs/benchmarks.md with the machine they ran on."""
