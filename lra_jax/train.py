"""Command line: python -m lra_jax.train --config=configs/text_skyformer.py --workdir=DIR

The only module that defines flags. Any config field can be overridden, e.g.
`--config.model.num_layers=4`; a config file may take an argument after a
colon, e.g. `--config=configs/lra.py:listops,softmax,pytorch_lra`.

Bad input (an unknown task or method, a misspelt config field, settings that
cannot run together, a workdir of another run, missing data) stops before any
heavy work with one paragraph on stderr saying what to change, and exit status
2; `--verbose` adds the traceback.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging as std_logging
import os
import pathlib
import re
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
_VERBOSE = flags.DEFINE_bool(
    "verbose", False,
    "Show the traceback of a bad-input error (config, workdir or data), which otherwise "
    "prints as one paragraph.")
flags.mark_flags_as_required(["config", "workdir"])

# Exit status of a run stopped by bad input (the config, the workdir or the data).
BAD_INPUT = 2
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


def _config_paths(config, prefix: str = "") -> list[str]:
  """Every field of `config` as a dotted path ('model', 'model.num_layers', ...)."""
  paths = []
  for name, value in config.items():
    paths.append(prefix + name)
    if hasattr(value, "items"):
      paths.extend(_config_paths(value, f"{prefix}{name}."))
  return paths


def _misspelt_override(argv: list[str]) -> str | None:
  """A paragraph naming the first --config.FIELD override that `config` lacks, with
  the nearest valid fields; None if every override names a field (or no config loads)."""
  spec = None
  for index, arg in enumerate(argv):
    if re.fullmatch(r"--?config=.+", arg):
      spec = arg.split("=", 1)[1]
    elif arg in ("--config", "-config") and index + 1 < len(argv):
      spec = argv[index + 1]
  if spec is None:
    return None
  try:
    path, _, argument = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("lra_jax_config_check", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    paths = _config_paths(module.get_config(*([argument] if argument else [])))
  except Exception:  # pylint: disable=broad-except  # absl reports a config that fails to load
    return None
  for arg in argv:
    match = re.match(r"--?(?:no)?config\.([^=]+)", arg)
    if match is None or match.group(1) in paths:
      continue
    path = match.group(1)
    close = difflib.get_close_matches(path, paths, n=1, cutoff=0.8)
    if close:
      hint = f"Did you mean {close[0]}?"
    else:
      parent = path.rpartition(".")[0]
      if parent not in paths:
        parent = ""
      fields = sorted(p.rpartition(".")[2] for p in paths if p.rpartition(".")[0] == parent)
      hint = f"Fields of {'config.' + parent if parent else 'the config'}: {', '.join(fields)}."
    return (f"--config.{path}: the config has no field {path}. {hint} Every field is "
            f"documented in lra_jax/base_config.py (attention_kwargs: in the method's module).")
  return None


def _verbose_requested(argv: list[str]) -> bool:
  return any(re.fullmatch(r"--?verbose(=(true|1|True))?", arg) for arg in argv)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but bad flags print one paragraph and exit with BAD_INPUT.

  The paragraph is the ConfigError a config file raised (an unknown task or
  method, say), the nearest valid field of a misspelt --config.FIELD, or
  absl's own message; --verbose shows the traceback instead.
  """
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError) as error:
    # config_flags raises KeyError / AttributeError for an override of a field
    # the config lacks, flags.Error for the rest.
    if _verbose_requested(argv):
      raise
    config_error = errors.innermost_config_error(error)
    message = str(config_error) if config_error else _misspelt_override(argv)
    if message is None:
      if not isinstance(error, flags.Error):
        raise
      message = str(error).rstrip()
      message += ("" if message.endswith((".", "?", "!")) else ".") + (
          " Pass --helpfull to see every flag.")
    print(f"error: {message}", file=sys.stderr)
    sys.exit(BAD_INPUT)


class _HideOrbaxInfo(std_logging.Filter):
  """Drops orbax's INFO records (a dozen per checkpoint save), keeps its warnings."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def _initialize_distributed() -> None:
  """jax.distributed.initialize(): auto-detected on Cloud TPU, Slurm, Open MPI, Kubernetes;
  elsewhere from JAX_COORDINATOR_ADDRESS (read by JAX), JAX_NUM_PROCESSES and JAX_PROCESS_ID."""
  kwargs = {}
  for argument, variable in (("num_processes", "JAX_NUM_PROCESSES"),
                             ("process_id", "JAX_PROCESS_ID")):
    if os.environ.get(variable):
      kwargs[argument] = int(os.environ[variable])
  jax.distributed.initialize(**kwargs)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from lra_jax import results

  if logging.get_verbosity() <= logging.INFO:  # -v 1 or more shows orbax's progress too
    logging.get_absl_handler().addFilter(_HideOrbaxInfo())

  if _DISTRIBUTED.value:
    _initialize_distributed()
  try:
    path = run(_CONFIG.value, _WORKDIR.value, _MODE.value)
  except (errors.ConfigError, errors.DataNotFoundError) as error:
    if _VERBOSE.value:
      raise
    print(f"error: {error}", file=sys.stderr)
    sys.exit(BAD_INPUT)
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
