"""Command line: python -m lra_jax.train --config=configs/text_skyformer.py --workdir=DIR

The only module that defines flags. Any config field can be overridden, e.g.
`--config.model.num_layers=4`; a config file may take an argument after a
colon, e.g. `--config=configs/lra.py:listops,softmax,pytorch_lra`.
"""

from __future__ import annotations

import json
import logging as std_logging
import pathlib
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from lra_jax import errors

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (see configs/).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, TensorBoard logs and results.json.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval"],
    "train: train (resuming from the workdir's checkpoints) then evaluate; "
    "eval: evaluate the workdir's latest and best checkpoints.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() first (multi-host: Cloud TPU pods, Slurm, Kubernetes).")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, mode: str) -> pathlib.Path:
  """Trains or evaluates; returns the path of the results file written."""
  import tensorflow as tf

  from lra_jax import trainer

  # TF only feeds data; it must not take accelerator memory from JAX.
  tf.config.set_visible_devices([], "GPU")
  logging.info("Process %d of %d; devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
  if mode == "train":
    trainer.train_and_evaluate(config, workdir)
    return pathlib.Path(workdir) / trainer.RESULTS_FILE
  trainer.evaluate_checkpoints(config, workdir)
  return pathlib.Path(workdir) / trainer.EVAL_RESULTS_FILE


def _config_error(error: BaseException | None) -> errors.ConfigError | None:
  """The innermost ConfigError behind `error` (config_flags re-wraps it with a traceback)."""
  found = None
  while error is not None:
    if isinstance(error, errors.ConfigError):
      found = error
    error = error.__cause__ or error.__context__
  return found


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad config argument prints its one-paragraph message."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    config_error = _config_error(error)
    if config_error is None:
      return app.parse_flags_with_usage(argv)  # absl's own report, then exit
    print(f"error: {config_error}", file=sys.stderr)
    sys.exit(2)


class _HideOrbaxInfo(std_logging.Filter):
  """Drops orbax's INFO records (a dozen per checkpoint save), keeps its warnings."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from lra_jax import results

  if logging.get_verbosity() <= logging.INFO:  # -v 1 or more shows orbax's progress too
    logging.get_absl_handler().addFilter(_HideOrbaxInfo())

  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  try:
    path = run(_CONFIG.value, _WORKDIR.value, _MODE.value)
  except (errors.ConfigError, errors.DataNotFoundError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  except jax.errors.JaxRuntimeError as error:
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    print(f"error: out of device memory ({str(error).splitlines()[0]}). Each device holds "
          f"data.batch_size / {jax.device_count()} examples at once; split each step into K "
          f"micro-batches with --config.train.grad_accum_steps=K (the same update in about 1/K "
          f"of the activation memory), or use more devices. Checkpoints in {_WORKDIR.value} "
          f"are kept: rerunning with the new setting resumes from them.", file=sys.stderr)
    sys.exit(1)
  if path.exists() and jax.process_index() == 0:
    print(results.summary(json.loads(path.read_text()), _WORKDIR.value))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
