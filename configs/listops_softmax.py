"""ListOps (hierarchical operations on digit lists, 10 classes), exact softmax attention.

    python -m lra_jax.train --config=configs/listops_softmax.py --workdir=/tmp/listops_softmax
    python -m lra_jax.train --config=configs/listops_softmax.py:pytorch_lra --workdir=/tmp/listops_softmax_pt

Official LRA Transformer test accuracy: 36.37% (lra_official_jax.md §6);
Skyformer paper, PyTorch LRA protocol: 38.37% (skyformer_skeinformer.md §6.1).
The argument picks the protocol: official (default) or pytorch_lra.

Memory: the official batch (32 x 2000 tokens, 8 heads, 4 layers) needs about
80 GB of activations on one device; on a single GPU or a CPU add
--config.train.grad_accum_steps=8 (the same update in 8 micro-batches). It was
data-parallel over 8+ TPU cores in the original.
"""

from lra_jax import base_config


def get_config(protocol: str = "official"):
  return base_config.get_config("listops", "softmax", protocol)
