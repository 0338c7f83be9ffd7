"""Models: the generic encoder and its single- and dual-input classifiers."""

from __future__ import annotations

import flax.linen as nn
import ml_collections
from absl import logging

from lra_jax import errors
from lra_jax.models.classifier import Classifier, DualEncoderClassifier, pool
from lra_jax.models.encoder import Encoder, EncoderConfig

# Attention methods with landmarks, and what happens when there are at least
# as many as tokens (a documented fallback, not an error).
_LANDMARK_FALLBACKS = {
    "nystrom": "computes exact softmax attention at this length, as the reference does",
    "skyformer": "samples them with replacement from the query and key rows, so some repeat",
}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Model settings that cannot run, checked before anything is built.

  Raises:
    errors.ConfigError: qkv_dim does not split into num_heads heads.
  """
  model = config.model
  if model.qkv_dim % model.num_heads:
    raise errors.ConfigError(
        f"model.qkv_dim={model.qkv_dim} does not split into model.num_heads={model.num_heads} "
        f"heads of equal size (every attention method needs qkv_dim = num_heads x head_dim); "
        f"set --config.model.qkv_dim to a multiple of {model.num_heads} or change "
        f"--config.model.num_heads.")
  landmarks = model.attention_kwargs.get("num_landmarks")
  length = config.data.padded_length
  if model.attention in _LANDMARK_FALLBACKS and landmarks and landmarks >= length:
    logging.warning(
        "model.attention_kwargs.num_landmarks=%d >= data.padded_length=%d: %s %s. Set "
        "--config.model.attention_kwargs.num_landmarks below %d for an approximation.",
        landmarks, length, model.attention, _LANDMARK_FALLBACKS[model.attention], length)


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The classifier that `config` describes (`config.model`, lengths from `config.data`)."""
  encoder_config = EncoderConfig.from_config(config.model, max_length=config.data.padded_length)
  return (DualEncoderClassifier if encoder_config.dual_encoder else Classifier)(encoder_config)


def input_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Batch keys the model takes, in call order."""
  return ("inputs1", "inputs2") if config.model.dual_encoder else ("inputs",)


__all__ = ["Classifier", "DualEncoderClassifier", "Encoder", "EncoderConfig", "check_config",
           "create_model", "input_names", "pool"]
