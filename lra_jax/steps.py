"""Pure training and evaluation steps, jitted once by the trainer.

Randomness: each step derives its key as fold_in(train_key, state.step), so a
resumed run draws exactly what an uninterrupted one would. Micro-batch i of a
step folds in i again; from that key come the 'dropout' and 'attention'
streams.

Variables: `params` are trained; the 'constants' collection holds what an
attention method draws once at initialisation and never trains (a fixed random
projection, a fixed sparsity pattern: the PyTorch references' buffers). It is
part of the state, so it is checkpointed and restored with the parameters.

Non-finite steps: every train step checks its loss, gradients and updated
parameters. Its metrics count the non-finite steps and name the first one, so
the trainer can stop before a bad state is saved; with skip_nonfinite the
step itself keeps the old parameters and optimiser state instead.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics
from flax.training import train_state

from lra_jax.attention import ATTENTION_RNG, CONSTANTS
from lra_jax.metrics import ClassificationMetrics

Batch = dict[str, jax.Array]

_NO_STEP = jnp.iinfo(jnp.int32).max


@flax.struct.dataclass
class _Count(clu_metrics.Metric):
  """How many of the merged steps were non-finite."""

  count: jax.Array

  @classmethod
  def from_model_output(cls, *, nonfinite: jax.Array, **_) -> _Count:
    return cls(count=nonfinite.astype(jnp.int32))

  def merge(self, other: _Count) -> _Count:
    return type(self)(count=self.count + other.count)

  def compute(self) -> jax.Array:
    return self.count


@flax.struct.dataclass
class _FirstStep(clu_metrics.Metric):
  """The earliest non-finite step among the merged ones (_NO_STEP if none)."""

  step: jax.Array

  @classmethod
  def from_model_output(cls, *, nonfinite: jax.Array, step: jax.Array, **_) -> _FirstStep:
    return cls(step=jnp.where(nonfinite, step, _NO_STEP).astype(jnp.int32))

  def merge(self, other: _FirstStep) -> _FirstStep:
    return type(self)(step=jnp.minimum(self.step, other.step))

  def compute(self) -> jax.Array:
    return self.step


# The evaluation metrics plus the non-finite bookkeeping. `step` counts
# completed steps, as checkpoints and logs do: the update that turns step s
# into s + 1 is "step s + 1".
TrainMetrics = clu_metrics.Collection.create(
    **ClassificationMetrics.__annotations__, nonfinite_steps=_Count,
    first_nonfinite_step=_FirstStep)


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the model's non-trainable `constants` collection."""

  constants: Any = flax.struct.field(default_factory=dict)

  def variables(self, params=None) -> dict[str, Any]:
    """The linen variables to apply the model with (`params` overrides the state's)."""
    return {"params": self.params if params is None else params, **self.constants}


def split_variables(variables) -> tuple[Any, dict[str, Any]]:
  """model.init's variables -> (params, {'constants': ...} or {})."""
  constants = {CONSTANTS: variables[CONSTANTS]} if CONSTANTS in variables else {}
  unknown = set(variables) - {"params", CONSTANTS}
  if unknown:
    raise ValueError(f"The model created variable collections {sorted(unknown)}; only 'params' "
                     f"and {CONSTANTS!r} are carried by the train state.")
  return variables["params"], constants


def _forward(model: nn.Module, variables, batch: Batch, input_names: Sequence[str], *,
             rng: jax.Array, deterministic: bool) -> jax.Array:
  dropout_rng, attention_rng = jax.random.split(rng)
  return model.apply(variables, *(batch[name] for name in input_names),
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


def _all_finite(*trees) -> jax.Array:
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(trees)]))


def train_step(state: TrainState, batch: Batch, rng: jax.Array, *, model: nn.Module,
               input_names: Sequence[str], grad_accum_steps: int = 1,
               skip_nonfinite: bool = False) -> tuple[TrainState, Any]:
  """One optimiser update on the mean cross-entropy of `batch`.

  With grad_accum_steps = k the batch runs as k micro-batches whose gradients
  are averaged: the same update as one pass (micro-batches are equal-sized),
  in about 1/k of the activation memory.

  A step whose loss, gradients or updated parameters are not all finite is
  counted in the TrainMetrics (its loss and accuracy are left out of their
  averages). With skip_nonfinite it changes nothing but `step`: parameters
  and optimiser state (its schedule and Adam counts included) stay as they
  were, and the step counter still advances, so the batches and random keys
  of later steps stay functions of (seed, step) and a resumed run matches.
  """
  step_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params, micro_batch, micro_rng):
    logits = _forward(model, state.variables(params), micro_batch, input_names, rng=micro_rng,
                      deterministic=False)
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
  new_state = state.apply_gradients(grads=grads)
  finite = _all_finite(losses, grads, new_state.params)
  if skip_nonfinite:
    def keep(new, old):
      return jnp.where(finite, new, old)

    new_state = new_state.replace(params=jax.tree.map(keep, new_state.params, state.params),
                                  opt_state=jax.tree.map(keep, new_state.opt_state,
                                                         state.opt_state))
  metrics = TrainMetrics.single_from_model_output(
      loss=losses, logits=logits, labels=batch["targets"], mask=batch["valid"] & finite,
      nonfinite=~finite, step=state.step + 1)
  return new_state, metrics


def eval_step(variables, batch: Batch, rng: jax.Array, *, model: nn.Module,
              input_names: Sequence[str]) -> ClassificationMetrics:
  """Metrics of one evaluation batch (`variables` = TrainState.variables()); `rng`
  feeds methods that sample at test time."""
  logits = _forward(model, variables, batch, input_names, rng=rng, deterministic=True)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
  return _metrics(logits, losses, batch)
