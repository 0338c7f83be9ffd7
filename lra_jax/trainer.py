"""train_and_evaluate: the training loop, evaluation, checkpoints and results.

The loop is the flax-examples shape: a jitted pure `train_step` over a
data-parallel Mesh, clu metrics and writers, orbax checkpoints. A run in a
workdir that already holds checkpoints resumes from the newest one and ends
exactly where an uninterrupted run would (the data order and every random
draw are functions of the seed and the step).

Reliability: SIGTERM (what a preempting scheduler sends) makes a
single-process run checkpoint the step it is at and return, so rerunning the
command resumes; multi-process runs use jax's preemption sync point instead.
An unreadable newest checkpoint is skipped with a warning (see checkpointing).
A non-finite loss, gradient or parameter stops training before anything of
that state is evaluated or saved, unless train.skip_nonfinite_steps skips
such updates (counted in the logs and results.json).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import signal
import threading
from typing import Any, Iterable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils

from lra_jax import checkpointing, data, errors, models, optim, parallel, schedules, steps

RESULTS_FILE = "results.json"
EVAL_RESULTS_FILE = "eval_results.json"
CONFIG_FILE = "config.json"
# Key of the checkpoint bookkeeping and results.json: non-finite updates
# skipped so far (train.skip_nonfinite_steps).
_SKIPPED = "nonfinite_steps_skipped"
# Bookkeeping of early stopping (train.early_stopping_patience), in the same
# checkpoint metadata so that a resumed run keeps counting, and a run that
# stopped early stays stopped.
_EARLY_STOPPING_DEFAULTS = {"best_validation_loss": None, "evaluations_without_improvement": 0,
                            "early_stopped_at_step": None}


def check_config(config: ml_collections.ConfigDict, num_devices: int, num_processes: int) -> None:
  """Fails early, with what to change, on settings that cannot run."""
  models.check_config(config)
  train, data_config = config.train, config.data
  for name in ("batch_size", "eval_batch_size"):
    size = data_config[name]
    if size % num_devices or size % num_processes:
      raise errors.ConfigError(
          f"data.{name}={size} must be divisible by the number of devices ({num_devices}) and "
          f"of processes ({num_processes}); set --config.data.{name} to a multiple.")
  if data_config.batch_size % (train.grad_accum_steps * num_devices):
    raise errors.ConfigError(
        f"data.batch_size={data_config.batch_size} must split into train.grad_accum_steps="
        f"{train.grad_accum_steps} micro-batches that each divide over {num_devices} devices.")
  if data_config.padded_length < data_config.max_length:
    raise errors.ConfigError(
        f"data.padded_length={data_config.padded_length} is shorter than data.max_length="
        f"{data_config.max_length}.")
  for name in ("num_train_steps", "eval_every_steps", "log_every_steps", "checkpoint_every_steps"):
    if train[name] <= 0:
      raise errors.ConfigError(f"train.{name} must be positive, got {train[name]}.")
  patience = train.get("early_stopping_patience")
  if patience is not None and patience <= 0:
    raise errors.ConfigError(
        f"train.early_stopping_patience must be a positive number of evaluations (the Skeinformer "
        f"repo uses 10), got {patience}; leave it unset to train all num_train_steps.")


def create_train_state(config: ml_collections.ConfigDict, model: nn.Module, rng: jax.Array,
                       mesh: jax.sharding.Mesh) -> steps.TrainState:
  """Initialised parameters, constants and optimiser state, replicated over the mesh."""
  length = config.data.padded_length
  dummy = [np.zeros((1, length), np.int32) for _ in models.input_names(config)]
  tx = optim.create_optimizer(config.train)

  def init(rng):
    params_rng, dropout_rng, attention_rng = jax.random.split(rng, 3)
    variables = model.init({"params": params_rng, "dropout": dropout_rng,
                            "attention": attention_rng}, *dummy, deterministic=True)
    params, constants = steps.split_variables(variables)
    return steps.TrainState.create(apply_fn=model.apply, params=params, tx=tx, constants=constants)

  return jax.jit(init, out_shardings=parallel.replicated(mesh))(rng)


def evaluate(eval_step, variables, dataset, mesh: jax.sharding.Mesh, rng: jax.Array,
             num_steps: int = -1) -> dict[str, float]:
  """Mean loss and accuracy over `dataset` (at most `num_steps` batches if > 0)."""
  merged = None
  for index, batch in enumerate(_numpy_batches(dataset)):
    if 0 < num_steps <= index:
      break
    metrics = eval_step(variables, parallel.global_batch(batch, mesh), jax.random.fold_in(rng, index))
    merged = metrics if merged is None else merged.merge(metrics)
  if merged is None:
    raise errors.ConfigError("The evaluation split is empty; check data.data_dir.")
  return {name: float(value) for name, value in merged.compute().items()}


def majority_class_accuracy(dataset, num_classes: int) -> float:
  """Accuracy of always predicting the most frequent class of `dataset` (all processes)."""
  counts = data.class_counts(_numpy_batches(dataset), num_classes)
  if jax.process_count() > 1:
    counts = multihost_utils.process_allgather(counts).sum(axis=0)
  return float(counts.max() / max(counts.sum(), 1))


def _numpy_batches(dataset) -> Iterable[dict[str, np.ndarray]]:
  return dataset.as_numpy_iterator() if hasattr(dataset, "as_numpy_iterator") else dataset


def _write_json(path: pathlib.Path, payload: dict[str, Any]) -> None:
  """Atomic write: a crash never leaves a truncated results file."""
  if jax.process_index() != 0:
    return
  tmp = path.with_suffix(".tmp")
  with open(tmp, "w") as f:
    f.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    f.flush()
    os.fsync(f.fileno())  # the rename must not reach the disk before the data
  tmp.replace(path)


def _check_workdir_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume a workdir trained with another model or task (reads only)."""
  path = workdir / CONFIG_FILE
  if not path.exists():
    return
  stored = json.loads(path.read_text())
  current = json.loads(config.to_json())
  for section in ("task", "model"):
    if stored.get(section) != current.get(section):
      raise errors.ConfigError(
          f"{workdir} holds a run with a different {section!r} setting than this config "
          f"(see {path}). Its checkpoints cannot be resumed with this config: pass a new "
          f"--workdir, or the config that run used. Nothing in {workdir} was changed.")


