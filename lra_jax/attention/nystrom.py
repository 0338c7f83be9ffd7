"""Nyström-based attention: Nyströmformer (softmax) and Skyformer (Gaussian kernel).

Both approximate an n x n attention matrix through a few landmarks and the
iterative Moore-Penrose pseudo-inverse of Razavi et al. (2014) used by
Xiong et al. (2021):

* `nystrom`: Xiong et al., "Nyströmformer: A Nyström-Based Algorithm for
  Approximating Self-Attention" (AAAI 2021), its Nyström form of softmax
  attention softmax(Q K_L^T) softmax(Q_L K_L^T)^+ softmax(Q_L K^T) V with
  segment-mean landmarks Q_L, K_L; reference code
  `attention_nystrom.NystromAttention` (nystromformer_and_peers.md §1,
  skyformer_skeinformer.md §1.4).
* `skyformer`: Chen et al., "Skyformer: Remodel Self-Attention with Gaussian
  Kernel and Nyström Method" (NeurIPS 2021), eqs. 4-6 (Nyström approximation
  of the Gaussian kernel of eq. 3, landmarks sampled), reference code
  `attention_skyformer.Skyformer` (skyformer_skeinformer.md §1.3).

Both are self-attention: queries, keys and values share one length and one
padding mask.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lra_jax.attention import checks, chunking, registry
from lra_jax.attention.kernelized import gaussian_kernel, kernel_scale
from lra_jax.attention.layout import heads_major, length_major
from lra_jax.attention.softmax import softmax_attention, softmax_readout

# Finite rather than -inf (as in softmax.py): an all-masked row stays finite.
_MASK_VALUE = -1e10
_HIGHEST = jax.lax.Precision.HIGHEST
PINV_INITS = ("per_matrix", "batch_global")


def _matmul(a, b):
  return jnp.matmul(a, b, precision=_HIGHEST)


def _initial_inverse(matrix: jax.Array, init: str) -> tuple[jax.Array, jax.Array]:
  """(matrix in float32, Z_0 = c matrix^T) for the Razavi iteration."""
  if init not in PINV_INITS:
    raise ValueError(f"Unknown pseudo-inverse init {init!r}; valid: {', '.join(PINV_INITS)}.")
  matrix = matrix.astype(jnp.float32)
  column_sums = jnp.sum(jnp.abs(matrix), axis=-2)
  if init == "per_matrix":
    largest = jnp.max(column_sums, axis=-1)[..., None, None]
  else:
    largest = jnp.max(column_sums)
  # An all-zero matrix gets Z = 0 (its pseudo-inverse) instead of NaN.
  coefficient = 1.0 / jnp.maximum(largest, jnp.finfo(jnp.float32).tiny)
  return matrix, coefficient * jnp.swapaxes(matrix, -1, -2)


def _razavi_step(matrix: jax.Array, inverse: jax.Array) -> jax.Array:
  """Z -> 1/4 Z (13 I - A Z (15 I - A Z (7 I - A Z)))."""
  identity = jnp.eye(matrix.shape[-1], dtype=jnp.float32)
  product = _matmul(matrix, inverse)
  inner = 15 * identity - _matmul(product, 7 * identity - product)
  return 0.25 * _matmul(inverse, 13 * identity - _matmul(product, inner))


def iterative_pseudo_inverse(matrix: jax.Array, num_iterations: int = 6,
                             init: str = "per_matrix") -> jax.Array:
  """Moore-Penrose pseudo-inverse by the Razavi et al. (2014) iteration.

  Z_0 = c A^T, then Z_{t+1} = 1/4 Z_t (13 I - A Z_t (15 I - A Z_t (7 I - A Z_t)))
  (the Nyströmformer paper's pseudo-inverse; nystromformer_and_peers.md §1.6).
  Six steps are the reference default and are not fully converged; about 20
  are for well-conditioned matrices.

  Args:
    matrix: [..., m, m] square matrices (cast to float32).
    num_iterations: number of iterations (static).
    init: how the scalar c is chosen.
      'per_matrix' (default): c = 1 / max_j sum_i |A_ij|, the exact 1/||A||_1
        of each [..., m, m] matrix; examples and heads stay independent.
      'batch_global': the reference quirk: one c = 1 / (largest column sum over
        the whole tensor, every batch element and head), so the result for one
        example depends on the other examples of the batch.

  Returns:
    [..., m, m] float32 approximation of pinv(matrix). The matrix products use
    full float32 precision (`Precision.HIGHEST`) on every backend.
  """
  matrix, inverse = _initial_inverse(matrix, init)
  for _ in range(num_iterations):
    inverse = _razavi_step(matrix, inverse)
  return inverse


def pseudo_inverse_times(matrix: jax.Array, x: jax.Array, num_iterations: int = 6,
                         init: str = "per_matrix") -> jax.Array:
  """iterative_pseudo_inverse(matrix, num_iterations, init) @ x, its last step applied to x.

  Z_T x = 1/4 Z_{T-1} (13 x - P (15 x - P (7 x - P x))) with P = A Z_{T-1}:
  the last step's three [m, m] x [m, m] products become [m, m] x [m, e] ones
  (e = head_dim 32 against m = 128 landmarks), the same operator applied in a
  different order. Forward and backward, this removes 9 of the 72 landmark
  matrix products of Nyströmformer's default six iterations.

  Args:
    matrix: [..., m, m] square matrices (cast to float32).
    x: [..., m, e].
    num_iterations: number of iterations (static).
    init: 'per_matrix' or 'batch_global', see `iterative_pseudo_inverse`.

  Returns:
    [..., m, e] float32.
  """
  x = x.astype(jnp.float32)
  matrix, inverse = _initial_inverse(matrix, init)
  if num_iterations == 0:
    return _matmul(inverse, x)
  for _ in range(num_iterations - 1):
    inverse = _razavi_step(matrix, inverse)
  product = _matmul(matrix, inverse)
  applied = 13 * x - _matmul(product, 15 * x - _matmul(product, 7 * x - _matmul(product, x)))
  return 0.25 * _matmul(inverse, applied)


def _scaled_and_zero_padded(query, key, value, mask):
  """Head-major float32 q, k scaled by head_dim^(-1/4) and v, all zero at padded positions."""
  real = mask[:, None, :, None]
  scale = kernel_scale(query.shape[-1])
  return (jnp.where(real, heads_major(query).astype(jnp.float32) * scale, 0.0),
          jnp.where(real, heads_major(key).astype(jnp.float32) * scale, 0.0),
          jnp.where(real, heads_major(value).astype(jnp.float32), 0.0))


# ----------------------------------------------------------------------------
# Nyströmformer.


def segment_sizes(length: int, num_segments: int) -> np.ndarray:
  """Sizes of the contiguous segments whose means are the landmarks.

  With s = length // num_segments and r = (s + 1) num_segments - length, the
  first r segments hold s tokens and the other num_segments - r hold s + 1
  (the T2T-ViT extension, nystromformer_and_peers.md §1.4); when num_segments
  divides length this is the reference's equal split.
  """
  if not 0 < num_segments <= length:
    raise ValueError(f"Need 0 < num_segments <= length, got {num_segments} and {length}.")
  small = length // num_segments
  num_small = (small + 1) * num_segments - length
  return np.array([small] * num_small + [small + 1] * (num_segments - num_small))


def _segment_sums(x: jax.Array, num_segments: int, axis: int) -> jax.Array:
  """Sums of x over the `segment_sizes` segments of `axis` (length n -> num_segments)."""
  length = x.shape[axis]
  small = length // num_segments
  num_small = (small + 1) * num_segments - length
  split = num_small * small
  before, after = x.shape[:axis], x.shape[axis + 1:]
  head = jax.lax.slice_in_dim(x, 0, split, axis=axis)
  tail = jax.lax.slice_in_dim(x, split, length, axis=axis)
  head = head.reshape(*before, num_small, small, *after).sum(axis=axis + 1)
  tail = tail.reshape(*before, num_segments - num_small, small + 1, *after).sum(axis=axis + 1)
  return jnp.concatenate([head, tail], axis=axis)


def _check_conv_kernel(conv_kernel: jax.Array, heads: int):
  if conv_kernel.ndim != 2 or conv_kernel.shape[1] != heads or conv_kernel.shape[0] % 2 == 0:
    raise ValueError(f"The conv kernel must be [kernel_size, heads] = [odd, {heads}] (an odd size "
                     f"keeps the length), got shape {conv_kernel.shape}.")


def depthwise_conv_skip(value: jax.Array, conv_kernel: jax.Array) -> jax.Array:
  """The depthwise convolution of V along the sequence (Nyströmformer §1.7).

  out[b, t, h, :] = sum_j conv_kernel[j, h] value[b, t + j - k // 2, h, :], with
  zeros outside the sequence (cross-correlation, like PyTorch's Conv2d with
  kernel (k, 1), padding (k // 2, 0) and groups = heads).

  Args:
    value: [batch, length, heads, head_dim].
    conv_kernel: [kernel_size, heads], kernel_size odd; one filter per head,
      shared by the head_dim features.

  Returns:
    [batch, length, heads, head_dim] float32.
  """
  _check_conv_kernel(conv_kernel, value.shape[2])
  size, heads = conv_kernel.shape
  batch, length, _, head_dim = value.shape
  # Heads are the channels; batch and features are the convolution's batch.
  x = jnp.transpose(value.astype(jnp.float32), (0, 3, 1, 2))
  x = x.reshape(batch * head_dim, length, heads)
  out = jax.lax.conv_general_dilated(
      x, conv_kernel.astype(jnp.float32)[:, None, :], window_strides=(1,),
      padding=[(size // 2, size // 2)], dimension_numbers=("NWC", "WIO", "NWC"),
      feature_group_count=heads, precision=_HIGHEST)
  return jnp.transpose(out.reshape(batch, head_dim, length, heads), (0, 2, 3, 1))


def nystrom_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                      rng: jax.Array | None = None, num_landmarks: int = 128,
                      num_iterations: int = 6, pinv_init: str = "per_matrix",
                      conv_kernel: jax.Array | None = None,
                      segment_means_include_padding: bool = False,
                      chunk_size: int | None = chunking.DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Nyströmformer attention (Xiong et al. 2021, its Nyström form), O(n m).

  With q, k scaled by head_dim^(-1/4) and zeroed at padded positions, and
  landmarks q_L, k_L the means of q, k over contiguous segments:
  out = softmax(q k_L^T) pinv(softmax(q_L k_L^T)) softmax(q_L k^T + key mask) v
  (+ the depthwise convolution of the masked v when `conv_kernel` is given).

  By default the landmarks are masked means (a segment's sum over its real
  tokens divided by their count) and landmarks of segments without any real
  token are masked out of the first two kernels, so real outputs depend on
  real tokens only and the result is the Nyström approximation built from the
  remaining landmarks. Lengths not divisible by `num_landmarks` use segments of
  s and s + 1 tokens (`segment_sizes`). When num_landmarks >= length the result
  is exact softmax attention (the reference fallback).

  Args:
    query: [batch, length, heads, head_dim].
    key: [batch, length, heads, head_dim].
    value: [batch, length, heads, head_dim].
    mask: [batch, length] bool, True for real tokens (the same mask for queries
      and keys: this is self-attention).
    rng: unused (deterministic method); kept for the common signature.
    num_landmarks: number of segments / landmarks m (static).
    num_iterations: pseudo-inverse iterations (reference: 6).
    pinv_init: 'per_matrix' or 'batch_global' (the reference quirk), see
      `iterative_pseudo_inverse`.
    conv_kernel: optional [kernel_size, heads] weight of the depthwise
      convolution skip on v (kernel_size odd); None means no skip.
    segment_means_include_padding: the reference quirk: plain segment means
      (padded zero vectors counted in the divisor) and landmarks of all-padding
      segments kept (zero vectors) in the first two kernels, unmasked. Then real
      outputs depend on the amount of padding.
    chunk_size: queries per block of softmax(q k_L^T) (`chunking`: the
      [length, m] kernel never exists whole; None: no blocks).

  Returns:
    [batch, length, heads, head_dim] in `value.dtype`. Softmaxes, the
    pseudo-inverse and the products are computed in float32.
  """
  del rng
  checks.check_self_attention("Nyströmformer attention", query, key, value, mask)
  if conv_kernel is not None:
    _check_conv_kernel(conv_kernel, value.shape[2])
  length = key.shape[1]
  if num_landmarks >= length:
    out = softmax_attention(query, key, value, mask).astype(jnp.float32)
  else:
    out = _nystrom_approximation(query, key, value, mask, num_landmarks, num_iterations,
                                 pinv_init, segment_means_include_padding, chunk_size)
  if conv_kernel is not None:
    out = out + depthwise_conv_skip(jnp.where(mask[:, :, None, None], value, 0), conv_kernel)
  return out.astype(value.dtype)


def _nystrom_approximation(query, key, value, mask, num_landmarks, num_iterations, pinv_init,
                           segment_means_include_padding, chunk_size):
  """The approximate branch of `nystrom_attention`, float32 output."""
  query, key, value = _scaled_and_zero_padded(query, key, value, mask)

  if segment_means_include_padding:
    counts = jnp.asarray(segment_sizes(mask.shape[1], num_landmarks), jnp.float32)[None]
  else:
    counts = _segment_sums(mask.astype(jnp.float32), num_landmarks, axis=1)  # [batch, m]
  divisor = jnp.maximum(counts, 1.0)[:, None, :, None]
  query_landmarks = _segment_sums(query, num_landmarks, axis=2) / divisor  # [batch, heads, m, head_dim]
  key_landmarks = _segment_sums(key, num_landmarks, axis=2) / divisor

  kernel_2 = jnp.einsum("bhqd,bhkd->bhqk", query_landmarks, key_landmarks,
                        preferred_element_type=jnp.float32)  # [batch, heads, m, m]
  if not segment_means_include_padding:
    # Landmarks of segments without a real token: zero weight in kernels 1-2,
    # identity rows in kernel 2, so its pseudo-inverse is block diagonal and
    # they meet only zero columns of kernel 1.
    landmark_real = (counts > 0)[:, None, None, :]
    kernel_2 = jnp.where(landmark_real, kernel_2, _MASK_VALUE)
  kernel_2 = jax.nn.softmax(kernel_2, axis=-1)
  if not segment_means_include_padding:
    identity = jnp.eye(num_landmarks, dtype=jnp.float32)
    kernel_2 = jnp.where(jnp.swapaxes(landmark_real, -1, -2), kernel_2, identity)

  # Right to left: n m d + m^2 d + n m d flops instead of the reference's
  # (kernel_1 inverse)(kernel_3 v), whose n m^2 term is 4x the rest at m = 128.
  landmark_values = softmax_readout(query_landmarks, key, value, mask[:, None, None, :],
                                    columns_first=True)  # kernel_3 v: [batch, heads, m, head_dim]
  context = pseudo_inverse_times(kernel_2, landmark_values, num_iterations, pinv_init)

  def kernel_1_times_context(query):  # [batch, c, heads, head_dim], a block of queries
    landmark_valid = None if segment_means_include_padding else landmark_real
    return length_major(softmax_readout(heads_major(query), key_landmarks, context, landmark_valid))

  return chunking.map_length_chunks(kernel_1_times_context, (length_major(query),), chunk_size)


class NystromAttention(nn.Module):
  """Module around `nystrom_attention`; deterministic, no attention dropout.

  Reference quirks (authors' LRA code) and how to reproduce them:
    * Pseudo-inverse init from one scalar over the whole batch tensor, which
      couples the examples of a batch: `pinv_init='batch_global'` (default
      'per_matrix', the authors' recommended exact init).
    * Padded tokens counted in the segment means, all-padding landmarks kept
      and attended to: `segment_means_include_padding=True`.
    * Six pseudo-inverse iterations, not converged: `num_iterations=6` (the
      default here too).
    * Exact-softmax fallback only when num_landmarks equals the configured
      length: here whenever num_landmarks >= the runtime length.
    * Lengths must be divisible by num_landmarks in the LRA code: here any
      length works (s / s + 1 segments of the T2T-ViT code).
    * Convolution skip applied to the masked values (authors, not HF):
      reproduced, with the weight as the linen param 'conv_kernel'
      [conv_kernel_size, heads], initialised like PyTorch's Conv2d default
      (uniform +-1/sqrt(kernel_size)).

  Attributes:
    dropout_rate: accepted for the registry protocol and ignored (the
      reference Nyström core has no attention dropout).
    num_landmarks: number of landmarks m (reference: 128; LRA paper: 64).
    num_iterations: pseudo-inverse iterations.
    pinv_init: 'per_matrix' or 'batch_global'.
    conv_kernel_size: odd size of the depthwise convolution skip on V (LRA
      reference: 35); None means no skip.
    segment_means_include_padding: the reference's unmasked segment means.
    chunk_size: queries per block (a speed setting: the outputs agree to
      float rounding; None computes the whole length at once).
  """

  dropout_rate: float = 0.0
  num_landmarks: int = 128
  num_iterations: int = 6
  pinv_init: str = "per_matrix"
  conv_kernel_size: int | None = None
  segment_means_include_padding: bool = False
  chunk_size: int | None = chunking.DEFAULT_CHUNK_SIZE

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    del deterministic
    conv_kernel = None
    if self.conv_kernel_size is not None:
      conv_kernel = self.param(
          "conv_kernel",
          nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=0, out_axis=1),
          (self.conv_kernel_size, query.shape[2]), jnp.float32)
    return nystrom_attention(
        query, key, value, mask, num_landmarks=self.num_landmarks,
        num_iterations=self.num_iterations, pinv_init=self.pinv_init, conv_kernel=conv_kernel,
        segment_means_include_padding=self.segment_means_include_padding,
        chunk_size=self.chunk_size)


# ----------------------------------------------------------------------------
# Skyformer.


def skyformer_landmark_indices(rng: jax.Array, mask: jax.Array, num_landmarks: int) -> jax.Array:
  """The landmark rows of the stacked [q; k] (2 length rows) of each sequence.

  One uniform vector u ~ U[0, 1)^num_landmarks is drawn from `rng` and shared
  by every sequence and head (as in the reference); for sequence b with m_b
  real tokens, landmark t is the floor(u_t m_b)-th real token, a query row for
  the first ceil(num_landmarks / 2) landmarks and a key row (offset by length)
  for the others. So landmarks are uniform with replacement over the real
  query rows and the real key rows, half each. For right-padded masks the
  r-th real token is position r, exactly the reference's index.

  Args:
    rng: PRNG key of the uniform draw.
    mask: [batch, length] bool, True for real tokens.
    num_landmarks: number of landmarks d.

  Returns:
    [batch, num_landmarks] int32 indices into [0, 2 length).
  """
  length = mask.shape[1]
  uniform = jax.random.uniform(rng, (num_landmarks,), jnp.float32)
  real_length = jnp.sum(mask, axis=-1).astype(jnp.int32)[:, None]
  rank = jnp.floor(uniform[None, :] * real_length.astype(jnp.float32)).astype(jnp.int32)
  # u m_b can round up to m_b in float32; a sequence without real tokens
  # (m_b = 0) falls back to row 0.
  rank = jnp.clip(rank, 0, jnp.maximum(real_length - 1, 0))
  real_first = jnp.argsort(jnp.logical_not(mask).astype(jnp.int32), axis=-1, stable=True)
  position = jnp.take_along_axis(real_first, rank, axis=-1).astype(jnp.int32)
  num_query = num_landmarks - num_landmarks // 2
  offset = jnp.where(jnp.arange(num_landmarks) < num_query, 0, length).astype(jnp.int32)
  return position + offset[None, :]


def skyformer_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                        rng: jax.Array | None = None, num_landmarks: int = 128,
                        num_iterations: int = 6, jitter: float = 0.1,
                        pinv_init: str = "per_matrix") -> jax.Array:
  """Skyformer: Nyström approximation of kernelized attention (Chen et al. 2021, eqs. 4-6).

  With q, k scaled by head_dim^(-1/4) and zeroed at padded positions, kappa
  the Gaussian kernel exp(-||x - y||^2 / 2) and L the d landmark rows of
  [q; k] (`skyformer_landmark_indices`):
  W = kappa(L, L) + jitter I, D = diag(W 1),
  out = kappa(q, L) D^(-1/2) pinv(D^(-1/2) W D^(-1/2)) D^(-1/2) kappa(L, k) v,
  with padded keys and values zeroed, i.e. approximately
  kappa(q, L) (kappa(L, L) + jitter I)^(-1) kappa(L, k) v. No row
  normalisation, no softmax, no dropout (skyformer_skeinformer.md §1.3).

  Args:
    query: [batch, length, heads, head_dim].
    key: [batch, length, heads, head_dim].
    value: [batch, length, heads, head_dim].
    mask: [batch, length] bool, True for real tokens (the same mask for queries
      and keys: this is self-attention).
    rng: PRNG key of the landmark draw, the only random draw (one uniform
      vector shared by the batch and heads); required.
    num_landmarks: number of landmarks d (half query rows, half key rows).
    num_iterations: pseudo-inverse iterations (reference: 6).
    jitter: gamma added to the diagonal of kappa(L, L) (reference: 0.1).
    pinv_init: 'per_matrix' or 'batch_global' (the reference quirk), see
      `iterative_pseudo_inverse`.

  Returns:
    [batch, length, heads, head_dim] in `value.dtype`. Kernels, the
    pseudo-inverse and the products are computed in float32.
  """
  if rng is None:
    raise ValueError("skyformer_attention samples its landmarks and needs a PRNG key: pass "
                     "rng=jax.random.key(...) (the module draws it from the "
                     f"{registry.ATTENTION_RNG!r} RNG stream).")
  checks.check_self_attention("Skyformer attention", query, key, value, mask)
  indices = skyformer_landmark_indices(rng, mask, num_landmarks)

  query, key, values = _scaled_and_zero_padded(query, key, value, mask)

  stacked = jnp.concatenate([query, key], axis=2)  # [batch, heads, 2 length, head_dim]
  landmarks = jnp.take_along_axis(stacked, indices[:, None, :, None], axis=2)
  query_sketch = gaussian_kernel(query, landmarks)  # [batch, heads, length, d]
  key_sketch = jnp.where(mask[:, None, :, None], gaussian_kernel(key, landmarks), 0.0)
  core = gaussian_kernel(landmarks, landmarks) + jitter * jnp.eye(num_landmarks, dtype=jnp.float32)
  inv_sqrt_degree = jax.lax.rsqrt(jnp.sum(core, axis=-1))  # [batch, heads, d]
  normalised = inv_sqrt_degree[..., :, None] * core * inv_sqrt_degree[..., None, :]
  inverse = iterative_pseudo_inverse(normalised, num_iterations, pinv_init)
  inverse = inv_sqrt_degree[..., :, None] * inverse * inv_sqrt_degree[..., None, :]

  key_values = jnp.einsum("bhkl,bhkd->bhld", key_sketch, values)  # [batch, heads, d, head_dim]
  context = jnp.einsum("bhlm,bhld->bhmd", inverse, key_values)  # inverse^T key_values
  out = jnp.einsum("bhqm,bhmd->bhqd", query_sketch, context)
  return length_major(out).astype(value.dtype)


class SkyformerAttention(nn.Module):
  """Module around `skyformer_attention`; landmarks from the 'attention' stream.

  Fresh landmarks are drawn from `registry.ATTENTION_RNG` on every call, in
  training and evaluation alike, like the reference.

  Reference quirks (pkuzengqi/Skyformer) and how to reproduce them:
    * Scale 32^(-1/4) hard-coded instead of head_dim^(-1/4): here the real
      head_dim is used; identical for head_dim 32 (the reference config). No
      option (scale q and k by (head_dim / 32)^(1/4) upstream if needed).
    * One uniform draw shared by all sequences and heads, indexed with each
      sequence's real length, half query rows and half key rows: reproduced.
    * Pseudo-inverse init from one scalar over the whole batch tensor:
      `pinv_init='batch_global'` (default 'per_matrix').
    * Six pseudo-inverse iterations, not converged: `num_iterations=6` (the
      default here too); jitter 0.1: `jitter=0.1` (default).
    * No attention dropout: `dropout_rate` is accepted for the registry
      protocol and ignored.

  Attributes:
    dropout_rate: ignored (see above).
    num_landmarks: number of landmarks d (reference: 128).
    num_iterations: pseudo-inverse iterations.
    jitter: gamma on the diagonal of the landmark kernel.
    pinv_init: 'per_matrix' or 'batch_global'.
  """

  dropout_rate: float = 0.0
  num_landmarks: int = 128
  num_iterations: int = 6
  jitter: float = 0.1
  pinv_init: str = "per_matrix"

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    del deterministic
    return skyformer_attention(
        query, key, value, mask, rng=self.make_rng(registry.ATTENTION_RNG),
        num_landmarks=self.num_landmarks, num_iterations=self.num_iterations, jitter=self.jitter,
        pinv_init=self.pinv_init)


# Contract-test inputs have length 24, one sequence with 15 real tokens. For
# nystrom, 7 landmarks give segments of 3, 3, 3, 3, 4, 4, 4 tokens: non
# divisible, and the padded sequence has a partial and two empty segments.
registry.register("nystrom", nystrom_attention, NystromAttention,
                  small_input_kwargs=dict(num_landmarks=7))
registry.register("skyformer", skyformer_attention, SkyformerAttention,
                  small_input_kwargs=dict(num_landmarks=8), approximates="kernelized")
