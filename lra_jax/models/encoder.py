"""The one LRA encoder: embeddings, N pre-LayerNorm blocks, final LayerNorm.

Every attention method plugs in through `lra_jax.attention`'s registry; the
encoder never changes per method. Architecture: `lra_official_jax.md` §4.1-4.2
and `skyformer_skeinformer.md` §2 (the two differ only in the settings of
`EncoderConfig`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax.core import FrozenDict

from lra_jax import attention as attention_lib
from lra_jax import errors
from lra_jax.models import initializers

POSITION_EMBEDDINGS = ("sinusoidal", "learned")
POOLINGS = ("CLS", "MEAN")
MEAN_POOLINGS = ("real_tokens", "all_positions", "zeroed_padding")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Hyper-parameters of the encoder and its classifier (see base_config.py)."""

  vocab_size: int
  max_length: int  # tokens per input, before any CLS token
  num_classes: int
  emb_dim: int = 64
  num_heads: int = 2
  num_layers: int = 2
  qkv_dim: int = 64
  mlp_dim: int = 128
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  attention: str = "softmax"
  attention_kwargs: FrozenDict = FrozenDict()
  position_embedding: str = "sinusoidal"
  embedding_init_std: float = 1.0
  position_init_std: float = 0.02
  pooling: str = "CLS"
  mean_pooling: str = "real_tokens"
  classifier_hidden_dims: tuple[int, ...] = (128,)
  dual_encoder: bool = False
  dual_combination: str = "concat"
  layer_norm_epsilon: float = 1e-6
  attention_bias: bool = False
  init: str = "jax"
  gelu_approximate: bool = True
  dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, model: ml_collections.ConfigDict, *, max_length: int) -> EncoderConfig:
    """Builds it from `config.model`, validating names with helpful errors."""
    choices = {
        "model.position_embedding": (model.position_embedding, POSITION_EMBEDDINGS),
        "model.pooling": (model.pooling, POOLINGS),
        "model.mean_pooling": (model.mean_pooling, MEAN_POOLINGS),
        "model.init": (model.init, initializers.STYLES),
        "model.dtype": (model.dtype, DTYPES),
        "model.dual_combination": (model.dual_combination, ("concat", "nli")),
    }
    for field, (value, valid) in choices.items():
      if value not in valid:
        raise errors.ConfigError(
            f"Unknown {field} {value!r}; valid values: {', '.join(valid)}.")
    attention_lib.get_method(model.attention)  # unknown names list the valid ones
    values = {f.name: model[f.name] for f in dataclasses.fields(cls)
              if f.name in model and f.name not in ("attention_kwargs", "dtype")}
    values["classifier_hidden_dims"] = tuple(model.classifier_hidden_dims)
    return cls(max_length=max_length, attention_kwargs=FrozenDict(model.attention_kwargs.to_dict()),
               dtype=DTYPES[model.dtype], **values)


def sinusoidal_table(length: int, dim: int) -> np.ndarray:
  """[length, dim] table, pe[p, 2i] = sin(p w_i), pe[p, 2i+1] = cos(p w_i),
  w_i = 10000^(-2i/dim): the interleaved layout of the official LRA code."""
  position = np.arange(length)[:, None]
  frequency = np.exp(-np.log(10_000.0) * np.arange(0, dim, 2) / dim)
  table = np.zeros((length, dim), np.float32)
  table[:, 0::2] = np.sin(position * frequency)
  table[:, 1::2] = np.cos(position * frequency)[:, : dim // 2]
  return table


class Mlp(nn.Module):
  """Dense(mlp_dim) -> GELU -> dropout -> Dense(emb_dim) -> dropout."""

  config: EncoderConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    c = self.config
    dense = initializers.mlp_dense(c.init, dtype=c.dtype)
    x = dense(c.mlp_dim, fan_in=x.shape[-1], name="dense_in")(x)
    x = nn.gelu(x, approximate=c.gelu_approximate)
    x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    x = dense(c.emb_dim, fan_in=c.mlp_dim, name="dense_out")(x)
    return nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)


class EncoderBlock(nn.Module):
  """Pre-LayerNorm block: x + Dropout(Attn(LN x)), then x + Mlp(LN x)."""

  config: EncoderConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, deterministic: bool) -> jax.Array:
    c = self.config
    kernel_init, bias_init = initializers.attention_inits(c.init)
    y = nn.LayerNorm(epsilon=c.layer_norm_epsilon, dtype=c.dtype, name="attention_norm")(x)
    y = attention_lib.MultiHeadAttention(
        num_heads=c.num_heads, qkv_dim=c.qkv_dim, out_dim=c.emb_dim, attention=c.attention,
        attention_kwargs=c.attention_kwargs, dropout_rate=c.attention_dropout_rate,
        use_bias=c.attention_bias, kernel_init=kernel_init, bias_init=bias_init, dtype=c.dtype,
        name="attention")(y, mask, deterministic=deterministic)
    x = x + nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
    y = nn.LayerNorm(epsilon=c.layer_norm_epsilon, dtype=c.dtype, name="mlp_norm")(x)
    return x + Mlp(c, name="mlp")(y, deterministic=deterministic)


class Encoder(nn.Module):
  """Token ids -> encoded sequence.

  A learned CLS vector (zero init, as in the official code) is prepended when
  `pooling == 'CLS'`; it always counts as a real token.
  """

  config: EncoderConfig

  @nn.compact
  def __call__(self, inputs: jax.Array, mask: jax.Array | None = None, *,
               deterministic: bool) -> tuple[jax.Array, jax.Array]:
    """inputs [batch, length] int, mask [batch, length] bool (default: ids != 0).

    Returns:
      encoded [batch, length', emb_dim] and its mask [batch, length'], where
      length' = length + 1 with a CLS token.
    """
    c = self.config
    if mask is None:
      mask = inputs != 0
    x = nn.Embed(c.vocab_size, c.emb_dim, dtype=c.dtype, name="token_embedding",
                 embedding_init=nn.initializers.normal(c.embedding_init_std))(inputs)
    if c.pooling == "CLS":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, c.emb_dim))
      x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (x.shape[0], 1, 1)), x], axis=1)
      mask = jnp.concatenate([jnp.ones_like(mask[:, :1]), mask], axis=1)
    length = x.shape[1]
    table_length = c.max_length + (c.pooling == "CLS")
    if length > table_length:
      raise ValueError(f"Input length {length} exceeds the position table ({table_length}).")
    if c.position_embedding == "learned":
      table = self.param("position_embedding", nn.initializers.normal(c.position_init_std),
                         (table_length, c.emb_dim))
    else:
      table = jnp.asarray(sinusoidal_table(table_length, c.emb_dim))
    x = x + table[None, :length].astype(x.dtype)
    x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    for i in range(c.num_layers):
      x = EncoderBlock(c, name=f"block_{i}")(x, mask, deterministic=deterministic)
    x = nn.LayerNorm(epsilon=c.layer_norm_epsilon, dtype=c.dtype, name="encoder_norm")(x)
    return x, mask