class Run:
  """What one training or evaluation run needs: model, mesh, jitted steps, data."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path):
    self.config = config
    self.workdir = pathlib.Path(workdir)
    self.mesh = parallel.create_mesh()
    check_config(config, jax.device_count(), jax.process_count())
    _check_workdir_config(self.workdir, config)
    # Missing data stops the run before anything is compiled or written.
    self._fresh_datasets = data.get_datasets(config, process_index=jax.process_index(),
                                             process_count=jax.process_count())
    self.workdir.mkdir(parents=True, exist_ok=True)
    if not (self.workdir / CONFIG_FILE).exists():
      _write_json(self.workdir / CONFIG_FILE, config.to_dict())
    self.model = models.create_model(config)
    root = jax.random.key(config.seed)
    self.init_rng, self.train_rng, self.eval_rng = jax.random.split(root, 3)
    self.initial_state = create_train_state(config, self.model, self.init_rng, self.mesh)
    # Shapes and shardings only: the train step donates (frees) real states.
    self.abstract_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.initial_state)
    self.checkpoints = checkpointing.Checkpoints(
        self.workdir, save_interval_steps=config.train.checkpoint_every_steps,
        max_to_keep=config.train.max_checkpoints_to_keep)
    names = models.input_names(config)
    replicated, sharded = parallel.replicated(self.mesh), parallel.batch_sharded(self.mesh)
    self.train_step = jax.jit(
        functools.partial(steps.train_step, model=self.model, input_names=names,
                          grad_accum_steps=config.train.grad_accum_steps,
                          skip_nonfinite=config.train.skip_nonfinite_steps),
        in_shardings=(replicated, sharded, replicated), out_shardings=replicated,
        donate_argnums=0)
    self.eval_step = jax.jit(
        functools.partial(steps.eval_step, model=self.model, input_names=names),
        in_shardings=(replicated, sharded, replicated), out_shardings=replicated)

  def datasets(self, start_step: int = 0) -> data.Datasets:
    """The splits, training from `start_step` (step 0's were built at start-up)."""
    if start_step == 0:
      return self._fresh_datasets
    return data.get_datasets(self.config, process_index=jax.process_index(),
                             process_count=jax.process_count(), start_step=start_step)

  def evaluate(self, state: steps.TrainState, dataset, num_steps: int = -1) -> dict[str, float]:
    return evaluate(self.eval_step, state.variables(), dataset, self.mesh, self.eval_rng, num_steps)

  def report(self, final_state, datasets: data.Datasets) -> dict[str, Any]:
    """Validation and test metrics of the final and the best checkpoint."""
    c = self.config
    final_step = int(final_state.step)
    report: dict[str, Any] = {
        "task": c.task, "attention": c.model.attention, "protocol": c.protocol,
        "final": {"step": final_step,
                  "validation": self.evaluate(final_state, datasets.validation),
                  "test": self.evaluate(final_state, datasets.test)},
        "test_majority_class_accuracy": majority_class_accuracy(datasets.test,
                                                                c.model.num_classes),
    }
    best = self.checkpoints.restore_best(self.abstract_state)
    if best is not None:
      best_state, _ = best
      if int(best_state.step) == final_step:
        report["best"] = report["final"]
      else:
        report["best"] = {
            "step": int(best_state.step),
            "validation": self.evaluate(best_state, datasets.validation),
            "test": self.evaluate(best_state, datasets.test)}
    return report


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | pathlib.Path) -> steps.TrainState:
  """Trains `config` in `workdir` (resuming if it holds checkpoints), then writes
  results.json with validation and test metrics of the final and best states."""
  run = Run(config, workdir)
  try:
    state = run.initial_state
    meta = {"best_step": -1, "best_validation_accuracy": -1.0, _SKIPPED: 0,
            **_EARLY_STOPPING_DEFAULTS}
    restored = run.checkpoints.restore_latest(run.abstract_state, set_aside_unreadable=True)
    if restored is not None:
      state, meta = restored
      # Checkpoints from before these counts existed.
      meta = {_SKIPPED: 0, **_EARLY_STOPPING_DEFAULTS, **meta}
      logging.info("Resumed from step %d in %s.", int(state.step), run.workdir)
    datasets = run.datasets(int(state.step))
    writer = metric_writers.create_default_writer(
        run.workdir, just_logging=jax.process_index() > 0, asynchronous=True)
    with metric_writers.ensure_flushes(writer):
      state, meta, preempted = _train(run, state, meta, datasets, writer)
      if preempted:
        return state
      run.checkpoints.wait_until_finished()
      report = run.report(state, datasets)
      report["best_validation_during_training"] = {
          k: v for k, v in meta.items() if k != _SKIPPED}
      report[_SKIPPED] = meta[_SKIPPED]
      _write_json(run.workdir / RESULTS_FILE, report)
      writer.write_scalars(int(state.step), {
          f"{which}_{split}_{k}": v for which in ("final", "best") if which in report
          for split in ("validation", "test") for k, v in report[which][split].items()})
  finally:
    run.checkpoints.close()
  return state


