"""Argument checks shared by the attention methods: one wording for one mistake."""

from __future__ import annotations

import jax

from lra_jax.attention import registry


def check_self_attention(method: str, query: jax.Array, key: jax.Array, value: jax.Array,
                         mask: jax.Array) -> None:
  """Raises unless q, k, v share one [batch, length, heads, head_dim] shape and mask is [batch, length]."""
  if not query.shape == key.shape == value.shape or mask.shape != query.shape[:2]:
    raise ValueError(
        f"{method} is self-attention: query, key and value must share one shape "
        f"[batch, length, heads, head_dim] and mask be [batch, length]; got query {query.shape}, "
        f"key {key.shape}, value {value.shape}, mask {mask.shape}.")


def check_positive_int(name: str, value) -> None:
  """Raises unless `value` is a positive int (a bool is not a size)."""
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def require_rng(rng: jax.Array | None, method: str, what: str) -> None:
  """Raises when a method that draws `what` got no PRNG key."""
  if rng is None:
    raise ValueError(f"{method} draws {what} and needs a PRNG key: pass rng=jax.random.key(...) "
                     f"(the module draws it from the {registry.ATTENTION_RNG!r} RNG stream).")
