"""Task-independent tf.data plumbing: sharding, seeded shuffling, exact resume, batching.

A task module provides `read(data, split) -> (examples, num_examples)`: a
dataset of dicts of int32 tensors with the real (unpadded) tokens, and how
many there are. Every rank-1 feature is a token sequence (`inputs`
[length], or `inputs1` and `inputs2` for the two documents of Retrieval) and
every scalar is a label (`targets` []); nothing here names the features, so
single- and dual-input tasks share all of this module. It turns the examples
into batches of numpy arrays, each sequence padded to `padded_length`, with a
boolean `valid` [batch] that is False only on rows that fill up the last
evaluation batch.

Training order is a function of (seed, step) alone: epoch e is the process's
shard shuffled with a seed derived from (seed, e), so a run restarted at step
s skips to exactly the example an uninterrupted run would read next.
"""

from __future__ import annotations

import math
import tensorflow as tf

from lra_jax import errors

# Distinct from every epoch number, so (seed, epoch) -> shuffle seed is 1-1.
_EPOCH_STRIDE = 1_000_003


def shard_size(num_examples: int, process_index: int, process_count: int) -> int:
  """Examples that `Dataset.shard(process_count, process_index)` keeps."""
  return len(range(process_index, num_examples, process_count))


def _padded_shapes(examples: tf.data.Dataset, padded_length: int):
  """Every sequence feature padded to `padded_length`, scalars as they are."""
  return {name: [padded_length] if spec.shape.rank == 1 else []
          for name, spec in examples.element_spec.items()}


def train_batches(examples: tf.data.Dataset, num_examples: int, *, local_batch_size: int,
                  padded_length: int, seed: int, start_step: int, shuffle_buffer_size: int,
                  process_index: int, process_count: int) -> tf.data.Dataset:
  """Endless shuffled batches of this process's shard, starting at `start_step`."""
  shard = examples.shard(process_count, process_index)
  local_examples = shard_size(num_examples, process_index, process_count)
  if local_examples < local_batch_size:
    raise errors.ConfigError(
        f"The training split has {num_examples} examples, fewer than one batch per process "
        f"({local_batch_size} x {process_count}); lower data.batch_size.")
  first_epoch, offset = divmod(start_step * local_batch_size, local_examples)

  def epoch(index):
    epoch_seed = tf.cast(seed, tf.int64) * _EPOCH_STRIDE + tf.cast(index, tf.int64)
    return shard.shuffle(shuffle_buffer_size, seed=epoch_seed, reshuffle_each_iteration=False)

  later_epochs = tf.data.Dataset.range(first_epoch + 1, 2**62).flat_map(epoch)
  stream = epoch(first_epoch).skip(offset).concatenate(later_epochs)
  stream = stream.map(lambda x: {**x, "valid": tf.constant(True)})
  return (stream.padded_batch(local_batch_size, _padded_shapes(stream, padded_length),
                              drop_remainder=True)
          .prefetch(tf.data.AUTOTUNE))


def eval_batches(examples: tf.data.Dataset, num_examples: int, *, local_batch_size: int,
                 padded_length: int, process_index: int, process_count: int) -> tf.data.Dataset:
  """Every example of this process's shard once, in file order.

  The last batch is filled with rows marked `valid=False`, and every process
  yields the same number of batches, so a global batch always has a row from
  each process and metrics count each real example exactly once.
  """
  per_process = math.ceil(num_examples / process_count)
  num_batches = math.ceil(per_process / local_batch_size)
  shard = examples.shard(process_count, process_index)
  real = shard.map(lambda x: {**x, "valid": tf.constant(True)})
  filler = tf.data.Dataset.from_tensors(
      {name: tf.zeros([0] * spec.shape.rank, spec.dtype) for name, spec in shard.element_spec.items()}
  ).map(lambda x: {**x, "valid": tf.constant(False)}).repeat()
  stream = real.concatenate(filler).take(num_batches * local_batch_size)
  return (stream.padded_batch(local_batch_size, _padded_shapes(stream, padded_length))
          .prefetch(tf.data.AUTOTUNE))