def _train(run: Run, state, meta: dict[str, Any], datasets: data.Datasets, writer):
  """The loop from state.step to num_train_steps: train, log, evaluate, checkpoint.

  Returns (state, meta, preempted); `preempted` means a preemption signal
  stopped it early, after a checkpoint of the current step.
  """
  c = run.config.train
  start_step = int(state.step)
  if meta["early_stopped_at_step"] is not None:
    logging.info("Early stopping ended this run at step %d; nothing left to train.",
                 meta["early_stopped_at_step"])
    return state, meta, False
  learning_rate = schedules.create_learning_rate_fn(c)
  if start_step == 0:
    writer.write_hparams(_flatten(run.config.to_dict()))
  progress = periodic_actions.ReportProgress(
      num_train_steps=c.num_train_steps, writer=writer, every_steps=c.log_every_steps)
  train_metrics = None
  train_batches = iter(_numpy_batches(datasets.train))
  with _StopOnSigterm() as sigterm:
    for step in range(start_step, c.num_train_steps):
      batch = parallel.global_batch(next(train_batches), run.mesh)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = run.train_step(state, batch, run.train_rng)
      if step == start_step:
        # Steps run asynchronously; a first step that fails (out of memory,
        # say) should say so now, not as a chain of dispatch errors later.
        jax.block_until_ready(state)
      train_metrics = metrics if train_metrics is None else train_metrics.merge(metrics)
      done = step + 1
      progress(done)
      is_last = done == c.num_train_steps
      stopping = sigterm.received
      log = done % c.log_every_steps == 0 or is_last
      evaluate = done % c.eval_every_steps == 0 or is_last
      save = is_last or stopping or run.checkpoints.due(done)
      if not (log or evaluate or save):
        continue
      # Only here, where the state is about to be logged, evaluated or
      # saved, does the loop wait for the device: steps stay asynchronous.
      window = {k: v.item() for k, v in train_metrics.compute().items()}
      skipped = window.pop("nonfinite_steps")
      first_bad = window.pop("first_nonfinite_step")
      if skipped and not c.skip_nonfinite_steps:
        raise NonFiniteError(
            f"Non-finite loss, gradient or parameters at step {first_bad} ({skipped} such "
            f"step(s) up to step {done}); training stopped without saving that state. The last "
            f"good checkpoint ({run.checkpoints.latest.latest_step()}) is kept: lower "
            f"train.learning_rate, set train.grad_clip_norm, or skip such updates with "
            f"train.skip_nonfinite_steps=True, then rerun to resume from it.")
      if skipped and log:
        logging.warning("Skipped %d non-finite update(s) in the steps up to %d, the first at "
                        "step %d (train.skip_nonfinite_steps).", skipped, done, first_bad)
      # `meta` counts the skips of logged windows; what is saved, also this one's.
      saved_meta = {**meta, _SKIPPED: meta[_SKIPPED] + skipped}
      if log:
        scalars = {f"train_{k}": v for k, v in window.items()}
        scalars["train_learning_rate"] = float(learning_rate(step))
        scalars["train_nonfinite_steps_skipped"] = saved_meta[_SKIPPED]
        if not c.skip_nonfinite_steps:
          _check_finite(scalars, done)
        writer.write_scalars(done, scalars)
        train_metrics, meta = None, saved_meta
      if evaluate:
        with progress.timed("eval"):
          validation = run.evaluate(state, datasets.validation, c.num_eval_steps)
        writer.write_scalars(done, {f"validation_{k}": v for k, v in validation.items()})
        updates = _early_stopping_updates(c, meta, validation["loss"], done)
        if validation["accuracy"] > meta["best_validation_accuracy"]:
          updates.update(best_step=done, best_validation_accuracy=validation["accuracy"])
        meta, saved_meta = {**meta, **updates}, {**saved_meta, **updates}
        if "best_step" in updates:
          run.checkpoints.save_best(done, state, saved_meta)
        if meta["early_stopped_at_step"] is not None:
          logging.info("Early stopping at step %d: validation loss has not improved on %.4f for "
                       "%d evaluations (train.early_stopping_patience).", done,
                       meta["best_validation_loss"], c.early_stopping_patience)
          is_last = save = True
      if save:
        with progress.timed("checkpoint"):
          run.checkpoints.save(done, state, saved_meta, force=is_last or stopping)
      if meta["early_stopped_at_step"] is not None:
        return state, meta, False
      if stopping or run.checkpoints.reached_preemption(done):
        logging.warning("Preempted at step %d: checkpoint saved, stopping; rerun the same "
                        "command to resume.", done)
        return state, saved_meta, True
  return state, meta, False


