"""Pathfinder-32 (are the two dots connected?, 2 classes), exact softmax attention.

    python -m lra_jax.train --config=configs/pathfinder_softmax.py --workdir=/tmp/pathfinder_softmax
    python -m lra_jax.train --config=configs/pathfinder_softmax.py:pytorch_lra --workdir=/tmp/pathfinder_softmax_pt

Official LRA Transformer test accuracy: 71.40% (lra_official_jax.md §6);
Skyformer paper, PyTorch LRA protocol: 65.26% (skyformer_skeinformer.md §6.1).
The argument picks the protocol: official (default) or pytorch_lra.
"""

from lra_jax import base_config


def get_config(protocol: str = "official"):
  return base_config.get_config("pathfinder", "softmax", protocol)
