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
from lra_jax.attention.linear_transformer import (LinearTransformerAttention,
                                                  linear_transformer_attention)
from lra_jax.attention.local_patterns import (LocalAttention, LongformerAttention, SparseAttention,
                                              local_attention, longformer_attention, sparse_attention)
from lra_jax.attention.lowrank import LinformerAttention, linformer_attention
from lra_jax.attention.lsh import ReformerAttention, reformer_attention
from lra_jax.attention.maclaurin import RMFAttention, rmfa_attention
from lra_jax.attention.multihead import MultiHeadAttention
from lra_jax.attention.nystrom import (NystromAttention, SkyformerAttention, nystrom_attention,
                                       skyformer_attention)
from lra_jax.attention.random_features import PerformerAttention, performer_attention
from lra_jax.attention.registry import (ATTENTION_RNG, CONSTANTS, AttentionMethod,
                                        default_hyperparameters, get, get_method, names)
from lra_jax.attention.sinkhorn import SinkhornAttention, sinkhorn_attention
from lra_jax.attention.skeinformer import (
    SkeinformerAttention, SkeinNonormAttention, SkeinNopilotAttention, SkeinSimplenormAttention,
    SkeinUniformAttention, VmeanAttention, skein_nonorm_attention, skein_nopilot_attention,
    skein_simplenorm_attention, skein_uniform_attention, skeinformer_attention, vmean_attention)
from lra_jax.attention.softmax import SoftmaxAttention, softmax_attention
from lra_jax.attention.sparse import (BigBirdAttention, InformerAttention, bigbird_attention,
                                      informer_attention)
from lra_jax.attention.spectraformer import SpectraformerAttention, spectraformer_attention
from lra_jax.attention.synthesizer import SynthesizerAttention, synthesizer_attention

__all__ = [
    "ATTENTION_RNG", "AttentionMethod", "BigBirdAttention", "CONSTANTS", "InformerAttention",
    "KernelizedAttention", "LinearTransformerAttention", "LinformerAttention", "LocalAttention",
    "LongformerAttention", "MultiHeadAttention", "NystromAttention", "PerformerAttention",
    "RMFAttention", "ReformerAttention", "SinkhornAttention", "SkeinNonormAttention",
    "SkeinNopilotAttention", "SkeinSimplenormAttention", "SkeinUniformAttention",
    "SkeinformerAttention", "SkyformerAttention", "SoftmaxAttention", "SparseAttention",
    "SpectraformerAttention", "SynthesizerAttention", "VmeanAttention", "bigbird_attention",
    "default_hyperparameters", "get", "get_method", "informer_attention", "kernelized_attention",
    "linear_transformer_attention", "linformer_attention", "local_attention",
    "longformer_attention", "names", "nystrom_attention", "performer_attention",
    "reformer_attention", "rmfa_attention", "sinkhorn_attention", "skein_nonorm_attention",
    "skein_nopilot_attention", "skein_simplenorm_attention", "skein_uniform_attention",
    "skeinformer_attention", "skyformer_attention", "softmax_attention", "sparse_attention",
    "spectraformer_attention", "synthesizer_attention", "vmean_attention",
]
