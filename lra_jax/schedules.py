"""Learning-rate (and b1) schedules of the two reference protocols.

All schedules take the 0-based optimiser step, the step whose update they
scale, as flax.optim and torch schedulers both do.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import ml_collections

from lra_jax import errors

Schedule = Callable[[jnp.ndarray], jnp.ndarray]

FACTORS = ("constant", "linear_warmup", "rsqrt_decay", "rsqrt_normalized_decay", "cosine_decay")
SCHEDULES = ("factors", "one_cycle")


def factor_schedule(factors: str, *, base_learning_rate: float, warmup_steps: int,
                    steps_per_cycle: int) -> Schedule:
  """The official LRA schedule: the product of `*`-separated factors (§5.3).

  constant: base_learning_rate; linear_warmup: min(1, step / warmup) (0 at
  step 0); rsqrt_decay: 1 / sqrt(max(step, warmup)); rsqrt_normalized_decay:
  sqrt(warmup) / sqrt(max(step, warmup)); cosine_decay: 0.5 (1 + cos(pi p))
  with p = ((step - warmup) / steps_per_cycle) mod 1, clipped at 0.
  """
  names = [name.strip() for name in factors.split("*")]
  for name in names:
    if name not in FACTORS:
      raise errors.ConfigError(
          f"Unknown learning-rate factor {name!r} in train.factors={factors!r}; "
          f"valid factors: {', '.join(FACTORS)}.")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    value = jnp.float32(1.0)
    for name in names:
      if name == "constant":
        value *= base_learning_rate
      elif name == "linear_warmup":
        value *= jnp.minimum(1.0, step / warmup_steps)
      elif name == "rsqrt_decay":
        value /= jnp.sqrt(jnp.maximum(step, warmup_steps))
      elif name == "rsqrt_normalized_decay":
        value *= jnp.sqrt(warmup_steps) / jnp.sqrt(jnp.maximum(step, warmup_steps))
      else:  # cosine_decay
        progress = jnp.maximum(0.0, (step - warmup_steps) / steps_per_cycle)
        value *= jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * (progress % 1.0))))
    return value

  return schedule


def one_cycle_schedule(*, total_steps: int, warmup_steps: int, start: float, peak: float,
                       end: float) -> Schedule:
  """torch.optim.lr_scheduler.OneCycleLR with anneal_strategy='linear'.

  Linear from `start` at step 0 to `peak` at step warmup_steps - 1, then
  linear to `end` at step total_steps - 1 (torch's two phases end there).
  """
  if not 1 < warmup_steps < total_steps:
    raise errors.ConfigError(
        f"one_cycle needs 1 < train.warmup_steps ({warmup_steps}) < "
        f"train.num_train_steps ({total_steps}).")
  peak_step = float(warmup_steps - 1)
  last_step = float(total_steps - 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    rising = start + (peak - start) * step / peak_step
    falling = peak + (end - peak) * (step - peak_step) / (last_step - peak_step)
    return jnp.where(step <= peak_step, rising, falling)

  return schedule


def create_learning_rate_fn(train: ml_collections.ConfigDict) -> Schedule:
  """The learning-rate schedule that `config.train` describes."""
  if train.schedule == "factors":
    return factor_schedule(train.factors, base_learning_rate=train.learning_rate,
                           warmup_steps=train.warmup_steps, steps_per_cycle=train.steps_per_cycle)
  if train.schedule == "one_cycle":
    start = train.learning_rate / train.div_factor
    return one_cycle_schedule(total_steps=train.num_train_steps, warmup_steps=train.warmup_steps,
                              start=start, peak=train.learning_rate,
                              end=start / train.final_div_factor)
  raise errors.ConfigError(
      f"Unknown train.schedule {train.schedule!r}; valid schedules: {', '.join(SCHEDULES)}.")


def create_b1_fn(train: ml_collections.ConfigDict) -> Schedule | float:
  """Adam's b1: fixed, or cycled against the LR as OneCycleLR(cycle_momentum=True) does.

  With `cycle_b1 = (base, max)` b1 falls from max to base while the LR warms
  up and climbs back to max as it decays; torch overwrites Adam's beta1 so.
  """
  if train.cycle_b1 is None:
    return train.b1
  if train.schedule != "one_cycle":
    raise errors.ConfigError("train.cycle_b1 needs train.schedule='one_cycle'.")
  base, high = train.cycle_b1
  return one_cycle_schedule(total_steps=train.num_train_steps, warmup_steps=train.warmup_steps,
                            start=high, peak=base, end=high)
