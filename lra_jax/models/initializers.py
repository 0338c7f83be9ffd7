"""Weight initialisation of the two reference code bases.

'jax' follows the official LRA code: xavier-uniform kernels in attention and
MLP, MLP biases N(0, 1e-6), classifier head with flax defaults (lecun-normal,
zero bias). 'pytorch' follows torch.nn.Linear's defaults, which the PyTorch
LRA harness never overrides: kernels kaiming-uniform with a = sqrt(5), i.e.
U(+-1/sqrt(fan_in)), and biases U(+-1/sqrt(fan_in)).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lra_jax.attention.multihead import zeros_bias

STYLES = ("jax", "pytorch")

Initializer = Callable[..., jax.Array]

# kaiming_uniform(a=sqrt(5)) has bound sqrt(6 / ((1 + a^2) fan_in)) = 1/sqrt(fan_in),
# the same as a uniform variance scaling with scale 1/3.
torch_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias(fan_in: int) -> Initializer:
  bound = 1.0 / jnp.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _mlp_bias(fan_in: int) -> Initializer:
  del fan_in
  return nn.initializers.normal(1e-6)


def attention_inits(style: str) -> tuple[Initializer, Callable[[int], Initializer]]:
  """Kernel initializer and fan-in -> bias initializer of the Q/K/V/out projections."""
  if style == "pytorch":
    return torch_kernel, torch_bias
  return nn.initializers.xavier_uniform(), zeros_bias


def _dense(style: str, kernel_init: Initializer, bias_for_fan_in: Callable[[int], Initializer],
           dtype: Any):
  def make(features: int, *, fan_in: int, name: str) -> nn.Dense:
    if style == "pytorch":
      return nn.Dense(features, kernel_init=torch_kernel, bias_init=torch_bias(fan_in),
                      dtype=dtype, name=name)
    return nn.Dense(features, kernel_init=kernel_init, bias_init=bias_for_fan_in(fan_in),
                    dtype=dtype, name=name)
  return make


def mlp_dense(style: str, *, dtype: Any):
  """Factory `make(features, fan_in=, name=)` of the encoder's MLP layers."""
  return _dense(style, nn.initializers.xavier_uniform(), _mlp_bias, dtype)


def head_dense(style: str, *, dtype: Any):
  """Factory `make(features, fan_in=, name=)` of the classifier head's layers."""
  return _dense(style, nn.initializers.lecun_normal(), zeros_bias, dtype)

