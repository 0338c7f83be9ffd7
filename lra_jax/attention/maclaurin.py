"""Random Maclaurin feature attention (RMFA) with ppSBN: SchoenbAt / Macformer.

Guo, Ding, Yang & Guo, "SchoenbAt: Rethinking Attention with Polynomial basis"
(arXiv 2505.12252, 2025), after Guo, Ding, Yuan & Wang, "Macformer:
Transformer with Random Maclaurin Feature Attention" (arXiv 2408.11656, 2024).

Kernelized attention with a dot-product kernel,
  out_i = sum_j f(q_i . k_j) v_j / sum_j f(q_i . k_j),
where f(t) = sum_n a_n t^n has a_n >= 0 (Schoenberg's theorem), is made linear
in the length with the random Maclaurin features of Kar & Karnick (2012): with
D = nb_features - 1 random features, i.i.d. degrees N_i ~ P (P(n) = 2^(-n) /
(1 - 2^(-T)) on n = 1..T, T = max_degree = 20) and independent Rademacher
vectors r_{i,1..N_i} in {+-1}^d,
  phi(x) = [sqrt(a_0), (sqrt(a_{N_i} / (P(N_i) D)) prod_{t=1..N_i} r_{i,t} . x)_{i=1..D}],
  E[phi(x) . phi(y)] = sum_{n <= T} a_n (x . y)^n
(E[(r.x)(r.y)] = x.y for Rademacher r, independence over t gives the n-th
power, and the a_n / P(n) reweighting cancels the degree law). Then
  out_i = phi(q_i)^T (sum_j M_j phi(k_j) v_j^T) / max(phi(q_i)^T sum_j M_j phi(k_j), floor)
in O(n m d), with q and k scaled by d^(-1/4) (spectraformer_schoenbat.md
§6.2-6.3).

ppSBN ("pre-post scaling batch normalisation", §6.5; per token, nothing is
batch-level):
* PreSBN maps each query and key row to zero mean and unit L2 norm along
  head_dim, so after the d^(-1/4) scale |q . k| <= d^(-1/2) < 1: inside the
  radius of convergence (1) of `inverse`, `log` and `sqrt`, and the
  estimator's variance sum_n a_n^2 / P(n) |q|^(2n) |k|^(2n) stays bounded.
* PostSBN multiplies the attention output by a learned per-channel scale
  gamma in R^head_dim (ones at init, shared by the heads), restoring the
  output scale that PreSBN's narrow kernel band (all f(q.k) near f(0)) takes
  away.

The five kernels (`dot_kernel`, the reference's --dotf), coefficients in
`maclaurin_coefficients` (§6.4):
  exp      e^t                 a_n = 1/n!                       radius inf
  inverse  1 / (1 - t)         a_n = 1                          radius 1
  log      1 - ln(1 - t)       a_0 = 1, a_n = 1/n               radius 1
  trigh    cosh t + sinh t     a_n = 1/n! (the same function as exp)
  sqrt     2 - sqrt(1 - t)     a_0 = 1, a_n = |binom(1/2, n)|   radius 1
each truncated at degree max_degree (the reference's 20; as every a_n <= 1,
the truncation error under ppSBN is below r^21 / (1 - r) with r = d^(-1/2),
2e-16 for d = 32).

Randomness: one PRNG key per draw (`draw_random_maclaurin`), split into a
degree key (i.i.d. degrees, see the note on capacities there) and a sign key
(all Rademacher entries). The module draws once at initialisation into the
'constants' collection (the reference), or per call (`redraw_features`).

Reference code: `SchoenbAt.py`, `rmfa.py`, `ppSBN.py`, `random_features/` and
`rf_util/` of 1911416-GuoYuhan/SchoenbAt, and its LRA harness at 547e87a.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lra_jax import errors
from lra_jax.attention import registry

DOT_KERNELS = ("exp", "inverse", "log", "trigh", "sqrt")
# The reference HEAD renamed `log` to `logi` (7e62a03); both are accepted.
_ALIASES = {"logi": "log"}
RADIUS_OF_CONVERGENCE = {"exp": math.inf, "inverse": 1.0, "log": 1.0, "trigh": math.inf,
                         "sqrt": 1.0}
# Reference truncation degree (RMFA's max_val) and feature count (config.py).
DEFAULT_MAX_DEGREE = 20
DEFAULT_NB_FEATURES = 128
# Training steps of the SchoenbAt harness (its config.py, §6.7), for the
# configs/<task>_rmfa.py files under the pytorch_lra protocol.
SCHOENBAT_TRAIN_STEPS = 10_000
# Probability, under i.i.d. degrees, that a draw does not fit the static
# per-level buffers (see `level_capacities`); such draws are redrawn.
CAPACITY_TAIL = 1e-12
# PreSBN's eps inside the standard deviation (the reference's 1e-12).
PRE_SBN_EPS = 1e-12
# Queries per block of the causal form.
CAUSAL_CHUNK = 64
# Smallest magnitude of a factor r . x (see `maclaurin_features`).
_TINY_FACTOR = 1e-20


def canonical_dot_kernel(name: str) -> str:
  """`name` checked against the five kernels (and the reference's alias `logi`)."""
  name = _ALIASES.get(name, name)
  if name not in DOT_KERNELS:
    raise ValueError(f"Unknown dot_kernel {name!r}; valid: {', '.join(DOT_KERNELS)} (the "
                     f"SchoenbAt reference's --dotf values; 'logi' is accepted for 'log').")
  return name


def _exact_coefficient(dot_kernel: str, n: int) -> Fraction:
  if dot_kernel in ("exp", "trigh"):
    return Fraction(1, math.factorial(n))
  if dot_kernel == "inverse":
    return Fraction(1)
  if n == 0:  # log and sqrt: the added constant makes a_0 = 1
    return Fraction(1)
  if dot_kernel == "log":
    return Fraction(1, n)
  # sqrt: -binom(1/2, n) (-1)^n = (2n)! / ((2n - 1) 4^n (n!)^2) for n >= 1.
  return Fraction(math.factorial(2 * n), (2 * n - 1) * 4 ** n * math.factorial(n) ** 2)


@functools.lru_cache(maxsize=None)
def _coefficients(dot_kernel: str, max_degree: int) -> tuple[float, ...]:
  return tuple(float(_exact_coefficient(dot_kernel, n)) for n in range(max_degree + 1))


def maclaurin_coefficients(dot_kernel: str, max_degree: int = DEFAULT_MAX_DEGREE) -> np.ndarray:
  """a_0..a_max_degree of f(t) = sum_n a_n t^n, from closed forms (exact rationals).

  The reference differentiates f symbolically with sympy (`rf_util/coeffients.py`)
  and rounds to float32; here they are trace-time float64 constants.

  Returns:
    [max_degree + 1] float64.
  """
  _check_max_degree(max_degree)
  return np.asarray(_coefficients(canonical_dot_kernel(dot_kernel), max_degree))


def degree_probabilities(max_degree: int = DEFAULT_MAX_DEGREE) -> np.ndarray:
  """P(n) = 2^(-n) / (1 - 2^(-T)) for n = 1..T: the reference's P_Measure(p=2), degree 0 excluded.

  Returns:
    [max_degree] float64, entry n - 1 is P(n).
  """
  _check_max_degree(max_degree)
  n = np.arange(1, max_degree + 1, dtype=np.float64)
  return 2.0 ** -n / (1.0 - 2.0 ** -max_degree)


def _binomial_survival(trials: int, p: float) -> list[float]:
  """[P(Binomial(trials, p) > c) for c = 0..trials], in float64 via log-pmfs."""
  if p <= 0.0:
    return [0.0] * (trials + 1)
  if p >= 1.0:
    return [1.0] * trials + [0.0]
  log_p, log_q = math.log(p), math.log1p(-p)
  log_choose = [math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
                for k in range(trials + 1)]
  pmf = [math.exp(log_choose[k] + k * log_p + (trials - k) * log_q) for k in range(trials + 1)]
  survival = [0.0] * (trials + 1)
  for c in range(trials - 1, -1, -1):  # smallest terms first: accurate tails
    survival[c] = survival[c + 1] + pmf[c + 1]
  return survival


@functools.lru_cache(maxsize=None)
def level_capacities(num_random_features: int, max_degree: int = DEFAULT_MAX_DEGREE,
                     tail: float = CAPACITY_TAIL) -> tuple[int, ...]:
  """Static buffer sizes c_0 >= c_1 >= ... of the product levels t = 0..max_degree-1.

  Feature i needs one Rademacher vector per level t < N_i. With the features
  sorted by degree (descending), the ones active at level t are a prefix of
  length K_t = #{i: N_i > t} ~ Binomial(D, P(N > t)); computing only that
  prefix is what makes the features cheap (about 4 D projections instead of
  T D). Shapes must be static, so level t gets c_t rows, the smallest c with
  P(K_t > c) <= tail / T; by the union bound a draw overflows some level with
  probability at most `tail` (1e-12), and `draw_random_maclaurin` redraws it.
  The degrees are thus i.i.d. from P conditioned on an event of probability
  >= 1 - 1e-12: a total-variation distance of 1e-12 from the reference's law.

  Returns:
    A tuple of max_degree ints; c_0 = num_random_features. For D = 127,
    T = 20 they sum to 515 (the naive layout needs 2540).
  """
  if num_random_features < 1:
    raise ValueError(f"num_random_features must be positive, got {num_random_features}.")
  _check_max_degree(max_degree)
  capacities = []
  for t in range(max_degree):
    above = (2.0 ** -t - 2.0 ** -max_degree) / (1.0 - 2.0 ** -max_degree)  # P(N > t)
    survival = _binomial_survival(num_random_features, above)
    capacities.append(next(c for c in range(num_random_features + 1)
                           if survival[c] <= tail / max_degree))
  return tuple(capacities)


def _check_max_degree(max_degree: int) -> None:
  if not isinstance(max_degree, int) or max_degree < 1:
    raise ValueError(f"max_degree must be a positive integer (the reference truncates the "
                     f"Maclaurin series at 20), got {max_degree!r}.")


def _check_nb_features(nb_features: int) -> None:
  if not isinstance(nb_features, int) or nb_features < 2:
    raise ValueError(f"nb_features must be an integer >= 2 (one constant feature sqrt(a_0) plus "
                     f"at least one random feature; the reference uses 128), got {nb_features!r}.")


def draw_random_maclaurin(key: jax.Array, nb_features: int, head_dim: int,
                          max_degree: int = DEFAULT_MAX_DEGREE) -> dict[str, jax.Array]:
  """The random part of the features: degrees and Rademacher vectors (§6.3 steps 1-3).

  Randomness: `key` splits into a degree key and a sign key. D = nb_features - 1
  degrees are drawn i.i.d. from `degree_probabilities` (categorical draws from
  the degree key), sorted in descending order, and redrawn from a fresh split
  of the degree key in the rare case (probability <= 1e-12) that they overflow
  `level_capacities`; the sign key draws every Rademacher entry at once. The
  draw is kernel-independent: the coefficients enter only in
  `maclaurin_features`.

  Args:
    key: PRNG key of the draw.
    nb_features: total features m (1 constant + D random; reference 128).
    head_dim: d, the length of the Rademacher vectors.
    max_degree: truncation degree T.

  Returns:
    {'degrees': [D] int32, descending, in 1..T;
     'rademacher': [sum(level_capacities(D, T)), head_dim] float32 in {-1, +1}},
    where row offset_t + i (offset_t = c_0 + ... + c_{t-1}) is r_{i, t+1},
    feature i's vector for product level t (used when N_i > t).
  """
  _check_nb_features(nb_features)
  _check_max_degree(max_degree)
  return _draw_random_maclaurin(key, nb_features, head_dim, max_degree)


# Jitted as a whole, here and below: op by op, the first call of each shape
# compiles dozens of small programs (seconds).
@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _draw_random_maclaurin(key, nb_features, head_dim, max_degree):
  num_random = nb_features - 1
  capacities = jnp.asarray(level_capacities(num_random, max_degree), jnp.int32)
  logits = jnp.asarray(np.log(degree_probabilities(max_degree)), jnp.float32)
  levels = jnp.arange(max_degree, dtype=jnp.int32)
  degree_key, sign_key = jax.random.split(key)

  def draw(subkey):
    degrees = jax.random.categorical(subkey, logits, shape=(num_random,)).astype(jnp.int32) + 1
    return -jnp.sort(-degrees)

  def overflows(state):
    _, degrees = state
    active = jnp.sum(degrees[None, :] > levels[:, None], axis=1)
    return jnp.any(active > capacities)

  def redraw(state):
    subkey, _ = state
    subkey, draw_key = jax.random.split(subkey)
    return subkey, draw(draw_key)

  _, degrees = jax.lax.while_loop(overflows, redraw, redraw((degree_key, None)))
  rows = int(np.sum(level_capacities(num_random, max_degree)))
  rademacher = jax.random.rademacher(sign_key, (rows, head_dim), jnp.float32)
  return {"degrees": degrees, "rademacher": rademacher}


def _check_draw(degrees: jax.Array, rademacher: jax.Array, max_degree: int) -> None:
  _check_max_degree(max_degree)
  num_random = degrees.shape[0]
  rows = sum(level_capacities(num_random, max_degree))
  if degrees.ndim != 1 or rademacher.ndim != 2 or rademacher.shape[0] != rows:
    raise ValueError(f"The draw has degrees {degrees.shape} and Rademacher vectors "
                     f"{rademacher.shape}, but {num_random} features of degree <= {max_degree} "
                     f"need [{rows}, head_dim] vectors: draw them with draw_random_maclaurin(key, "
                     f"{num_random + 1}, head_dim, {max_degree}).")


def _pad_with_ones(x: jax.Array, width: int) -> jax.Array:
  if x.shape[-1] == width:
    return x
  return jnp.concatenate([x, jnp.ones(x.shape[:-1] + (width - x.shape[-1],), x.dtype)], axis=-1)


def _ragged_products_forward(x, rademacher, active, capacities):
  projections = jnp.einsum("...d,rd->...r", x, rademacher, preferred_element_type=jnp.float32)
  # Inactive slots (level >= the feature's degree) are factors of 1. Factors
  # below _TINY_FACTOR in magnitude become +-_TINY_FACTOR, so that the
  # backward pass can divide by them (see `_ragged_products`).
  projections = jnp.where(active, projections, 1.0)
  projections = jnp.where(jnp.abs(projections) < _TINY_FACTOR,
                          jnp.where(projections < 0, -_TINY_FACTOR, _TINY_FACTOR), projections)
  levels = jnp.split(projections, np.cumsum(capacities)[:-1], axis=-1)
  product = levels[-1]
  for level in reversed(levels[:-1]):  # deepest first: shrinking prefixes
    product = level * _pad_with_ones(product, level.shape[-1])
  return product, projections


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _ragged_products(x, rademacher, active, capacities):
  """prod_t (r_{i,t} . x) over the active slots of every feature i: [..., d] -> [..., D].

  A custom VJP: automatic differentiation of the level-by-level product keeps
  every partial product and sums one padded gradient per level; this rule
  saves only the projections p and the products f and forms every slot's
  gradient at once as g_i f_i / p_{t,i} (f is linear in each factor, so this
  is exact, also where a factor is 0 thanks to the _TINY_FACTOR floor), then
  one matmul with the Rademacher matrix. On CPU at length 4096 this halves
  the forward+backward time of the feature map. Forward-mode differentiation
  (jax.jvp, jax.hessian) is not defined for it.
  """
  return _ragged_products_forward(x, rademacher, active, capacities)[0]


def _ragged_products_fwd(x, rademacher, active, capacities):
  product, projections = _ragged_products_forward(x, rademacher, active, capacities)
  return product, (rademacher, active, projections, product)


def _ragged_products_bwd(capacities, residuals, cotangent):
  rademacher, active, projections, product = residuals
  weighted = cotangent * product
  per_slot = jnp.concatenate([weighted[..., :size] for size in capacities], axis=-1)
  slot_cotangent = jnp.where(active, per_slot / projections, 0.0)
  x_cotangent = jnp.einsum("...r,rd->...d", slot_cotangent, rademacher,
                           preferred_element_type=jnp.float32)
  return x_cotangent, None, None


_ragged_products.defvjp(_ragged_products_fwd, _ragged_products_bwd)


def maclaurin_features(x: jax.Array, degrees: jax.Array, rademacher: jax.Array,
                       dot_kernel: str = "exp", max_degree: int = DEFAULT_MAX_DEGREE) -> jax.Array:
  """Random Maclaurin features phi(x), E[phi(x) . phi(y)] = sum_{n <= T} a_n (x . y)^n.

  phi(x) = [sqrt(a_0), (sqrt(a_{N_i} / (P(N_i) D)) prod_{t=1..N_i} r_{i,t} . x)_i]:
  the reference's per-degree blocks (sketch / sqrt(D_n) * sqrt(D_n) * sqrt(c_n),
  concatenated, / sqrt(D), constant prepended), with the features ordered by
  descending degree instead of ascending (inner products do not depend on
  the order). One matmul computes every needed projection r . x; the product
  levels then multiply into shrinking prefixes (see `level_capacities`).
  Factors r . x of magnitude below 1e-20 count as +-1e-20 (a change of the
  features below float32 resolution that keeps the gradient exact).

  Args:
    x: [..., head_dim], already scaled; computed in float32.
    degrees: [D] int32 from `draw_random_maclaurin` (descending).
    rademacher: [rows, head_dim] from `draw_random_maclaurin`.
    dot_kernel: one of DOT_KERNELS.
    max_degree: the T the draw was made with.

  Returns:
    [..., D + 1] float32; feature 0 is the constant sqrt(a_0).
  """
  dot_kernel = canonical_dot_kernel(dot_kernel)
  _check_draw(degrees, rademacher, max_degree)
  return _maclaurin_features(x, degrees, rademacher, dot_kernel, max_degree)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _maclaurin_features(x, degrees, rademacher, dot_kernel, max_degree):
  num_random = degrees.shape[0]
  capacities = level_capacities(num_random, max_degree)
  # Slot offset_t + i is level t of feature i; it is used when N_i > t.
  slot_level = np.repeat(np.arange(max_degree), capacities)
  slot_feature = np.concatenate([np.arange(size) for size in capacities])
  active = degrees[slot_feature] > slot_level
  rademacher = jax.lax.stop_gradient(rademacher).astype(jnp.float32)
  product = _ragged_products(x.astype(jnp.float32), rademacher, active, capacities)
  coefficients = maclaurin_coefficients(dot_kernel, max_degree)
  weights = np.zeros(max_degree + 1)
  weights[1:] = np.sqrt(coefficients[1:] / degree_probabilities(max_degree) / num_random)
  scale = jnp.asarray(weights, jnp.float32)[degrees]
  constant = jnp.full(x.shape[:-1] + (1,), math.sqrt(coefficients[0]), jnp.float32)
  return jnp.concatenate([constant, product * scale], axis=-1)


def pre_sbn(x: jax.Array, eps: float = PRE_SBN_EPS) -> jax.Array:
  """PreSBN (§6.5): each row along the last axis to zero mean, then unit L2 norm.

  The reference subtracts the mean, divides by sqrt(biased variance + eps),
  then by the L2 norm; the middle step only matters through eps. Its division
  by the norm gives NaN for a constant row; here such a row maps to zero.

  Args:
    x: [..., head_dim]; computed in float32.

  Returns:
    [..., head_dim] float32 with zero mean and unit norm per row (or zeros).
  """
  x = x.astype(jnp.float32)
  centered = x - jnp.mean(x, axis=-1, keepdims=True)
  standardized = centered * jax.lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + eps)
  squared_norm = jnp.sum(standardized * standardized, axis=-1, keepdims=True)
  # Zero rows stay zero, with zero (not NaN) gradients.
  nonzero = squared_norm > jnp.finfo(jnp.float32).tiny
  return standardized * jnp.where(nonzero, jax.lax.rsqrt(jnp.where(nonzero, squared_norm, 1.0)), 0.0)


