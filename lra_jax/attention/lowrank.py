"""Low-rank attention: Linformer.

Wang et al., "Linformer: Self-Attention with Linear Complexity" (2020), eq. 7:
with a projection E of shape [k, n] per head, shared by keys and values (the
paper's "key-value sharing", §4),
  head = softmax(Q (E K)^T / sqrt(d)) (E V),
an [n, k] attention matrix instead of [n, n], so the cost is O(n k d).
Reference code: `attention_linformer.LinformerAttention` of pkuzengqi/Skyformer
(skyformer_skeinformer.md §1.5) and of the Nyströmformer repo
(nystromformer_and_peers.md §3): E is [heads, k, length], initialised
N(0, 0.02^2), and padded keys and values are zeroed before the projection.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lra_jax.attention import checks, chunking, registry
from lra_jax.attention.layout import heads_major, length_major
from lra_jax.attention.softmax import softmax_readout

# Standard deviation of the projection's initialisation in both reference repos.
PROJECTION_STDDEV = 0.02
# E is [heads or 1, k, length]: fans are the length (in) and k (out).
PROJECTION_INITS = {
    "normal": nn.initializers.normal(PROJECTION_STDDEV),
    "xavier_uniform": nn.initializers.xavier_uniform(in_axis=-1, out_axis=-2, batch_axis=(0,)),
}


def linformer_projection(rng: jax.Array, heads: int, linformer_k: int, length: int) -> jax.Array:
  """Draws a Linformer projection E ~ N(0, 0.02^2), the reference initialisation.

  Args:
    rng: PRNG key of the draw.
    heads: number of heads (one projection per head).
    linformer_k: projected length k.
    length: sequence length n the projection applies to.

  Returns:
    [heads, linformer_k, length] float32.
  """
  checks.check_positive_int("linformer_k", linformer_k)
  return PROJECTION_STDDEV * jax.random.normal(rng, (heads, linformer_k, length), jnp.float32)


def linformer_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                        rng: jax.Array | None = None, projection: jax.Array | None = None,
                        linformer_k: int | None = None,
                        padded_positions_projected: bool = False,
                        chunk_size: int | None = chunking.DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Linformer attention (Wang et al. 2020, eq. 7 with key-value sharing), O(n k d).

  With M the padding mask, K' = E (M * K) and V' = E (M * V) per head, and
  out = softmax(Q K'^T / sqrt(d)) V'. Padded keys and values are zeroed before
  the projection, so they contribute nothing to K' and V' whatever they hold;
  the k projected rows are all attended to (there is nothing to mask in them).
  Real outputs still depend on the padded length through the columns of E
  that meet the zeroed positions (as in the reference): E is tied to n.

  Args:
    query: [batch, length, heads, head_dim].
    key: [batch, length, heads, head_dim].
    value: [batch, length, heads, head_dim].
    mask: [batch, length] bool, True for real tokens.
    rng: PRNG key of a fresh projection E (`linformer_projection`), used only
      when `projection` is None. The linen module passes its own E instead.
    projection: [heads, k, length] projection E shared by keys and values, or
      [1, k, length] for one E shared by every head too (the official LRA
      code); None draws a per-head one from `rng`.
    linformer_k: projected length k. With `projection` None it sets the drawn
      E's k (None means 128, the reference default); with a projection it must
      equal projection.shape[1] or be None.
    padded_positions_projected: the official LRA quirk: keys and values at
      padded positions enter the projection (no padding mask at all), so real
      outputs depend on whatever the padding holds.
    chunk_size: queries per block of the softmax over the k projected keys
      (`chunking`: the [length, k] logits never exist whole; None: no blocks).

  Returns:
    [batch, length, heads, head_dim] in `value.dtype`. The projections, logits
    and softmax are computed in float32 whatever the input dtype.

  Raises:
    ValueError: a missing key or projection, a projection of the wrong shape,
      or a non-positive linformer_k.
  """
  batch, length, heads, head_dim = key.shape
  if projection is None:
    if rng is None:
      raise ValueError("linformer_attention needs a projection E or a PRNG key to draw one: pass "
                       "projection=[heads, k, length] or rng=jax.random.key(...).")
    projection = linformer_projection(rng, heads, 128 if linformer_k is None else linformer_k,
                                      length)
  if projection.ndim != 3 or projection.shape[0] not in (1, heads) or projection.shape[2] != length:
    raise ValueError(f"The Linformer projection must be [heads, k, length] = [{heads}, k, {length}] "
                     f"(or [1, k, {length}] shared by the heads), got shape {projection.shape}.")
  if linformer_k is not None and projection.shape[1] != linformer_k:
    raise ValueError(f"linformer_k={linformer_k} disagrees with the projection's k = "
                     f"{projection.shape[1]}; pass linformer_k=None with an explicit projection.")
  if value.shape != key.shape or mask.shape != (batch, length) or query.shape[0] != batch:
    raise ValueError(f"Expected key and value [batch, length, heads, head_dim] and mask "
                     f"[batch, length]; got key {key.shape}, value {value.shape}, mask {mask.shape}.")

  out_dtype = value.dtype
  projection = projection.astype(jnp.float32)
  if padded_positions_projected:
    key, value = key.astype(jnp.float32), value.astype(jnp.float32)
  else:
    real = mask[:, :, None, None]
    key = jnp.where(real, key.astype(jnp.float32), 0.0)
    value = jnp.where(real, value.astype(jnp.float32), 0.0)
  # Keys and values side by side, batch folded into the features: E's
  # products (and E's gradient) are then plain matmuls batched over heads.
  features = jnp.concatenate([key, value], axis=-1)  # [batch, length, heads, 2 head_dim]
  features = jnp.transpose(features, (2, 1, 0, 3)).reshape(heads, length, batch * 2 * head_dim)
  shared = projection.shape[0] == 1  # One E for every head.
  if shared:
    features = jnp.swapaxes(features, 0, 1).reshape(1, length, heads * batch * 2 * head_dim)
  projected = jnp.einsum("hkn,hnf->hkf", projection, features, preferred_element_type=jnp.float32)
  if shared:
    projected = projected.reshape(-1, heads, batch, 2, head_dim).transpose(3, 2, 1, 0, 4)
  else:
    projected = projected.reshape(heads, -1, batch, 2, head_dim).transpose(3, 2, 0, 1, 4)
  projected_key, projected_value = projected[0], projected[1]  # [batch, heads, k, head_dim]

  def attend(query):  # A block of queries against the k projected keys.
    query = heads_major(query).astype(jnp.float32) / jnp.sqrt(jnp.float32(head_dim))
    return length_major(softmax_readout(query, projected_key, projected_value))

  return chunking.map_length_chunks(attend, (query,), chunk_size).astype(out_dtype)


