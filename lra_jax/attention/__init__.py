"""Attention methods: pure functions for the maths, linen modules, one registry.

    from lra_jax import attention
    attention.softmax_attention(q, k, v, mask)      # the maths, [b, l, h, d]
    attention.get("softmax")                        # the linen module class
    attention.names()                               # every registered method

Each family module registers its methods on import; importing it here is all
it takes for a new method to reach the encoder, the configs and the contract
tests.
"""

from lra_jax.attention.kernelized import KernelizedAttention, kernelized_attention
from lra_jax.attention.multihead import MultiHeadAttention
from lra_jax.attention.nystrom import (NystromAttention, SkyformerAttention, nystrom_attention,
                                       skyformer_attention)
from lra_jax.attention.registry import (ATTENTION_RNG, AttentionMethod, default_hyperparameters, get,
                                        get_method, names)
from lra_jax.attention.softmax import SoftmaxAttention, softmax_attention

__all__ = [
    "ATTENTION_RNG", "AttentionMethod", "KernelizedAttention", "default_hyperparameters", "MultiHeadAttention",
    "NystromAttention", "SkyformerAttention", "SoftmaxAttention", "get", "get_method",
    "kernelized_attention", "names", "nystrom_attention", "skyformer_attention",
    "softmax_attention",
]
