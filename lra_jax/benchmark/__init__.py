"""Measuring attention methods: time, peak memory and approximation error.

    python -m lra_jax.benchmark attention --methods=softmax,skyformer --lengths=1024,4096

or as a library:

    from lra_jax import benchmark
    result = benchmark.time_attention("skyformer", length=4096)
    result.median_ms, result.peak_bytes

Modules: `timing` (what is timed and how, memory), `errors` (approximation
error against the exact attention a method approximates), `report`
(scaling exponents, speed-ups, Markdown), `plots` (PNGs), `suite` (the cases
of a run and its JSON), `cli` (the command line), `torch_references` (the
optional PyTorch comparison, run in a child process). docs/benchmarks.md
explains the numbers.
"""

from __future__ import annotations

from lra_jax.benchmark.errors import ErrorResult, reference_name, relative_error
from lra_jax.benchmark.report import (markdown_table, memory_ratios, scaling_exponent, scaling_ratio,
                                      speedups, write_report)
from lra_jax.benchmark.timing import (MODES, Timing, compiled_peak_bytes, median_time_ms,
                                      random_inputs, time_attention)

__all__ = [
    "ErrorResult", "MODES", "Timing", "compiled_peak_bytes", "markdown_table", "median_time_ms",
    "memory_ratios", "random_inputs", "reference_name", "relative_error", "scaling_exponent",
    "scaling_ratio", "speedups", "time_attention", "write_report",
]
