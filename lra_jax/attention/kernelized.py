"""Kernelized attention: exact Gaussian-kernel attention without row normalisation.

Chen et al., "Skyformer: Remodel Self-Attention with Gaussian Kernel and
Nyström Method" (NeurIPS 2021), eq. 3: with q and k scaled by p^(-1/4)
(p = head_dim), C_ij = exp(-||q_i - k_j||^2 / 2) and Attention = C V.
Reference code: `SoftmaxAttention_RBF` of pkuzengqi/Skyformer
(skyformer_skeinformer.md §1.2).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lra_jax.attention import registry
from lra_jax.attention.layout import heads_major, length_major
from lra_jax.attention.softmax import dropout_rng, dropout_weights


def gaussian_kernel(x: jax.Array, y: jax.Array) -> jax.Array:
  """exp(-||x_i - y_j||^2 / 2) for every pair of rows, in float32.

  Args:
    x: [batch, heads, x_length, dim] (head-major, see `layout`).
    y: [batch, heads, y_length, dim].

  Returns:
    [batch, heads, x_length, y_length] float32, computed as
    exp(x_i . y_j - ||x_i||^2 / 2 - ||y_j||^2 / 2) like the reference.
  """
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  dots = jnp.einsum("bhqd,bhkd->bhqk", x, y, preferred_element_type=jnp.float32)
  x_sq = jnp.sum(x * x, axis=-1)[..., :, None]
  y_sq = jnp.sum(y * y, axis=-1)[..., None, :]
  return jnp.exp(dots - 0.5 * x_sq - 0.5 * y_sq)


def kernel_scale(head_dim: int) -> jax.Array:
  """p^(-1/4): applied to both q and k, so that q.k carries 1/sqrt(p)."""
  return jnp.float32(head_dim) ** -0.25


def kernelized_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                         rng: jax.Array | None = None, dropout_rate: float = 0.0) -> jax.Array:
  """Exact Gaussian-kernel attention (Skyformer paper eq. 3), O(n^2).

  q and k are scaled by head_dim^(-1/4) (the real head_dim of the inputs);
  C_ij = exp(-||q_i - k_j||^2 / 2) for real keys j and 0 for padded keys; C is
  not row-normalised (the paper's automatic normalisation argument); out = C V.

  Args:
    query: [batch, q_length, heads, head_dim].
    key: [batch, kv_length, heads, head_dim].
    value: [batch, kv_length, heads, head_dim].
    mask: [batch, kv_length] bool, True for real tokens. Padded keys get zero
      weight; queries are not masked (outputs at padded positions are unused).
    rng: PRNG key of the dropout mask on C, the only random draw. None (or
      dropout_rate 0) means no dropout.
    dropout_rate: probability of dropping each kernel entry (inverted dropout).

  Returns:
    [batch, q_length, heads, head_dim] in `value.dtype`. The kernel and its
    exponentials are computed in float32 whatever the input dtype.
  """
  scale = kernel_scale(query.shape[-1])
  query = query.astype(jnp.float32) * scale
  # Padded keys are zeroed before the kernel (as the reference does), so that
  # garbage there can never overflow; their column is then set to exactly 0.
  key = jnp.where(mask[:, :, None, None], key.astype(jnp.float32) * scale, 0.0)
  weights = gaussian_kernel(heads_major(query), heads_major(key))
  weights = jnp.where(mask[:, None, None, :], weights, 0.0)
  weights = dropout_weights(weights, dropout_rate, rng)
  return length_major(jnp.einsum("bhqk,bhkd->bhqd", weights.astype(value.dtype),
                                 heads_major(value)))


class KernelizedAttention(nn.Module):
  """Module around `kernelized_attention`; dropout from the 'dropout' stream.

  Reference quirks: none. Like the reference (and unlike its Skyformer), the
  scale uses the real head_dim; its attention-dropout rate 0.1 is a setting
  (`dropout_rate=0.1`).

  Attributes:
    dropout_rate: dropout on the kernel matrix C, active when not deterministic
      (the reference uses 0.1).
  """

  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    rng = dropout_rng(self, self.dropout_rate, deterministic)
    return kernelized_attention(query, key, value, mask, rng=rng, dropout_rate=self.dropout_rate)


registry.register("kernelized", kernelized_attention, KernelizedAttention, approximates="kernelized")
