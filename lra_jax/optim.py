"""The optax optimiser of a config: clipping, then Adam with decoupled weight decay."""

from __future__ import annotations

import ml_collections
import optax

from lra_jax import schedules


def create_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """optax.adamw on every parameter, as flax.optim.Adam(weight_decay) and torch AdamW do.

  Gradients are first clipped by value and/or global norm when the config asks
  (Skyformer's clip_grad_value_(1); official Path-X's global norm 1).
  """
  learning_rate = schedules.create_learning_rate_fn(train)
  adam = optax.inject_hyperparams(optax.adamw)(
      learning_rate=learning_rate, b1=schedules.create_b1_fn(train), b2=train.b2, eps=train.eps,
      weight_decay=train.weight_decay)
  clipping = []
  if train.grad_clip_value is not None:
    clipping.append(optax.clip(train.grad_clip_value))
  if train.grad_clip_norm is not None:
    clipping.append(optax.clip_by_global_norm(train.grad_clip_norm))
  return optax.chain(*clipping, adam)
