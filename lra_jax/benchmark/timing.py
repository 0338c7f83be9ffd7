"""Wall time and peak memory of one attention method's forward or forward+backward call.

What is timed is the attention core alone (projections excluded), at
`[batch, length, heads, head_dim]` inputs:

* `forward`: one jitted call of the module's apply, returning the output;
* `forward_backward`: one jitted call of the gradient of sum(out^2) with
  respect to the parameters and q, k, v.

Compilation is excluded (the call is lowered and compiled first), `warmup`
calls follow (first-touch allocations, caches), then `repeats` timed calls,
each waited for with `jax.block_until_ready`. The attention PRNG key changes
every call, as in training (keys made before the clock starts). Reported:
median, quartiles and extremes of the timed calls.

Memory is XLA's own accounting of the compiled program (arguments + outputs +
temporaries - aliased buffers, `Compiled.memory_analysis()`), the same
quantity on CPU, GPU and TPU. On an accelerator the allocator's peak is read
beside it; that counter is a high-water mark over the whole process (JAX
cannot reset it), so it is reported only when this call raised it, i.e. when
the number is this call's own peak (inputs resident during the call
included); otherwise it is None.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lra_jax import attention

MODES = ("forward", "forward_backward")


@dataclasses.dataclass(frozen=True)
class Timing:
  """One measurement.

  Attributes:
    name: what was measured (a case label: method name, or a reference's label).
    length: sequence length.
    median_ms: median wall time of one call, milliseconds.
    peak_bytes: peak memory of the call (XLA's accounting), or None if unknown.
    device_peak_bytes: the device allocator's peak during the call (see the
      module docstring), or None.
    mode: 'forward' or 'forward_backward'.
    dtype: dtype of q, k and v ('float32', 'bfloat16').
    q1_ms: first quartile of the timed calls (None for a single call).
    q3_ms: third quartile.
    min_ms: fastest timed call.
    max_ms: slowest timed call.
    repeats: number of timed calls.
  """

  name: str
  length: int
  median_ms: float
  peak_bytes: int | None = None
  device_peak_bytes: int | None = None
  mode: str = "forward_backward"
  dtype: str = "float32"
  q1_ms: float | None = None
  q3_ms: float | None = None
  min_ms: float | None = None
  max_ms: float | None = None
  repeats: int = 0


def call_times_ms(fn: Callable[[int], Any], repeats: int) -> list[float]:
  """Wall times in ms of `fn(0)`, ..., `fn(repeats - 1)`, waiting for each (JAX) result."""
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(i))
    times.append(1000.0 * (time.perf_counter() - start))
  return times


def median_time_ms(fn: Callable[[], Any], repeats: int) -> float:
  """Median wall time of `fn()` in ms, waiting for its (JAX) results each call."""
  return statistics.median(call_times_ms(lambda _: fn(), repeats))


def summarise(name: str, length: int, times_ms: Sequence[float], **fields: Any) -> Timing:
  """A Timing with the median, quartiles and extremes of `times_ms`."""
  times = np.asarray(times_ms, np.float64)
  q1, median, q3 = (float(x) for x in np.percentile(times, [25, 50, 75]))
  spread = len(times) > 1
  return Timing(name, length, median, q1_ms=q1 if spread else None, q3_ms=q3 if spread else None,
                min_ms=float(times.min()), max_ms=float(times.max()), repeats=len(times), **fields)


def random_inputs(length: int, batch: int = 4, heads: int = 2, head_dim: int = 32,
                  dtype: Any = jnp.float32, seed: int = 0, scale: float = 1.0):
  """q, k, v [batch, length, heads, head_dim] ~ N(0, scale^2) and an all-real mask."""
  keys = jax.random.split(jax.random.key(seed), 3)
  q, k, v = (scale * jax.random.normal(key, (batch, length, heads, head_dim), jnp.float32)
             for key in keys)
  return q.astype(dtype), k.astype(dtype), v.astype(dtype), jnp.ones((batch, length), bool)


def compiled_peak_bytes(compiled) -> int | None:
  """Arguments + outputs + temporaries - donated buffers, from XLA's memory analysis."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
             + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def device_peak_bytes() -> int | None:
  """The allocator's high-water mark on the first device (None on CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


@dataclasses.dataclass
class Runner:
  """A registered method's module, initialised for one input shape.

  `forward(params, q, k, v, rng)` and `forward_backward(...)` are pure
  functions ready to jit; `params` and `constants` are the module's variables
  (constants, e.g. fixed random features or integer block patterns, are not
  differentiated).
  """

  module: Any
  params: Any
  constants: Mapping[str, Any]
  mask: jax.Array

  def forward(self, params, q, k, v, rng):
    return self.module.apply({"params": params, **self.constants}, q, k, v, self.mask,
                             deterministic=True, rngs={attention.ATTENTION_RNG: rng})

  def forward_backward(self, params, q, k, v, rng):
    def loss(params, q, k, v):
      return jnp.sum(self.forward(params, q, k, v, rng).astype(jnp.float32) ** 2)
    return jax.grad(loss, argnums=(0, 1, 2, 3))(params, q, k, v)


def init_variables(module: Any, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                   init_seed: int = 1) -> dict[str, Any]:
  """`module`'s variables (parameters, constants such as fixed random features) from one seed."""
  rngs = dict(zip(("params", attention.ATTENTION_RNG),
                  jax.random.split(jax.random.key(init_seed))))
  # Jitted: one compilation instead of one per eager op of the init.
  init = jax.jit(lambda rngs, q, k, v, mask: module.init(rngs, q, k, v, mask, deterministic=True))
  return dict(init(rngs, q, k, v, mask))


def apply_function(module: Any, mask: jax.Array) -> Callable[..., jax.Array]:
  """(variables, q, k, v, rng) -> `module`'s output, ready to jit (one compilation for every seed)."""
  def apply(variables, q, k, v, rng):
    return module.apply(variables, q, k, v, mask, deterministic=True,
                        rngs={attention.ATTENTION_RNG: rng})
  return apply


def init_runner(module: Any, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                init_seed: int = 1) -> Runner:
  """Initialises `module` (an attention module of the registry's protocol) for these inputs."""
  variables = init_variables(module, q, k, v, mask, init_seed)
  return Runner(module, variables.get("params", {}),
                {key: value for key, value in variables.items() if key != "params"}, mask)


def make_runner(name: str, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                hyperparameters: Mapping[str, Any] | None = None, init_seed: int = 1) -> Runner:
  """Builds and initialises registered method `name` with `hyperparameters` (defaults: the module's)."""
  module = attention.get_method(name).module(**dict(hyperparameters or {}))
  return init_runner(module, q, k, v, mask, init_seed)


def time_call(label: str, fn: Callable[..., Any], args: Sequence[Any], length: int, *,
              repeats: int = 5, warmup: int = 1, mode: str = "forward_backward",
              dtype: str = "float32") -> Timing:
  """Times `fn(*args, rng)` (jitted) with a fresh attention key per call; see the module docstring."""
  compiled = jax.jit(fn).lower(*args, jax.random.key(0)).compile()
  peak_before = device_peak_bytes()
  keys = [jax.random.key(i) for i in range(1, 1 + warmup + repeats)]
  for i in range(warmup):
    jax.block_until_ready(compiled(*args, keys[i]))
  times = call_times_ms(lambda i: compiled(*args, keys[warmup + i]), repeats)
  peak_after = device_peak_bytes()
  raised = peak_before is not None and peak_after is not None and peak_after > peak_before
  return summarise(label, length, times, peak_bytes=compiled_peak_bytes(compiled),
                   device_peak_bytes=peak_after if raised else None, mode=mode, dtype=dtype)


def time_attention(name: str, length: int, *, batch: int = 4, heads: int = 2, head_dim: int = 32,
                   hyperparameters: Mapping[str, Any] | None = None, repeats: int = 5,
                   warmup: int = 1, dtype: Any = jnp.float32, mode: str = "forward_backward",
                   label: str | None = None) -> Timing:
  """Time and peak memory of registered method `name`'s forward or forward+backward call.

  Hyper-parameters default to the module's (the reference values); methods
  with parameters or constants of their own get them from the module's init.

  Args:
    name: registered method.
    length: sequence length (every token real).
    batch: batch size.
    heads: attention heads.
    head_dim: features per head.
    hyperparameters: module fields to override.
    repeats: timed calls.
    warmup: untimed calls after compilation.
    dtype: dtype of q, k and v.
    mode: 'forward' or 'forward_backward'.
    label: the Timing's name (default `name`).

  Returns:
    The Timing.

  Raises:
    ValueError: an unknown mode.
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
  q, k, v, mask = random_inputs(length, batch, heads, head_dim, dtype)
  runner = make_runner(name, q, k, v, mask, hyperparameters)
  return time_call(label or name, getattr(runner, mode), (runner.params, q, k, v), length,
                   repeats=repeats, warmup=warmup, mode=mode, dtype=jnp.dtype(dtype).name)