def post_sbn(x: jax.Array, scale: jax.Array, exponent: jax.Array | None = None) -> jax.Array:
  """PostSBN (§6.5): scale * x per channel, or scale * sign(x) |x|^exponent.

  The per-channel scale is the reference's working version (956e0ff-547e87a).
  With `exponent` it is the power its HEAD meant (gamma * x^beta, which in
  PyTorch is NaN for negative x and is unreachable there: the forward raises
  UnboundLocalError), made sign-preserving so that it is defined everywhere.

  Args:
    x: [..., head_dim] float32 attention output.
    scale: [head_dim] (broadcast over the other axes).
    exponent: [head_dim] or None.

  Returns:
    [..., head_dim] float32.
  """
  if exponent is not None:
    magnitude = jnp.abs(x)
    safe = jnp.maximum(magnitude, jnp.finfo(jnp.float32).tiny)
    powered = jnp.exp(exponent.astype(jnp.float32) * jnp.log(safe))
    x = jnp.sign(x) * jnp.where(magnitude > 0, powered, 0.0)
  return scale.astype(jnp.float32) * x


def _linear_attention(query_features, key_features, value, floor):
  """Non-causal: [b, h, n, m] features, [b, h, n, d] values -> [b, h, n, d]."""
  context = jnp.einsum("bhnm,bhnd->bhmd", key_features, value, preferred_element_type=jnp.float32)
  numerator = jnp.einsum("bhnm,bhmd->bhnd", query_features, context,
                         preferred_element_type=jnp.float32)
  key_sum = jnp.sum(key_features, axis=2)
  denominator = jnp.einsum("bhnm,bhm->bhn", query_features, key_sum,
                           preferred_element_type=jnp.float32)
  return numerator / jnp.maximum(denominator, floor)[..., None]


