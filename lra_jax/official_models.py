"""The official LRA code's per-model settings, applied by the `official` protocol.

Google's LRA repository trains each method of its results table with the
task's base config plus a few per-model overrides (lra_official_jax.md §3.3)
and attention hyper-parameters hard-coded in the models (§3.4, §7). With
`protocol='official'`, `apply` puts them on the base config of `base_config`,
so `configs/lra.py:TASK,METHOD,official` is the official table's row.

Only the settings are copied. The official code's bugs (strided local blocks,
Sinkhorn's sort reduced to a sum, the padding mask ignored by several
methods, ...) stay off: each is a documented, named option of its attention
module, off by default.

Deviations, each on purpose:
  * CIFAR-10 BigBird: the override `num_head=4` is a misspelt field in the
    official config, so that run used the base's single head; here the
    intended 4 heads.
  * The Reformer's missing output projection and forced qkv width (§7.8) are
    model-level and not reproduced.
  * Sinkhorn's encoder only supports MEAN pooling and a linear head (§4.5):
    applied.
  * Sinkhorn's sorting network has one output per block of the sequence
    (the module's default), not the official 25: a correct sort needs one
    per block, and ListOps (40 blocks) and Retrieval (80) only ran with 25
    because the official sort reduces to a sum of all blocks.
  * Longformer: the official model has no global tokens (it passes no global
    mask), so neither has its official setting here; the module's default is
    the paper's global first token.
"""

from __future__ import annotations

import math

import ml_collections

# Rows of the official results table (lra_official_jax.md §6) -> registry names.
OFFICIAL_TABLE_METHODS = {
    "Transformer": "softmax",
    "Local Att": "local",
    "Linear Trans.": "linear_transformer",
    "Reformer": "reformer",
    "Sparse Trans.": "sparse",
    "Sinkhorn Trans.": "sinkhorn",
    "Linformer": "linformer",
    "Performer": "performer",
    "Synthesizer": "synthesizer",
    "Longformer": "longformer",
    "BigBird": "bigbird",
}

# CIFAR-10 per-model overrides (§3.3): model fields, then the attention's.
_IMAGE = {
    "softmax": dict(num_layers=1, emb_dim=128, qkv_dim=64, mlp_dim=128, num_heads=8),
    "bigbird": dict(num_layers=1, emb_dim=128, qkv_dim=64, mlp_dim=128, num_heads=4),
    "linear_transformer": dict(num_layers=1, emb_dim=128, qkv_dim=64, mlp_dim=128, num_heads=8),
    "linformer": dict(num_layers=1, emb_dim=128, qkv_dim=64, mlp_dim=128, num_heads=8),
    "local": dict(num_layers=1, emb_dim=128, qkv_dim=64, mlp_dim=128, num_heads=2,
                  pooling="MEAN"),
    "longformer": dict(num_layers=4, emb_dim=128, qkv_dim=64, mlp_dim=128, num_heads=4,
                       pooling="MEAN"),
    "performer": dict(num_layers=1, emb_dim=128, qkv_dim=64, mlp_dim=128, num_heads=8),
    "reformer": dict(num_layers=4, emb_dim=64, qkv_dim=32, mlp_dim=64, num_heads=8),
    # The CIFAR base's sizes (emb 32, qkv 32, mlp 64, 1 head) with its own
    # weight decay and dropout.
    "sinkhorn": dict(num_layers=1, emb_dim=32, qkv_dim=32, mlp_dim=64, num_heads=1,
                     dropout_rate=0.1),
    "sparse": dict(num_layers=1, emb_dim=128, qkv_dim=64, mlp_dim=128, num_heads=8),
    "synthesizer": dict(num_layers=1, emb_dim=128, qkv_dim=64, mlp_dim=128, num_heads=8),
}
_IMAGE_TRAIN = {"sinkhorn": dict(weight_decay=0.7)}

