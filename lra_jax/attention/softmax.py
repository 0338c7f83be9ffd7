"""Exact softmax attention: the baseline every efficient method is compared to.

Vaswani et al., "Attention Is All You Need" (2017), eq. 1:
Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V, with padded keys masked out.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lra_jax.attention import registry
from lra_jax.attention.layout import heads_major, length_major

# Finite rather than -inf so that a row whose keys are all padding stays
# finite (uniform weights) instead of producing NaN.
_MASK_VALUE = -1e10


def dropout_weights(weights: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  """Inverted dropout with an independent Bernoulli draw per weight."""
  if rng is None or rate == 0.0:
    return weights
  keep = jax.random.bernoulli(rng, 1.0 - rate, weights.shape)
  return jnp.where(keep, weights / (1.0 - rate), 0.0).astype(weights.dtype)


def dropout_rng(module: nn.Module, rate: float, deterministic: bool) -> jax.Array | None:
  """A key from `module`'s 'dropout' stream when dropout is active, else None."""
  return None if deterministic or rate == 0.0 else module.make_rng("dropout")


def softmax_readout(x: jax.Array, y: jax.Array, values: jax.Array,
                    valid: jax.Array | None = None, *, columns_first: bool = False) -> jax.Array:
  """softmax(x y^T, masked) values over the last axis: [..., r, d], [..., c, d], [..., c, e] -> [..., r, e].

  The attention read-out shared by the landmark and projection methods
  (Nyström's softmax(q k_L^T) and softmax(q_L k^T), Linformer's
  softmax(q (E k)^T)): the same numbers as
  einsum(jax.nn.softmax(where(valid, x y^T, -1e10)), values), computed for
  XLA:CPU's fast paths (accelerators lose nothing):
    * the division by the softmax's denominator is applied to the [r, e]
      product instead of the [r, c] weights (e = head_dim 32 against c = 128
      landmarks or 4096 keys), forward and backward;
    * the mask enters as logits * keep + bias (keep 1 or 0, bias 0 or
      -1e10), both built on `valid`'s own small shape, not as a select on the
      [r, c] logits, which XLA:CPU broadcasts to a full-size mask first; the
      value and the gradient are the select's;
    * `columns_first` lays the logits out as [c, r]: for r << c (Nyström's
      landmark rows against every key) the backward pass's largest products,
      the [c, e] gradients of y and values, then contract the minor axis of
      their left operand, the layout XLA:CPU's fast matmul takes (otherwise
      they fall back to a path about 3x slower).
  A masked logit gets zero weight; a row without a valid entry gets uniform
  weights, as jax.nn.softmax with the finite mask value. Computed in float32.

  Args:
    x: [..., r, d] rows (queries, already scaled).
    y: [..., c, d] columns (keys).
    values: [..., c, e].
    valid: bool, broadcastable to [..., r, c], True where the logit counts; None: all.
    columns_first: compute the logits as [..., c, r] (a speed setting; the
      result agrees to float rounding).

  Returns:
    [..., r, e] float32.
  """
  x, y, values = (a.astype(jnp.float32) for a in (x, y, values))
  if columns_first:
    logits = jnp.einsum("...cd,...rd->...cr", y, x, preferred_element_type=jnp.float32)
    valid = None if valid is None else jnp.swapaxes(valid, -1, -2)
    axis, readout = -2, "...cr,...ce->...re"
  else:
    logits = jnp.einsum("...rd,...cd->...rc", x, y, preferred_element_type=jnp.float32)
    axis, readout = -1, "...rc,...ce->...re"
  if valid is not None:
    logits = logits * valid.astype(jnp.float32) + jnp.where(valid, 0.0, _MASK_VALUE)
  # Any per-row constant cancels; the max keeps exp finite.
  unnormalised = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=axis, keepdims=True)))
  normaliser = jnp.sum(unnormalised, axis=axis, keepdims=True)
  if columns_first:
    normaliser = jnp.swapaxes(normaliser, -1, -2)
  out = jnp.einsum(readout, unnormalised, values, preferred_element_type=jnp.float32)
  return out / normaliser


def softmax_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                      rng: jax.Array | None = None, dropout_rate: float = 0.0) -> jax.Array:
  """Exact scaled dot-product attention over the real (unpadded) keys.

  Args:
    query: [batch, q_length, heads, head_dim].
    key: [batch, kv_length, heads, head_dim].
    value: [batch, kv_length, heads, head_dim].
    mask: [batch, kv_length] bool, True for real tokens. Padded keys get zero
      weight; queries are not masked (outputs at padded positions are unused).
    rng: PRNG key of the attention-dropout mask, the only random draw. None
      (or dropout_rate 0) means no dropout.
    dropout_rate: probability of dropping each attention weight.

  Returns:
    [batch, q_length, heads, head_dim] in `value.dtype`. Logits and softmax
    are computed in float32 whatever the input dtype.
  """
  head_dim = query.shape[-1]
  logits = jnp.einsum("bhqd,bhkd->bhqk", heads_major(query), heads_major(key),
                      preferred_element_type=jnp.float32)
  logits = logits / jnp.sqrt(jnp.float32(head_dim))
  logits = jnp.where(mask[:, None, None, :], logits, _MASK_VALUE)
  weights = jax.nn.softmax(logits, axis=-1)
  weights = dropout_weights(weights, dropout_rate, rng)
  return length_major(jnp.einsum("bhqk,bhkd->bhqd", weights.astype(value.dtype),
                                 heads_major(value)))


class SoftmaxAttention(nn.Module):
  """Module around `softmax_attention`; dropout from the 'dropout' stream.

  Attributes:
    dropout_rate: attention-weight dropout, active when not deterministic.
  """

  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    rng = dropout_rng(self, self.dropout_rate, deterministic)
    return softmax_attention(query, key, value, mask, rng=rng, dropout_rate=self.dropout_rate)


registry.register("softmax", softmax_attention, SoftmaxAttention)
