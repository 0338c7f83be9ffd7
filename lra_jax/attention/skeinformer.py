"""Skeinformer (sketching-based attention) and the ablations its repo exposes.

Chen et al., "Sketching as a Tool for Understanding and Accelerating
Self-attention for Long Sequences" (NAACL 2022; arXiv 2112.05359), Algorithm 1:
the softmax attention output softmax(Q K^T / sqrt(p)) V is estimated from d
columns of the attention matrix, sampled with probabilities proportional to
(estimated column norm) x (value row norm) (paper eq. 5, Drineas et al. 2006),
with the un-sampled columns filled by a geometric mean and every row
normalised adaptively (paper eq. 6). Reference code
`attention_skeinformer.py` of pkuzengqi/Skeinformer, specified in
skyformer_skeinformer.md §1.10-1.11 (the § numbers below refer to it).

Registered names (the repo's `--attn` names) and what each computes, with
l_ij = q_i.k_j / sqrt(p), m_b real tokens in sequence b, d the sample size and
j'_1..j'_d the sampled columns:

* `skeinformer`: pilot rows + importance sampling + geometric-mean fill +
  adaptive row normalisation + the pilot rows replaced by their exact softmax
  outputs (Algorithm 1).
* `skein_nopilot`: as `skeinformer` without the pilot-row replacement.
* `skein_uniform`: columns uniform over the real tokens (no pilot), adaptive
  row normalisation, no replacement.
* `skein_simplenorm`: importance sampling, then softmax over the d sampled
  columns only (Informer-style normalisation), no replacement.
* `skein_nonorm`: importance sampling, then sum_t exp(l_ij'_t) v_j'_t divided
  by the exact softmax denominator sum_j exp(l_ij) over all real keys (O(n^2)
  time, like the reference), no replacement.
* `vmean`: the mean of V over the real tokens for every row (deterministic).

All but `vmean` share `skein_attention` (one core with switches); the
per-variant functions and modules are thin wrappers around it. The sampled
positions are public (`skein_draws`) so tests can recompute the estimator
independently from the same draws.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lra_jax.attention import chunking, registry
from lra_jax.attention.kernelized import kernel_scale

# Finite rather than -inf (as in softmax.py): exponentials of masked entries
# are exactly 0 and never inf - inf.
_MASK_VALUE = -1e10
# Importance probabilities below this are treated as this (log stays finite),
# so a real column with zero probability is still preferred to a padded one.
_MIN_PROBABILITY = 1e-30

SAMPLINGS = ("importance", "uniform")
NORMALISATIONS = ("adaptive", "simple", "exact")


class SkeinDraws(NamedTuple):
  """The random positions behind one Skeinformer-family call.

  S = `skein_num_samples(length, nb_features)` is the static number of slots;
  slot t of sequence b is used iff t < sample_size[b] (later slots are drawn
  but masked out, so shapes never depend on the data).

  Attributes:
    pilot: [batch, S] int32 positions of the pilot query rows (uniform with
      replacement over the real tokens; one uniform vector shared by the
      batch, indexed by each sequence's real length), or None when the
      variant has no pilot (`sampling='uniform'`).
    columns: [batch, heads, S] int32 sampled key positions, distinct within a
      (batch, head), in the order of the without-replacement draw (so the
      first sample_size[b] are a sample of that size); never padded
      positions unless the sequence has no real token.
    sample_size: [batch] int32 effective sample size d_b.
  """

  pilot: jax.Array | None
  columns: jax.Array
  sample_size: jax.Array


def skein_num_samples(length: int, nb_features: int) -> int:
  """Static number of sample slots: min(nb_features, length - 1), at least 1.

  Upper bound of every effective sample size min(nb_features, m_b - 1) for
  inputs of this padded length, so one compiled program serves every batch.
  """
  return max(1, min(nb_features, length - 1))


def skein_sample_sizes(mask: jax.Array, nb_features: int,
                       sample_size_from_batch: bool = False) -> jax.Array:
  """Effective sample sizes d_b (§1.10 "Effective sample size").

  Args:
    mask: [batch, length] bool, True for real tokens.
    nb_features: the requested number of sampled columns.
    sample_size_from_batch: False (default): d_b = min(nb_features, m_b - 1)
      per sequence, so a sequence's result does not depend on the rest of the
      batch. True (the reference): d = min(nb_features, min_b m_b - 1) shared
      by the batch (sequences without real tokens are left out of the min,
      where the reference would fail).

  Returns:
    [batch] int32 sizes, clipped to [1, skein_num_samples(length, nb_features)]
    (the reference would get 0 for a sequence of one real token and fail).
  """
  length = mask.shape[1]
  real_length = jnp.sum(mask, axis=-1).astype(jnp.int32)
  if sample_size_from_batch:
    shortest = jnp.min(jnp.where(real_length > 0, real_length, length))
    size = jnp.broadcast_to(jnp.minimum(nb_features, shortest - 1), real_length.shape)
  else:
    size = jnp.minimum(nb_features, real_length - 1)
  return jnp.clip(size, 1, skein_num_samples(length, nb_features)).astype(jnp.int32)


def skein_pilot_indices(rng: jax.Array, mask: jax.Array, num_samples: int) -> jax.Array:
  """Pilot query rows: uniform with replacement over each sequence's real tokens.

  One vector u ~ U[0, 1)^num_samples is drawn from `rng` and shared by the
  batch and the heads (as the reference, §1.10 "Pilot sampling"); slot t of
  sequence b is its floor(u_t m_b)-th real token (for right-padded masks,
  position floor(u_t m_b)).

  Args:
    rng: PRNG key of the uniform draw.
    mask: [batch, length] bool, True for real tokens.
    num_samples: number of slots S.

  Returns:
    [batch, num_samples] int32 positions (row 0 for a sequence without real
    tokens).
  """
  uniform = jax.random.uniform(rng, (num_samples,), jnp.float32)
  real_length = jnp.sum(mask, axis=-1).astype(jnp.int32)[:, None]
  rank = jnp.floor(uniform[None, :] * real_length.astype(jnp.float32)).astype(jnp.int32)
  # u m_b can round up to m_b in float32.
  rank = jnp.clip(rank, 0, jnp.maximum(real_length - 1, 0))
  real_first = jnp.argsort(jnp.logical_not(mask).astype(jnp.int32), axis=-1, stable=True)
  return jnp.take_along_axis(real_first, rank, axis=-1).astype(jnp.int32)


def skein_column_indices(rng: jax.Array, probabilities: jax.Array, mask: jax.Array,
                         num_samples: int) -> jax.Array:
  """Columns drawn without replacement, independently for every (batch, head).

  Gumbel-top-k (Vieira 2014; Kool et al. 2019): the indices of the
  `num_samples` largest log w_j + G_j, G_j iid Gumbel, in decreasing order.
  Any prefix of length k is distributed exactly as k successive draws
  without replacement with probabilities proportional to w (the reference's
  `torch.multinomial(w, d, replacement=False)`, §1.10). Padded positions are
  never drawn while real ones remain; real columns with w_j = 0 (e.g. a zero
  value row) come after every positive one, in uniformly random order (where
  the reference would fail for lack of positive weights).

  Args:
    rng: PRNG key of the Gumbel noise, [batch, heads, length] draws.
    probabilities: [batch, heads, length] non-negative weights w (need not be
      normalised).
    mask: [batch, length] bool, True for real tokens.
    num_samples: number of columns drawn (static).

  Returns:
    [batch, heads, num_samples] int32 positions.
  """
  log_weight = jnp.log(jnp.maximum(probabilities.astype(jnp.float32), _MIN_PROBABILITY))
  perturbed = log_weight + jax.random.gumbel(rng, probabilities.shape, jnp.float32)
  perturbed = jnp.where(mask[:, None, :], perturbed, -jnp.inf)
  _, indices = jax.lax.top_k(perturbed, num_samples)
  return indices.astype(jnp.int32)


def _check_inputs(query, key, value, mask, nb_features):
  if not query.shape == key.shape == value.shape or mask.shape != query.shape[:2]:
    raise ValueError(
        f"Skeinformer methods are self-attention: query, key and value must share one shape "
        f"[batch, length, heads, head_dim] and mask be [batch, length]; got query {query.shape}, "
        f"key {key.shape}, value {value.shape}, mask {mask.shape}.")
  if nb_features < 1:
    raise ValueError(f"nb_features must be a positive number of sampled columns, got "
                     f"{nb_features}; the reference uses 256.")


def _require_rng(rng, name):
  if rng is None:
    raise ValueError(f"{name} samples pilot rows and columns and needs a PRNG key: pass "
                     f"rng=jax.random.key(...) (the module draws it from the "
                     f"{registry.ATTENTION_RNG!r} RNG stream).")


def _scaled_and_zero_padded(query, key, value, mask):
  """float32 q, k scaled by p^(-1/4) (so q.k = l) and v, all zero at padded positions."""
  real = mask[:, :, None, None]
  scale = kernel_scale(query.shape[-1])
  return (jnp.where(real, query.astype(jnp.float32) * scale, 0.0),
          jnp.where(real, key.astype(jnp.float32) * scale, 0.0),
          jnp.where(real, value.astype(jnp.float32), 0.0))


def _with_ones(x):
  """x [..., d] -> [..., d + 1] with a last coordinate 1 (pairs with `_with_bias`)."""
  return jnp.concatenate([x, jnp.ones(x.shape[:-1] + (1,), x.dtype)], axis=-1)


def _with_bias(x, keep):
  """x [..., d] -> [..., d + 1] with a last coordinate 0 where `keep` [...], else _MASK_VALUE.

  A dot product with `_with_ones(q)` then yields masked logits directly: one
  [n, S] array fewer to write than masking the product afterwards (writing
  large arrays, not arithmetic, dominates these methods on CPU).
  """
  bias = jnp.where(keep, 0.0, _MASK_VALUE).astype(x.dtype)
  return jnp.concatenate([x, jnp.broadcast_to(bias[..., None], x.shape[:-1] + (1,))], axis=-1)


class _Pilot(NamedTuple):
  """The pilot rows' exact softmax over the real keys, as the factors its blocks are made from.

  Row t's weights are exp(queries_t . [k_j, bias_j] - log_normaliser_t):
  made block by block over the keys (`chunking`), never as one
  [batch, heads, S, length] array.
  """

  queries: jax.Array  # [batch, S, heads, head_dim + 1], `_with_ones` of the pilot queries
  log_normaliser: jax.Array  # [batch, heads, S], logsumexp of each row over the real keys


def _pilot_logits(pilot_queries, key, mask):
  """Masked logits of the pilot rows against a block of keys: [batch, heads, S, c]."""
  return jnp.einsum("bthd,bkhd->bhtk", pilot_queries,
                    _with_bias(key, jnp.broadcast_to(mask[:, :, None], key.shape[:3])),
                    preferred_element_type=jnp.float32)


def _pilot_rows(query, key, mask, pilot_positions, chunk_size):
  """The pilot queries and their softmax normalisers (differentiable), the logsumexp in key blocks."""
  queries = _with_ones(jnp.take_along_axis(query, pilot_positions[:, :, None, None], axis=1))
  log_normaliser = chunking.reduce_length_chunks(
      lambda key, mask: jax.nn.logsumexp(_pilot_logits(queries, key, mask), axis=-1),
      (key, mask), chunk_size, combine=jnp.logaddexp)
  return _Pilot(queries, log_normaliser)


def _pilot_weights(pilot: _Pilot, key, mask):
  """The pilot rows' softmax weights over a block of keys: [batch, heads, S, c]."""
  return jnp.exp(_pilot_logits(pilot.queries, key, mask) - pilot.log_normaliser[..., None])


def _pilot_outputs(pilot: _Pilot, key, values, mask, chunk_size):
  """The pilot rows' exact softmax attention outputs: [batch, S, heads, head_dim]."""
  return chunking.reduce_length_chunks(
      lambda key, values, mask: jnp.einsum("bhtk,bkhd->bthd", _pilot_weights(pilot, key, mask),
                                           values, preferred_element_type=jnp.float32),
      (key, values, mask), chunk_size)


def _importance_probabilities(pilot: _Pilot, key, value, mask, sample_size, chunk_size):
  """w_j proportional to ||B_J[:, j]|| ||v_j|| (paper eq. 5), zero on padded j: [b, h, n]."""
  num_slots = pilot.queries.shape[1]
  used = (jnp.arange(num_slots)[None, :] < sample_size[:, None]).astype(jnp.float32)

  def scores(key, value, mask):  # a block of keys: [batch, c, heads]
    weights = _pilot_weights(pilot, key, mask)
    column_norm = jnp.sqrt(jnp.sum(weights ** 2 * used[:, None, :, None], axis=2))
    value_norm = jnp.sqrt(jnp.sum(value ** 2, axis=-1))  # [batch, c, heads]
    return jnp.where(mask[:, :, None], jnp.swapaxes(column_norm, 1, 2) * value_norm, 0.0)

  score = jnp.swapaxes(chunking.map_length_chunks(scores, (key, value, mask), chunk_size), 1, 2)
  total = jnp.sum(score, axis=-1, keepdims=True)
  return score / jnp.maximum(total, jnp.finfo(jnp.float32).tiny)


def _uniform_probabilities(mask, heads):
  real = mask.astype(jnp.float32)
  probabilities = real / jnp.maximum(jnp.sum(real, axis=-1, keepdims=True), 1.0)
  return jnp.broadcast_to(probabilities[:, None, :], (mask.shape[0], heads, mask.shape[1]))


def _draw(rng, query, key, value, mask, nb_features, sampling, sample_size_from_batch,
          chunk_size):
  """The draws and, with a pilot, the pilot rows' exact softmax (`_Pilot`, differentiable)."""
  num_samples = skein_num_samples(mask.shape[1], nb_features)
  sample_size = skein_sample_sizes(mask, nb_features, sample_size_from_batch)
  pilot_rng, column_rng = jax.random.split(rng)
  if sampling == "importance":
    pilot_positions = skein_pilot_indices(pilot_rng, mask, num_samples)
    pilot = _pilot_rows(query, key, mask, pilot_positions, chunk_size)
    # The sampling distribution is not differentiated through (the reference
    # draws under torch.no_grad()).
    probabilities = _importance_probabilities(
        jax.tree.map(jax.lax.stop_gradient, pilot), jax.lax.stop_gradient(key),
        jax.lax.stop_gradient(value), mask, sample_size, chunk_size)
  else:
    pilot_positions = pilot = None
    probabilities = _uniform_probabilities(mask, query.shape[2])
  columns = skein_column_indices(column_rng, probabilities, mask, num_samples)
  return SkeinDraws(pilot_positions, columns, sample_size), pilot


def _check_switches(sampling, normalisation, pilot_replacement):
  if sampling not in SAMPLINGS:
    raise ValueError(f"Unknown sampling {sampling!r}; valid: {', '.join(SAMPLINGS)}.")
  if normalisation not in NORMALISATIONS:
    raise ValueError(f"Unknown normalisation {normalisation!r}; valid: {', '.join(NORMALISATIONS)}.")
  if pilot_replacement and sampling != "importance":
    raise ValueError("pilot_replacement needs pilot rows, which only sampling='importance' draws.")


def skein_draws(rng: jax.Array, query: jax.Array, key: jax.Array, value: jax.Array,
                mask: jax.Array, *, nb_features: int = 256, sampling: str = "importance",
                sample_size_from_batch: bool = False) -> SkeinDraws:
  """The pilot rows and sampled columns that `skein_attention` draws from `rng`.

  Given the same key, inputs and options, `skein_attention` (and every
  per-variant function) uses exactly these draws: `rng` is split into
  (pilot key, column key); the pilot key draws `skein_pilot_indices`, the
  column key the Gumbel noise of `skein_column_indices` with the importance
  probabilities of paper eq. 5 (or uniform over real tokens).

  Args:
    rng: PRNG key of the call.
    query, key, value: [batch, length, heads, head_dim].
    mask: [batch, length] bool, True for real tokens.
    nb_features: requested sample size.
    sampling: 'importance' (pilot + eq. 5) or 'uniform'.
    sample_size_from_batch: see `skein_sample_sizes`.

  Returns:
    A `SkeinDraws`.
  """
  _check_inputs(query, key, value, mask, nb_features)
  _check_switches(sampling, "adaptive", False)
  draws, _ = _draw(rng, *_scaled_and_zero_padded(query, key, value, mask), mask, nb_features,
                   sampling, sample_size_from_batch, chunking.DEFAULT_CHUNK_SIZE)
  return draws


def skein_column_probabilities(query: jax.Array, key: jax.Array, value: jax.Array,
                               mask: jax.Array, pilot: jax.Array,
                               sample_size: jax.Array) -> jax.Array:
  """Importance probabilities of paper eq. 5 given the pilot rows.

  w_j = ||B_J[:, j]||_2 ||v_j||_2 / sum_j' (...), where B_J holds the exact
  softmax rows of the first sample_size[b] pilot queries (slots beyond it are
  unused) and padded j get 0.

  Args:
    query, key, value: [batch, length, heads, head_dim].
    mask: [batch, length] bool, True for real tokens.
    pilot: [batch, S] int32 pilot positions (`SkeinDraws.pilot`).
    sample_size: [batch] int32 (`SkeinDraws.sample_size`).

  Returns:
    [batch, heads, length] float32, each row summing to 1 (0 without real
    tokens or when every real value row is zero).
  """
  query, key, value = _scaled_and_zero_padded(query, key, value, mask)
  chunk_size = chunking.DEFAULT_CHUNK_SIZE
  return _importance_probabilities(_pilot_rows(query, key, mask, pilot, chunk_size), key, value,
                                   mask, sample_size, chunk_size)


def skein_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                    rng: jax.Array | None = None, nb_features: int = 256,
                    sampling: str = "importance", normalisation: str = "adaptive",
                    pilot_replacement: bool = True,
                    sample_size_from_batch: bool = False,
                    chunk_size: int | None = chunking.DEFAULT_CHUNK_SIZE) -> jax.Array:
  """The Skeinformer family's one estimator, O(n d p) (O(n^2) for 'exact').

  With l_ij = q_i.k_j / sqrt(p) over real keys, sample size d_b
  (`skein_sample_sizes`) and sampled columns j'_1..j'_d (`skein_draws`),
  a_it = exp(l_ij'_t):

  * normalisation 'adaptive' (paper eq. 6, with the unpadded length m_b):
    g_i = (prod_t a_it)^(1/d) fills the m_b - d un-sampled real columns,
    out_i = (sum_t a_it v_j'_t + g_i sum_{j real, not sampled} v_j)
            / (sum_t a_it + (m_b - d) g_i).
  * 'simple': out_i = sum_t softmax_t(l_ij'_t) v_j'_t.
  * 'exact': out_i = sum_t a_it v_j'_t / sum_{j real} exp(l_ij) (no
    re-weighting: the weights are the exact softmax probabilities of the
    sampled columns, summing to less than 1).
  * pilot_replacement: output rows at the pilot positions J_t are replaced by
    their exact softmax attention outputs (Algorithm 1's "pilot sampling
    reutilisation"); a row drawn twice is replaced once.

  Exponentials are taken after subtracting a per-row constant, which cancels
  in every ratio (the reference exponentiates raw logits). Padded keys and
  values never enter a real row; a sequence without real tokens gives zeros.

  Args:
    query: [batch, length, heads, head_dim].
    key: [batch, length, heads, head_dim].
    value: [batch, length, heads, head_dim].
    mask: [batch, length] bool, True for real tokens (one mask for queries and
      keys: this is self-attention).
    rng: PRNG key of every draw, required; split into the pilot key (one
      uniform vector of pilot rows shared by batch and heads) and the column
      key (Gumbel noise [batch, heads, length]), see `skein_draws`.
    nb_features: requested number of sampled columns (reference: 256); the
      effective d_b is min(nb_features, m_b - 1), at most
      `skein_num_samples(length, nb_features)` slots are computed.
    sampling: 'importance' (pilot rows + paper eq. 5) or 'uniform' (over the
      real tokens, no pilot).
    normalisation: 'adaptive', 'simple' or 'exact' (see above).
    pilot_replacement: replace the pilot rows by exact outputs (needs
      'importance').
    sample_size_from_batch: the reference's batch-shared d, see
      `skein_sample_sizes`.
    chunk_size: queries per block of the [length, S] logits (`chunking`;
      None: the whole length at once; the outputs agree to float rounding).

  Returns:
    [batch, length, heads, head_dim] in `value.dtype`; computed in float32.
  """
  _require_rng(rng, "skein_attention")
  _check_inputs(query, key, value, mask, nb_features)
  _check_switches(sampling, normalisation, pilot_replacement)
  query, key, values = _scaled_and_zero_padded(query, key, value, mask)
  draws, pilot = _draw(rng, query, key, values, mask, nb_features, sampling,
                       sample_size_from_batch, chunk_size)
  columns = draws.columns
  num_samples = columns.shape[-1]
  real_length = jnp.sum(mask, axis=-1)

  keys_by_head = jnp.transpose(key, (0, 2, 1, 3))  # [batch, heads, length, head_dim]
  values_by_head = jnp.transpose(values, (0, 2, 1, 3))
  sampled_keys = jnp.take_along_axis(keys_by_head, columns[..., None], axis=2)
  sampled_values = jnp.take_along_axis(values_by_head, columns[..., None], axis=2)
  sampled_real = jnp.take_along_axis(jnp.broadcast_to(mask[:, None, :], columns.shape[:2] +
                                                      mask.shape[1:]), columns, axis=2)
  used = (jnp.arange(num_samples)[None, :] < draws.sample_size[:, None])[:, None, :] & sampled_real
  biased_keys = _with_bias(sampled_keys, used)

  def sampled_logits(query):  # [batch, c, heads, head_dim] -> [batch, heads, c, S], masked
    return jnp.einsum("bqhd,bhtd->bhqt", _with_ones(query), biased_keys,
                      preferred_element_type=jnp.float32)

  if normalisation == "adaptive":
    count = jnp.sum(used, axis=-1).astype(jnp.float32)[..., None, None]  # [batch, heads, 1, 1]
    used_keys = jnp.where(used[..., None], sampled_keys, 0.0)
    mean_key = jnp.sum(used_keys, axis=2) / jnp.maximum(count[..., 0], 1.0)  # [batch, heads, p]
    unsampled = real_length.astype(jnp.float32)[:, None, None, None] - count  # m_b - d
    used_values = jnp.where(used[..., None], sampled_values, 0.0)
    unsampled_values = jnp.sum(values_by_head, axis=2) - jnp.sum(used_values, axis=2)
    # A column of ones gives the row sums of the weights in the same product.
    values_and_ones = jnp.concatenate([used_values, used[..., None].astype(jnp.float32)], axis=-1)

    def adaptive(query):  # A block of queries: [batch, c, heads, head_dim] -> [batch, heads, c, p]
      logits = sampled_logits(query)
      # Any per-row constant cancels in the ratio, so the max is not
      # differentiated (which would cost extra passes over [n, S]).
      row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
      row_max = jnp.where(count > 0, row_max, 0.0)
      weights = jnp.exp(logits - row_max)  # 0 on unused slots
      # The mean sampled logit is q_i . (mean sampled key): O(n p), not O(n S).
      mean_logit = jnp.einsum("bqhd,bhd->bhq", query, mean_key)[..., None]
      fill = jnp.exp(mean_logit - row_max)  # g_i, geometric mean of a_it
      products = jnp.einsum("bhqt,bhtd->bhqd", weights, values_and_ones)
      numerator = products[..., :-1] + fill * unsampled_values[:, :, None, :]
      denominator = products[..., -1:] + unsampled * fill
      return numerator / jnp.where(denominator > 0, denominator, 1.0)

    row_block = adaptive
  elif normalisation == "simple":
    def row_block(query):
      return jnp.einsum("bhqt,bhtd->bhqd", jax.nn.softmax(sampled_logits(query), axis=-1),
                        sampled_values)
  else:
    biased_all_keys = _with_bias(key, jnp.broadcast_to(mask[:, :, None], key.shape[:3]))
    has_real = real_length[:, None, None, None] > 0

    def row_block(query):
      full = jnp.einsum("bqhd,bkhd->bhqk", _with_ones(query), biased_all_keys,
                        preferred_element_type=jnp.float32)
      log_denominator = jnp.where(has_real, jax.nn.logsumexp(full, axis=-1, keepdims=True), 0.0)
      return jnp.einsum("bhqt,bhtd->bhqd", jnp.exp(sampled_logits(query) - log_denominator),
                        sampled_values)

  out = chunking.map_length_chunks(
      lambda query: jnp.transpose(row_block(query), (0, 2, 1, 3)), (query,), chunk_size)
  if pilot_replacement:
    out = _replace_pilot_rows(out, _pilot_outputs(pilot, key, values, mask, chunk_size), draws)
  return out.astype(value.dtype)


