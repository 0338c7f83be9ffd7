"""CIFAR-10 grayscale pixel sequences (lra_official_jax.md §1.4, §1.6).

Reads TFDS `cifar10` as the official pipeline does: train = `train[:90%]`
(45,000), validation = `train[90%:]` (5,000), test = `test` (10,000). Each
32x32 RGB image goes through `tf.image.rgb_to_grayscale` (weights 0.2989,
0.5870, 0.1140 on [0, 1] values, converted back to uint8), and its pixels,
flattened row-major, are the token ids: 1024 of them in 0..255, vocab 256,
truncated to `max_length`.

Known open point: id 0 is also the padding id, so the encoder (mask = ids !=
0) treats black pixels as padding, exactly as the official code and the
PyTorch harness do (lra_official_jax.md §9.3). A correct alternative (ids
shifted by one, with the quirk as a named option) is part of the all-tasks
data issue.
"""

from __future__ import annotations

import tensorflow as tf

from lra_jax.data import tfds_source

DATASET = "cifar10"
VOCAB_SIZE = 256

# Our split names -> TFDS splits (§1.4).
TFDS_SPLITS = {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"}


def encode(image: tf.Tensor, max_length: int) -> tf.Tensor:
  """A uint8 RGB image [H, W, 3] -> int32 grayscale pixels [<= max_length], row-major."""
  gray = tf.image.rgb_to_grayscale(image)
  return tf.reshape(tf.cast(gray, tf.int32), [-1])[:max_length]


def read(data_dir: str, split: str, max_length: int) -> tuple[tf.data.Dataset, int]:
  """Examples of `split` ('train', 'validation', 'test') in file order, and their count.

  Args:
    data_dir: TFDS data directory holding the prepared dataset; '' for TFDS's default.
    split: 'train', 'validation' or 'test'.
    max_length: pixels kept per image (1024 keeps all).

  Returns:
    Dicts of `inputs` int32 [<= max_length] and `targets` int32 [], and their count.

  Raises:
    errors.DataNotFoundError: cifar10 is not prepared in `data_dir`.
  """
  return tfds_source.classification_examples(DATASET, data_dir, TFDS_SPLITS[split], "image",
                                             encode, max_length)