# Pathfinder-32 per-model overrides (§3.3); every model keeps MEAN pooling.
_PATHFINDER = {
    "softmax": dict(num_layers=4, num_heads=4, emb_dim=32, qkv_dim=16, mlp_dim=32, dropout_rate=0.2),
    "bigbird": dict(num_layers=4, num_heads=2, emb_dim=64, qkv_dim=32, mlp_dim=64, dropout_rate=0.2),
    "linear_transformer": dict(num_layers=1, num_heads=2, emb_dim=128, qkv_dim=64, mlp_dim=128,
                               dropout_rate=0.2),
    "linformer": dict(num_layers=1, num_heads=2, emb_dim=32, qkv_dim=16, mlp_dim=32,
                      dropout_rate=0.2),
    "local": dict(num_layers=2, num_heads=4, emb_dim=64, qkv_dim=32, mlp_dim=64, dropout_rate=0.1),
    "longformer": dict(num_layers=2, num_heads=2, emb_dim=32, qkv_dim=16, mlp_dim=32,
                       dropout_rate=0.1),
    "performer": dict(num_layers=4, num_heads=8, emb_dim=32, qkv_dim=16, mlp_dim=32,
                      dropout_rate=0.2),
    "reformer": dict(num_layers=2, num_heads=8, emb_dim=64, qkv_dim=32, mlp_dim=64,
                     dropout_rate=0.2),
    "sinkhorn": dict(num_layers=2, num_heads=4, emb_dim=32, qkv_dim=16, mlp_dim=64,
                     dropout_rate=0.2),
    "sparse": dict(num_layers=1, num_heads=8, emb_dim=32, qkv_dim=16, mlp_dim=32, dropout_rate=0.2),
    "synthesizer": dict(num_layers=2, num_heads=4, emb_dim=64, qkv_dim=32, mlp_dim=64,
                        dropout_rate=0.2),
}

# Block sizes the official models hard-code (§3.4), and the image configs' 64.
_BLOCK_SIZE = {"local": 50, "sinkhorn": 50, "bigbird": 64}
_IMAGE_BLOCK_SIZE = 64


def attention_settings(method: str, task: str, length: int, cls_token: bool) -> dict:
  """The official code's attention hyper-parameters of `method` on `task` (§3.4, §7).

  `length` is the encoder's sequence length (max_length, plus one with a CLS
  token, `cls_token`); the Reformer's chunk length follows it (its 10 equal
  chunks).
  """
  pixels = task in ("image", "pathfinder")
  if method == "linformer":
    return dict(linformer_k=16, shared_across_heads=True, projection_init="xavier_uniform")
  if method == "reformer":
    return dict(num_hash=1, num_buckets=10, chunk_length=math.ceil(length / 10),
                num_chunks_before=1, num_chunks_after=0)
  if method == "bigbird":
    return dict(block_size=_BLOCK_SIZE["bigbird"], num_random_blocks=3, random_pattern="fixed",
                random_blocks_first_1024_tokens=True)
  if method in ("local", "sinkhorn"):
    return dict(block_size=_IMAGE_BLOCK_SIZE if pixels else _BLOCK_SIZE[method])
  if method == "longformer":
    # The official model passes no global mask: a plain sliding window.
    return dict(window_size=512, num_global_tokens=0)
  if method == "sparse":
    # Fixed1/Fixed2 with l = 50, c = 10; the CLS token (when pooling is CLS)
    # is exempt from the pattern, as the official encoder sets use_cls_token.
    return dict(block_size=50, summary_size=10, cls_token=cls_token)
  if method == "performer":
    if task == "listops":  # The ListOps config's FAVOR+ with two features.
      return dict(features="favor_plus", nb_features=2, numerical_stabilizer=1e-6)
    return dict(features="relu", numerical_stabilizer=1e-3)
  if method == "synthesizer":
    return dict(synthesizer_mode="random", ignore_dot_product=False)
  return {}


def apply(c: ml_collections.ConfigDict) -> None:
  """Puts the official per-model settings of `c.model.attention` on the official config `c`."""
  method, task = c.model.attention, c.task
  if task == "image":
    c.model.update(_IMAGE.get(method, {}))
    c.train.update(_IMAGE_TRAIN.get(method, {}))
  elif task == "pathfinder":
    c.model.update(_PATHFINDER.get(method, {}))
  if method == "sinkhorn":
    c.model.pooling = "MEAN"
  cls_token = c.model.pooling == "CLS"
  settings = attention_settings(method, task, c.data.max_length + cls_token, cls_token)
  unknown = sorted(set(settings) - set(c.model.attention_kwargs))
  if unknown:
    raise ValueError(f"The official settings of {method!r} name hyper-parameters its module does "
                     f"not have: {', '.join(unknown)} (lra_jax/official_models.py is out of date).")
  c.model.attention_kwargs.update(settings)
  if method == "sinkhorn":
    c.model.classifier_hidden_dims = ()
