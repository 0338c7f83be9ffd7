"""Fixed-pattern sparse attention of the official LRA baselines: local blocks, Sparse Transformer, Longformer.

* `local`: block-local attention as the LRA paper describes it (Tay et al.,
  "Long Range Arena", ICLR 2021, §3 "Local Attention"): the sequence is cut
  into non-overlapping blocks of `block_size` tokens and each token attends to
  the tokens of its block. Official code: lra_official_jax.md §7.1.
* `sparse`: the fixed factorized pattern of Child et al., "Generating Long
  Sequences with Sparse Transformers" (2019), §4.3: A(1)_i = {j : floor(j/l)
  = floor(i/l)} (same block) and A(2)_i = {j : j mod l in {l - c, ..., l - 1}}
  (the last c "summary" positions of every block), merged into one pattern for
  every head (the paper's "merged head" integration; the official code calls
  it the paper's EnWik8 setting). Official code: lra_official_jax.md §7.3.
* `longformer`: Beltagy et al., "Longformer: The Long-Document Transformer"
  (2020), §3.1: a sliding window of w tokens (w/2 on each side) plus global
  attention on a few pre-selected positions (for classification the first,
  CLS, token), which attend to every position and are attended by every
  position, with separate projections for the global rows. Official code:
  lra_official_jax.md §7.2.

All three are self-attention with one right-padded mask for queries and keys,
and all are exactly dense softmax attention restricted to a boolean [n, n]
pattern (softmax(q k^T / sqrt(d) masked to the pattern and the real keys) v);
the computation never forms that n x n pattern for `local` and `longformer`
(cost O(n block_size d) and O(n w d)) and only its non-zero column groups for
`sparse`. Random draws: none except the attention-dropout mask, whose key is
`rng`.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lra_jax.attention import checks, registry
from lra_jax.attention.softmax import dropout_rng, dropout_weights

# Finite rather than -inf (as in softmax.py): a row without an allowed key
# gets uniform weights instead of NaN, which is also what the official code's
# additive -1e10 bias gives.
_MASK_VALUE = -1e10


def _pad_length(x: jax.Array, extra: int, fill=0) -> jax.Array:
  """Right-pads axis 1 of x by `extra` entries of `fill`."""
  if extra == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[1] = (0, extra)
  return jnp.pad(x, widths, constant_values=fill)


def _masked_softmax(logits: jax.Array, allowed: jax.Array, head_dim: int) -> jax.Array:
  """softmax(logits / sqrt(d)) over the last axis where `allowed`, in float32."""
  logits = logits.astype(jnp.float32) / jnp.sqrt(jnp.float32(head_dim))
  return jax.nn.softmax(jnp.where(allowed, logits, _MASK_VALUE), axis=-1)


def _joint_softmax(parts, head_dim: int, dropout_rate: float, rng: jax.Array | None):
  """One softmax over the concatenated last axes of several (logits, allowed) parts.

  Each part's logits have one shape up to the last axis, and its `allowed`
  broadcasts to it; the parts are never concatenated (nor the masks
  broadcast), which saves a copy of the largest arrays. Returns the float32
  weights of each part, with dropout (one key per part, folded from `rng`).
  """
  scale = 1.0 / jnp.sqrt(jnp.float32(head_dim))
  masked = [jnp.where(allowed, logits.astype(jnp.float32) * scale, _MASK_VALUE)
            for logits, allowed in parts]
  top = jax.lax.stop_gradient(
      functools.reduce(jnp.maximum, [jnp.max(x, axis=-1, keepdims=True) for x in masked]))
  exps = [jnp.exp(x - top) for x in masked]
  total = functools.reduce(jnp.add, [jnp.sum(e, axis=-1, keepdims=True) for e in exps])
  weights = [e / total for e in exps]
  if rng is None or dropout_rate == 0.0:
    return weights
  return [dropout_weights(w, dropout_rate, jax.random.fold_in(rng, i)) for i, w in enumerate(weights)]


# ----------------------------------------------------------------------------
# Local (block-local) attention.


def local_padding(length: int, block_size: int, valid_block_padding: bool = False) -> int:
  """Positions appended so that the length is a multiple of `block_size`.

  By default the fewest, (-length) mod block_size. With `valid_block_padding`
  the official rule block_size - (length mod block_size), which appends a
  whole extra block when the length is already a multiple
  (lra_official_jax.md §7.1).
  """
  checks.check_positive_int("block_size", block_size)
  if valid_block_padding:
    return block_size - length % block_size
  return -length % block_size


# The pure functions are jitted (hyper-parameters static): called eagerly, one
# compilation is much faster than dispatching their many small operations.
@functools.partial(jax.jit, static_argnames=("dropout_rate", "block_size", "strided_blocks",
                                             "valid_block_padding"))
def local_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                    rng: jax.Array | None = None, dropout_rate: float = 0.0, block_size: int = 50,
                    strided_blocks: bool = False, valid_block_padding: bool = False) -> jax.Array:
  """Block-local attention (LRA paper §3), O(n block_size d).

  The sequence is right-padded with masked positions to a multiple of
  block_size and cut into contiguous blocks {g b, ..., g b + b - 1} (b =
  block_size); each query attends, with softmax(q k^T / sqrt(d)) v, to the
  real keys of its own block. The blocks are reshaped, never gathered, and no
  [n, n] array is formed. Outputs at padded positions are unused (a padded
  query's weights are uniform over its block).

  Args:
    query: [batch, length, heads, head_dim].
    key: [batch, length, heads, head_dim].
    value: [batch, length, heads, head_dim].
    mask: [batch, length] bool, True for real tokens (queries and keys).
    rng: PRNG key of the attention-dropout mask, the only random draw. None
      (or dropout_rate 0) means no dropout.
    dropout_rate: probability of dropping each attention weight.
    block_size: tokens per block (official: 50, 64 in the image configs).
    strided_blocks: the official layout (quirk): with the padded length
      n' = num_blocks * block_size, "block" g is the strided set
      {g, g + num_blocks, g + 2 num_blocks, ...}, while the padding mask is
      still cut contiguously, so the mask of the pair (a num_blocks + g,
      a' num_blocks + g) is mask[g b + a] and mask[g b + a'] (data and mask
      misaligned). A pair is allowed when both of those mask entries are True;
      a query row without any allowed key is uniform over its block.
    valid_block_padding: the official padding (quirk): block_size -
      (length mod block_size) positions are appended (a whole block when the
      length is a multiple), filled with zero queries, keys and values (the
      official code pads the inputs with zeros before its bias-free
      projections: the same), and counted as real keys (zero logit, zero
      value).

  Returns:
    [batch, length, heads, head_dim] in `value.dtype`. Logits and softmax are
    computed in float32.
  """
  checks.check_self_attention("Local attention", query, key, value, mask)
  batch, length, heads, head_dim = query.shape
  extra = local_padding(length, block_size, valid_block_padding)
  query, key, value = (_pad_length(x, extra) for x in (query, key, value))
  mask = _pad_length(mask, extra, fill=valid_block_padding)
  num_blocks = (length + extra) // block_size

  if strided_blocks:  # position a * num_blocks + g is element a of block g
    shape, spec = (batch, block_size, num_blocks, heads, head_dim), "bqghd"
  else:  # position g * block_size + a is element a of block g
    shape, spec = (batch, num_blocks, block_size, heads, head_dim), "bgqhd"
  q, k, v = (x.reshape(shape) for x in (query, key, value))
  key_spec = spec.replace("q", "k")
  # [b, g, h, q, k], the dot's natural layout: the largest array is never transposed.
  logits = jnp.einsum(f"{spec},{key_spec}->bghqk", q, k, preferred_element_type=jnp.float32)
  # Contiguous in both layouts: aligned with the contiguous blocks, and the
  # official misalignment with the strided ones.
  mask_blocks = mask.reshape(batch, num_blocks, 1, block_size)
  allowed = mask_blocks[..., :, None] & mask_blocks[..., None, :]
  weights = dropout_weights(_masked_softmax(logits, allowed, head_dim), dropout_rate, rng)
  out = jnp.einsum(f"bghqk,{key_spec}->{spec}", weights.astype(value.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.reshape(batch, length + extra, heads, head_dim)[:, :length].astype(value.dtype)


class LocalAttention(nn.Module):
  """Module around `local_attention`; dropout from the 'dropout' stream.

  Reference quirks (official LRA JAX `local_attention.py`,
  lra_official_jax.md §7.1) and how to reproduce them:
    * Q, K and V are reshaped to [batch, block_size, num_blocks, ...] and
      attention runs over the block_size axis, so each "block" is the strided
      set {g, g + num_blocks, ...} (dilated attention with stride
      n' / block_size), while the padding mask is cut contiguously, so mask and
      data are misaligned: `strided_blocks=True`. The default is the paper's
      contiguous blocks (as the linen port).
    * Every length is padded with block_size - (n mod block_size) positions (a
      whole block when n is a multiple), and the boolean padding mask is padded
      with -1e9, i.e. True: the appended (zero) positions count as real keys:
      `valid_block_padding=True`. The default pads only to the next multiple,
      with masked positions.
    * Masking by an additive -1e10, so a query row whose keys are all masked
      is uniform over its block: reproduced (only reachable by real queries
      under `strided_blocks`).
  Both options together give the official computation.

  Attributes:
    dropout_rate: attention-weight dropout, active when not deterministic.
    block_size: tokens per block (official: 50; 64 in the image configs).
    strided_blocks: the official strided layout with its misaligned mask.
    valid_block_padding: the official always-pad, padding-counts-as-real rule.
  """

  dropout_rate: float = 0.0
  block_size: int = 50
  strided_blocks: bool = False
  valid_block_padding: bool = False

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    return local_attention(query, key, value, mask,
                           rng=dropout_rng(self, self.dropout_rate, deterministic),
                           dropout_rate=self.dropout_rate, block_size=self.block_size,
                           strided_blocks=self.strided_blocks,
                           valid_block_padding=self.valid_block_padding)


# ----------------------------------------------------------------------------
# Sparse Transformer (fixed patterns).


def sparse_summary_offsets(block_size: int, summary_size: int,
                           summary_includes_block_start: bool = False) -> tuple[int, ...]:
  """Offsets r (within a block) of the summary positions j, j mod block_size = r.

  The paper's A(2) (Child et al. 2019, §4.3) with l = block_size and c =
  summary_size: {l - c, ..., l - 1}. With `summary_includes_block_start`
  offset 0 is added, as the official `Fixed2Pattern` (`k mod l == 0 or
  k mod l >= l - c`, lra_official_jax.md §7.3), which reads the paper's
  {t, ..., l} as including l = 0 mod l.
  """
  checks.check_positive_int("block_size", block_size)
  checks.check_positive_int("summary_size", summary_size)
  if summary_size > block_size:
    raise ValueError(f"summary_size (c = {summary_size}) must be at most block_size "
                     f"(l = {block_size}): it counts the summary positions of each block.")
  offsets = set(range(block_size - summary_size, block_size))
  if summary_includes_block_start:
    offsets.add(0)
  return tuple(sorted(offsets))


def _fixed_pattern_attention(query, key, value, mask, rng, dropout_rate, block_size, offsets, causal,
                             extra_key=None, extra_value=None, extra_mask=None):
  """The merged fixed pattern, positions counted from 0, plus optional keys every query sees.

  Per query: its block's keys (l), every summary key of the other blocks
  (n c / l) and the extra keys, in one softmax. Summary keys of the query's own
  block are already among its block's keys, so they are masked in the summary
  part (each key appears once).
  """
  batch, length, heads, head_dim = query.shape
  extra = -length % block_size
  query, key, value = (_pad_length(x, extra) for x in (query, key, value))
  mask = _pad_length(mask, extra, fill=False)
  num_blocks = (length + extra) // block_size
  shape = (batch, num_blocks, block_size, heads, head_dim)
  q, k, v = (x.reshape(shape) for x in (query, key, value))
  mask_blocks = mask.reshape(batch, num_blocks, block_size)

  # A(1): the query's own block.
  local_logits = jnp.einsum("bgqhd,bgkhd->bhgqk", q, k, preferred_element_type=jnp.float32)
  local_allowed = mask_blocks[:, None, :, None, :]
  if causal:
    local_allowed = local_allowed & jnp.tril(jnp.ones((block_size, block_size), bool))

  # A(2): the summary positions, shared by every query (a dense [n, S] product).
  index = np.asarray(offsets)
  num_summary = num_blocks * len(offsets)
  summary_k = k[:, :, index].reshape(batch, num_summary, heads, head_dim)
  summary_v = v[:, :, index].reshape(batch, num_summary, heads, head_dim)
  summary_real = mask_blocks[:, :, index].reshape(batch, num_summary)
  summary_block = np.repeat(np.arange(num_blocks), len(offsets))
  query_block = np.arange(num_blocks)[:, None]
  # Causal: keys of earlier blocks only (j < i); else of every other block.
  other = summary_block < query_block if causal else summary_block != query_block
  summary_logits = jnp.einsum("bgqhd,bshd->bhgqs", q, summary_k, preferred_element_type=jnp.float32)
  summary_allowed = summary_real[:, None, None, None, :] & jnp.asarray(other)[None, None, :, None, :]

  parts = [(local_logits, local_allowed), (summary_logits, summary_allowed)]
  if extra_key is not None:
    extra_logits = jnp.einsum("bgqhd,behd->bhgqe", q, extra_key, preferred_element_type=jnp.float32)
    parts.append((extra_logits, extra_mask[:, None, None, None, :]))
  local_w, summary_w, *extra_w = (w.astype(value.dtype) for w in
                                  _joint_softmax(parts, head_dim, dropout_rate, rng))
  out = (jnp.einsum("bhgqk,bgkhd->bgqhd", local_w, v, preferred_element_type=jnp.float32)
         + jnp.einsum("bhgqs,bshd->bgqhd", summary_w, summary_v, preferred_element_type=jnp.float32))
  if extra_w:
    out = out + jnp.einsum("bhgqe,behd->bgqhd", extra_w[0], extra_value,
                           preferred_element_type=jnp.float32)
  return out.reshape(batch, length + extra, heads, head_dim)[:, :length]


@functools.partial(jax.jit, static_argnames=("dropout_rate", "block_size", "summary_size", "causal",
                                             "summary_includes_block_start", "cls_token"))
def sparse_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                     rng: jax.Array | None = None, dropout_rate: float = 0.0, block_size: int = 50,
                     summary_size: int = 10, causal: bool = False,
                     summary_includes_block_start: bool = False, cls_token: bool = False) -> jax.Array:
  """Sparse Transformer fixed attention (Child et al. 2019, §4.3), merged head, for an encoder.

  Query i attends to the real keys j of A(1)_i ∪ A(2)_i with
  A(1)_i = {j : floor(j / l) = floor(i / l)} and A(2)_i = {j : j mod l in
  `sparse_summary_offsets`} (l = block_size, c = summary_size; the last c
  positions of every block), with softmax(q k^T / sqrt(d)) v: exactly dense
  softmax attention under that [n, n] mask, one pattern for every head. Both
  sets are two-sided (an encoder); `causal` keeps j <= i only, as the paper's
  autoregressive model. Computed as block attention plus a dense product with
  the n c / l summary keys: O(n (l + n c / l) d) time and memory, quadratic in
  n but c / l of dense attention (1/5 with the official l = 50, c = 10); the
  [n, n] mask is never formed.

  Args:
    query: [batch, length, heads, head_dim].
    key: [batch, length, heads, head_dim].
    value: [batch, length, heads, head_dim].
    mask: [batch, length] bool, True for real tokens (queries and keys).
    rng: PRNG key of the attention-dropout mask, the only random draw. None
      (or dropout_rate 0) means no dropout.
    dropout_rate: probability of dropping each attention weight.
    block_size: l, the block length and the stride of the summary positions
      (official: 50).
    summary_size: c, summary positions per block (official: 10).
    causal: keep only keys j <= i (the official code is always causal).
    summary_includes_block_start: offset 0 is a summary position too (the
      official `Fixed2Pattern`).
    cls_token: position 0 is a CLS token: the pattern is laid on positions
      1, ..., n - 1 (position p is index p - 1 of the pattern), the CLS query
      attends to every real key and every query attends to the CLS key (the
      official encoder with CLS pooling, lra_official_jax.md §4.5, §7.3; also
      under `causal`).

  Returns:
    [batch, length, heads, head_dim] in `value.dtype`. Logits and softmax are
    computed in float32.
  """
  checks.check_self_attention("Sparse Transformer attention", query, key, value, mask)
  offsets = sparse_summary_offsets(block_size, summary_size, summary_includes_block_start)
  if not cls_token:
    out = _fixed_pattern_attention(query, key, value, mask, rng, dropout_rate, block_size, offsets,
                                   causal)
    return out.astype(value.dtype)
  rng_cls, rng_rest = jax.random.split(rng) if rng is not None else (None, None)
  head_dim = query.shape[-1]
  logits = jnp.einsum("bqhd,bkhd->bhqk", query[:, :1], key, preferred_element_type=jnp.float32)
  weights = _masked_softmax(logits, mask[:, None, None, :], head_dim)
  weights = dropout_weights(weights, dropout_rate, rng_cls)
  cls_out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(value.dtype), value,
                       preferred_element_type=jnp.float32)
  if query.shape[1] == 1:
    return cls_out.astype(value.dtype)
  rest = _fixed_pattern_attention(
      query[:, 1:], key[:, 1:], value[:, 1:], mask[:, 1:], rng_rest, dropout_rate, block_size,
      offsets, causal, extra_key=key[:, :1], extra_value=value[:, :1], extra_mask=mask[:, :1])
  return jnp.concatenate([cls_out, rest], axis=1).astype(value.dtype)


class SparseAttention(nn.Module):
  """Module around `sparse_attention`; dropout from the 'dropout' stream.

  Reference quirks (official LRA JAX `sparse_attention.py` with the patterns
  of `train_utils.get_model`, lra_official_jax.md §3.4, §7.3) and how to
  reproduce them:
    * Every pattern is causal (k <= q), in an encoder that classifies:
      `causal=True`. The default is two-sided, the natural encoder form of the
      fixed pattern.
    * `Fixed2Pattern` also keeps k mod l == 0 (c + 1 summary positions per
      block): `summary_includes_block_start=True`. The default is the paper's
      c positions {l - c, ..., l - 1} (its {t, ..., l}, t = l - c, read
      within 0 <= j mod l < l; the official code reads l as 0).
    * With CLS pooling the encoder sets `use_cls_token`: the pattern is built
      for the n - 1 tokens after the CLS and the CLS row and column are all
      allowed: `cls_token=True` (set it when the encoder prepends a CLS token).
    * Fixed1 and Fixed2 are OR-merged into one mask used by every head: kept,
      it is the paper's "merged head" integration (the EnWik8 setting,
      per the official code).
    * Dense [n, n] masked attention with an additive -1e10: the same numbers
      here (every query sees at least itself), computed block-sparse.
  All three options together give the official computation.

  Attributes:
    dropout_rate: attention-weight dropout, active when not deterministic.
    block_size: l, block length and summary stride (official: 50).
    summary_size: c, summary positions per block (official: 10).
    causal: the official causal mask.
    summary_includes_block_start: the official extra summary position 0.
    cls_token: position 0 is a CLS token exempt from the pattern.
  """

  dropout_rate: float = 0.0
  block_size: int = 50
  summary_size: int = 10
  causal: bool = False
  summary_includes_block_start: bool = False
  cls_token: bool = False

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    return sparse_attention(query, key, value, mask,
                            rng=dropout_rng(self, self.dropout_rate, deterministic),
                            dropout_rate=self.dropout_rate, block_size=self.block_size,
                            summary_size=self.summary_size, causal=self.causal,
                            summary_includes_block_start=self.summary_includes_block_start,
                            cls_token=self.cls_token)


# ----------------------------------------------------------------------------
# Longformer (sliding window + global tokens).


def longformer_window(window_size: int, asymmetric_window: bool = False) -> tuple[int, int]:
  """(left, right): query i attends to keys i - left <= j <= i + right.

  The paper's window (Beltagy et al. 2020, §3.1): w/2 tokens on each side,
  left = right = floor(w / 2) (w + 1 keys for an even w). With
  `asymmetric_window` the official mask (lra_official_jax.md §7.2): w keys,
  floor(w / 2) on the right and w - floor(w / 2) - 1 on the left, i.e.
  i - 255 <= j <= i + 256 for w = 512 (the same as the paper's for an odd w).
  """
  checks.check_positive_int("window_size", window_size)
  right = window_size // 2
  left = window_size - right - 1 if asymmetric_window else right
  return left, right


def _band_chunks(length: int, left: int, right: int) -> tuple[int, int, int]:
  """(chunk, chunks before, chunks after) of the sliding-window computation.

  Query chunk t attends to key chunks t - before, ..., t + after, which hold
  every key within the window. Chunks of half the wider side keep the
  computed keys per query near left + right + chunk (2.5 w / 2 for the
  official window) instead of 3 w / 2 with chunks of a whole side.
  """
  chunk = max(1, min(length, math.ceil(max(left, right) / 2)))
  num_chunks = -(-length // chunk)
  before = min(math.ceil(left / chunk), num_chunks - 1)
  after = min(math.ceil(right / chunk), num_chunks - 1)
  return chunk, before, after


@functools.partial(jax.jit, static_argnames=("dropout_rate", "window_size", "num_global_tokens",
                                             "asymmetric_window"))
def longformer_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                         rng: jax.Array | None = None, dropout_rate: float = 0.0,
                         window_size: int = 512, num_global_tokens: int = 1,
                         asymmetric_window: bool = False, global_query: jax.Array | None = None,
                         global_key: jax.Array | None = None,
                         global_value: jax.Array | None = None) -> jax.Array:
  """Longformer sliding-window + global attention (Beltagy et al. 2020, §3.1), O(n (w + g) d).

  With (left, right) = `longformer_window(window_size, asymmetric_window)` and
  the first g = num_global_tokens positions global:
    * a global query i < g attends to every real key, with the global
      projections: softmax(q^g_i K_g^T / sqrt(d)) V_g;
    * every other query i attends to the real keys j with
      i - left <= j <= i + right or j < g, with the sliding-window projections
      q, k, v: softmax(q_i k_j^T / sqrt(d)) v_j.
  This is the paper's pattern and HF's / the official code's assignment of
  projections. The window part runs over chunks of the sequence (each query
  chunk against the few key chunks that cover its window), never forming
  [n, n] arrays; when the window covers the whole sequence it is exact
  softmax attention (with shared global projections).

  Args:
    query: [batch, length, heads, head_dim], sliding-window projection.
    key: [batch, length, heads, head_dim], sliding-window projection.
    value: [batch, length, heads, head_dim], sliding-window projection.
    mask: [batch, length] bool, True for real tokens (queries and keys).
    rng: PRNG key of the attention-dropout masks, the only random draw (split
      into one key for the window rows and one for the global rows). None (or
      dropout_rate 0) means no dropout.
    dropout_rate: probability of dropping each attention weight.
    window_size: w (official: 512).
    num_global_tokens: g, the leading positions with global attention (the
      CLS / first token for classification: 1; the official code: 0).
    asymmetric_window: the official w keys (see `longformer_window`).
    global_query: [batch, at least g, heads, head_dim], the global query
      projection (only its first g rows are used); None: `query`.
    global_key: [batch, length, heads, head_dim]; None: `key`.
    global_value: [batch, length, heads, head_dim]; None: `value`.

  Returns:
    [batch, length, heads, head_dim] in `value.dtype`. Logits and softmax are
    computed in float32.
  """
  checks.check_self_attention("Longformer attention", query, key, value, mask)
  if isinstance(num_global_tokens, bool) or not isinstance(num_global_tokens, int) \
      or num_global_tokens < 0:
    raise ValueError(f"num_global_tokens must be a non-negative integer, got {num_global_tokens!r}.")
  left, right = longformer_window(window_size, asymmetric_window)
  batch, length, heads, head_dim = query.shape
  num_global = min(num_global_tokens, length)
  rng_window, rng_global = jax.random.split(rng) if rng is not None else (None, None)

  chunk, before, after = _band_chunks(length, left, right)
  num_chunks = -(-length // chunk)
  extra = num_chunks * chunk - length
  span = before + 1 + after
  # Global keys are served by the global columns below: out of the window part.
  key_real = mask & (jnp.arange(length) >= num_global)[None, :]

  def chunked(x, fill):  # [b, n, ...] -> [b, num_chunks, chunk, ...]
    x = _pad_length(x, extra, fill)
    return x.reshape(batch, num_chunks, chunk, *x.shape[2:])

  def windows(x, fill):  # [b, num_chunks, chunk, ...] -> [b, num_chunks, span * chunk, ...]
    widths = [(0, 0)] * x.ndim
    widths[1] = (before, after)
    x = jnp.pad(x, widths, constant_values=fill)
    x = jnp.concatenate([x[:, s:s + num_chunks] for s in range(span)], axis=2)
    return x

  q = chunked(query, 0)
  k, v = windows(chunked(key, 0), 0), windows(chunked(value, 0), 0)
  k_real = windows(chunked(key_real, False), False)  # [b, num_chunks, span * chunk]
  # Key j of window slot s, element e sits at j - i = (s - before) chunk + e - (i mod chunk).
  offset = (np.arange(span * chunk)[None, :] - before * chunk) - np.arange(chunk)[:, None]
  band = jnp.asarray((offset >= -left) & (offset <= right))  # [chunk, span * chunk]
  # [b, c, h, q, k], the dot's natural layout: the largest array is never transposed.
  logits = jnp.einsum("bcqhd,bckhd->bchqk", q, k, preferred_element_type=jnp.float32)
  parts = [(logits, k_real[:, :, None, None, :] & band)]
  if num_global:
    global_logits = jnp.einsum("bcqhd,bghd->bchqg", q, key[:, :num_global],
                               preferred_element_type=jnp.float32)
    parts.append((global_logits, mask[:, None, None, None, :num_global]))
  weights = [w.astype(value.dtype) for w in _joint_softmax(parts, head_dim, dropout_rate, rng_window)]
  out = jnp.einsum("bchqk,bckhd->bcqhd", weights[0], v, preferred_element_type=jnp.float32)
  if num_global:
    out = out + jnp.einsum("bchqg,bghd->bcqhd", weights[1], value[:, :num_global],
                           preferred_element_type=jnp.float32)
  out = out.reshape(batch, num_chunks * chunk, heads, head_dim)[:, :length]
  if not num_global:
    return out.astype(value.dtype)

  global_query = query if global_query is None else global_query
  global_key = key if global_key is None else global_key
  global_value = value if global_value is None else global_value
  global_logits = jnp.einsum("bghd,bkhd->bhgk", global_query[:, :num_global], global_key,
                             preferred_element_type=jnp.float32)
  global_weights = _masked_softmax(global_logits, mask[:, None, None, :], head_dim)
  global_weights = dropout_weights(global_weights, dropout_rate, rng_global)
  global_out = jnp.einsum("bhgk,bkhd->bghd", global_weights.astype(value.dtype), global_value,
                          preferred_element_type=jnp.float32)
  return jnp.concatenate([global_out, out[:, num_global:]], axis=1).astype(value.dtype)


def _identity_kernel(key, shape, dtype=jnp.float32):
  """The identity map (in DenseGeneral's kernel shape): a global projection starts as the shared one."""
  del key
  return jnp.eye(math.isqrt(math.prod(shape)), dtype=dtype).reshape(shape)


class LongformerAttention(nn.Module):
  """Module around `longformer_attention`; dropout from the 'dropout' stream.

  Global projections: the paper projects the inputs x with separate
  Q_g, K_g, V_g for the global rows. A registered module only receives the
  projected q = x W_q, k = x W_k, v = x W_v, so with `global_projections`
  (and num_global_tokens > 0) it learns Q_g = q A_q, K_g = k A_k, V_g = v A_v
  with A_* full [heads * head_dim, heads * head_dim] maps (params
  'query_global', 'key_global', 'value_global', initialised to the identity,
  so that the global rows start with the sliding-window projections). This
  is the paper's family when W_q, W_k, W_v are invertible (qkv_dim equal to
  the model width), and a restriction of it (x W A instead of any x W_g) when
  qkv_dim is smaller.
  Without `global_projections` the global rows reuse q, k, v.

  Reference quirks (official LRA JAX `longformer_attention.py`,
  lra_official_jax.md §3.4, §7.2) and how to reproduce them:
    * No global tokens (`global_mask=None`), although the six input
      projections are created and the global branch is computed and
      discarded: `num_global_tokens=0` (no global parameters are created).
    * Window of w keys, i - 255 <= j <= i + 256 for w = 512 (one fewer on the
      left than on the right): `asymmetric_window=True`. The default is the
      paper's w/2 on each side.
    * A dense [n, n] mask (O(n^2) memory): not reproduced, the numbers are
      the same with the chunked computation.
  `num_global_tokens=0, asymmetric_window=True` gives the official computation.

  Attributes:
    dropout_rate: attention-weight dropout, active when not deterministic.
    window_size: w (official: 512).
    num_global_tokens: leading global positions (paper, classification: 1 =
      the CLS / first token; official: 0).
    global_projections: learn separate global projections (see above).
    asymmetric_window: the official window.
  """

  dropout_rate: float = 0.0
  window_size: int = 512
  num_global_tokens: int = 1
  global_projections: bool = True
  asymmetric_window: bool = False

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    projected = {}
    if self.global_projections and self.num_global_tokens > 0:
      heads, head_dim = query.shape[-2:]

      def project(name, x):
        return nn.DenseGeneral((heads, head_dim), axis=(-2, -1), use_bias=False,
                               kernel_init=_identity_kernel, dtype=x.dtype, name=name)(x)

      # Only the global rows' queries are needed.
      projected = dict(global_query=project("query_global", query[:, :self.num_global_tokens]),
                       global_key=project("key_global", key),
                       global_value=project("value_global", value))
    return longformer_attention(query, key, value, mask,
                                rng=dropout_rng(self, self.dropout_rate, deterministic),
                                dropout_rate=self.dropout_rate, window_size=self.window_size,
                                num_global_tokens=self.num_global_tokens,
                                asymmetric_window=self.asymmetric_window, **projected)


# Contract-test inputs have length 24, one sequence with 15 real tokens. local:
# 6 blocks of 4, the short sequence ends inside a block. sparse: 4 blocks of 6
# with 2 summary positions each. longformer: 3 keys on each side, chunks of 2,
# the first token global.
registry.register("local", local_attention, LocalAttention, small_input_kwargs=dict(block_size=4))
registry.register("sparse", sparse_attention, SparseAttention,
                  small_input_kwargs=dict(block_size=6, summary_size=2))
registry.register("longformer", longformer_attention, LongformerAttention,
                  small_input_kwargs=dict(window_size=6))
