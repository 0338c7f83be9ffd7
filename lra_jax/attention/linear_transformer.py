"""Linear Transformer attention: kernelised attention with the elu + 1 feature map.

Katharopoulos et al., "Transformers are RNNs: Fast Autoregressive
Transformers with Linear Attention" (ICML 2020), §3.2 (non-causal linear
attention) with the feature map phi(x) = elu(x) + 1 of §3.2.1, applied to each
query and key vector:
  out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j) + eps),
eps = 1e-6, computed right to left in O(n d^2) time and O(n d + d^2) memory:
no n x n matrix. phi is positive, so the denominator is too.

Official LRA JAX version: `linear_transformer/linear_attention.py`
(lra_official_jax.md §7.6), same formula and eps; its quirks are options of
`LinearTransformerAttention`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lra_jax.attention import registry
from lra_jax.attention.layout import heads_major, length_major


def elu_feature_map(x: jax.Array) -> jax.Array:
  """phi(x) = elu(x) + 1 (Katharopoulos et al. §3.2.1), in float32; positive."""
  return jax.nn.elu(x.astype(jnp.float32)) + 1.0


def linear_transformer_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                                 mask: jax.Array, *, rng: jax.Array | None = None,
                                 eps: float = 1e-6,
                                 padded_keys_attended: bool = False) -> jax.Array:
  """Non-causal linear attention with phi = elu + 1 (Katharopoulos et al. 2020), O(n d^2).

  Padded keys are left out of the numerator and the denominator (their
  features and values are zeroed), unless padded_keys_attended. A query
  without any real key gets 0.

  Args:
    query: [batch, q_length, heads, head_dim].
    key: [batch, kv_length, heads, head_dim].
    value: [batch, kv_length, heads, value_dim].
    mask: [batch, kv_length] bool, True for real tokens; queries are not
      masked (outputs at padded positions are unused).
    rng: unused (deterministic method); kept for the common signature.
    eps: added to the denominator (paper and official: 1e-6).
    padded_keys_attended: official quirk: padded keys enter both sums with
      whatever they hold.

  Returns:
    [batch, q_length, heads, value_dim] in `value.dtype`. Features, sums and
    the division in float32.

  Raises:
    ValueError: mismatched shapes or a negative eps.
  """
  del rng
  if key.shape[:2] != mask.shape or value.shape[:3] != key.shape[:3] or (
      query.shape[0] != key.shape[0] or query.shape[2:] != key.shape[2:]):
    raise ValueError(
        f"Expected query [batch, q_length, heads, head_dim], key [batch, kv_length, heads, "
        f"head_dim], value [batch, kv_length, heads, value_dim] and mask [batch, kv_length]; got "
        f"query {query.shape}, key {key.shape}, value {value.shape}, mask {mask.shape}.")
  if not eps >= 0:
    raise ValueError(f"eps must be non-negative, got {eps!r}.")
  out_dtype = value.dtype
  # Head-major layout: XLA:CPU's fast matmul needs the batch dims leading.
  query_features = heads_major(elu_feature_map(query))  # [b, h, n, m]
  key_features = heads_major(elu_feature_map(key))
  value = heads_major(value.astype(jnp.float32))
  if not padded_keys_attended:
    real = mask[:, None, :, None]
    key_features = jnp.where(real, key_features, 0.0)
    value = jnp.where(real, value, 0.0)
  context = jnp.einsum("bhnm,bhnd->bhmd", key_features, value, preferred_element_type=jnp.float32)
  numerator = jnp.einsum("bhnm,bhmd->bhnd", query_features, context,
                         preferred_element_type=jnp.float32)
  denominator = jnp.einsum("bhnm,bhm->bhn", query_features, jnp.sum(key_features, axis=2),
                           preferred_element_type=jnp.float32) + eps
  return length_major(numerator / denominator[..., None]).astype(out_dtype)


class LinearTransformerAttention(nn.Module):
  """Module around `linear_transformer_attention`; no parameters, no randomness.

  Reference quirks (official LRA JAX code, §7.6) and how to reproduce them:
    * No padding mask: padded keys contribute their features and values to
      both sums: `padded_keys_attended=True`.
    * No attention dropout (there are no attention weights to drop):
      `dropout_rate` is accepted for the registry protocol and ignored.

  Attributes:
    dropout_rate: ignored (see above).
    eps: denominator stabiliser (official: 1e-6).
    padded_keys_attended: the official unmasked sums.
  """

  dropout_rate: float = 0.0
  eps: float = 1e-6
  padded_keys_attended: bool = False

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    del deterministic
    return linear_transformer_attention(query, key, value, mask, eps=self.eps,
                                        padded_keys_attended=self.padded_keys_attended)


registry.register("linear_transformer", linear_transformer_attention, LinearTransformerAttention)
