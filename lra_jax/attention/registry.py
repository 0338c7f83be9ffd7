"""The one registry of attention methods, keyed by the names the seed repos use.

An entry pairs the pure function (the maths, public API) with the linen module
that the encoder instantiates (parameters, RNG streams). The contract test
suite iterates over `names()`, so a method is tested as soon as it registers.

Module protocol: a registered module class is constructed as
`module(dropout_rate=..., **attention_kwargs)` and called as
`module(query, key, value, mask, *, deterministic)` with arrays
`[batch, length, heads, head_dim]` and `mask` `[batch, length]` (True = real
token); it returns `[batch, length, heads, head_dim]`. Random draws other than
dropout come from the RNG stream `ATTENTION_RNG`; dropout from `'dropout'`. Draws fixed at initialisation live in the
variable collection `CONSTANTS`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn

from lra_jax import errors

# RNG stream for landmarks, random features, hashing and sampling. The trainer
# provides it in training and evaluation alike (some methods redraw per call).
ATTENTION_RNG = "attention"
# Variable collection of random draws fixed at initialisation and never
# trained (the references' buffers); the train state carries and checkpoints it.
CONSTANTS = "constants"


@dataclasses.dataclass(frozen=True)
class AttentionMethod:
  """A registered attention method.

  Attributes:
    name: registry key, as the seed repos spell it (`--attn` there).
    fn: the pure function `fn(query, key, value, mask, *, rng=None, **hp)`.
    module: the linen module class wrapping `fn`.
    small_input_kwargs: hyper-parameters that fit inputs of a few dozen tokens
      (used by the contract tests and examples; defaults target LRA lengths).
    approximates: the exact attention this method approximates, against which
      `python -m lra_jax.benchmark attention` measures its error: "softmax",
      "kernelized" (the Gaussian kernel, not normalised) or another name of
      `lra_jax.benchmark.errors.REFERENCES`; an exact method names itself.
  """

  name: str
  fn: Callable[..., Any]
  module: type[nn.Module]
  small_input_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  approximates: str = "softmax"


_REGISTRY: dict[str, AttentionMethod] = {}


def register(name: str, fn: Callable[..., Any], module: type[nn.Module],
             small_input_kwargs: Mapping[str, Any] | None = None,
             approximates: str = "softmax") -> None:
  """Adds a method; names are unique and the function is `<name>_attention`.

  `approximates` names the exact attention the method's error is measured
  against (see `AttentionMethod`).
  """
  if name in _REGISTRY:
    raise ValueError(f"Attention method {name!r} is registered twice.")
  if fn.__name__ != f"{name}_attention":
    raise ValueError(f"The pure function of {name!r} must be named {name}_attention, "
                     f"not {fn.__name__}.")
  _REGISTRY[name] = AttentionMethod(name, fn, module, dict(small_input_kwargs or {}), approximates)


def names() -> list[str]:
  """All registered method names, sorted."""
  return sorted(_REGISTRY)


def get_method(name: str) -> AttentionMethod:
  """The registry entry of `name`; unknown names list the valid ones."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise errors.ConfigError(
        f"Unknown attention method {name!r}. Valid names: {', '.join(names())}. "
        f"Set it with --config.model.attention=NAME or in the config file.") from None


def get(name: str) -> type[nn.Module]:
  """The linen module class registered under `name`."""
  return get_method(name).module


# Module fields the multi-head layer sets itself, or that linen owns.
_NOT_HYPERPARAMETERS = ("dropout_rate", "parent", "name")


def default_hyperparameters(name: str) -> dict[str, Any]:
  """The hyper-parameters of `name`'s module with their defaults (the reference values).

  Configs start `model.attention_kwargs` from these, so every one of them is
  documented in one place (the module) and can be overridden on the command
  line, e.g. `--config.model.attention_kwargs.num_landmarks=64`.
  """
  return {field.name: field.default for field in dataclasses.fields(get(name))
          if field.name not in _NOT_HYPERPARAMETERS}
