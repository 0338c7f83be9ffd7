"""Image (grayscale CIFAR-10 pixels, 10 classes), exact softmax attention.

    python -m lra_jax.train --config=configs/image_softmax.py --workdir=/tmp/image_softmax
    python -m lra_jax.train --config=configs/image_softmax.py:pytorch_lra --workdir=/tmp/image_softmax_pt

Official LRA Transformer test accuracy: 42.44% (lra_official_jax.md §6);
Skyformer paper, PyTorch LRA protocol: 40.57% (skyformer_skeinformer.md §6.1).
The argument picks the protocol: official (default) or pytorch_lra.
"""

from lra_jax import base_config


def get_config(protocol: str = "official"):
  return base_config.get_config("image", "softmax", protocol)
