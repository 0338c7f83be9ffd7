"""Input pipelines: padded int32 batches for every LRA task, sharded per process.

    datasets = data.get_datasets(config, process_index=0, process_count=1)
    next(datasets.train.as_numpy_iterator())  # {'inputs', 'targets', 'valid'}

Batches hold this process's share of the global batch (`data.batch_size /
process_count` rows); `valid` [batch] is False only on rows that fill up the
last evaluation batch. This package never imports JAX or the model.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import ml_collections
import numpy as np
import tensorflow as tf

from lra_jax import errors
from lra_jax.data import image, listops, listops_generator, pipeline, text

# Tasks whose pipeline is implemented; the others have configs and models
# already (lra_jax/base_config.py). Text and image read prepared TFDS datasets
# (imdb_reviews, cifar10) from data.data_dir and never download them.
READERS = {"listops": listops, "text": text, "image": image}


@dataclasses.dataclass(frozen=True)
class Datasets:
  """train: endless shuffled batches; validation, test: one ordered pass each."""

  train: tf.data.Dataset
  validation: tf.data.Dataset
  test: tf.data.Dataset


def _prepare(config: ml_collections.ConfigDict) -> None:
  data = config.data
  if config.task == "listops":
    settings = listops_generator.GeneratorSettings(**data.listops_generator.to_dict())
    listops.ensure_files(data.data_dir, data.generate_if_missing, settings)


def get_datasets(config: ml_collections.ConfigDict, *, process_index: int = 0,
                 process_count: int = 1, start_step: int = 0) -> Datasets:
  """The three splits of `config.task`; training resumes at `start_step`."""
  if config.task not in READERS:
    raise errors.ConfigError(
        f"No input pipeline for task {config.task!r} yet; implemented: "
        f"{', '.join(sorted(READERS))}. The {config.task} model and configs exist, so "
        f"a custom pipeline yielding the same batches can drive trainer.train_and_evaluate.")
  _prepare(config)
  data, reader = config.data, READERS[config.task]
  shard = dict(process_index=process_index, process_count=process_count)
  train_examples, num_train = reader.read(data.data_dir, "train", data.max_length)
  train = pipeline.train_batches(
      train_examples, num_train, local_batch_size=data.batch_size // process_count,
      padded_length=data.padded_length, seed=config.seed, start_step=start_step,
      shuffle_buffer_size=data.shuffle_buffer_size, **shard)

  def evaluation(split: str) -> tf.data.Dataset:
    examples, count = reader.read(data.data_dir, split, data.max_length)
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


__all__ = ["Datasets", "READERS", "class_counts", "get_datasets", "image", "listops",
           "listops_generator", "pipeline", "text"]
