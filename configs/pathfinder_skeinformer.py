"""Pathfinder-32 (are the two dots connected?, 2 classes), Skeinformer attention.

    python -m lra_jax.train --config=configs/pathfinder_skeinformer.py --workdir=/tmp/pathfinder_skeinformer
    python -m lra_jax.train --config=configs/pathfinder_skeinformer.py:pytorch_lra --workdir=/tmp/pathfinder_skeinformer_pt

Skeinformer paper (NAACL 2022), Table 1 (skyformer_skeinformer.md §6.2):
71.51% test accuracy (standard softmax attention 73.59%), trained with the
Skeinformer repo's batch sizes and early stopping on dev loss (§3.1, §4). The
official protocol (default) puts it beside the official LRA baselines.
Hyper-parameters start at the reference values (256 sampled columns, fresh
draws every call); override them with e.g.
--config.model.attention_kwargs.nb_features=128. The ablations
(skein_nopilot, skein_uniform, skein_simplenorm, skein_nonorm, vmean) run with
--config=configs/lra.py:pathfinder,skein_nopilot.
"""

from lra_jax import base_config


def get_config(protocol: str = "official"):
  return base_config.get_config("pathfinder", "skeinformer", protocol)