def _early_stopping_updates(c: ml_collections.ConfigDict, meta: dict[str, Any],
                            validation_loss: float, step: int) -> dict[str, Any]:
  """The Skeinformer rule: count evaluations whose validation loss is not below the best so far.

  Stops (sets early_stopped_at_step) when the count reaches
  train.early_stopping_patience, not before train.early_stopping_min_steps.
  """
  best = meta["best_validation_loss"]
  if best is None or validation_loss < best:
    updates = {"best_validation_loss": validation_loss, "evaluations_without_improvement": 0}
  else:
    updates = {"evaluations_without_improvement": meta["evaluations_without_improvement"] + 1}
  patience = c.early_stopping_patience
  if (patience is not None and updates["evaluations_without_improvement"] >= patience
      and step >= c.early_stopping_min_steps):
    updates["early_stopped_at_step"] = step
  return updates


class NonFiniteError(errors.ConfigError, FloatingPointError):
  """Training produced a non-finite loss, gradient or parameter.

  A ConfigError, so the command line prints the message (the settings to
  change) rather than a traceback.
  """


class _StopOnSigterm:
  """Turns SIGTERM into a flag the loop reads at the next step boundary.

  Only in a single-process run from the main thread: with several processes,
  jax's preemption service owns SIGTERM and orbax's preemption policy agrees
  a common step to save at (a local flag would stop one process alone). The
  previous handler is put back on exit.
  """

  def __init__(self):
    self.received = False
    self._previous = None
    self._installed = False

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self.received = True

  def __enter__(self) -> _StopOnSigterm:
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    return self

  def __exit__(self, *exc_info) -> None:
    if self._installed:
      # None: the previous handler was not installed from Python.
      signal.signal(signal.SIGTERM,
                    signal.SIG_DFL if self._previous is None else self._previous)
      self._installed = False


def evaluate_checkpoints(config: ml_collections.ConfigDict,
                         workdir: str | pathlib.Path) -> dict[str, Any]:
  """`--mode=eval`: validation and test metrics of the latest and best checkpoints.

  Writes eval_results.json; results.json of the training run is left alone.
  """
  run = Run(config, workdir)
  try:
    restored = run.checkpoints.restore_latest(run.abstract_state)
    if restored is None:
      raise errors.DataNotFoundError(
          f"No checkpoint in {run.workdir / 'checkpoints'}: train first with "
          f"python -m lra_jax.train --config=... --workdir={run.workdir}.")
    report = run.report(restored[0], run.datasets())
  finally:
    run.checkpoints.close()
  _write_json(run.workdir / EVAL_RESULTS_FILE, report)
  return report


def _check_finite(scalars: dict[str, float], step: int) -> None:
  bad = {k: v for k, v in scalars.items() if not np.isfinite(v)}
  if bad:
    raise FloatingPointError(
        f"Non-finite training metrics at step {step}: {bad}. The last good checkpoint is kept; "
        f"lower train.learning_rate or enable train.grad_clip_norm and resume.")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
  return flat

