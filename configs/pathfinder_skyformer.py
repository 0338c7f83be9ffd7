"""Pathfinder-32 (are the two dots connected?, 2 classes), Skyformer attention.

    python -m lra_jax.train --config=configs/pathfinder_skyformer.py --workdir=/tmp/pathfinder_skyformer
    python -m lra_jax.train --config=configs/pathfinder_skyformer.py:pytorch_lra --workdir=/tmp/pathfinder_skyformer_pt

Skyformer paper, PyTorch LRA protocol (skyformer_skeinformer.md §6.1): 70.73%
test accuracy (softmax 65.26%). The official protocol (default) puts it beside
the official LRA baselines. Hyper-parameters start at the reference values
(128 landmarks, jitter 0.1, 6 pseudo-inverse iterations); override them with
e.g. --config.model.attention_kwargs.num_landmarks=64.
"""

from lra_jax import base_config


def get_config(protocol: str = "official"):
  return base_config.get_config("pathfinder", "skyformer", protocol)
