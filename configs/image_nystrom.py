"""Image (grayscale CIFAR-10 pixels, 10 classes), Nyströmformer attention.

    python -m lra_jax.train --config=configs/image_nystrom.py --workdir=/tmp/image_nystrom
    python -m lra_jax.train --config=configs/image_nystrom.py:pytorch_lra --workdir=/tmp/image_nystrom_pt

Skyformer paper's Nyströmformer row, PyTorch LRA protocol
(skyformer_skeinformer.md §6.1): 41.30% test accuracy (softmax 40.57%).
Hyper-parameters start at the seed repos' values (128 landmarks, 6
pseudo-inverse iterations, no convolution skip); the Nyströmformer paper's own
LRA setting is 64 landmarks with a 35-wide convolution skip:
--config.model.attention_kwargs.num_landmarks=64
--config.model.attention_kwargs.conv_kernel_size=35.
"""

from lra_jax import base_config


def get_config(protocol: str = "official"):
  return base_config.get_config("image", "nystrom", protocol)
