"""Pixels as tokens for the Image and Pathfinder tasks: the id each gray value gets.

Token id 0 is padding everywhere: the encoder's mask is `ids != 0`
(lra_official_jax.md §0). The official code and the PyTorch LRA harness use
the raw gray value as the id, so a black pixel (value 0) is indistinguishable
from padding: it is masked out of attention and of pooling (§9.3). In
Pathfinder most of the background is black, so most of the image is hidden.

Default here: id = pixel + 1 (ids 1..256, vocab 257), so no pixel of an
image is ever padding. `black_pixels_are_padding=True` reproduces the
reference quirk: id = pixel (ids 0..255, vocab 256). The model's vocab size
follows the same option (lra_jax/base_config.py).
"""

from __future__ import annotations

import tensorflow as tf

VOCAB_SIZE = 257
BLACK_IS_PADDING_VOCAB_SIZE = 256


def vocab_size(black_pixels_are_padding: bool) -> int:
  """Embedding rows needed for the ids `to_ids` produces."""
  return BLACK_IS_PADDING_VOCAB_SIZE if black_pixels_are_padding else VOCAB_SIZE


def to_ids(pixels: tf.Tensor, black_pixels_are_padding: bool, max_length: int) -> tf.Tensor:
  """uint8 gray pixels [H, W, 1] -> int32 ids [<= max_length], row-major.

  Args:
    pixels: one single-channel image.
    black_pixels_are_padding: False: id = pixel + 1; True: id = pixel (the
      reference quirk, black = padding).
    max_length: ids kept.

  Returns:
    The first `max_length` ids of the flattened image.
  """
  ids = tf.reshape(tf.cast(pixels, tf.int32), [-1])
  if not black_pixels_are_padding:
    ids += 1
  return ids[:max_length]