def _causal_linear_attention(query_features, key_features, value, floor, chunk):
  """out_l over keys j <= l, in blocks of `chunk` queries: O(n (chunk + m) d), no [n, m, d] tensor.

  The reference materialises every prefix sum of phi(k_j) v_j^T ([n, m, d]);
  here each block adds its exact in-block part to the sum over earlier
  blocks, which is the same quantity.
  """
  b, h, n, m = query_features.shape
  chunk = min(chunk, n)
  padded = -(-n // chunk) * chunk
  pad = [(0, 0), (0, 0), (0, padded - n), (0, 0)]
  qf, kf, v = (jnp.pad(x, pad).reshape(b, h, padded // chunk, chunk, x.shape[-1])
               for x in (query_features, key_features, value))
  block_kv = jnp.einsum("bhcjm,bhcjd->bhcmd", kf, v, preferred_element_type=jnp.float32)
  block_k = jnp.sum(kf, axis=3)

  def exclusive_cumsum(x):
    return jnp.cumsum(jnp.concatenate([jnp.zeros_like(x[:, :, :1]), x[:, :, :-1]], axis=2), axis=2)

  earlier_kv, earlier_k = exclusive_cumsum(block_kv), exclusive_cumsum(block_k)
  scores = jnp.einsum("bhcim,bhcjm->bhcij", qf, kf, preferred_element_type=jnp.float32)
  scores = jnp.where(jnp.tril(jnp.ones((chunk, chunk), bool)), scores, 0.0)
  numerator = (jnp.einsum("bhcim,bhcmd->bhcid", qf, earlier_kv, preferred_element_type=jnp.float32)
               + jnp.einsum("bhcij,bhcjd->bhcid", scores, v, preferred_element_type=jnp.float32))
  denominator = (jnp.einsum("bhcim,bhcm->bhci", qf, earlier_k, preferred_element_type=jnp.float32)
                 + jnp.sum(scores, axis=-1))
  out = numerator / jnp.maximum(denominator, floor)[..., None]
  return out.reshape(b, h, padded, -1)[:, :, :n]


def rmfa_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                   rng: jax.Array | None = None, dot_kernel: str = "exp",
                   nb_features: int | None = None, max_degree: int = DEFAULT_MAX_DEGREE,
                   random_maclaurin: dict[str, jax.Array] | None = None, ppsbn: bool = True,
                   post_sbn_scale: jax.Array | None = None,
                   post_sbn_exponent: jax.Array | None = None, denominator_floor: float = 1.0,
                   causal: bool = False, causal_chunk: int = CAUSAL_CHUNK) -> jax.Array:
  """SchoenbAt: random Maclaurin feature attention for f(q . k), O(n m d) (module docstring).

  Steps: padded keys zeroed; with `ppsbn`, PreSBN on q and k; q and k scaled
  by head_dim^(-1/4); features `maclaurin_features`; padded keys' features set
  to zero (constant included, as the reference's masked_fill), so they are
  out of numerator and denominator; normalised linear attention with the
  denominator clamped at `denominator_floor`; with `ppsbn`, PostSBN.

  Denominator: the features take both signs, so the estimated denominator
  can come near zero or below. Every real key adds a_0 = 1 exactly (the
  constant feature) plus zero-mean noise, so it is about the number of real
  keys; it is clamped at `denominator_floor` (the reference's clamp_min(1.0)),
  which binds only when the noise is as large as the sum: with ppSBN and
  head_dim >= 4 the exact sum over two or more real keys exceeds 1 for every
  kernel, so the clamp matters for a single real key, or for q.k outside the
  radius of convergence without ppSBN. A query whose keys are all padding
  gets 0.

  Args:
    query: [batch, q_length, heads, head_dim].
    key: [batch, kv_length, heads, head_dim].
    value: [batch, kv_length, heads, head_dim].
    mask: [batch, kv_length] bool, True for real tokens. Queries are not
      masked (outputs at padded positions are unused).
    rng: PRNG key of `draw_random_maclaurin`, used only when
      `random_maclaurin` is None (the module passes its own draw or key).
    dot_kernel: exp, inverse, log, trigh or sqrt (`DOT_KERNELS`).
    nb_features: total features m (constant included); None means the draw's
      size, or 128 (the reference) when drawing.
    max_degree: truncation degree T of the series (reference 20).
    random_maclaurin: a `draw_random_maclaurin` result; None draws from `rng`.
    ppsbn: PreSBN and PostSBN on (the reference's `--former maclauformer`)
      or off (`--former transformer`).
    post_sbn_scale: PostSBN's [head_dim] gamma; None means ones.
    post_sbn_exponent: PostSBN's [head_dim] power, None for none.
    denominator_floor: lower clamp of the denominator (> 0).
    causal: keys j <= i only (the reference's prefix-sum form; a quirk for
      classification, see RMFAttention).
    causal_chunk: block size of the causal form (only speed depends on it).

  Returns:
    [batch, q_length, heads, head_dim] in `value.dtype`; features and
    products are computed in float32.

  Raises:
    ValueError: an unknown kernel, bad sizes, a draw of the wrong shape, a
      missing key, or a non-positive floor.
  """
  dot_kernel = canonical_dot_kernel(dot_kernel)
  _check_max_degree(max_degree)
  if not denominator_floor > 0:
    raise ValueError(f"denominator_floor must be positive (the reference clamps at 1.0), got "
                     f"{denominator_floor!r}.")
  if causal and query.shape[1] != key.shape[1]:
    raise ValueError(f"causal=True needs as many queries as keys, got {query.shape[1]} and "
                     f"{key.shape[1]}.")
  head_dim = query.shape[-1]
  if random_maclaurin is None:
    if rng is None:
      raise ValueError("rmfa_attention needs random features or a PRNG key to draw them: pass "
                       "random_maclaurin=draw_random_maclaurin(...) or rng=jax.random.key(...).")
    random_maclaurin = draw_random_maclaurin(
        rng, DEFAULT_NB_FEATURES if nb_features is None else nb_features, head_dim, max_degree)
  degrees, rademacher = random_maclaurin["degrees"], random_maclaurin["rademacher"]
  if nb_features is not None and degrees.shape[0] + 1 != nb_features:
    raise ValueError(f"nb_features={nb_features} disagrees with the draw's {degrees.shape[0] + 1} "
                     f"features; pass nb_features=None with an explicit draw.")
  if rademacher.shape[-1] != head_dim:
    raise ValueError(f"The Rademacher vectors have length {rademacher.shape[-1]} but head_dim is "
                     f"{head_dim}: redraw them (or re-initialise the model).")
  _check_draw(degrees, rademacher, max_degree)
  if not ppsbn:
    post_sbn_scale = post_sbn_exponent = None
  elif post_sbn_scale is None and post_sbn_exponent is not None:
    post_sbn_scale = jnp.ones((head_dim,), jnp.float32)
  return _rmfa(query, key, value, mask, degrees, rademacher, post_sbn_scale, post_sbn_exponent,
               dot_kernel, max_degree, ppsbn, float(denominator_floor), causal, causal_chunk)


@functools.partial(jax.jit, static_argnums=tuple(range(8, 14)))
def _rmfa(query, key, value, mask, degrees, rademacher, post_sbn_scale, post_sbn_exponent,
          dot_kernel, max_degree, ppsbn, denominator_floor, causal, causal_chunk):
  head_dim = query.shape[-1]
  # [batch, heads, length, .] from here on: contractions with leading batch
  # axes are XLA:CPU's fast path, and head_dim-wide inputs are the cheapest
  # arrays to transpose.
  query, key, value_f32 = (jnp.swapaxes(x.astype(jnp.float32), 1, 2) for x in (query, key, value))
  real = mask[:, None, :, None]
  # Zeroed before any feature so that garbage in padded keys cannot overflow.
  key = jnp.where(real, key, 0.0)
  value_f32 = jnp.where(real, value_f32, 0.0)
  if ppsbn:
    query, key = pre_sbn(query), pre_sbn(key)
  scale = head_dim ** -0.25
  query_features = maclaurin_features(scale * query, degrees, rademacher, dot_kernel, max_degree)
  key_features = maclaurin_features(scale * key, degrees, rademacher, dot_kernel, max_degree)
  key_features = jnp.where(real, key_features, 0.0)
  if causal:
    out = _causal_linear_attention(query_features, key_features, value_f32, denominator_floor,
                                   causal_chunk)
  else:
    out = _linear_attention(query_features, key_features, value_f32, denominator_floor)
  out = jnp.swapaxes(out, 1, 2)
  if post_sbn_scale is not None:
    out = post_sbn(out, post_sbn_scale, post_sbn_exponent)
  return out.astype(value.dtype)


class RMFAttention(nn.Module):
  """Module around `rmfa_attention`: SchoenbAt's attention block with ppSBN.

  Randomness: the degrees and Rademacher vectors (`draw_random_maclaurin`)
  come from the `registry.ATTENTION_RNG` stream: drawn once at initialisation
  into the non-trainable 'constants' collection as 'random_maclaurin'
  {'degrees': [nb_features - 1] int32, 'rademacher': [rows, head_dim]} (the
  reference draws once in __init__), or with `redraw_features` afresh on
  every call, training and evaluation alike. One draw per layer, shared by
  the heads and the batch, as in the reference.

  Parameters: with `ppsbn`, PostSBN's 'post_sbn_scale' [head_dim] (ones), and
  with `post_sbn_power` also 'post_sbn_exponent' [head_dim] (ones).

  `ppsbn` maps to the reference harness's `--former` (547e87a): True is
  `maclauformer` (its default: PreSBN on Q and K, RMFA, PostSBN), False is
  `transformer` (plain RMFA on the d^(-1/4)-scaled projections). In the
  reference `maclauformer` also wraps its softmax and kernelized baselines;
  here ppSBN belongs to rmfa only.

  Reference quirks and differences:
    * Causal prefix-sum attention in an encoder used for classification:
      `causal=True` (default: bidirectional, as the paper's kernelized
      attention; the reference also materialises [n, m, d] prefix sums, here
      blocks keep memory linear).
    * PostSBN at the reference HEAD is broken (a scalar gamma and a
      per-channel beta, `gamma * x^beta` on an undefined variable, so its
      forward raises). Implemented: the working 956e0ff-547e87a version, a
      per-channel gamma. `post_sbn_power=True` adds the intended power
      sign-safely (see `post_sbn`). No published number comes from the HEAD
      (the repo has no results), so the broken form is not reproduced.
    * Features are plain tensors on cuda:0 in the reference, absent from its
      checkpoints (a reloaded run draws new ones); here they are constants,
      checkpointed with the model.
    * The denominator clamp at 1.0 is the reference's (`denominator_floor`).
    * Degrees are i.i.d. conditioned on fitting static buffers (probability
      1 - 1e-12, see `level_capacities`): not a reference quirk, a
      difference of 1e-12 in total variation.
    * Attention dropout: the reference creates it and never applies it;
      `dropout_rate` is accepted for the registry protocol and ignored.
    * PreSBN of a constant row is zero here, NaN in the reference.

  Attributes:
    dropout_rate: ignored (see above).
    dot_kernel: exp, inverse, log, trigh or sqrt (reference --dotf, default exp).
    nb_features: total features m, the constant one included (reference 128).
    max_degree: truncation degree of the Maclaurin series (reference 20).
    redraw_features: fresh features per call (True) or fixed at init.
    ppsbn: maclauformer (True) or transformer (False), see above.
    post_sbn_power: PostSBN with a learned sign-safe per-channel power.
    denominator_floor: lower clamp of the linear-attention denominator.
    causal: the reference's causal form.
  """

  dropout_rate: float = 0.0
  dot_kernel: str = "exp"
  nb_features: int = DEFAULT_NB_FEATURES
  max_degree: int = DEFAULT_MAX_DEGREE
  redraw_features: bool = False
  ppsbn: bool = True
  post_sbn_power: bool = False
  denominator_floor: float = 1.0
  causal: bool = False

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    del deterministic
    canonical_dot_kernel(self.dot_kernel)
    if self.post_sbn_power and not self.ppsbn:
      raise ValueError("post_sbn_power=True needs ppsbn=True (PostSBN is part of ppSBN).")
    head_dim = query.shape[-1]

    def draw():
      return draw_random_maclaurin(self.make_rng(registry.ATTENTION_RNG), self.nb_features,
                                   head_dim, self.max_degree)

    if self.redraw_features:
      random_maclaurin = draw()
    else:
      if self.has_variable(registry.CONSTANTS, "random_maclaurin"):
        stored = self.get_variable(registry.CONSTANTS, "random_maclaurin")
        expected = jax.eval_shape(lambda: draw_random_maclaurin(
            jax.random.key(0), self.nb_features, head_dim, self.max_degree))
        if jax.tree.map(jnp.shape, stored) != jax.tree.map(lambda x: x.shape, expected):
          raise ValueError(f"RMFA's fixed features have shapes {jax.tree.map(jnp.shape, stored)} "
                           f"but nb_features={self.nb_features}, max_degree={self.max_degree} and "
                           f"head_dim={head_dim} need {jax.tree.map(lambda x: x.shape, expected)}: "
                           f"re-initialise the model.")
      random_maclaurin = self.variable(registry.CONSTANTS, "random_maclaurin", draw).value
    scale = exponent = None
    if self.ppsbn:
      scale = self.param("post_sbn_scale", nn.initializers.ones, (head_dim,), jnp.float32)
      if self.post_sbn_power:
        exponent = self.param("post_sbn_exponent", nn.initializers.ones, (head_dim,), jnp.float32)
    return rmfa_attention(
        query, key, value, mask, dot_kernel=self.dot_kernel, max_degree=self.max_degree,
        random_maclaurin=random_maclaurin, ppsbn=self.ppsbn, post_sbn_scale=scale,
        post_sbn_exponent=exponent, denominator_floor=self.denominator_floor, causal=self.causal)


def split_config_argument(arg: str, protocols: Sequence[str]) -> tuple[str, str | None]:
  """'KERNEL[,PROTOCOL]' (either order, either optional) -> (kernel or 'exp', protocol or None).

  For the configs/<task>_rmfa.py files: `--config=configs/text_rmfa.py:sqrt,pytorch_lra`.
  """
  kernels, others = [], []
  for token in (part.strip() for part in arg.split(",") if part.strip()):
    (kernels if _ALIASES.get(token, token) in DOT_KERNELS else others).append(token)
  if len(kernels) > 1 or len(others) > 1 or (others and others[0] not in protocols):
    raise errors.ConfigError(
        f"The rmfa configs take KERNEL[,PROTOCOL] with KERNEL one of {', '.join(DOT_KERNELS)} and "
        f"PROTOCOL one of {', '.join(protocols)}, e.g. --config=configs/text_rmfa.py:sqrt,"
        f"pytorch_lra; got {arg!r}.")
  return (canonical_dot_kernel(kernels[0]) if kernels else "exp"), (others[0] if others else None)


# Its exact target is f(q.k) attention (lra_jax.benchmark.errors.dot_kernel_attention).
registry.register("rmfa", rmfa_attention, RMFAttention, small_input_kwargs=dict(nb_features=32),
                  approximates="dot_kernel")
