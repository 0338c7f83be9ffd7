"""Spectraformer's component functions: random-feature maps of the Gaussian or softmax kernel.

Spectraformer (Nguyen et al. 2024, "Spectraformer: A Unified Random Feature
Framework for Transformer") writes every random-feature attention as a
component function f applied to the projections W x of a weight matrix W
(rows w_f, each marginally N(0, I_d)); the attention is then linear in the
length (`random_features.linear_attention`). The five component functions
(spectraformer_schoenbat.md §2), each an unbiased estimator
E_W[phi(x) . phi(y)] = K(x, y) of its target kernel on x = d^(-1/4) q,
y = d^(-1/4) k:

* `trigrf` (Rahimi & Recht 2007): phi(x) = m^(-1/2) [cos W x, sin W x], since
  E[cos(w.(x - y))] = exp(-||x - y||^2 / 2). Features can be negative.
* `posrf` (Performer FAVOR+, Choromanski et al. 2021, Lemma 1):
  phi_f(x) = m^(-1/2) exp(w_f.x - ||x||^2) for the Gaussian kernel
  (exp(w_f.x - ||x||^2 / 2) for the softmax kernel exp(x.y)).
* `gerf` (generalised exponential RF, Likhosherstov et al. 2022, "Chefs'
  Random Tables", GERF with s = +1): for A < 1/4,
  phi_f(x) = m^(-1/2) D exp(A ||w_f||^2 + B w_f.x + C ||x||^2),
  B = sqrt(1 - 4A), D = (1 - 4A)^(d/4), C = -1 (Gaussian) or -1/2 (softmax).
  E_w[exp(2A||w||^2 + B w.(x + y))] = (1 - 4A)^(-d/2) exp(||x + y||^2 / 2),
  which D^2 cancels. A < 1/8 keeps the variance finite (`GERF_A_BOUND`).
  posrf is A = 0.
* `oprf` (optimal positive RF, same paper): GERF with the A that
  minimises the mean log relative second moment over all query-key pairs:
  with phi = mean_ij ||x_i + y_j||^2, rho* = (sqrt((2 phi + d)^2 + 8 d phi)
  - 2 phi - d) / (4 phi) and A* = (1 - 1/rho*) / 8 <= 0 (`oprf_parameter`).
* `saderf` (simplified asymmetric dense-exponential RF, Likhosherstov et al.
  2023, "Dense-Exponential Random Features: Sharp Positive Estimators of the
  Gaussian Kernel"): GERF on x' = Psi x and
  y' = Psi^-1 y, where x'.y' = x.y, with the diagonal
  Psi_l = (sum_j y_jl^2 / sum_i x_il^2)^(1/4) that balances the two sides
  (`saderf_scales`). GERF of x', y' estimates the softmax kernel
  exp(x'.y') = exp(x.y); the Gaussian kernel multiplies it by
  exp(-||x||^2 / 2 - ||y||^2 / 2) of the unscaled inputs.

One template covers the positive maps (`positive_features`): the log of a
feature is A ||w_f||^2 + B w_f.x' (depends on the feature) plus an offset that
depends on the token only, -||x'||^2 / 2 (softmax) - ||x||^2 / 2 (Gaussian
target only) + log D. The Gaussian vs softmax target is therefore the one
switch `kernel`; Performer (`random_features.performer_attention`) is posrf with
the softmax kernel, Spectraformer defaults to the Gaussian kernel (its
target, §2).

Numerical stabilisation (§1.5): a constant s is subtracted inside exp and
cancels in the normalised attention out / den:
  queries: s = max over the features of each query (the query's own factor
    cancels between numerator and denominator);
  keys: s = max over the real keys and the features of each (batch, head)
    ('sequence'), so the estimate stays proportional to the kernel; the
    reference's per-token key max ('token') reweights every key by its own
    exp(-s_k), a bias (reproduced behind that option); 'global' is the
    lucidrains Performer's max over the whole key tensor; 'none' gives the
    raw unbiased estimator (tests, error maps: may overflow for large norms).
  eps (`numerical_stabilizer`, reference 1e-4) is added to every positive
  feature after exp, inside m^(-1/2) (a constant that cancels in out / den,
  as D does when every key has the same A).

All maps run in float32 (inputs are cast) and never form a [length, length]
array. No randomness is drawn here: W, and GERF/SADERF's A, are arguments
(`draw_gerf_parameter` samples the reference's A law from an explicit key).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

COMPONENT_FUNCTIONS: tuple[str, ...] = ("trigrf", "posrf", "oprf", "gerf", "saderf")
# Maps with nonnegative features (positive denominators).
POSITIVE_COMPONENT_FUNCTIONS: tuple[str, ...] = ("posrf", "oprf", "gerf", "saderf")
# Maps with the GERF parameter A as an input (learned or fixed random).
GERF_PARAMETER_FUNCTIONS: tuple[str, ...] = ("gerf", "saderf")
KERNELS: tuple[str, ...] = ("gaussian", "softmax")
STABILIZERS: tuple[str, ...] = ("token", "sequence", "global", "none")
# The reference draws A ~ U(-b, b) and clamps A <= b (b < 1/8: finite variance).
GERF_A_BOUND = 0.124999


def check_choice(what: str, value: str, valid: tuple[str, ...]) -> None:
  """ValueError naming the valid values when `value` is not one of them."""
  if value not in valid:
    raise ValueError(f"Unknown {what} {value!r}; valid values: {', '.join(valid)}.")


def stabilizer_value(log_features: jax.Array, stabilizer: str,
                     mask: jax.Array | None) -> jax.Array:
  """The stabiliser's max over `log_features` [b, n, h, k] (module docstring), not stopped.

  'sequence' leaves out the tokens where `mask` [b, n] is False and gives
  -inf to a (batch, head) without real tokens; a max of block maxima is the
  max over the blocks' union, which `random_features` uses to stabilise keys
  block by block.
  """
  check_choice("stabilizer", stabilizer, STABILIZERS)
  if stabilizer == "none":
    return jnp.zeros((), jnp.float32)
  if stabilizer == "token":
    return jnp.max(log_features, axis=-1, keepdims=True)
  if stabilizer == "global":
    return jnp.max(log_features)
  real = log_features if mask is None else jnp.where(mask[:, :, None, None], log_features, -jnp.inf)
  return jnp.max(real, axis=(1, 3), keepdims=True)


def _stabilizer(log_features: jax.Array, stabilizer: str | jax.Array,
                mask: jax.Array | None) -> jax.Array:
  """The constant subtracted inside exp, under stop_gradient; an array is a precomputed value."""
  stab = stabilizer if isinstance(stabilizer, jax.Array) else stabilizer_value(
      log_features, stabilizer, mask)
  # A (batch, head) without real tokens has stab -inf; any finite value works.
  return jax.lax.stop_gradient(jnp.where(jnp.isfinite(stab), stab, 0.0))


def _check_projection(x: jax.Array, projection: jax.Array) -> None:
  if projection.ndim != 2 or projection.shape[1] != x.shape[-1]:
    raise ValueError(f"The projection must be [num_features, head_dim] = [m, {x.shape[-1]}], got "
                     f"shape {projection.shape}.")


def positive_features(x: jax.Array, projection: jax.Array, *, a: jax.Array | float = 0.0,
                      scales: jax.Array | None = None, kernel: str = "gaussian",
                      mask: jax.Array | None = None, stabilizer: str | jax.Array = "token",
                      numerical_stabilizer: float = 1e-4, d_factor: bool = True,
                      norm_in_stabilizer: bool = True) -> jax.Array:
  """GERF-template positive features (posrf: a = 0; oprf, gerf: a given; saderf: scales given).

    phi_f(x) = m^(-1/2) (exp(A ||w_f||^2 + B w_f.x' + offset(x) - s) + eps),
    x' = scales * x, B = sqrt(1 - 4A),
    offset(x) = -||x'||^2 / 2 [- ||x||^2 / 2 for the Gaussian kernel] + (d/4) log(1 - 4A).

  Args:
    x: [batch, length, heads, d] inputs, already scaled (d^(-1/4) q or k).
    projection: [m, d] weight matrix W.
    a: GERF's A < 1/4, broadcastable to [batch, length, heads, 1] (a number,
      per (batch, head) [b, 1, h, 1], per head [1, 1, h, 1], per position
      [1, length, h, 1]).
    scales: SADERF's diagonal Psi (queries) or Psi^-1 (keys), broadcastable to
      [batch, length, heads, d]; None = identity.
    kernel: 'gaussian' (exp(-||x - y||^2 / 2)) or 'softmax' (exp(x.y)).
    mask: [batch, length] bool, True for real tokens, or None. Padded tokens
      are zeroed before the features (so garbage cannot overflow) and left out
      of the 'sequence' stabiliser; their features are not zeroed here.
    stabilizer: 'token', 'sequence', 'global' or 'none' (module docstring),
      or its value computed beforehand (`stabilizer_value`, e.g. over every
      block of a chunked length), broadcastable to [batch, length, heads, 1].
    numerical_stabilizer: eps added to every feature after exp.
    d_factor: include D = (1 - 4A)^(d/4) (False: the reference, which keeps
      only D's phase, 1 for real A, §2).
    norm_in_stabilizer: the stabiliser is the max of the whole exponent
      (True) or of its feature-dependent part A ||w||^2 + B w.x' only (the
      lucidrains/official Performer form, where a query's offset stays inside
      exp and can underflow every feature of a large-norm query to eps).

  Returns:
    [batch, length, heads, m] float32.
  """
  exponent, offset = _positive_log_parts(x, projection, a=a, scales=scales, kernel=kernel,
                                         mask=mask, d_factor=d_factor)
  stab = _stabilizer(exponent + offset if norm_in_stabilizer else exponent, stabilizer, mask)
  ratio = projection.shape[0] ** -0.5
  return ratio * (jnp.exp(exponent + offset - stab) + numerical_stabilizer)


def _positive_log_parts(x: jax.Array, projection: jax.Array, *, a: jax.Array | float,
                        scales: jax.Array | None, kernel: str, mask: jax.Array | None,
                        d_factor: bool) -> tuple[jax.Array, jax.Array]:
  """log of `positive_features` before the stabiliser, in two parts.

  Returns:
    (A ||w_f||^2 + B w_f.x' [b, n, h, m], offset [b, n, h, 1]).
  """
  check_choice("kernel", kernel, KERNELS)
  _check_projection(x, projection)
  x = x.astype(jnp.float32)
  if mask is not None:
    x = jnp.where(mask[:, :, None, None], x, 0.0)
  scaled = x if scales is None else x * scales
  projection = projection.astype(jnp.float32)
  u = jnp.einsum("bnhd,md->bnhm", scaled, projection, preferred_element_type=jnp.float32)
  offset = -0.5 * jnp.sum(scaled * scaled, axis=-1, keepdims=True)
  if kernel == "gaussian":
    offset = offset - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
  if isinstance(a, (int, float)) and a == 0:  # posrf: skip the A terms
    return u, offset
  a = jnp.asarray(a, jnp.float32)
  one_minus_4a = 1.0 - 4.0 * a
  exponent = a * jnp.sum(projection * projection, axis=-1) + jnp.sqrt(one_minus_4a) * u
  if d_factor:
    offset = offset + 0.25 * x.shape[-1] * jnp.log(one_minus_4a)
  return exponent, offset


# Taylor coefficients of sin(h) / h and cos(h) in h^2 for |h| <= pi / 2:
# truncation error below 6e-8 (the next terms, (pi/2)^15 / 15! and (pi/2)^16 / 16!).
_SIN_COEFFICIENTS = tuple((-1) ** i / math.factorial(2 * i + 1) for i in range(7))
_COS_COEFFICIENTS = tuple((-1) ** i / math.factorial(2 * i) for i in range(8))
# 2 pi = _TWO_PI_HIGH + _TWO_PI_LOW with _TWO_PI_HIGH exact in 9 bits, so that
# k * _TWO_PI_HIGH is exact for |k| < 2^15 (Cody-Waite range reduction).
_TWO_PI_HIGH = 6.28125
_TWO_PI_LOW = 2 * math.pi - 6.28125


def _polynomial(coefficients: tuple[float, ...], y: jax.Array) -> jax.Array:
  total = jnp.full_like(y, coefficients[-1])
  for coefficient in reversed(coefficients[:-1]):
    total = total * y + coefficient
  return total


@jax.custom_jvp
def cos_sin(u: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(cos u, sin u) of float32 u, from multiplies and adds only.

  Within 4e-7 of the exact values for |u| <= 1e4 (measured; jnp.cos: 7e-8),
  1.3e-6 at 1e5; the projections w.x of scaled tokens are O(10).

  XLA:CPU evaluates jnp.sin and jnp.cos element by element (about 6 ns each on
  this project's CPU, 4x an exp); TrigRF takes both of every projection, so
  they dominated its time. Here u is reduced to r in [-pi, pi], and
  cos r = c^2 - s^2, sin r = 2 s c from the Taylor polynomials s, c of
  sin(r / 2), cos(r / 2): one vectorised loop, 3x faster than jnp.sin plus
  jnp.cos. The derivative is the exact (-sin u, cos u) of the same values.
  """
  u = u.astype(jnp.float32)
  turns = jnp.round(u * (1.0 / (2.0 * math.pi)))
  half = 0.5 * ((u - turns * _TWO_PI_HIGH) - turns * _TWO_PI_LOW)
  half_squared = half * half
  sin_half = half * _polynomial(_SIN_COEFFICIENTS, half_squared)
  cos_half = _polynomial(_COS_COEFFICIENTS, half_squared)
  return cos_half * cos_half - sin_half * sin_half, 2.0 * sin_half * cos_half


@cos_sin.defjvp
def _cos_sin_jvp(primals, tangents):
  (u,), (du,) = primals, tangents
  cos, sin = cos_sin(u)
  return (cos, sin), (-sin * du, cos * du)


def trigonometric_features(x: jax.Array, projection: jax.Array, *, kernel: str = "gaussian",
                           mask: jax.Array | None = None, stabilizer: str | jax.Array = "token",
                           reference_renormalizer: bool = False) -> jax.Array:
  """TrigRF (Rahimi & Recht 2007): phi(x) = m^(-1/2) [cos W x, sin W x] h(x).

  h(x) = 1 for the Gaussian kernel (E[cos(w.(x - y))] = exp(-||x - y||^2 / 2));
  h(x) = exp(||x||^2 / 2 - s) for the softmax kernel, with the stabiliser s as
  in `positive_features` (a query's factor cancels; keys share one per
  (batch, head)). No eps: the features are not positive anyway.

  Args:
    x: [batch, length, heads, d] inputs, already scaled.
    projection: [m, d] weight matrix W.
    kernel: 'gaussian' or 'softmax'.
    mask: [batch, length] bool or None; padded tokens are zeroed first.
    stabilizer: see `positive_features` (softmax kernel only; it maxes
      `trigonometric_log_scale`).
    reference_renormalizer: the reference's factor instead of h:
      exp(||x|| - max_j z_j(x)) per token, with the L2 norm (not its square)
      and z = [cos W x, sin W x] (§1.5, §2.1); it multiplies each token's
      kernel row by a token-dependent factor, a bias.

  Returns:
    [batch, length, heads, 2 m] float32.
  """
  check_choice("kernel", kernel, KERNELS)
  _check_projection(x, projection)
  x = x.astype(jnp.float32)
  if mask is not None:
    x = jnp.where(mask[:, :, None, None], x, 0.0)
  u = jnp.einsum("bnhd,md->bnhm", x, projection.astype(jnp.float32),
                 preferred_element_type=jnp.float32)
  z = jnp.concatenate(cos_sin(u), axis=-1)
  ratio = projection.shape[0] ** -0.5
  if reference_renormalizer:
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return ratio * z * jnp.exp(norm - jnp.max(z, axis=-1, keepdims=True))
  if kernel == "gaussian":
    return ratio * z
  log_h = trigonometric_log_scale(x)
  return ratio * z * jnp.exp(log_h - _stabilizer(log_h, stabilizer, mask))


def trigonometric_log_scale(x: jax.Array) -> jax.Array:
  """log h(x) = ||x||^2 / 2 of TrigRF's softmax-kernel features: [b, n, h, 1]."""
  x = x.astype(jnp.float32)
  return 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)


def _masked_mean(x: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Mean over the length axis of [b, n, h, k], real tokens only: [b, 1, h, k]."""
  if mask is None:
    return jnp.mean(x, axis=1, keepdims=True)
  real = mask[:, :, None, None].astype(jnp.float32)
  count = jnp.maximum(jnp.sum(real, axis=1, keepdims=True), 1.0)
  return jnp.sum(x * real, axis=1, keepdims=True) / count


def optimal_positive_a(phi: jax.Array, dim: int) -> jax.Array:
  """OPRF's A* = (1 - 1/rho*) / 8 from the statistic phi = mean ||x_i + y_j||^2 (>= 0).

  Written as (d - 2 phi - sqrt((2 phi + d)^2 + 8 d phi)) / (16 d), the same
  number without the 0/0 of rho* at phi = 0 (where A* = 0, posrf).
  """
  phi = jnp.maximum(phi, 0.0)
  root = jnp.sqrt((2.0 * phi + dim) ** 2 + 8.0 * dim * phi)
  return (dim - 2.0 * phi - root) / (16.0 * dim)


def oprf_parameter(x: jax.Array, y: jax.Array, *, query_mask: jax.Array | None = None,
                   key_mask: jax.Array | None = None, per_position: bool = False) -> jax.Array:
  """OPRF's A* (Likhosherstov et al. 2022) from scaled queries and keys.

  Default: per (batch, head), phi = mean over all real pairs (i, j) of
  ||x_i + y_j||^2 = mean_i ||x_i||^2 + mean_j ||y_j||^2 + 2 mean_i x_i . mean_j y_j
  (linear cost). `per_position` is the reference's statistic (§2.3): per
  (head, position j), phi_j = mean_b ||x_bj||^2 + mean_b ||y_bj||^2
  + 2 mean_b x_bj . mean_b y_bj, pairing query j with key j and averaging over
  the batch (masks ignored: the reference's keys are zeroed, its queries not);
  A then differs between a query and the keys it meets, so E[phi(x).phi(y)]
  is no longer the kernel.

  Gradients flow through A, as in the reference (the estimator is unbiased
  for every A, so this only adds a zero-mean term).

  Args:
    x: [batch, q_length, heads, d] scaled queries.
    y: [batch, kv_length, heads, d] scaled keys.
    query_mask, key_mask: [batch, length] bool (True = real) or None.
    per_position: the reference's statistic (needs q_length == kv_length).

  Returns:
    A*: [batch, 1, heads, 1] (default) or [1, length, heads, 1], <= 0.
  """
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  if per_position:
    if x.shape[1] != y.shape[1]:
      raise ValueError(f"The per-position OPRF statistic pairs query j with key j and needs equal "
                       f"lengths, got {x.shape[1]} queries and {y.shape[1]} keys.")
    if key_mask is not None:
      y = jnp.where(key_mask[:, :, None, None], y, 0.0)
    phi = (jnp.mean(jnp.sum(x * x, -1, keepdims=True), axis=0, keepdims=True)
           + jnp.mean(jnp.sum(y * y, -1, keepdims=True), axis=0, keepdims=True)
           + 2.0 * jnp.sum(jnp.mean(x, 0, keepdims=True) * jnp.mean(y, 0, keepdims=True), -1,
                           keepdims=True))
  else:
    if key_mask is not None:
      y = jnp.where(key_mask[:, :, None, None], y, 0.0)
    if query_mask is not None:
      x = jnp.where(query_mask[:, :, None, None], x, 0.0)
    phi = (_masked_mean(jnp.sum(x * x, -1, keepdims=True), query_mask)
           + _masked_mean(jnp.sum(y * y, -1, keepdims=True), key_mask)
           + 2.0 * jnp.sum(_masked_mean(x, query_mask) * _masked_mean(y, key_mask), -1,
                           keepdims=True))
  return optimal_positive_a(phi, x.shape[-1])


def saderf_scales(x: jax.Array, y: jax.Array, *, query_mask: jax.Array | None = None,
                  key_mask: jax.Array | None = None) -> jax.Array:
  """SADERF's diagonal Psi per (batch, head): psi_l = (sum_j y_jl^2 / sum_i x_il^2)^(1/4).

  Sums over the real tokens (the reference: over every query, padded ones
  included, and the zeroed keys: pass query_mask=None for that). Where either
  sum is 0 the coordinate is 0 on that side for every token, and psi_l = 1.
  Gradients flow through Psi, as in the reference.

  Args:
    x: [batch, q_length, heads, d] scaled queries.
    y: [batch, kv_length, heads, d] scaled keys.
    query_mask, key_mask: [batch, length] bool (True = real) or None.

  Returns:
    psi: [batch, 1, heads, d]; queries use x * psi, keys y / psi.
  """
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  if query_mask is not None:
    x = jnp.where(query_mask[:, :, None, None], x, 0.0)
  if key_mask is not None:
    y = jnp.where(key_mask[:, :, None, None], y, 0.0)
  x_sq = jnp.sum(x * x, axis=1, keepdims=True)
  y_sq = jnp.sum(y * y, axis=1, keepdims=True)
  defined = (x_sq > 0) & (y_sq > 0)
  # Double where: the unused branch must not produce NaN gradients either.
  ratio = jnp.where(defined, y_sq, 1.0) / jnp.where(defined, x_sq, 1.0)
  return jnp.where(defined, ratio ** 0.25, 1.0)


def draw_gerf_parameter(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """GERF/SADERF's A ~ U(-0.124999, 0.124999) (the reference's law, §2.4), float32."""
  return jax.random.uniform(key, shape, jnp.float32, -GERF_A_BOUND, GERF_A_BOUND)


def _gerf_a(a: jax.Array, heads: int, length: int) -> jax.Array:
  """A as given ([], [heads] or the reference's [heads, length]) -> broadcastable, clamped."""
  a = jnp.asarray(a, jnp.float32)
  if a.ndim == 1 and a.shape[0] == heads:
    a = a[None, None, :, None]
  elif a.ndim == 2 and a.shape == (heads, length):
    a = a.T[None, :, :, None]
  elif a.ndim != 0:
    raise ValueError(f"GERF's A must be a number, [heads] = [{heads}] or [heads, length] = "
                     f"[{heads}, {length}], got shape {a.shape}.")
  # The reference clamps gerf's A at the bound; learned A must stay < 1/8 too.
  return jnp.minimum(a, GERF_A_BOUND)


def query_key_features(feature_map: str, query: jax.Array, key: jax.Array, projection: jax.Array,
                       mask: jax.Array | None = None, *, kernel: str = "gaussian",
                       gerf_a: jax.Array | None = None, data_normalizer: float | None = None,
                       numerical_stabilizer: float = 1e-4, key_stabilizer: str = "sequence",
                       stabilize: bool = True, norm_in_stabilizer: bool = True,
                       unmasked_statistics: bool = False, drop_d_factor: bool = False,
                       oprf_per_position_statistic: bool = False,
                       reference_trigrf_renormalizer: bool = False) -> tuple[jax.Array, jax.Array]:
  """Features of queries and keys under one component function (the data-dependent A, Psi included).

  Args:
    feature_map: one of `COMPONENT_FUNCTIONS`.
    query: [batch, q_length, heads, head_dim] (unscaled).
    key: [batch, kv_length, heads, head_dim] (unscaled).
    projection: [m, head_dim] weight matrix W (rows marginally N(0, I)).
    mask: [batch, kv_length] bool, True for real keys, or None (all real).
      Padded keys are zeroed and out of the key stabiliser; with
      q_length == kv_length (self-attention) it also selects the real queries
      of the OPRF / SADERF statistics.
    kernel: 'gaussian' (Spectraformer's target) or 'softmax' (Performer's).
    gerf_a: A of gerf / saderf: a number, [heads] or [heads, kv_length].
    data_normalizer: scale of q and k; None = head_dim^(-1/4).
    numerical_stabilizer: eps of the positive maps.
    key_stabilizer: 'sequence', 'global' or 'token' (module docstring).
    stabilize: False gives the raw estimator (no stabilisers; may overflow).
    norm_in_stabilizer: see `positive_features`.
    unmasked_statistics: the reference's statistics (OPRF, SADERF) over every
      query, padded ones included, and over zeroed padded keys.
    drop_d_factor: the reference's missing |D| (see `positive_features`).
    oprf_per_position_statistic: the reference's OPRF statistic
      (`oprf_parameter`'s per_position).
    reference_trigrf_renormalizer: see `trigonometric_features`.

  Returns:
    (query features [batch, q_length, heads, m'], key features
    [batch, kv_length, heads, m']) float32, m' = 2m for trigrf, else m.
  """
  prepared = prepare_features(
      feature_map, query, key, mask, kernel=kernel, gerf_a=gerf_a,
      data_normalizer=data_normalizer, numerical_stabilizer=numerical_stabilizer,
      key_stabilizer=key_stabilizer, norm_in_stabilizer=norm_in_stabilizer,
      unmasked_statistics=unmasked_statistics, drop_d_factor=drop_d_factor,
      oprf_per_position_statistic=oprf_per_position_statistic,
      reference_trigrf_renormalizer=reference_trigrf_renormalizer)
  component, x, y, a, query_scales, key_scales = prepared
  query_stab, key_stab = ("token", key_stabilizer) if stabilize else ("none", "none")
  return (component(x, projection, a=a, scales=query_scales, stabilizer=query_stab),
          component(y, projection, a=a, scales=key_scales, mask=mask, stabilizer=key_stab))


class PreparedFeatures(NamedTuple):
  """A component function with everything that is not token-wise fixed (`prepare_features`)."""

  component: ComponentFunction
  x: jax.Array  # [batch, q_length, heads, head_dim] scaled queries
  y: jax.Array  # [batch, kv_length, heads, head_dim] scaled keys
  a: jax.Array | float  # GERF's A (`feature_parameters`)
  query_scales: jax.Array | None  # SADERF's Psi
  key_scales: jax.Array | None  # SADERF's Psi^-1


def prepare_features(feature_map: str, query: jax.Array, key: jax.Array,
                     mask: jax.Array | None = None, *, kernel: str = "gaussian",
                     gerf_a: jax.Array | None = None, data_normalizer: float | None = None,
                     numerical_stabilizer: float = 1e-4, key_stabilizer: str = "sequence",
                     norm_in_stabilizer: bool = True, unmasked_statistics: bool = False,
                     drop_d_factor: bool = False, oprf_per_position_statistic: bool = False,
                     reference_trigrf_renormalizer: bool = False) -> PreparedFeatures:
  """The component function, the scaled inputs and their A and Psi; arguments as `query_key_features`.

  What remains is token-wise (but for the stabilisers): the features of any
  block of tokens are `component(x_block, projection, a=..., scales=...)`.
  """
  component = ComponentFunction(feature_map, kernel=kernel,
                                numerical_stabilizer=numerical_stabilizer,
                                d_factor=not drop_d_factor, norm_in_stabilizer=norm_in_stabilizer,
                                reference_trigrf_renormalizer=reference_trigrf_renormalizer)
  check_choice("key_stabilizer", key_stabilizer, STABILIZERS[:3])
  x, y = scaled_inputs(query, key, data_normalizer)
  a, query_scales, key_scales = feature_parameters(
      feature_map, x, y, mask, gerf_a=gerf_a, unmasked_statistics=unmasked_statistics,
      oprf_per_position_statistic=oprf_per_position_statistic)
  return PreparedFeatures(component, x, y, a, query_scales, key_scales)


def scaled_inputs(query: jax.Array, key: jax.Array,
                  data_normalizer: float | None) -> tuple[jax.Array, jax.Array]:
  """x = c q and y = c k in float32, c = data_normalizer (None: head_dim^(-1/4))."""
  if data_normalizer is None:
    data_normalizer = query.shape[-1] ** -0.25
  return data_normalizer * query.astype(jnp.float32), data_normalizer * key.astype(jnp.float32)


def feature_parameters(feature_map: str, x: jax.Array, y: jax.Array, mask: jax.Array | None, *,
                       gerf_a: jax.Array | None = None, unmasked_statistics: bool = False,
                       oprf_per_position_statistic: bool = False):
  """A and Psi of a component function from the scaled queries x and keys y (O(n d)).

  Args: see `query_key_features`.

  Returns:
    (a, query_scales, key_scales): A is 0.0 (trigrf, posrf), [batch, 1, heads, 1]
    (oprf), [1, 1, heads, 1] or [1, kv_length, heads, 1] (gerf, saderf, or
    oprf's per-position statistic), or a number; the scales are SADERF's
    Psi and Psi^-1, [batch, 1, heads, head_dim], else None.
  """
  check_choice("feature_map", feature_map, COMPONENT_FUNCTIONS)
  if feature_map in ("trigrf", "posrf"):
    return 0.0, None, None
  if unmasked_statistics:  # zeroed padded keys, counted like real ones
    stat_y = y if mask is None else jnp.where(mask[:, :, None, None], y, 0.0)
    query_mask = key_mask = None
  else:
    stat_y, key_mask = y, mask
    query_mask = mask if x.shape[1] == y.shape[1] else None
  if feature_map == "oprf":
    return oprf_parameter(x, stat_y, query_mask=query_mask, key_mask=key_mask,
                          per_position=oprf_per_position_statistic), None, None
  if gerf_a is None:
    raise ValueError(f"{feature_map} needs its parameter A (gerf_a): a number, [heads] or "
                     f"[heads, length]; draw_gerf_parameter samples the reference's law.")
  a = _gerf_a(gerf_a, x.shape[2], y.shape[1])
  if feature_map == "saderf":
    psi = saderf_scales(x, stat_y, query_mask=query_mask, key_mask=key_mask)
    return a, psi, 1.0 / psi
  return a, None, None


@dataclasses.dataclass(frozen=True)
class ComponentFunction:
  """One component function with its static options: the features of tokens given A, Psi, W.

  Token-wise except for the stabiliser, which may be passed precomputed
  (`log_scale` is what it maxes over), so that features can be computed
  block by block over the length (`random_features.random_feature_attention`).

  Attributes:
    name: one of `COMPONENT_FUNCTIONS`.
    kernel: 'gaussian' or 'softmax'.
    numerical_stabilizer: eps of the positive maps.
    d_factor: GERF's D (see `positive_features`).
    norm_in_stabilizer: see `positive_features`.
    reference_trigrf_renormalizer: see `trigonometric_features`.
  """

  name: str
  kernel: str = "gaussian"
  numerical_stabilizer: float = 1e-4
  d_factor: bool = True
  norm_in_stabilizer: bool = True
  reference_trigrf_renormalizer: bool = False

  def __post_init__(self):
    check_choice("feature_map", self.name, COMPONENT_FUNCTIONS)
    check_choice("kernel", self.kernel, KERNELS)

  @property
  def positive(self) -> bool:
    return self.name in POSITIVE_COMPONENT_FUNCTIONS

  @property
  def uses_stabilizer(self) -> bool:
    """False for the maps with no constant to subtract (TrigRF's Gaussian or reference form)."""
    return self.positive or (self.kernel == "softmax" and not self.reference_trigrf_renormalizer)

  def __call__(self, x: jax.Array, projection: jax.Array, *, a: jax.Array | float = 0.0,
               scales: jax.Array | None = None, mask: jax.Array | None = None,
               stabilizer: str | jax.Array = "token") -> jax.Array:
    """Features [batch, length, heads, m'] (m' = 2m for trigrf) of scaled tokens x."""
    if self.name == "trigrf":
      return trigonometric_features(x, projection, kernel=self.kernel, mask=mask,
                                    stabilizer=stabilizer,
                                    reference_renormalizer=self.reference_trigrf_renormalizer)
    return positive_features(x, projection, a=a, scales=scales, kernel=self.kernel, mask=mask,
                             stabilizer=stabilizer, numerical_stabilizer=self.numerical_stabilizer,
                             d_factor=self.d_factor, norm_in_stabilizer=self.norm_in_stabilizer)

  def log_scale(self, x: jax.Array, projection: jax.Array, *, a: jax.Array | float = 0.0,
                scales: jax.Array | None = None, mask: jax.Array | None = None) -> jax.Array:
    """What the stabiliser of `__call__` maxes over: [b, n, h, m] or [b, n, h, 1]."""
    if self.name == "trigrf":
      if mask is not None:
        x = jnp.where(mask[:, :, None, None], x, 0.0)
      return trigonometric_log_scale(x)
    exponent, offset = _positive_log_parts(x, projection, a=a, scales=scales, kernel=self.kernel,
                                           mask=mask, d_factor=self.d_factor)
    return exponent + offset if self.norm_in_stabilizer else exponent
