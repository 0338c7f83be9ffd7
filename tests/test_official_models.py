"""The official protocol carries the official LRA code's per-model settings (lra_official_jax.md §3.3, §3.4)."""

import pytest

from lra_jax import attention, base_config, official_models


def test_every_row_of_the_official_table_is_a_registered_method():
  assert set(official_models.OFFICIAL_TABLE_METHODS.values()) <= set(attention.names())


@pytest.mark.parametrize("task", sorted(base_config.TASKS))
@pytest.mark.parametrize("method", sorted(set(official_models.OFFICIAL_TABLE_METHODS.values())))
def test_every_official_row_has_a_config_on_every_task(task, method):
  c = base_config.get_config(task, method, "official")
  # The settings are real hyper-parameters of the module, not new keys.
  assert set(c.model.attention_kwargs) == set(attention.default_hyperparameters(method))


@pytest.mark.parametrize("method,fields", [
    # Transcribed from the CIFAR-10 table: layers, emb, qkv, mlp, heads, pool.
    ("local", (1, 128, 64, 128, 2, "MEAN")),
    ("longformer", (4, 128, 64, 128, 4, "MEAN")),
    ("reformer", (4, 64, 32, 64, 8, "CLS")),
    ("sinkhorn", (1, 32, 32, 64, 1, "MEAN")),
    ("performer", (1, 128, 64, 128, 8, "CLS")),
])
def test_image_overrides(method, fields):
  m = base_config.get_config("image", method, "official").model
  assert (m.num_layers, m.emb_dim, m.qkv_dim, m.mlp_dim, m.num_heads, m.pooling) == fields


@pytest.mark.parametrize("method,fields", [
    # Pathfinder-32 table: layers, heads, emb, qkv, mlp, dropout.
    ("bigbird", (4, 2, 64, 32, 64, 0.2)),
    ("linear_transformer", (1, 2, 128, 64, 128, 0.2)),
    ("local", (2, 4, 64, 32, 64, 0.1)),
    ("sparse", (1, 8, 32, 16, 32, 0.2)),
])
def test_pathfinder_overrides_keep_mean_pooling(method, fields):
  m = base_config.get_config("pathfinder", method, "official").model
  assert (m.num_layers, m.num_heads, m.emb_dim, m.qkv_dim, m.mlp_dim, m.dropout_rate) == fields
  assert m.pooling == "MEAN"


def test_sinkhorn_trains_with_its_own_weight_decay_and_a_linear_head():
  c = base_config.get_config("image", "sinkhorn", "official")
  assert c.train.weight_decay == 0.7 and c.model.classifier_hidden_dims == ()
  assert base_config.get_config("image", "softmax", "official").train.weight_decay == 0.0


def test_attention_settings_of_the_official_models():
  kwargs = base_config.get_config("text", "linformer", "official").model.attention_kwargs
  assert (kwargs.linformer_k, kwargs.shared_across_heads, kwargs.projection_init) == (
      16, True, "xavier_uniform")
  assert not kwargs.padded_positions_projected  # the padding bug stays off
  # Reformer: one round, 10 buckets, 10 equal chunks of the CLS-extended length.
  kwargs = base_config.get_config("listops", "reformer", "official").model.attention_kwargs
  assert (kwargs.num_hash, kwargs.num_buckets, kwargs.chunk_length) == (1, 10, 201)
  assert base_config.get_config("image", "local", "official").model.attention_kwargs.block_size == 64
  # Performer: FAVOR+ with 2 features on ListOps, deterministic ReLU features elsewhere.
  listops = base_config.get_config("listops", "performer", "official").model.attention_kwargs
  assert (listops.features, listops.nb_features) == ("favor_plus", 2)
  assert base_config.get_config("text", "performer", "official").model.attention_kwargs.features == "relu"
  assert base_config.get_config("text", "local", "official").model.attention_kwargs.block_size == 50


def test_pytorch_protocol_and_other_methods_are_untouched():
  official = base_config.get_config("text", "skyformer", "official")
  assert dict(official.model.attention_kwargs) == attention.default_hyperparameters("skyformer")
  pytorch = base_config.get_config("text", "linformer", "pytorch_lra")
  assert pytorch.model.attention_kwargs.linformer_k == 128
