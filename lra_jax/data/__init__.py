"""Input pipelines: padded int32 batches for every LRA task, sharded per process.

    datasets = data.get_datasets(config, process_index=0, process_count=1)
    next(datasets.train.as_numpy_iterator())  # {'inputs', 'targets', 'valid'}

Batches hold this process's share of the global batch (`data.batch_size /
process_count` rows); `valid` [batch] is False only on rows that fill up the
last evaluation batch. Retrieval batches hold `inputs1` and `inputs2` (the two
documents) instead of `inputs`. This package never imports JAX or the model.

A reader (`READERS[task]`) is a module with `read(data, split) -> (examples,
count)`: `data` is the config's `data` section, `split` one of 'train',
'validation', 'test'; it prepares (or generates) what it needs on first use.
`data.source` picks where examples come from: 'tfds' (these readers) or
'lra_processed' (the PyTorch LRA harness's pickles, `lra_processed.py`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterable

import ml_collections
import numpy as np
import tensorflow as tf

from lra_jax import errors
from lra_jax.data import (image, listops, listops_generator, lra_processed, pathfinder, pipeline,
                          pixels, release, retrieval, text, tfds_builders, tfds_source)

# Task -> reader. None of them downloads: text and image read prepared TFDS
# datasets (imdb_reviews, cifar10) from data.data_dir; listops, retrieval and
# pathfinder also prepare theirs from local release files (tfds_builders.py).
READERS = {"listops": listops, "text": text, "retrieval": retrieval, "image": image,
           "pathfinder": pathfinder}
# Values of data.source.
SOURCES = ("tfds", "lra_processed")


@dataclasses.dataclass(frozen=True)
class Datasets:
  """train: endless shuffled batches; validation, test: one ordered pass each."""

  train: tf.data.Dataset
  validation: tf.data.Dataset
  test: tf.data.Dataset


def reader(config: ml_collections.ConfigDict
           ) -> Callable[[ml_collections.ConfigDict, str], tuple[tf.data.Dataset, int]]:
  """`read(data, split)` for `config.task` from `config.data.source`."""
  if config.task not in READERS:
    raise errors.ConfigError(
        f"No input pipeline for task {config.task!r}; tasks: {', '.join(sorted(READERS))}.")
  source = config.data.source
  if source == "tfds":
    return READERS[config.task].read
  if source == "lra_processed":
    return functools.partial(lra_processed.read, task=config.task,
                             vocab_size=config.model.vocab_size,
                             num_classes=config.model.num_classes)
  raise errors.ConfigError(
      f"Unknown data.source {source!r}; valid values: {', '.join(SOURCES)}.")


def get_datasets(config: ml_collections.ConfigDict, *, process_index: int = 0,
                 process_count: int = 1, start_step: int = 0) -> Datasets:
  """The three splits of `config.task`; training resumes at `start_step`."""
  data, read = config.data, reader(config)
  shard = dict(process_index=process_index, process_count=process_count)
  train_examples, num_train = read(data, "train")
  train = pipeline.train_batches(
      train_examples, num_train, local_batch_size=data.batch_size // process_count,
      padded_length=data.padded_length, seed=config.seed, start_step=start_step,
      shuffle_buffer_size=data.shuffle_buffer_size, **shard)

  def evaluation(split: str) -> tf.data.Dataset:
    examples, count = read(data, split)
    return pipeline.eval_batches(examples, count,
                                 local_batch_size=data.eval_batch_size // process_count,
                                 padded_length=data.padded_length, **shard)

  return Datasets(train=train, validation=evaluation("validation"), test=evaluation("test"))


def class_counts(batches: Iterable[dict[str, np.ndarray]], num_classes: int) -> np.ndarray:
  """Real examples per class [num_classes] over `batches` (rows with valid=False skipped)."""
  counts = np.zeros(num_classes, np.int64)
  for batch in batches:
    np.add.at(counts, batch["targets"][batch["valid"]], 1)
  return counts


__all__ = ["Datasets", "READERS", "SOURCES", "class_counts", "get_datasets", "image", "listops",
           "listops_generator", "lra_processed", "pathfinder", "pipeline", "pixels", "reader",
           "release", "retrieval", "text", "tfds_builders", "tfds_source"]
