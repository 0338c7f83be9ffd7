"""Multi-head attention layer: project, dispatch to a registered method, merge."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from lra_jax.attention import registry

Initializer = Callable[..., jax.Array]


def zeros_bias(fan_in: int) -> Initializer:
  del fan_in
  return nn.initializers.zeros


class MultiHeadAttention(nn.Module):
  """Self-attention with `num_heads` heads of size `qkv_dim // num_heads`.

  Attributes:
    num_heads: number of heads.
    qkv_dim: total width of queries, keys and values (heads x head_dim).
    out_dim: width of the output projection (the model width).
    attention: registered method name (see `lra_jax.attention.names()`).
    attention_kwargs: hyper-parameters of that method.
    dropout_rate: attention-weight dropout passed to the method.
    use_bias: biases on the four projections.
    kernel_init: initializer of the projection kernels.
    bias_init: maps a projection's fan-in to its bias initializer.
    dtype: compute dtype of the projections and of q, k, v.
  """

  num_heads: int
  qkv_dim: int
  out_dim: int
  attention: str = "softmax"
  attention_kwargs: Mapping[str, Any] | None = None
  dropout_rate: float = 0.0
  use_bias: bool = False
  kernel_init: Initializer = nn.initializers.xavier_uniform()
  bias_init: Callable[[int], Initializer] = zeros_bias
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: jax.Array, mask: jax.Array, *, deterministic: bool) -> jax.Array:
    """inputs [batch, length, features], mask [batch, length] -> [batch, length, out_dim]."""
    if self.qkv_dim % self.num_heads:
      raise ValueError(f"qkv_dim {self.qkv_dim} is not divisible by num_heads {self.num_heads}.")
    head_dim = self.qkv_dim // self.num_heads
    method = registry.get(self.attention)

    def project(name: str) -> jax.Array:
      return nn.DenseGeneral(
          (self.num_heads, head_dim), use_bias=self.use_bias, kernel_init=self.kernel_init,
          bias_init=self.bias_init(inputs.shape[-1]), dtype=self.dtype, name=name)(inputs)

    query, key, value = project("query"), project("key"), project("value")
    heads = method(dropout_rate=self.dropout_rate, name="core",
                   **dict(self.attention_kwargs or {}))(
                       query, key, value, mask, deterministic=deterministic)
    return nn.DenseGeneral(
        self.out_dim, axis=(-2, -1), use_bias=self.use_bias, kernel_init=self.kernel_init,
        bias_init=self.bias_init(self.qkv_dim), dtype=self.dtype, name="out")(heads)
