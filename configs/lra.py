"""Any task x attention method x protocol, without a file per combination.

    python -m lra_jax.train --config=configs/lra.py:listops,softmax --workdir=/tmp/lra
    python -m lra_jax.train --config=configs/lra.py:text,softmax,pytorch_lra --workdir=/tmp/lra

Argument: TASK,ATTENTION[,PROTOCOL]; tasks listops, text, retrieval, image,
pathfinder; ATTENTION any name in lra_jax.attention.names(); PROTOCOL
`official` (default) or `pytorch_lra` (see lra_jax/base_config.py).
"""

from lra_jax import base_config, errors


def get_config(arg: str = "listops,softmax,official"):
  parts = [part.strip() for part in arg.split(",")]
  if len(parts) not in (2, 3):
    raise errors.ConfigError(
        f"configs/lra.py takes TASK,ATTENTION[,PROTOCOL], e.g. "
        f"--config=configs/lra.py:listops,softmax,official; got {arg!r}.")
  return base_config.get_config(*parts)
