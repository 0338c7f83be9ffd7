"""Text (byte-level IMDB sentiment, 2 classes), exact softmax attention.

    python -m lra_jax.train --config=configs/text_softmax.py --workdir=/tmp/text_softmax
    python -m lra_jax.train --config=configs/text_softmax.py:pytorch_lra --workdir=/tmp/text_softmax_pt

Official LRA Transformer test accuracy: 64.27% (lra_official_jax.md §6);
Skyformer paper, PyTorch LRA protocol: 61.95% (skyformer_skeinformer.md §6.1).
The argument picks the protocol: official (default) or pytorch_lra.
"""

from lra_jax import base_config


def get_config(protocol: str = "official"):
  return base_config.get_config("text", "softmax", protocol)
