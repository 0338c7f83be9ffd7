"""lra_jax: efficient-attention research on the Long Range Arena, in JAX/Flax.

Subpackages: `attention` (the maths and its registry), `models` (the encoder),
`data` (tf.data pipelines). Training lives in `trainer`; `train` is the
command-line entry point.
"""

__version__ = "0.1.0"
