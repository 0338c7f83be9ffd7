"""Retrieval (byte-level AAN citation pairs, 2 classes), exact softmax attention.

    python -m lra_jax.train --config=configs/retrieval_softmax.py --workdir=/tmp/retrieval_softmax
    python -m lra_jax.train --config=configs/retrieval_softmax.py:pytorch_lra --workdir=/tmp/retrieval_softmax_pt

Official LRA Transformer test accuracy: 57.46% (lra_official_jax.md §6);
Skyformer paper, PyTorch LRA protocol: 80.69% (skyformer_skeinformer.md §6.1).
The argument picks the protocol: official (default) or pytorch_lra.
"""

from lra_jax import base_config


def get_config(protocol: str = "official"):
  return base_config.get_config("retrieval", "softmax", protocol)
