"""Pooling and classifier heads over the encoder: one input, or a pair (retrieval)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lra_jax.models import initializers
from lra_jax.models.encoder import Encoder, EncoderConfig


def pool(encoded: jax.Array, mask: jax.Array, pooling: str, mean_pooling: str) -> jax.Array:
  """[batch, length, dim] -> [batch, dim].

  CLS takes position 0. MEAN averages over the real tokens ('real_tokens'),
  or reproduces a reference: every position, padded ones included
  ('all_positions', official LRA), or padded outputs zeroed but counted in
  the divisor ('zeroed_padding', PyTorch LRA harness).
  """
  if pooling == "CLS":
    return encoded[:, 0]
  weights = mask.astype(jnp.float32)[..., None]
  if mean_pooling == "all_positions":
    return jnp.mean(encoded.astype(jnp.float32), axis=1)
  total = jnp.sum(encoded.astype(jnp.float32) * weights, axis=1)
  if mean_pooling == "zeroed_padding":
    return total / encoded.shape[1]
  return total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


class MlpHead(nn.Module):
  """Dense layers with ReLU between them, then the class logits (float32)."""

  config: EncoderConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    dense = initializers.head_dense(c.init, dtype=c.dtype)
    for i, width in enumerate(c.classifier_hidden_dims):
      x = nn.relu(dense(width, fan_in=x.shape[-1], name=f"hidden_{i}")(x))
    return dense(c.num_classes, fan_in=x.shape[-1], name="logits")(x).astype(jnp.float32)


class Classifier(nn.Module):
  """Encoder -> pool -> MLP head, for single-input tasks."""

  config: EncoderConfig

  @nn.compact
  def __call__(self, inputs: jax.Array, *, deterministic: bool) -> jax.Array:
    """inputs [batch, length] token ids (0 = padding) -> logits [batch, classes]."""
    c = self.config
    encoded, mask = Encoder(c, name="encoder")(inputs, deterministic=deterministic)
    return MlpHead(c, name="head")(pool(encoded, mask, c.pooling, c.mean_pooling))


class DualEncoderClassifier(nn.Module):
  """One shared encoder over both documents, no cross-attention (retrieval).

  The pooled vectors u, v are combined as [u, v] ('concat', official LRA) or
  [u, v, u*v, u-v] ('nli', PyTorch LRA harness) before the MLP head.
  """

  config: EncoderConfig

  @nn.compact
  def __call__(self, inputs1: jax.Array, inputs2: jax.Array, *, deterministic: bool) -> jax.Array:
    """inputs1, inputs2 [batch, length] token ids -> logits [batch, classes]."""
    c = self.config
    encoder = Encoder(c, name="encoder")
    pooled = []
    for inputs in (inputs1, inputs2):
      encoded, mask = encoder(inputs, deterministic=deterministic)
      pooled.append(pool(encoded, mask, c.pooling, c.mean_pooling))
    u, v = pooled
    features = [u, v] if c.dual_combination == "concat" else [u, v, u * v, u - v]
    return MlpHead(c, name="head")(jnp.concatenate(features, axis=-1))