def _replace_pilot_rows(out, exact, draws):
  """out [b, n, h, p] with rows J_t (t < d_b) set to the pilot's exact outputs exact [b, S, h, p].

  Only the first slot of a position drawn twice writes it (the others are
  sent to distinct out-of-range rows and dropped), so the scatter has unique
  indices and each row is written, and differentiated, once. Work and
  gradient are O(S), not O(n).
  """
  length = out.shape[1]
  num_samples = draws.pilot.shape[1]
  slots = jnp.arange(num_samples, dtype=jnp.int32)
  earlier = (draws.pilot[:, :, None] == draws.pilot[:, None, :]) & (slots[:, None] > slots[None, :])
  first = (slots[None, :] < draws.sample_size[:, None]) & ~jnp.any(earlier, axis=-1)
  target = jnp.where(first, draws.pilot, length + slots[None, :])
  return out.at[jnp.arange(out.shape[0])[:, None], target].set(
      exact.astype(out.dtype), mode="drop", unique_indices=True)


# ----------------------------------------------------------------------------
# Per-variant functions (the registered names).


def skeinformer_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                          rng: jax.Array | None = None, nb_features: int = 256,
                          sample_size_from_batch: bool = False,
                          chunk_size: int | None = chunking.DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Skeinformer (Algorithm 1): importance sampling, adaptive normalisation, pilot rows exact.

  `skein_attention` with sampling='importance', normalisation='adaptive',
  pilot_replacement=True; arguments and shapes as there.
  """
  return skein_attention(query, key, value, mask, rng=rng, nb_features=nb_features,
                         sampling="importance", normalisation="adaptive", pilot_replacement=True,
                         sample_size_from_batch=sample_size_from_batch, chunk_size=chunk_size)


def skein_nopilot_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                            rng: jax.Array | None = None, nb_features: int = 256,
                            sample_size_from_batch: bool = False,
                            chunk_size: int | None = chunking.DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Skeinformer w/o pilot sampling reutilisation (the pilot only sets the probabilities).

  `skein_attention` with sampling='importance', normalisation='adaptive',
  pilot_replacement=False.
  """
  return skein_attention(query, key, value, mask, rng=rng, nb_features=nb_features,
                         sampling="importance", normalisation="adaptive", pilot_replacement=False,
                         sample_size_from_batch=sample_size_from_batch, chunk_size=chunk_size)


