r"""ListOps (hierarchical operations on digit lists, 10 classes), Spectraformer OPRF-SGQ attention.

    python -m lra_jax.train --config=configs/listops_oprf_sgq.py --workdir=/tmp/listops_oprf_sgq
    python -m lra_jax.train --config=configs/listops_oprf_sgq.py:pytorch_lra \
        --workdir=/tmp/listops_oprf_sgq_pt

Component function oprf, weight matrix sgq, 128 features fixed at init
(lra_jax/attention/spectraformer.py). Spectraformer README, PyTorch LRA
protocol (spectraformer_schoenbat.md §7.1): 37.08 (0.56) test accuracy, mean
(std) (older table §7.2: 37.10 (0.23); softmax 38.49). The official protocol
(default) puts it beside the official LRA baselines. The reference's quirks
are off by default; each is an attention_kwargs option, e.g.
--config.model.attention_kwargs.per_token_key_stabilizer=True.
The reference's SGQ entries are degenerate (-11.625 with probability 0.436,
else 0; §3): attention_kwargs.reference_weight_matrix=True reproduces them.
"""

from lra_jax import base_config


def get_config(protocol: str = "official"):
  config = base_config.get_config("listops", "spectraformer", protocol)
  config.model.attention_kwargs.update(feature_map="oprf", weight_matrix="sgq")
  return config