class LinformerAttention(nn.Module):
  """Module around `linformer_attention` with its projection E as a variable.

  E has shape [heads, linformer_k, length], where length is the runtime length
  seen at initialisation (the reference's max_seq_len); calling the module
  later with another length is an error. One E per layer (per module),
  shared by keys and values, initialised N(0, 0.02^2).

  Reference quirks and how to reproduce them:
    * Skyformer's copy never trains E (it is moved to the device with `.to()`
      after being made a Parameter, so it is neither a parameter nor a buffer):
      a fixed random projection drawn once at construction.
      `trainable_projection=False` keeps E in the non-trainable 'constants'
      collection, drawn at init from the 'attention' RNG stream (default True:
      E is the learned param 'projection', as in the paper).
    * No attention dropout: `dropout_rate` is accepted for the registry
      protocol and ignored (neither reference applies dropout here).

  The official LRA Linformer (lra_official_jax.md §7.5) is the setting
  `linformer_k=16, shared_across_heads=True, projection_init='xavier_uniform'`:
  one E for keys, values and every head, xavier-uniform initialised. Its
  padding bug, padded keys and values projected with the real ones, is
  `padded_positions_projected=True` (default False: zeroed first).

  Difference not reproduced: the Nyströmformer repo's Linformer stores E as a
  class attribute, so a single E is shared by every layer (layer-wise
  sharing, the paper's most aggressive sharing variant); here every layer has
  its own E (headwise sharing of K and V only, as in Skyformer).

  Attributes:
    dropout_rate: ignored (see above).
    linformer_k: projected length k (reference: 128).
    trainable_projection: E learned (True, the paper) or fixed at its random
      initialisation (False, the Skyformer reference).
    shared_across_heads: one E [1, k, length] for every head (official LRA)
      instead of one per head (the seed repos).
    projection_init: 'normal' (N(0, 0.02^2), the seed repos) or
      'xavier_uniform' (official LRA).
    padded_positions_projected: the official LRA padding quirk (see above).
    chunk_size: queries per block (a speed setting: the outputs agree to
      float rounding; None computes the whole length at once).
  """

  dropout_rate: float = 0.0
  linformer_k: int = 128
  trainable_projection: bool = True
  shared_across_heads: bool = False
  projection_init: str = "normal"
  padded_positions_projected: bool = False
  chunk_size: int | None = chunking.DEFAULT_CHUNK_SIZE

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    del deterministic
    checks.check_positive_int("linformer_k", self.linformer_k)
    if self.projection_init not in PROJECTION_INITS:
      raise ValueError(f"Unknown Linformer projection_init {self.projection_init!r}; valid: "
                       f"{', '.join(PROJECTION_INITS)}.")
    heads, length = key.shape[2], key.shape[1]
    shape = (1 if self.shared_across_heads else heads, self.linformer_k, length)
    collection = "params" if self.trainable_projection else registry.CONSTANTS
    if self.has_variable(collection, "projection"):
      stored = self.get_variable(collection, "projection").shape
      if tuple(stored) != shape:
        raise ValueError(
            f"Linformer's projection E was created with shape {tuple(stored)} = [heads, k, length] "
            f"(length is fixed at initialisation) but the inputs need {shape}: the runtime length "
            f"{length} differs from the length at initialisation {stored[2]}. Pad or crop the "
            f"inputs to {stored[2]} tokens, or initialise the model at length {length}.")
    initializer = PROJECTION_INITS[self.projection_init]
    if self.trainable_projection:
      projection = self.param("projection", initializer, shape, jnp.float32)
    else:
      projection = self.variable(
          registry.CONSTANTS, "projection",
          lambda: initializer(self.make_rng(registry.ATTENTION_RNG), shape, jnp.float32)).value
    return linformer_attention(query, key, value, mask, projection=projection,
                               padded_positions_projected=self.padded_positions_projected,
                               chunk_size=self.chunk_size)


# Contract-test inputs have length 24: k = 8 is a genuine reduction.
registry.register("linformer", linformer_attention, LinformerAttention,
                  small_input_kwargs=dict(linformer_k=8))
