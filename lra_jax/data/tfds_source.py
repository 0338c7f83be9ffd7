"""Preparing and reading TFDS datasets in a fixed order, without downloading anything.

Shared by every reader. `load` needs the dataset already prepared in
`data_dir` ('' means TFDS's default directory); a missing one raises
`errors.DataNotFoundError` saying how to prepare it. `prepare` builds one of
our own datasets (lra_listops, lra_retrieval, lra_pathfinder, see
`tfds_builders.py`) from local release files; `download_and_prepare` is the
only function here that may download (imdb_reviews, cifar10), and only
`preprocess/build_tfds.py` calls it.
"""

from __future__ import annotations

import os
from typing import Callable

from absl import logging
import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

from lra_jax import errors
from lra_jax.data import release, tfds_builders

# Datasets built from local files in a manual directory (never downloaded).
LOCAL_DATASETS = (tfds_builders.LraListops.name, tfds_builders.LraRetrieval.name,
                  tfds_builders.LraPathfinder.name)


def is_prepared(name: str, data_dir: str) -> bool:
  """Whether TFDS `name` (with config, e.g. 'lra_pathfinder/32_hard') is prepared in `data_dir`."""
  return tfds.builder(name, data_dir=data_dir or None).is_prepared()


def default_release_dir(data_dir: str) -> str:
  """TFDS's default manual directory, `<data_dir>/downloads/manual`."""
  return os.path.join(data_dir or tfds.core.constants.DATA_DIR, "downloads", "manual")


def release_dir(data: ml_collections.ConfigDict) -> str:
  """The release directory a config's `data` section points at: `release_dir`, else the default."""
  return data.release_dir or default_release_dir(data.data_dir)


def prepare(name: str, data_dir: str, release_dir: str) -> None:
  """Builds our TFDS dataset `name` into `data_dir` from the files in `release_dir`.

  Nothing is downloaded. TFDS writes into an 'incomplete.*' directory next to
  the final one and renames it when done, so an interrupted preparation
  leaves no dataset behind and calling this again starts it over (a killed
  process may leave the 'incomplete.*' directory, which is safe to delete).
  When several processes prepare the same dataset at once, the first rename
  wins and the others reuse its result.

  Args:
    name: 'lra_listops', 'lra_retrieval' or 'lra_pathfinder/<R>_<difficulty>'.
    data_dir: TFDS data directory to write to; '' for TFDS's default.
    release_dir: the extracted LRA release (or generated data in its layout).

  Raises:
    errors.DataNotFoundError: `release_dir` lacks the files `name` needs.
  """
  if name.split("/")[0] not in LOCAL_DATASETS:
    raise ValueError(f"{name!r} is not built from local files; use download_and_prepare.")
  builder = tfds.builder(name, data_dir=data_dir or None)
  if builder.is_prepared():
    return
  if not tf.io.gfile.isdir(release_dir):
    raise errors.DataNotFoundError(release.missing_message(
        name, release_dir, builder.release_files(), builder.MISSING_HINT))
  logging.info("Preparing %s in %s from %s.", name, builder.data_dir, release_dir)
  config = tfds.download.DownloadConfig(manual_dir=release_dir, try_download_gcs=False)
  try:
    builder.download_and_prepare(download_config=config)
  except Exception:  # another process may have finished the same dataset first
    if not tfds.builder(name, data_dir=data_dir or None).is_prepared():
      raise


def download_and_prepare(name: str, data_dir: str) -> None:
  """Downloads and prepares a public TFDS dataset (imdb_reviews, cifar10): needs internet."""
  tfds.builder(name, data_dir=data_dir or None).download_and_prepare()


def _missing_data_message(name: str, data_dir: str, expected: str) -> str:
  where = f"data.data_dir={data_dir!r}" if data_dir else "TFDS's default data directory"
  return (
      f"TFDS dataset {name!r} is not prepared in {where} (looked for {expected}); this "
      f"program never downloads data. On a machine with internet access run "
      f"`python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
      f"data_dir='DIR').download_and_prepare()\"`, `tfds build {name} --data_dir=DIR` or "
      f"`python preprocess/build_tfds.py --data_dir=DIR {name}`, copy DIR here if needed, and "
      f"pass --config.data.data_dir=DIR.")


def load(name: str, data_dir: str, split_spec: str) -> tuple[tf.data.Dataset, int]:
  """Examples of TFDS `name` for `split_spec` (e.g. 'train[:90%]') in file order, and their count.

  Args:
    name: TFDS name, optionally with config, e.g. 'imdb_reviews/plain_text'.
    data_dir: TFDS data directory holding the prepared dataset; '' for TFDS's default.
    split_spec: TFDS split, slices allowed.

  Returns:
    The decoded feature dicts, always in the same order, and how many there are.

  Raises:
    errors.DataNotFoundError: the dataset is not prepared in `data_dir`.
  """
  builder = tfds.builder(name, data_dir=data_dir or None)
  if not builder.is_prepared():
    raise errors.DataNotFoundError(_missing_data_message(name, data_dir, str(builder.data_dir)))
  options = tf.data.Options()
  options.deterministic = True
  read_config = tfds.ReadConfig(options=options, interleave_cycle_length=1,
                                shuffle_seed=None)
  examples = builder.as_dataset(split=split_spec, shuffle_files=False, read_config=read_config)
  return examples, builder.info.splits[split_spec].num_examples


def classification_examples(name: str, data_dir: str, split_spec: str, feature: str,
                            encode: Callable[[tf.Tensor], tf.Tensor]
                            ) -> tuple[tf.data.Dataset, int]:
  """`load`, then {'inputs': encode(row[feature]), 'targets': int32 label}."""
  rows, count = load(name, data_dir, split_spec)
  examples = rows.map(
      lambda row: {"inputs": encode(row[feature]), "targets": tf.cast(row["label"], tf.int32)},
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return examples, count
