"""Reading prepared TFDS datasets in a fixed order, without downloading anything.

Shared by the Text (`text.py`) and Image (`image.py`) readers. The dataset
must already be prepared in `data_dir` ('' means TFDS's default directory);
a missing one raises `errors.DataNotFoundError` saying how to prepare it.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf
import tensorflow_datasets as tfds

from lra_jax import errors


def _missing_data_message(name: str, data_dir: str, expected: str) -> str:
  where = f"data.data_dir={data_dir!r}" if data_dir else "TFDS's default data directory"
  return (
      f"TFDS dataset {name!r} is not prepared in {where} (looked for {expected}); this "
      f"program never downloads data. On a machine with internet access run "
      f"`python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
      f"data_dir='DIR').download_and_prepare()\"` or `tfds build {name} --data_dir=DIR`, "
      f"copy DIR here if needed, and pass --config.data.data_dir=DIR.")


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
                            encode: Callable[[tf.Tensor, int], tf.Tensor],
                            max_length: int) -> tuple[tf.data.Dataset, int]:
  """`load`, then {'inputs': encode(row[feature], max_length), 'targets': int32 label}."""
  rows, count = load(name, data_dir, split_spec)
  examples = rows.map(
      lambda row: {"inputs": encode(row[feature], max_length),
                   "targets": tf.cast(row["label"], tf.int32)},
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return examples, count
