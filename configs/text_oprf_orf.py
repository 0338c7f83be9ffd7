r"""Text (byte-level IMDB sentiment, 2 classes), Spectraformer OPRF-ORF (the README's OPRF-OR)
attention.

    python -m lra_jax.train --config=configs/text_oprf_orf.py --workdir=/tmp/text_oprf_orf
    python -m lra_jax.train --config=configs/text_oprf_orf.py:pytorch_lra \
        --workdir=/tmp/text_oprf_orf_pt

Component function oprf, weight matrix orf, 128 features fixed at init
(lra_jax/attention/spectraformer.py). Spectraformer README, PyTorch LRA
protocol (spectraformer_schoenbat.md §7.1): 60.18 (0.49) test accuracy, mean
(std) (older table §7.2: 60.16 (0.79); softmax 59.72). The official protocol
(default) puts it beside the official LRA baselines. The reference's quirks
are off by default; each is an attention_kwargs option, e.g.
--config.model.attention_kwargs.per_token_key_stabilizer=True.
"""

from lra_jax import base_config


def get_config(protocol: str = "official"):
  config = base_config.get_config("text", "spectraformer", protocol)
  config.model.attention_kwargs.update(feature_map="oprf", weight_matrix="orf")
  return config
