"""Approximation error of an attention method against the exact attention it approximates.

Error = relative Frobenius error ||out - exact||_F / ||exact||_F over the
whole `[batch, length, heads, head_dim]` output, on random inputs (q, k, v
i.i.d. N(0, scale^2) from a fixed key, every token real) with the method's
learned parts at their initialisation. Methods with random draws are run
with several seeds, each seeding both the initialisation (fixed random
features, projections) and the per-call attention key; the mean and standard
deviation over seeds are reported.

The exact attention ("reference") is named by `reference_name`: the
registry's `approximates` (see `registry.AttentionMethod`), or, for methods
registered without it, `KNOWN_REFERENCES`. A reference is a registered method
(run through the same code path, so an exact method compared with itself has
error exactly 0) or one of `REFERENCES`, exact attentions that are no
registered method:

* `kernelized_normalized`: Gaussian-kernel attention normalised over the
  keys, softmax(q.k / sqrt(d) - ||k||^2 / (2 sqrt(d))) v, which Spectraformer's
  Gaussian random features estimate (out = phi(Q) phi(K)^T V / phi(Q) phi(K)^T 1);
  Skyformer's target `kernelized` is the same kernel without the
  normalisation.
* `dot_kernel`: SchoenbAt's dot-product-kernel attention
  sum_j f(q_i . k_j) v_j / sum_j f(q_i . k_j), f the Maclaurin series of the
  method's `dot_kernel` truncated at `max_degree` (what RMFA estimates without
  bias), on the PreSBN-normalised q, k when `ppsbn` (rmfa's defaults).

Attention matrix: for methods whose output is linear in V, the implied
matrix A (out = A V) is read off by feeding V = identity columns
(head_dim of them per call) and compared with the reference's the same way;
linearity is checked (A v must reproduce the output for a random v), and a
method that fails it (e.g. Skeinformer's V-dependent sampling) gets None.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lra_jax import attention
from lra_jax.attention.kernelized import kernel_scale
from lra_jax.attention.layout import heads_major, length_major
from lra_jax.benchmark import timing

# Methods registered without `approximates` (left at "softmax") whose target
# is another exact attention.
KNOWN_REFERENCES = {"spectraformer": "kernelized_normalized"}
# Methods that approximate no exact attention: their error against softmax
# says how far their attention is from softmax's, not how well they estimate it.
NOT_APPROXIMATIONS = {
    "linear_transformer": "exact attention with its own elu+1 kernel",
    "synthesizer": "learned (synthetic) attention weights",
    "vmean": "baseline: every row is the mean of V",
}
# Hyper-parameter that sets the approximation's size, per method: the x-axis
# of the error-against-size plot.
KNOBS = {"nystrom": "num_landmarks", "skyformer": "num_landmarks", "performer": "nb_features",
         "linformer": "linformer_k", "skeinformer": "nb_features", "spectraformer": "nb_features",
         "rmfa": "nb_features"}
# Largest relative mismatch between A v and the output for which the method
# counts as linear in V (float32 round-off is ~1e-6).
LINEARITY_TOLERANCE = 1e-3


def reference_name(method: str, hyperparameters: Mapping[str, Any] | None = None) -> str:
  """The exact attention registered method `method` (with these hyper-parameters) approximates."""
  hyperparameters = hyperparameters or {}
  if method == "spectraformer" and hyperparameters.get("kernel") == "softmax":
    return "softmax"
  registered = attention.get_method(method).approximates
  if registered != "softmax":
    return registered
  return KNOWN_REFERENCES.get(method, "softmax")


def kernelized_normalized_attention(query, key, value, mask, hyperparameters=None):
  """Gaussian-kernel attention normalised over the real keys, in float32 (O(n^2))."""
  del hyperparameters
  scale = kernel_scale(query.shape[-1])
  q = heads_major(query.astype(jnp.float32)) * scale
  k = heads_major(key.astype(jnp.float32)) * scale
  # exp(-||q - k||^2 / 2) normalised over k: the ||q||^2 term cancels, so
  # the weights are a softmax (no underflow for far-apart inputs).
  logits = (jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
            - 0.5 * jnp.sum(k * k, axis=-1)[:, :, None, :])
  weights = jax.nn.softmax(jnp.where(mask[:, None, None, :], logits, -jnp.inf), axis=-1)
  return length_major(jnp.einsum("bhqk,bhkd->bhqd", weights,
                                 heads_major(value.astype(jnp.float32))))


def dot_kernel_attention(query, key, value, mask, hyperparameters=None):
  """SchoenbAt's exact target for rmfa's `dot_kernel`, `max_degree`, `ppsbn`, `causal` (O(n^2))."""
  from lra_jax.attention import maclaurin  # the rmfa family: only this reference needs it
  hyperparameters = hyperparameters or {}
  dot_kernel = maclaurin.canonical_dot_kernel(hyperparameters.get("dot_kernel", "exp"))
  max_degree = hyperparameters.get("max_degree", maclaurin.DEFAULT_MAX_DEGREE)
  coefficients = maclaurin.maclaurin_coefficients(dot_kernel, max_degree)
  real = mask[:, :, None, None]
  q = query.astype(jnp.float32)
  k = jnp.where(real, key.astype(jnp.float32), 0.0)
  if hyperparameters.get("ppsbn", True):
    q, k = maclaurin.pre_sbn(q), maclaurin.pre_sbn(k)
  scale = query.shape[-1] ** -0.25
  t = jnp.einsum("bqhd,bkhd->bhqk", scale * q, scale * k, preferred_element_type=jnp.float32)
  kernel = jnp.polyval(jnp.asarray(coefficients[::-1], jnp.float32), t)
  kernel = jnp.where(mask[:, None, None, :], kernel, 0.0)
  if hyperparameters.get("causal", False):
    kernel = jnp.tril(kernel)
  out = (jnp.einsum("bhqk,bkhd->bqhd", kernel, value.astype(jnp.float32))
         / jnp.sum(kernel, axis=-1).transpose(0, 2, 1)[..., None])
  return out


REFERENCES: dict[str, Callable[..., jax.Array]] = {
    "kernelized_normalized": kernelized_normalized_attention,
    "dot_kernel": dot_kernel_attention,
}


def relative_error(approximation: Any, exact: Any) -> float:
  """||approximation - exact||_F / ||exact||_F, in float64."""
  approximation = np.asarray(jnp.asarray(approximation, jnp.float32), np.float64)
  exact = np.asarray(jnp.asarray(exact, jnp.float32), np.float64)
  return float(np.linalg.norm(approximation - exact) / np.linalg.norm(exact))


def _probe_values(shape, start):
  """V whose column c is the indicator of token start + c (zero past the end)."""
  batch, length, heads, head_dim = shape
  onehot = (jnp.arange(length)[:, None] == start + jnp.arange(head_dim)[None, :]).astype(jnp.float32)
  return jnp.broadcast_to(onehot[None, :, None, :], shape)


def implied_attention_matrix(forward: Callable[[jax.Array], jax.Array], value: jax.Array,
                             output: jax.Array | None = None) -> np.ndarray | None:
  """A [batch, heads, length, length] with forward(V) = A V, or None if forward is not linear in V.

  Args:
    forward: V [batch, length, heads, head_dim] -> output of the same shape,
      with every other input (and random draw) fixed.
    value: a V to check linearity with.
    output: forward(value) if already computed.
  """
  batch, length, heads, head_dim = value.shape
  probe = jax.jit(lambda start: forward(_probe_values(value.shape, start)).astype(jnp.float32))
  matrix = np.zeros((batch, heads, length, length), np.float32)
  for start in range(0, length, head_dim):
    columns = np.asarray(probe(start))  # [batch, length (queries), heads, head_dim]
    width = min(head_dim, length - start)
    matrix[..., start:start + width] = columns.transpose(0, 2, 1, 3)[..., :width]
  predicted = np.einsum("bhij,bjhd->bihd", matrix, np.asarray(value, np.float32))
  actual = np.asarray(jax.jit(forward)(value) if output is None else output, np.float32)
  if relative_error(predicted, actual) > LINEARITY_TOLERANCE:
    return None
  return matrix


@dataclasses.dataclass(frozen=True)
class ErrorResult:
  """Approximation error of one case in one dtype.

  Attributes:
    name: case label.
    reference: the exact attention compared with (`reference_name`).
    dtype: dtype of the method's inputs (the reference runs in float32 on
      the same, rounded, inputs).
    length: sequence length of the inputs.
    output_errors: relative Frobenius error of the output, one per seed.
    matrix_error: relative Frobenius error of the implied attention matrix
      (first seed, float32 only), or None (not linear in V, or not measured).
    note: why an error is missing or how to read it.
  """

  name: str
  reference: str
  dtype: str
  length: int
  output_errors: tuple[float, ...]
  matrix_error: float | None = None
  note: str = ""

  @property
  def mean(self) -> float:
    return float(np.mean(self.output_errors))

  @property
  def std(self) -> float:
    return float(np.std(self.output_errors))


def reference_forward(reference: str, query, key, mask,
                      hyperparameters: Mapping[str, Any] | None = None,
                      ) -> Callable[[jax.Array], jax.Array]:
  """V -> the exact attention `reference` of float32 q, k (a registered method or `REFERENCES`)."""
  query, key = query.astype(jnp.float32), key.astype(jnp.float32)
  if reference in REFERENCES:
    fn = REFERENCES[reference]
    return lambda value: fn(query, key, value.astype(jnp.float32), mask, hyperparameters)
  if reference not in attention.names():
    raise ValueError(f"Unknown reference attention {reference!r}: a registered method or one of "
                     f"{', '.join(REFERENCES)}.")
  module = attention.get(reference)()
  variables = timing.init_variables(module, query, key, query, mask, 0)
  apply = jax.jit(timing.apply_function(module, mask))
  return lambda value: apply(variables, query, key, value.astype(jnp.float32), jax.random.key(0))


def measure_errors(name: str, make_module: Callable[[], Any], reference: str,
                   hyperparameters: Mapping[str, Any], *, length: int, batch: int = 4,
                   heads: int = 2, head_dim: int = 32, dtypes: Sequence[str] = ("float32",),
                   seeds: Sequence[int] = (0, 1, 2), input_seed: int = 0, input_scale: float = 1.0,
                   attention_matrix: bool = True,
                   cache: dict[Any, Any] | None = None) -> list[ErrorResult]:
  """Output (and attention-matrix) errors of one case against its reference, per dtype.

  Args:
    name: case label.
    make_module: builds the method's module (a fresh one per dtype).
    reference: `reference_name` of the case.
    hyperparameters: the case's hyper-parameters (some references read them).
    length, batch, heads, head_dim: input shape.
    dtypes: dtypes of the method's inputs.
    seeds: seeds of the initialisation and the attention key (one output error each).
    input_seed: key of the random q, k, v.
    input_scale: standard deviation of q, k, v.
    attention_matrix: also measure the implied attention matrix (float32).
    cache: a dict kept across calls with the same shapes and inputs, where
      the references' outputs and matrices are kept (many methods share one).

  Returns:
    One ErrorResult per dtype.
  """
  q32, k32, v32, mask = timing.random_inputs(length, batch, heads, head_dim, jnp.float32,
                                             input_seed, input_scale)
  results = []
  for dtype in dtypes:
    # The reference sees the method's rounded inputs: the error is the
    # method's (approximation and arithmetic), not the rounding of q, k, v.
    q, k, v = (x.astype(dtype) for x in (q32, k32, v32))
    # Only the references of `REFERENCES` read the case's hyper-parameters.
    cache_key = (reference, jnp.dtype(dtype).name,
                 tuple(sorted(hyperparameters.items())) if reference in REFERENCES else ())
    cached = {} if cache is None else cache.setdefault(cache_key, {})
    if "forward" not in cached:
      cached["forward"] = reference_forward(reference, q, k, mask, hyperparameters)
      cached["output"] = cached["forward"](v)
    exact = cached["output"]
    module = make_module()
    apply = jax.jit(timing.apply_function(module, mask))
    # Seed s draws both what is fixed at initialisation (random features,
    # projections, landmarks of some methods) and what is drawn per call.
    variables = {seed: timing.init_variables(module, q, k, v, mask, seed) for seed in seeds}
    outputs = [apply(variables[seed], q, k, v, jax.random.key(seed)) for seed in seeds]
    errors = tuple(relative_error(out, exact) for out in outputs)
    matrix_error, note = None, ""
    if attention_matrix and jnp.dtype(dtype) == jnp.float32:
      first = seeds[0]
      matrix = implied_attention_matrix(
          lambda value: apply(variables[first], q, k, value, jax.random.key(first)), v, outputs[0])
      if matrix is None:
        note = "output not linear in V: no attention matrix"
      else:
        if "matrix" not in cached:
          cached["matrix"] = implied_attention_matrix(cached["forward"], v, exact)
        matrix_error = relative_error(matrix, cached["matrix"])
    results.append(ErrorResult(name, reference, jnp.dtype(dtype).name, length, errors,
                               matrix_error, note))
  return results
