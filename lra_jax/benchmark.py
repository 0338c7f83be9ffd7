"""Measuring attention methods: forward+backward time and peak memory.

    from lra_jax import benchmark
    result = benchmark.time_attention("skyformer", length=4096)
    result.median_ms, result.peak_bytes

The script `benchmarks/attention.py` drives this over methods and lengths and
writes the tables in `benchmarks/results/`. What is timed is one jitted call of
the gradient of sum(out^2) with respect to q, k and v (the forward and backward
pass of the attention core alone, projections excluded), after a warm-up call
that compiles; the median over `repeats` calls is reported.

Memory is XLA's own accounting of the compiled program (arguments + outputs +
temporaries, `Compiled.memory_analysis()`), which is the same quantity on CPU,
GPU and TPU; on GPU the allocator's peak is reported beside it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import statistics
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from lra_jax import attention


@dataclasses.dataclass(frozen=True)
class Timing:
  """One measurement.

  Attributes:
    name: what was measured (method name, or a reference's label).
    length: sequence length.
    median_ms: median wall time of one forward+backward call, milliseconds.
    peak_bytes: peak memory of the call (XLA's accounting), or None if unknown.
    device_peak_bytes: the device allocator's peak after the call (GPU), or None.
  """

  name: str
  length: int
  median_ms: float
  peak_bytes: int | None = None
  device_peak_bytes: int | None = None


def median_time_ms(fn: Callable[[], Any], repeats: int) -> float:
  """Median wall time of `fn()` in ms, waiting for its (JAX) results each call."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return 1000.0 * statistics.median(times)


def random_inputs(length: int, batch: int = 4, heads: int = 2, head_dim: int = 32,
                  dtype: Any = jnp.float32, seed: int = 0):
  """q, k, v [batch, length, heads, head_dim] ~ N(0, 1) and an all-real mask."""
  keys = jax.random.split(jax.random.key(seed), 3)
  q, k, v = (jax.random.normal(key, (batch, length, heads, head_dim), dtype) for key in keys)
  return q, k, v, jnp.ones((batch, length), bool)


def compiled_peak_bytes(compiled) -> int | None:
  """Arguments + outputs + temporaries - donated buffers, from XLA's memory analysis."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
             + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def _device_peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def time_attention(name: str, length: int, *, batch: int = 4, heads: int = 2, head_dim: int = 32,
                   hyperparameters: Mapping[str, Any] | None = None, repeats: int = 5,
                   dtype: Any = jnp.float32) -> Timing:
  """Forward+backward time and peak memory of registered method `name`.

  Hyper-parameters default to the module's (the reference values); methods
  with parameters or constants of their own get them from the module's init.
  The attention key changes every call, as in training.
  """
  method = attention.get_method(name)
  q, k, v, mask = random_inputs(length, batch, heads, head_dim, dtype)
  module = method.module(**dict(hyperparameters or {}))
  variables = module.init({"params": jax.random.key(1), attention.ATTENTION_RNG: jax.random.key(2)},
                          q, k, v, mask, deterministic=True)

  params = variables.get("params", {})
  constants = {name: value for name, value in variables.items() if name != "params"}

  def loss(params, q, k, v, rng):
    out = module.apply({"params": params, **constants}, q, k, v, mask, deterministic=True,
                       rngs={attention.ATTENTION_RNG: rng})
    return jnp.sum(out.astype(jnp.float32) ** 2)

  # Gradients for the parameters and q, k, v; constants (e.g. integer block
  # patterns) are not trained.
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
  compiled = grad.lower(params, q, k, v, jax.random.key(0)).compile()
  jax.block_until_ready(compiled(params, q, k, v, jax.random.key(0)))
  calls = iter(range(1, 1 << 30))
  median = median_time_ms(lambda: compiled(params, q, k, v, jax.random.key(next(calls))), repeats)
  return Timing(name, length, median, compiled_peak_bytes(compiled), _device_peak_bytes())


def scaling_ratio(timings: Sequence[Timing], name: str, short: int, long: int) -> float | None:
  """time(long) / time(short) for `name`; linear scaling gives long / short."""
  by_length = {t.length: t.median_ms for t in timings if t.name == name}
  if short not in by_length or long not in by_length:
    return None
  return by_length[long] / by_length[short]


def markdown_table(timings: Sequence[Timing], value: Callable[[Timing], str]) -> str:
  """Rows = lengths, columns = names (in first-seen order), cells = value(timing)."""
  names = list(dict.fromkeys(t.name for t in timings))
  lengths = sorted({t.length for t in timings})
  cells = {(t.name, t.length): value(t) for t in timings}
  lines = ["| length | " + " | ".join(names) + " |",
           "| --- | " + " | ".join("---" for _ in names) + " |"]
  for length in lengths:
    lines.append(f"| {length} | " + " | ".join(cells.get((n, length), "–") for n in names) + " |")
  return "\n".join(lines)


def write_report(path: str | pathlib.Path, markdown: str, payload: Any) -> None:
  """Writes the markdown report at `path` and `payload` as JSON beside it (.json)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(markdown)
  path.with_suffix(".json").write_text(json.dumps(payload, indent=1))
