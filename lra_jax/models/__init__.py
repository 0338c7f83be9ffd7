"""Models: the generic encoder and its single- and dual-input classifiers."""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from lra_jax.models.classifier import Classifier, DualEncoderClassifier, pool
from lra_jax.models.encoder import Encoder, EncoderConfig


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The classifier that `config` describes (`config.model`, lengths from `config.data`)."""
  encoder_config = EncoderConfig.from_config(config.model, max_length=config.data.padded_length)
  return (DualEncoderClassifier if encoder_config.dual_encoder else Classifier)(encoder_config)


def input_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Batch keys the model takes, in call order."""
  return ("inputs1", "inputs2") if config.model.dual_encoder else ("inputs",)


__all__ = ["Classifier", "DualEncoderClassifier", "Encoder", "EncoderConfig", "create_model",
           "input_names", "pool"]
