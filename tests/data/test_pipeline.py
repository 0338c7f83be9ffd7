"""Batching, sharding, exact resume and evaluation padding of the tf.data pipeline."""

import numpy as np
import pytest
import tensorflow as tf

from lra_jax import base_config, data, errors
from lra_jax.data import pipeline

NUM_EXAMPLES = 23


def _examples(num=NUM_EXAMPLES):
  """Example i: inputs [i+1] * (i % 5 + 1), target i."""
  ids = tf.data.Dataset.range(num)
  return ids.map(lambda i: {"inputs": tf.fill([tf.cast(i % 5 + 1, tf.int32)], tf.cast(i + 1, tf.int32)),
                            "targets": tf.cast(i, tf.int32)})


def _train(start_step=0, process_index=0, process_count=1, seed=0, batch=4):
  return pipeline.train_batches(
      _examples(), NUM_EXAMPLES, local_batch_size=batch, padded_length=8, seed=seed,
      start_step=start_step, shuffle_buffer_size=100, process_index=process_index,
      process_count=process_count)


def _take(dataset, n):
  return [batch for _, batch in zip(range(n), dataset.as_numpy_iterator())]


def test_train_batches_are_padded_and_valid():
  batch = _take(_train(), 1)[0]
  assert batch["inputs"].shape == (4, 8) and batch["inputs"].dtype == np.int32
  assert batch["valid"].all()
  for row, target in zip(batch["inputs"], batch["targets"]):
    np.testing.assert_array_equal(row, [target + 1] * (target % 5 + 1) + [0] * (7 - target % 5))


def test_each_epoch_is_a_new_permutation_of_the_data():
  targets = np.concatenate([b["targets"] for b in _take(_train(batch=1), 3 * NUM_EXAMPLES)])
  epochs = targets.reshape(3, NUM_EXAMPLES)
  for epoch in epochs:
    assert sorted(epoch) == list(range(NUM_EXAMPLES))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[0], np.arange(NUM_EXAMPLES))


@pytest.mark.parametrize("start_step", [1, 5, 6, 17])  # 17 x 4 crosses two epoch boundaries
def test_resuming_at_a_step_continues_the_same_stream(start_step):
  uninterrupted = _take(_train(), start_step + 4)[start_step:]
  resumed = _take(_train(start_step=start_step), 4)
  for a, b in zip(uninterrupted, resumed):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["targets"], b["targets"])


def test_order_depends_on_the_seed_only():
  first = [b["targets"] for b in _take(_train(seed=1), 5)]
  again = [b["targets"] for b in _take(_train(seed=1), 5)]
  other = [b["targets"] for b in _take(_train(seed=2), 5)]
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_processes_train_on_disjoint_shards():
  seen = [set(np.concatenate([b["targets"] for b in _take(_train(process_index=p, process_count=2, batch=1), 11)]))
          for p in range(2)]
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] <= set(range(NUM_EXAMPLES))
  assert len(seen[0]) == len(seen[1]) == 11


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_evaluation_sees_every_example_once_in_equal_batch_counts(process_count):
  batches = [list(pipeline.eval_batches(_examples(), NUM_EXAMPLES, local_batch_size=4,
                                        padded_length=8, process_index=p,
                                        process_count=process_count).as_numpy_iterator())
             for p in range(process_count)]
  assert len({len(b) for b in batches}) == 1
  real = np.concatenate([batch["targets"][batch["valid"]] for per_process in batches
                         for batch in per_process])
  assert sorted(real) == list(range(NUM_EXAMPLES))
  fillers = [row for per_process in batches for batch in per_process
             for row, valid in zip(batch["inputs"], batch["valid"]) if not valid]
  assert all(not row.any() for row in fillers)


def test_class_counts_skip_filler_rows():
  batches = [{"targets": np.asarray([1, 2, 2, 0]), "valid": np.asarray([True, True, True, False])}]
  np.testing.assert_array_equal(data.class_counts(batches, 3), [0, 1, 2])


def test_get_datasets_builds_listops_from_generated_files(tmp_path):
  config = base_config.get_config("listops")
  config.data.update(data_dir=str(tmp_path), generate_if_missing=True, max_length=32,
                     padded_length=40, batch_size=4, eval_batch_size=6)
  config.data.listops_generator.update(num_train=30, num_val=7, num_test=5, min_length=3,
                                       max_length=32, max_depth=4, max_args=3)
  datasets = data.get_datasets(config, process_index=1, process_count=2)
  train = _take(datasets.train, 1)[0]
  assert train["inputs"].shape == (2, 40)  # half the global batch per process
  validation = list(datasets.validation.as_numpy_iterator())
  assert [b["inputs"].shape for b in validation] == [(3, 40), (3, 40)]
  assert sum(b["valid"].sum() for b in validation) == 3  # rows 1, 3, 5 of 7


def test_every_task_has_a_reader():
  assert sorted(data.READERS) == sorted(base_config.TASKS)


def _pairs(num=NUM_EXAMPLES):
  """Example i: inputs1 [i+1] * (i % 5 + 1), inputs2 [i+1] * (i % 3 + 1), target i."""
  def example(i):
    value = tf.cast(i + 1, tf.int32)
    return {"inputs1": tf.fill([tf.cast(i % 5 + 1, tf.int32)], value),
            "inputs2": tf.fill([tf.cast(i % 3 + 1, tf.int32)], value),
            "targets": tf.cast(i, tf.int32)}
  return tf.data.Dataset.range(num).map(example)


def test_both_documents_of_a_pair_are_padded_and_kept_together():
  train = pipeline.train_batches(_pairs(), NUM_EXAMPLES, local_batch_size=4, padded_length=8,
                                 seed=0, start_step=0, shuffle_buffer_size=100, process_index=0,
                                 process_count=1)
  batch = _take(train, 1)[0]
  assert sorted(batch) == ["inputs1", "inputs2", "targets", "valid"]
  for row1, row2, target in zip(batch["inputs1"], batch["inputs2"], batch["targets"]):
    np.testing.assert_array_equal(row1, [target + 1] * (target % 5 + 1) + [0] * (7 - target % 5))
    np.testing.assert_array_equal(row2, [target + 1] * (target % 3 + 1) + [0] * (7 - target % 3))
  batches = list(pipeline.eval_batches(_pairs(), NUM_EXAMPLES, local_batch_size=4, padded_length=8,
                                       process_index=0, process_count=1).as_numpy_iterator())
  fillers = [(b["inputs1"][i], b["inputs2"][i])
             for b in batches for i in np.flatnonzero(~b["valid"])]
  assert len(fillers) == 1 and not any(row.any() for pair in fillers for row in pair)


def test_training_split_smaller_than_a_batch_is_a_config_error():
  with pytest.raises(errors.ConfigError, match="lower data.batch_size"):
    pipeline.train_batches(_examples(3), 3, local_batch_size=4, padded_length=8, seed=0,
                           start_step=0, shuffle_buffer_size=10, process_index=0, process_count=1)