def skein_uniform_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                            rng: jax.Array | None = None, nb_features: int = 256,
                            sample_size_from_batch: bool = False,
                            chunk_size: int | None = chunking.DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Skeinformer w/o column (importance) sampling: columns uniform over real tokens, no pilot.

  `skein_attention` with sampling='uniform', normalisation='adaptive',
  pilot_replacement=False.
  """
  return skein_attention(query, key, value, mask, rng=rng, nb_features=nb_features,
                         sampling="uniform", normalisation="adaptive", pilot_replacement=False,
                         sample_size_from_batch=sample_size_from_batch, chunk_size=chunk_size)


def skein_simplenorm_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                               mask: jax.Array, *, rng: jax.Array | None = None,
                               nb_features: int = 256,
                               sample_size_from_batch: bool = False,
                               chunk_size: int | None = chunking.DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Skeinformer w/ simple row normalisation: softmax over the sampled columns only.

  `skein_attention` with sampling='importance', normalisation='simple',
  pilot_replacement=False.
  """
  return skein_attention(query, key, value, mask, rng=rng, nb_features=nb_features,
                         sampling="importance", normalisation="simple", pilot_replacement=False,
                         sample_size_from_batch=sample_size_from_batch, chunk_size=chunk_size)


def skein_nonorm_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                           rng: jax.Array | None = None, nb_features: int = 256,
                           sample_size_from_batch: bool = False,
                           chunk_size: int | None = chunking.DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Skeinformer w/o row normalisation: exact softmax denominators, O(n^2) time and memory.

  `skein_attention` with sampling='importance', normalisation='exact',
  pilot_replacement=False.
  """
  return skein_attention(query, key, value, mask, rng=rng, nb_features=nb_features,
                         sampling="importance", normalisation="exact", pilot_replacement=False,
                         sample_size_from_batch=sample_size_from_batch, chunk_size=chunk_size)


def vmean_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                    rng: jax.Array | None = None) -> jax.Array:
  """V-Mean: every row is the mean of V over the real tokens, (1/m_b) sum_j M_j v_j.

  The rank-one attention (1/n) 1 1^T V of the Skeinformer paper's baseline,
  with padding handled (§1.10 `vmean`). Query and key are ignored (they get
  zero gradient); deterministic.

  Args:
    query: [batch, length, heads, head_dim], ignored (shape check only).
    key: [batch, length, heads, head_dim], ignored (shape check only).
    value: [batch, length, heads, head_dim].
    mask: [batch, length] bool, True for real tokens.
    rng: unused; kept for the common signature.

  Returns:
    [batch, length, heads, head_dim] in `value.dtype` (zeros for a sequence
    without real tokens); summed in float32.
  """
  del rng
  _check_inputs(query, key, value, mask, 1)
  values = jnp.where(mask[:, :, None, None], value.astype(jnp.float32), 0.0)
  count = jnp.maximum(jnp.sum(mask, axis=1), 1).astype(jnp.float32)[:, None, None, None]
  mean = jnp.sum(values, axis=1, keepdims=True) / count
  return jnp.broadcast_to(mean, value.shape).astype(value.dtype)


# ----------------------------------------------------------------------------
# Modules.


class SkeinformerAttention(nn.Module):
  """Module around `skeinformer_attention`; the base of the skein_* modules.

  Randomness: with `redraw_samples` (default) every call draws fresh pilot
  rows and columns from the `registry.ATTENTION_RNG` stream, in training and
  evaluation alike (the reference, §1.11). Without it one key is drawn from
  that stream at initialisation and kept in the non-trainable 'constants'
  collection as 'sample_key' (raw uint32 key data); every call then uses it,
  so the pilot positions and the Gumbel noise are fixed (for a given batch
  size, length and mask), while the importance-sampled columns still follow
  the data.

  Reference quirks (pkuzengqi/Skeinformer, §1.10, §7.3) and how to
  reproduce them:
    * One sample size d = min(nb_features, min_b m_b - 1) for the whole
      (micro-)batch, so a sequence's result depends on the others' lengths
      (and on the gradient-accumulation chunking): `sample_size_from_batch=True`
      (default: d_b = min(nb_features, m_b - 1) per sequence).
    * Pilot rows shared by the batch and heads (one uniform vector indexed
      with each sequence's real length), columns drawn per (batch, head)
      without replacement, importance weights 1/sqrt(d w_j) computed but not
      applied, adaptive normaliser with the unpadded length m_b, draws fresh
      in evaluation: reproduced.
    * Exponentials of raw logits (overflow-prone): here each row is shifted
      by a constant that cancels; no option.
    * d = 0 for a sequence of one real token, failure without real tokens,
      `torch.multinomial` failing when fewer than d columns have positive
      weight: here d >= 1, empty sequences give zeros, zero-weight real
      columns are drawn after the positive ones.
    * A pilot position drawn twice is overwritten twice; here it is replaced
      (and differentiated) once.
    * Config keys `sketched_kernel`, `accumulation`, `sampling_factor` and
      `no_projection` change nothing in these methods: not fields.
    * No attention dropout: `dropout_rate` is accepted for the registry
      protocol and ignored.

  Attributes:
    dropout_rate: ignored (see above).
    nb_features: requested number of sampled columns (reference: 256).
    redraw_samples: fresh draws per call (True, the reference) or one key
      fixed at initialisation.
    sample_size_from_batch: the reference's batch-shared sample size.
    chunk_size: queries per block (a speed setting: the outputs agree to
      float rounding; None computes the whole length at once).
  """

  dropout_rate: float = 0.0
  nb_features: int = 256
  redraw_samples: bool = True
  sample_size_from_batch: bool = False
  chunk_size: int | None = chunking.DEFAULT_CHUNK_SIZE

  # The variant's switches of `skein_attention`.
  switches: ClassVar[dict[str, Any]] = dict(sampling="importance", normalisation="adaptive",
                                            pilot_replacement=True)

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    del deterministic
    if self.redraw_samples:
      rng = self.make_rng(registry.ATTENTION_RNG)
    else:
      key_data = self.variable(
          registry.CONSTANTS, "sample_key",
          lambda: jax.random.key_data(self.make_rng(registry.ATTENTION_RNG))).value
      rng = jax.random.wrap_key_data(key_data)
    return skein_attention(query, key, value, mask, rng=rng, nb_features=self.nb_features,
                           sample_size_from_batch=self.sample_size_from_batch,
                           chunk_size=self.chunk_size, **self.switches)


class SkeinNopilotAttention(SkeinformerAttention):
  """Module around `skein_nopilot_attention`; fields and quirks as `SkeinformerAttention`."""

  switches: ClassVar[dict[str, Any]] = dict(sampling="importance", normalisation="adaptive",
                                            pilot_replacement=False)


class SkeinUniformAttention(SkeinformerAttention):
  """Module around `skein_uniform_attention`; fields and quirks as `SkeinformerAttention`.

  No pilot rows: only the column draw (uniform without replacement over the
  real tokens, per batch and head) is random.
  """

  switches: ClassVar[dict[str, Any]] = dict(sampling="uniform", normalisation="adaptive",
                                            pilot_replacement=False)


class SkeinSimplenormAttention(SkeinformerAttention):
  """Module around `skein_simplenorm_attention`; fields and quirks as `SkeinformerAttention`."""

  switches: ClassVar[dict[str, Any]] = dict(sampling="importance", normalisation="simple",
                                            pilot_replacement=False)


class SkeinNonormAttention(SkeinformerAttention):
  """Module around `skein_nonorm_attention`; fields and quirks as `SkeinformerAttention`.

  O(n^2) time and memory (the exact softmax denominators), as the reference
  (whose configs use gradient accumulation, bz_rate, to fit it).
  """

  switches: ClassVar[dict[str, Any]] = dict(sampling="importance", normalisation="exact",
                                            pilot_replacement=False)


class VmeanAttention(nn.Module):
  """Module around `vmean_attention`; deterministic, no parameters, no constants.

  Reference quirks (pkuzengqi/Skeinformer `Vmean`): the unreachable prototype
  forwards (random signs, top-k refinement) are not reproduced; the config's
  Skein keys (nb_features, ...) are unused by the reference too: not fields.

  Attributes:
    dropout_rate: ignored (the reference has no attention dropout).
  """

  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    del deterministic
    return vmean_attention(query, key, value, mask)


# Contract-test inputs have length 24, one sequence with 15 real tokens: 8
# columns leave un-sampled columns in both sequences.
_SMALL = dict(nb_features=8)
registry.register("skeinformer", skeinformer_attention, SkeinformerAttention, _SMALL)
registry.register("skein_nopilot", skein_nopilot_attention, SkeinNopilotAttention, _SMALL)
registry.register("skein_uniform", skein_uniform_attention, SkeinUniformAttention, _SMALL)
registry.register("skein_simplenorm", skein_simplenorm_attention, SkeinSimplenormAttention, _SMALL)
registry.register("skein_nonorm", skein_nonorm_attention, SkeinNonormAttention, _SMALL)
registry.register("vmean", vmean_attention, VmeanAttention)
