"""The benchmark library measures what it says (no timing thresholds here)."""

import numpy as np

from lra_jax import benchmark


def test_time_attention_reports_time_and_memory_that_grow_with_length():
  short = benchmark.time_attention("softmax", 64, repeats=2)
  long = benchmark.time_attention("softmax", 256, repeats=2)
  assert short.median_ms > 0 and long.median_ms > 0
  # Softmax holds [batch, heads, n, n] logits: 16x more entries at 4x the length.
  assert long.peak_bytes > 4 * short.peak_bytes


def test_time_attention_passes_hyperparameters_to_the_module():
  few = benchmark.time_attention("nystrom", 256, hyperparameters={"num_landmarks": 8}, repeats=1)
  many = benchmark.time_attention("nystrom", 256, hyperparameters={"num_landmarks": 64}, repeats=1)
  assert many.peak_bytes > few.peak_bytes


def test_methods_with_integer_constants_are_timed():
  # BigBird's fixed random-block pattern is an int32 constant: not differentiated.
  timing = benchmark.time_attention("bigbird", 64, hyperparameters={"block_size": 8}, repeats=1)
  assert timing.median_ms > 0


def test_scaling_ratio_and_table():
  timings = [benchmark.Timing("a", 4096, 10.0), benchmark.Timing("a", 16384, 44.0),
             benchmark.Timing("b", 4096, 1.0)]
  np.testing.assert_allclose(benchmark.scaling_ratio(timings, "a", 4096, 16384), 4.4)
  assert benchmark.scaling_ratio(timings, "b", 4096, 16384) is None
  table = benchmark.markdown_table(timings, lambda t: f"{t.median_ms:.0f}")
  assert table.splitlines()[0] == "| length | a | b |"
  assert table.splitlines()[2] == "| 4096 | 10 | 1 |"
  assert table.splitlines()[3] == "| 16384 | 44 | – |"
