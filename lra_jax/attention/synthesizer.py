"""Synthesizer attention: learned ("synthetic") attention logits, optionally mixed with q.k.

Tay et al., "Synthesizer: Rethinking Self-Attention for Transformer Models"
(ICML 2021). The attention logits of each head are synthesised instead
of (or besides) computed from token pairs:
* random ("Random Synthesizer"): a learned table R [heads, L, L],
  Y = softmax(R) V, input-independent;
* factorized_random ("Factorized Random"): R = R1 R2 with R1 [heads, L, k], R2 [heads, k, L];
* dense ("Dense Synthesizer"): a per-token two-layer MLP
  B_i = W2 relu(W1 x_i + b1) + b2 in R^L gives row i of the logits;
* mixtures: the logits of several synthesizers are summed, and with
  `ignore_dot_product=False` the dot-product logits q.k / sqrt(d) are added
  ("Random + Vanilla", the official LRA default and one of the paper's mixtures).
Here the module only receives the projected q, k, v [b, n, h, d], so the
dense MLP takes each head's query vector q_i as its input x_i (the paper's
X is the layer input; q_i is a learned linear map of it, so the family is the
same up to that extra linear layer, and each head gets its own MLP).

Official LRA JAX version: `synthesizer/synthesizer_attention.py`
(lra_official_jax.md §7.10): mode 'random' with ignore_dot_product False, the
only setting its configs reach (§3.3); quirks are options of
`SynthesizerAttention`.

Cost: the random and dense logits are [heads, n, n] (batch-independent for
random): O(n^2 (d + 1)) time and O(n^2) memory per head, like softmax
attention; the random table itself has heads x L^2 parameters (L = the table
length, e.g. 8 x 2001^2 = 32M per layer for ListOps). Synthesizer is not an
efficient-attention method; LRA includes it for comparison.
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from lra_jax.attention import checks, registry
from lra_jax.attention.layout import heads_major, length_major
from lra_jax.attention.softmax import dropout_rng as _dropout_rng
from lra_jax.attention.softmax import dropout_weights

# Finite rather than -inf (as in softmax.py): an all-masked row stays finite.
_MASK_VALUE = -1e10
SYNTHESIZER_MODES = ("random", "factorized_random", "dense", "dense+random",
                     "dense+factorized_random")
# Parameter names of each synthesizer component (the official ones for the tables).
_COMPONENT_PARAMETERS = {
    "random": ("random",),
    "factorized_random": ("random1", "random2"),
    "dense": ("dense1_kernel", "dense1_bias", "dense2_kernel", "dense2_bias"),
}


def synthesizer_components(synthesizer_mode: str) -> tuple[str, ...]:
  """The synthesizers a mode sums, e.g. 'dense+random' -> ('dense', 'random')."""
  if synthesizer_mode not in SYNTHESIZER_MODES:
    raise ValueError(f"Unknown synthesizer_mode {synthesizer_mode!r}; valid: "
                     f"{', '.join(SYNTHESIZER_MODES)}.")
  return tuple(synthesizer_mode.split("+"))


def parameter_shapes(synthesizer_mode: str, heads: int, head_dim: int, max_length: int,
                     factorized_rank: int = 32) -> dict[str, tuple[int, ...]]:
  """Shapes of the learned arrays of `synthesizer_mode` (names as `synthesizer_parameters`)."""
  checks.check_positive_int("max_length", max_length)
  checks.check_positive_int("factorized_rank", factorized_rank)
  shapes = {
      "random": (heads, max_length, max_length),
      "random1": (heads, max_length, factorized_rank),
      "random2": (heads, factorized_rank, max_length),
      "dense1_kernel": (heads, head_dim, head_dim),
      "dense1_bias": (heads, head_dim),
      "dense2_kernel": (heads, head_dim, max_length),
      "dense2_bias": (heads, max_length),
  }
  return {name: shapes[name] for component in synthesizer_components(synthesizer_mode)
          for name in _COMPONENT_PARAMETERS[component]}


def parameter_initializer(name: str):
  """Initializer of a synthesizer array.

  Tables: xavier uniform over the whole [heads, L, L] (or [heads, L, k],
  [heads, k, L]) shape, heads counted in the fans as the official flax
  initializer does. Dense kernels: xavier uniform per head. Biases: zero.
  """
  if name.endswith("_bias"):
    return nn.initializers.zeros
  if name.startswith("dense"):
    return nn.initializers.xavier_uniform(batch_axis=(0,))
  return nn.initializers.xavier_uniform()


def synthesizer_parameters(rng: jax.Array, synthesizer_mode: str, heads: int, head_dim: int,
                           max_length: int, factorized_rank: int = 32) -> dict[str, jax.Array]:
  """Fresh synthesizer arrays (`parameter_shapes`), one key per array split from `rng`.

  Args:
    rng: PRNG key; split into one key per array, in sorted-name order.
    synthesizer_mode: one of SYNTHESIZER_MODES.
    heads: number of heads.
    head_dim: size of each head's query vector (the dense MLP's input).
    max_length: table length L (longest supported sequence).
    factorized_rank: k of the factorized tables.

  Returns:
    name -> float32 array.
  """
  shapes = parameter_shapes(synthesizer_mode, heads, head_dim, max_length, factorized_rank)
  keys = jax.random.split(rng, len(shapes))
  return {name: parameter_initializer(name)(key, shapes[name], jnp.float32)
          for key, name in zip(keys, sorted(shapes))}


def _table_length(shapes: Mapping[str, tuple[int, ...]]) -> int:
  """L, read from the shapes of the synthesizer arrays."""
  for name in ("random", "random2", "dense2_kernel"):
    if name in shapes:
      return shapes[name][-1]
  raise ValueError(f"No synthesizer table among the parameters {sorted(shapes)}.")


def synthetic_logits(params: Mapping[str, jax.Array], query: jax.Array, *,
                     synthesizer_mode: str = "random",
                     dense_scrambled_reshape: bool = False) -> jax.Array:
  """The summed synthetic logits of `synthesizer_mode`, sliced to the call length n.

  Args:
    params: the arrays of `synthesizer_parameters` (tables of length L >= n).
    query: [batch, n, heads, head_dim]; the dense MLP's input (only its
      length is used otherwise).
    synthesizer_mode: one of SYNTHESIZER_MODES.
    dense_scrambled_reshape: official quirk: the dense logits [b, n, h, L] are
      reshaped, not transposed, to [b, h, n, L].

  Returns:
    [batch or 1, heads, n, n] float32 (batch 1 without a dense component).

  Raises:
    ValueError: n > L, a missing array or an unknown mode.
  """
  components = synthesizer_components(synthesizer_mode)
  batch, length, heads, _ = query.shape
  table_length = _table_length({name: array.shape for name, array in params.items()})
  if length > table_length:
    raise ValueError(
        f"The sequence has {length} tokens but the synthesizer's tables have length "
        f"{table_length} (max_length, by default the length at initialisation): the random/dense "
        f"synthesizer cannot attend beyond it. Initialise the model at length >= {length} or set "
        f"max_length >= {length}.")
  missing = [name for component in components for name in _COMPONENT_PARAMETERS[component]
             if name not in params]
  if missing:
    raise ValueError(f"synthesizer_mode {synthesizer_mode!r} needs the arrays {missing}.")
  p = {name: array.astype(jnp.float32) for name, array in params.items()}
  logits = jnp.zeros((1, heads, length, length), jnp.float32)
  if "random" in components:
    logits = logits + p["random"][None, :, :length, :length]
  if "factorized_random" in components:
    logits = logits + jnp.einsum("hlk,hkm->hlm", p["random1"][:, :length], p["random2"][:, :, :length],
                                 preferred_element_type=jnp.float32)[None]
  if "dense" in components:
    hidden = jnp.einsum("bnhd,hde->bnhe", query.astype(jnp.float32), p["dense1_kernel"],
                        preferred_element_type=jnp.float32) + p["dense1_bias"]
    dense = jnp.einsum("bnhe,hel->bnhl", jax.nn.relu(hidden), p["dense2_kernel"],
                       preferred_element_type=jnp.float32) + p["dense2_bias"]
    if dense_scrambled_reshape:
      dense = dense.reshape(batch, heads, length, table_length)
    else:
      dense = jnp.transpose(dense, (0, 2, 1, 3))
    logits = logits + dense[..., :length]
  return logits


def synthesizer_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                          rng: jax.Array | None = None, params: Mapping[str, jax.Array] | None = None,
                          synthesizer_mode: str = "random", ignore_dot_product: bool = False,
                          factorized_rank: int = 32, max_length: int | None = None,
                          padded_keys_attended: bool = False, dense_scrambled_reshape: bool = False,
                          dropout_rate: float = 0.0,
                          dropout_rng: jax.Array | None = None) -> jax.Array:
  """Synthesizer attention (Tay et al. 2021), O(n^2) per head.

  logits = S + (q k^T / sqrt(d) unless ignore_dot_product), S the summed
  synthetic logits (`synthetic_logits`); padded keys masked (-1e10) unless
  padded_keys_attended; out = softmax(logits) V.

  Args:
    query: [batch, n, heads, head_dim].
    key: [batch, n, heads, head_dim] (unused with ignore_dot_product).
    value: [batch, n, heads, head_dim].
    mask: [batch, n] bool, True for real tokens; queries are not masked
      (outputs at padded positions are unused).
    rng: PRNG key of fresh synthesizer arrays
      (`synthesizer_parameters(rng, synthesizer_mode, heads, head_dim,
      max_length or n, factorized_rank)`), used only when `params` is None
      (the module passes its learned arrays).
    params: the synthesizer arrays; None draws them from `rng`.
    synthesizer_mode: one of SYNTHESIZER_MODES.
    ignore_dot_product: synthetic logits only (pure synthesizer).
    factorized_rank: k of drawn factorized tables.
    max_length: length of drawn tables; None means n.
    padded_keys_attended: official quirk (with ignore_dot_product), see
      `SynthesizerAttention`.
    dense_scrambled_reshape: official quirk, see `synthetic_logits`.
    dropout_rate: dropout on the attention weights.
    dropout_rng: PRNG key of the dropout mask; None means no dropout.

  Returns:
    [batch, n, heads, head_dim] in `value.dtype`; logits and softmax in float32.

  Raises:
    ValueError: bad hyper-parameters, tables shorter than n, or neither
      params nor rng.
  """
  batch, length, heads, head_dim = query.shape
  if key.shape != query.shape or value.shape[:3] != query.shape[:3] or mask.shape != (batch, length):
    raise ValueError(
        f"Synthesizer is self-attention: query and key must be [batch, length, heads, head_dim], "
        f"value [batch, length, heads, value_dim] and mask [batch, length]; got query "
        f"{query.shape}, key {key.shape}, value {value.shape}, mask {mask.shape}.")
  synthesizer_components(synthesizer_mode)
  if params is None:
    if rng is None:
      raise ValueError("synthesizer_attention needs its learned arrays or a PRNG key to draw "
                       "them: pass params=synthesizer_parameters(...) or rng=jax.random.key(...).")
    params = synthesizer_parameters(rng, synthesizer_mode, heads, head_dim,
                                    length if max_length is None else max_length, factorized_rank)
  logits = synthetic_logits(params, query, synthesizer_mode=synthesizer_mode,
                            dense_scrambled_reshape=dense_scrambled_reshape)
  if not ignore_dot_product:
    # Head-major layout: XLA:CPU's fast matmul needs the batch dims leading.
    dots = jnp.einsum("bhqd,bhkd->bhqk", heads_major(query.astype(jnp.float32)),
                      heads_major(key.astype(jnp.float32)), preferred_element_type=jnp.float32)
    logits = logits + dots / jnp.sqrt(jnp.float32(head_dim))
  if not padded_keys_attended:
    logits = jnp.where(mask[:, None, None, :], logits, _MASK_VALUE)
  weights = jax.nn.softmax(logits, axis=-1)
  weights = dropout_weights(weights, dropout_rate, dropout_rng)
  out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(value.dtype), heads_major(value),
                   preferred_element_type=jnp.float32)
  return length_major(out).astype(value.dtype)


class SynthesizerAttention(nn.Module):
  """Module around `synthesizer_attention` with the synthetic tables as parameters.

  The learned arrays (`parameter_shapes`: 'random' [heads, L, L];
  'random1' [heads, L, k] and 'random2' [heads, k, L]; 'dense1_kernel'
  [heads, d, d], 'dense1_bias', 'dense2_kernel' [heads, d, L], 'dense2_bias')
  are created with L = max_length, or, when it is None, the sequence length
  seen at initialisation (the official max_len: the padded data length, +1
  with a CLS token). Calls with shorter sequences use the top-left slice of
  the tables; longer ones are a ValueError.

  Reference quirks (official LRA JAX code, §7.10) and how to reproduce them:
    * The official configs all run mode 'random' with the dot product
      (the Text config's factorized/ignore settings are never read): the
      defaults here.
    * With ignore_dot_product=True the official skips the padding mask, so
      padded keys get attention weight: `padded_keys_attended=True`.
    * Dense mode: the [b, n, h, L] MLP output is reshaped (not transposed) to
      [b, h, n, L], mixing tokens and heads: `dense_scrambled_reshape=True`.
  Differences not reproduced: with ignore_dot_product the official has no
  query/key projections (the dense MLP reads the layer input, the "key" is
  the value projection and unused); here the multi-head layer's q/k
  projections still exist (q feeds the dense MLP; k is then unused), so the
  parameter count differs by those projections. The official dense MLP's
  second layer is shared by the heads and has no biases (the LRA block
  passes bias=False); here every head has its own MLP with biases, as the
  paper writes F(X_i) = W2 relu(W1 X_i + b1) + b2. Attention dropout as the
  official (independent per weight).

  Attributes:
    dropout_rate: attention-weight dropout, active when not deterministic.
    synthesizer_mode: one of SYNTHESIZER_MODES (official: 'random').
    ignore_dot_product: drop q.k from the logits (official default False).
    factorized_rank: k of 'factorized_random' (official: 32).
    max_length: table length L; None means the length at initialisation.
    padded_keys_attended: no padding mask (the official, when
      ignore_dot_product is True).
    dense_scrambled_reshape: the official dense-mode reshape.
  """

  dropout_rate: float = 0.0
  synthesizer_mode: str = "random"
  ignore_dot_product: bool = False
  factorized_rank: int = 32
  max_length: int | None = None
  padded_keys_attended: bool = False
  dense_scrambled_reshape: bool = False

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    components = synthesizer_components(self.synthesizer_mode)
    _, length, heads, head_dim = query.shape
    names = [name for component in components for name in _COMPONENT_PARAMETERS[component]]
    stored = {name: tuple(self.get_variable("params", name).shape) for name in names
              if self.has_variable("params", name)}
    if self.max_length is not None:
      table_length = self.max_length
    elif stored:
      table_length = _table_length(stored)
    else:
      table_length = length
    shapes = parameter_shapes(self.synthesizer_mode, heads, head_dim, table_length,
                              self.factorized_rank)
    for name, shape in stored.items():
      if shape != shapes[name]:
        raise ValueError(f"Synthesizer parameter {name!r} has shape {shape} but this module needs "
                         f"{shapes[name]} (heads, head_dim, max_length or factorized_rank "
                         f"changed): re-initialise the model.")
    params = {name: self.param(name, parameter_initializer(name), shape, jnp.float32)
              for name, shape in shapes.items()}
    return synthesizer_attention(
        query, key, value, mask, params=params, synthesizer_mode=self.synthesizer_mode,
        ignore_dot_product=self.ignore_dot_product,
        padded_keys_attended=self.padded_keys_attended,
        dense_scrambled_reshape=self.dense_scrambled_reshape, dropout_rate=self.dropout_rate,
        dropout_rng=_dropout_rng(self, self.dropout_rate, deterministic))


registry.register("synthesizer", synthesizer_attention, SynthesizerAttention)
