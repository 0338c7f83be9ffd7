"""Pure training and evaluation steps, jitted once by the trainer.

Randomness: each step derives its key as fold_in(train_key, state.step), so a
resumed run draws exactly what an uninterrupted one would. Micro-batch i of a
step folds in i again; from that key come the 'dropout' and 'attention'
streams.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from lra_jax.attention import ATTENTION_RNG
from lra_jax.metrics import ClassificationMetrics

Batch = dict[str, jax.Array]


def _forward(model: nn.Module, params, batch: Batch, input_names: Sequence[str], *,
             rng: jax.Array, deterministic: bool) -> jax.Array:
  dropout_rng, attention_rng = jax.random.split(rng)
  return model.apply({"params": params}, *(batch[name] for name in input_names),
                     deterministic=deterministic,
                     rngs={"dropout": dropout_rng, ATTENTION_RNG: attention_rng})


def _metrics(logits: jax.Array, losses: jax.Array, batch: Batch) -> ClassificationMetrics:
  return ClassificationMetrics.single_from_model_output(
      loss=losses, logits=logits, labels=batch["targets"], mask=batch["valid"])


def _split_micro_batches(batch: Batch, num: int) -> Batch:
  """[batch, ...] -> [num, batch / num, ...]; micro-batch i holds rows j*num + i,
  so every micro-batch stays spread over all devices of the 'data' axis."""
  def split(x):
    return jnp.swapaxes(x.reshape(x.shape[0] // num, num, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def train_step(state: train_state.TrainState, batch: Batch, rng: jax.Array, *, model: nn.Module,
               input_names: Sequence[str], grad_accum_steps: int = 1
               ) -> tuple[train_state.TrainState, ClassificationMetrics]:
  """One optimiser update on the mean cross-entropy of `batch`.

  With grad_accum_steps = k the batch runs as k micro-batches whose gradients
  are averaged: the same update as one pass (micro-batches are equal-sized),
  in about 1/k of the activation memory.
  """
  step_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params, micro_batch, micro_rng):
    logits = _forward(model, params, micro_batch, input_names, rng=micro_rng, deterministic=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, micro_batch["targets"])
    return jnp.mean(losses), (logits, losses)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    (_, (logits, losses)), grads = grad_fn(state.params, batch, jax.random.fold_in(step_rng, 0))
  else:
    micro_batches = _split_micro_batches(batch, grad_accum_steps)

    def accumulate(grad_sum, inputs):
      index, micro_batch = inputs
      (_, outputs), grads = grad_fn(state.params, micro_batch, jax.random.fold_in(step_rng, index))
      return jax.tree.map(jnp.add, grad_sum, grads), outputs

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grad_sum, (logits, losses) = jax.lax.scan(
        accumulate, zeros, (jnp.arange(grad_accum_steps), micro_batches))
    grads = jax.tree.map(lambda g: g / grad_accum_steps, grad_sum)
    # Back from [micro, rows] to the batch's own row order.
    logits = jnp.swapaxes(logits, 0, 1).reshape(-1, logits.shape[-1])
    losses = jnp.swapaxes(losses, 0, 1).reshape(-1)
  return state.apply_gradients(grads=grads), _metrics(logits, losses, batch)


def eval_step(params, batch: Batch, rng: jax.Array, *, model: nn.Module,
              input_names: Sequence[str]) -> ClassificationMetrics:
  """Metrics of one evaluation batch; `rng` feeds methods that sample at test time."""
  logits = _forward(model, params, batch, input_names, rng=rng, deterministic=True)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
  return _metrics(logits, losses, batch)
