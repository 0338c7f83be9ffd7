"""Writes our data as the PyTorch LRA harness's lra_processed pickles, or checks such files.

    python preprocess/convert_lra_processed.py write \
        --config=configs/lra.py:text,softmax,pytorch_lra --set data.data_dir=/data/tfds \
        --output_dir=data/lra_processed
    python preprocess/convert_lra_processed.py inspect data/lra_processed/lra-text.dev.pickle

`write` reads the three splits of the config's task through our readers
(data.source is ignored: always our TFDS datasets and release files) and
writes `<stem>.{train,dev,test}.pickle` (e.g. lra-text.train.pickle) in the
format Skyformer, Skeinformer, Spectraformer and SchoenbAt load: int32 rows
of the harness's length (ListOps 2048, Text and Retrieval 4096, pixel tasks
R*R), zero-padded, labels typed as theirs. Put them in those repos'
data/lra_processed/ to train both code bases on identical examples, or read
them back with --config.data.source=lra_processed. Each file is written
under a temporary name and renamed when complete; existing files are kept
unless --overwrite. Train and dev keep our order (the harness shuffles at
load). ListOps ids are our vocabulary (lra_jax/data/listops.py), which their
models accept with their vocab_size of 32.

`inspect` loads files with the restricted unpickler (nothing in them runs)
and prints what they hold. Pickles can run code when loaded elsewhere: only
use files from a source you trust.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import sys

import numpy as np
import tqdm

from lra_jax import errors
from lra_jax.data import READERS, lra_processed


def load_config(spec: str):
  """A config file's `get_config()`, as train.py's --config takes it: PATH[:ARGUMENT]."""
  path, _, argument = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("lra_config", path)
  if module_spec is None or not os.path.isfile(path):
    raise errors.ConfigError(f"--config={spec!r}: no config file at {path!r}.")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()


def apply_override(config, assignment: str) -> None:
  """KEY=VALUE with a dotted KEY (data.data_dir=/x); VALUE a Python literal or a string."""
  key, sep, text = assignment.partition("=")
  if not sep:
    raise errors.ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. data.data_dir=DIR.")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  *parents, name = key.split(".")
  section = config
  try:
    for parent in parents:
      section = section[parent]
    if name not in section:
      raise KeyError(f"the config has no field {key!r}")
    section[name] = value
  except (KeyError, TypeError, AttributeError) as error:
    reason = error.args[0] if isinstance(error, KeyError) else error
    raise errors.ConfigError(f"--set {assignment!r}: {reason}.") from None


def write(args) -> list[str]:
  config = load_config(args.config)
  for assignment in args.set:
    apply_override(config, assignment)
  task, data = config.task, config.data
  os.makedirs(args.output_dir, exist_ok=True)
  written = []
  for split in lra_processed.FILE_SPLITS:
    path = lra_processed.split_path(args.output_dir, task, data, split)
    if os.path.exists(path) and not args.overwrite:
      print(f"exists, kept (use --overwrite to replace): {path}")
      continue
    examples, count = READERS[task].read(data, split)
    with tqdm.tqdm(total=count, unit="example", desc=os.path.basename(path)) as bar:
      lra_processed.write(examples.as_numpy_iterator(), path, task=task, data=data,
                          length=args.length, progress=bar.update)
    written.append(path)
    print(path)
  return written


def inspect(args) -> None:
  for path in args.files:
    split = lra_processed.load(path)
    values, counts = np.unique(split.labels, return_counts=True)
    labels = ", ".join(f"{v}: {c}" for v, c in zip(values.tolist(), counts.tolist()))
    print(f"{path}: {split.num_examples} examples, label type {split.label_type}, "
          f"label counts {{{labels}}}")
    for key, ids in split.inputs.items():
      lengths = np.where(ids.any(axis=1), ids.shape[1] - np.argmax(ids[:, ::-1] != 0, axis=1), 0)
      print(f"  {key}: int32 [{ids.shape[1]}], ids {ids.min()}..{ids.max()}, "
            f"non-padding length {lengths.min()}..{lengths.max()} (mean {lengths.mean():.0f})")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest="command", required=True)
  to_pickle = commands.add_parser("write", help="Our pipeline -> lra_processed pickles.")
  to_pickle.add_argument("--config", required=True,
                         help="Config file as for lra_jax.train, e.g. "
                              "configs/lra.py:listops,softmax,pytorch_lra.")
  to_pickle.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="Override a config field, e.g. data.data_dir=/data/tfds "
                              "(repeatable).")
  to_pickle.add_argument("--output_dir", required=True, help="Directory to write the pickles to.")
  to_pickle.add_argument("--length", type=int, default=None,
                         help="Stored row length (default: the harness's for the task).")
  to_pickle.add_argument("--overwrite", action="store_true", help="Replace existing files.")
  check = commands.add_parser("inspect",
                              help="Load lra_processed pickles safely and describe them.")
  check.add_argument("files", nargs="+", help="*.pickle files.")
  args = parser.parse_args(argv)
  try:
    if args.command == "write":
      write(args)
    else:
      inspect(args)
  except (errors.ConfigError, errors.DataNotFoundError, lra_processed.FormatError,
          lra_processed.ForbiddenPickleError, FileNotFoundError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
