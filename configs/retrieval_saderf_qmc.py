r"""Retrieval (byte-level AAN citation pairs, 2 classes), Spectraformer SADERF-QMC attention.

    python -m lra_jax.train --config=configs/retrieval_saderf_qmc.py \
        --workdir=/tmp/retrieval_saderf_qmc
    python -m lra_jax.train --config=configs/retrieval_saderf_qmc.py:pytorch_lra \
        --workdir=/tmp/retrieval_saderf_qmc_pt

Component function saderf, weight matrix qmc, 128 features fixed at init
(lra_jax/attention/spectraformer.py). Spectraformer README, PyTorch LRA
protocol (spectraformer_schoenbat.md §7.1): 80.67 (0.44) test accuracy, mean
(std) (older table §7.2: 80.84 (0.11); softmax 80.86). The official protocol
(default) puts it beside the official LRA baselines. The reference's quirks
are off by default; each is an attention_kwargs option, e.g.
--config.model.attention_kwargs.per_token_key_stabilizer=True.
"""

from lra_jax import base_config


def get_config(protocol: str = "official"):
  config = base_config.get_config("retrieval", "spectraformer", protocol)
  config.model.attention_kwargs.update(feature_map="saderf", weight_matrix="qmc")
  return config
