"""Text (byte-level IMDB sentiment, 2 classes), SchoenbAt RMFA attention.

    python -m lra_jax.train --config=configs/text_rmfa.py --workdir=/tmp/text_rmfa
    python -m lra_jax.train --config=configs/text_rmfa.py:inverse --workdir=/tmp/text_rmfa_inverse
    python -m lra_jax.train --config=configs/text_rmfa.py:sqrt,pytorch_lra --workdir=/tmp/text_rmfa_sqrt

Argument: KERNEL[,PROTOCOL]. KERNEL is the dot-product kernel f(q.k): exp
(default, the reference's --dotf default), inverse, log, trigh or sqrt
(lra_jax/attention/maclaurin.py). PROTOCOL is official (default) or
pytorch_lra; the latter is the SchoenbAt harness (spectraformer_schoenbat.md
§6.7), which trains 10,000 steps instead of the Skyformer harness's 50,000.
ppSBN is on (the reference's --former maclauformer); --former transformer is
--config.model.attention_kwargs.ppsbn=False. Features: 128, fixed at
initialisation, as in the reference. The SchoenbAt repo publishes no
accuracy (§6.9).
"""

from lra_jax import base_config
from lra_jax.attention import maclaurin


def get_config(arg: str = "exp"):
  dot_kernel, protocol = maclaurin.split_config_argument(arg, base_config.PROTOCOLS)
  config = base_config.get_config("text", "rmfa", protocol or "official")
  config.model.attention_kwargs.dot_kernel = dot_kernel
  return config
