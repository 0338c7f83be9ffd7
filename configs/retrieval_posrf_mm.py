r"""Retrieval (byte-level AAN citation pairs, 2 classes), Spectraformer PosRF-MM attention.

    python -m lra_jax.train --config=configs/retrieval_posrf_mm.py --workdir=/tmp/retrieval_posrf_mm
    python -m lra_jax.train --config=configs/retrieval_posrf_mm.py:pytorch_lra \
        --workdir=/tmp/retrieval_posrf_mm_pt

Component function posrf, weight matrix mm, 128 features fixed at init
(lra_jax/attention/spectraformer.py). Spectraformer README, PyTorch LRA
protocol (spectraformer_schoenbat.md §7.1): 80.58 (0.44) test accuracy, mean
(std) (older table §7.2: 80.58 (0.53); softmax 80.86). The official protocol
(default) puts it beside the official LRA baselines. The reference's quirks
are off by default; each is an attention_kwargs option, e.g.
--config.model.attention_kwargs.per_token_key_stabilizer=True.
"""

from lra_jax import base_config


def get_config(protocol: str = "official"):
  config = base_config.get_config("retrieval", "spectraformer", protocol)
  config.model.attention_kwargs.update(feature_map="posrf", weight_matrix="mm")
  return config
