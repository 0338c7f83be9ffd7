"""ListOps (hierarchical operations on digit lists, 10 classes), Skyformer attention.

    python -m lra_jax.train --config=configs/listops_skyformer.py --workdir=/tmp/listops_skyformer
    python -m lra_jax.train --config=configs/listops_skyformer.py:pytorch_lra --workdir=/tmp/listops_skyformer_pt

Skyformer paper, PyTorch LRA protocol (skyformer_skeinformer.md §6.1): 38.69%
test accuracy (softmax 38.37%). The official protocol (default) puts it beside
the official LRA baselines. Hyper-parameters start at the reference values
(128 landmarks, jitter 0.1, 6 pseudo-inverse iterations); override them with
e.g. --config.model.attention_kwargs.num_landmarks=64.
"""

from lra_jax import base_config


def get_config(protocol: str = "official"):
  return base_config.get_config("listops", "skyformer", protocol)
