"""CIFAR-10 grayscale pixel sequences (lra_official_jax.md §1.4, §1.6).

Reads TFDS `cifar10` as the official pipeline does: train = `train[:90%]`
(45,000), validation = `train[90%:]` (5,000), test = `test` (10,000). Each
32x32 RGB image goes through `tf.image.rgb_to_grayscale` (weights 0.2989,
0.5870, 0.1140 on [0, 1] values, converted back to uint8), and its 1024
pixels, flattened row-major, become the tokens, truncated to `max_length`.

Token ids (`pixels.py`): by default id = pixel + 1, vocab 257, so black
pixels are ordinary tokens. The official code and the PyTorch harness use
id = pixel, vocab 256, which makes every black pixel padding (masked out of
attention and pooling, lra_official_jax.md §9.3);
`data.black_pixels_are_padding=True` reproduces that, and the model's vocab
size follows the option.
"""

from __future__ import annotations

import ml_collections
import tensorflow as tf

from lra_jax.data import pixels, tfds_source

DATASET = "cifar10"

# Our split names -> TFDS splits (§1.4).
TFDS_SPLITS = {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"}


def grayscale(image: tf.Tensor) -> tf.Tensor:
  """A uint8 RGB image [H, W, 3] -> uint8 gray [H, W, 1], as the official pipeline converts it."""
  return tf.image.rgb_to_grayscale(image)


def read(data: ml_collections.ConfigDict, split: str) -> tuple[tf.data.Dataset, int]:
  """Examples of `split` in file order, and their count.

  Args:
    data: the config's `data` section: `data_dir` (TFDS data directory holding
      the prepared dataset; '' for TFDS's default), `max_length` (pixels kept
      per image; 1024 keeps all), `black_pixels_are_padding` (see the module
      docstring).
    split: 'train', 'validation' or 'test'.

  Returns:
    Dicts of `inputs` int32 [<= max_length] and `targets` int32 [], and their count.

  Raises:
    errors.DataNotFoundError: cifar10 is not prepared in `data_dir`.
  """
  return tfds_source.classification_examples(
      DATASET, data.data_dir, TFDS_SPLITS[split], "image",
      lambda image: pixels.to_ids(grayscale(image), data.black_pixels_are_padding,
                                  data.max_length))
