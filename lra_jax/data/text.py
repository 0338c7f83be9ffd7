"""Byte-level IMDB text classification (lra_official_jax.md §1.2, §1.6).

Reads TFDS `imdb_reviews/plain_text` as the official pipeline does: each
review's UTF-8 bytes b become ids b + 1 (the `ByteTextEncoder` ids), 0 is
padding, vocab 257, truncated to `max_length` tokens; no BOS/EOS/CLS (the model
adds CLS). IMDB has no validation split, so validation is the test split, as
in the official code. Labels: 0 negative, 1 positive.
"""

from __future__ import annotations

import ml_collections
import tensorflow as tf

from lra_jax.data import tfds_source

DATASET = "imdb_reviews/plain_text"
VOCAB_SIZE = 257

# Our split names -> TFDS splits (validation = test, §1.2).
TFDS_SPLITS = {"train": "train", "validation": "test", "test": "test"}


def encode(text: tf.Tensor, max_length: int) -> tf.Tensor:
  """A scalar string -> int32 ids [<= max_length]: each UTF-8 byte plus one."""
  return (tf.cast(tf.io.decode_raw(text, tf.uint8), tf.int32) + 1)[:max_length]


def read(data: ml_collections.ConfigDict, split: str) -> tuple[tf.data.Dataset, int]:
  """Examples of `split` in file order, and their count.

  Args:
    data: the config's `data` section: `data_dir` (TFDS data directory holding
      the prepared dataset; '' for TFDS's default), `max_length` (tokens kept
      per review).
    split: 'train', 'validation' or 'test'.

  Returns:
    Dicts of `inputs` int32 [<= max_length] and `targets` int32 [], and their count.

  Raises:
    errors.DataNotFoundError: imdb_reviews is not prepared in `data_dir`.
  """
  return tfds_source.classification_examples(DATASET, data.data_dir, TFDS_SPLITS[split], "text",
                                             lambda text: encode(text, data.max_length))
