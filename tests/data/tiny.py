"""A task's config shrunk to seconds on a CPU, for end-to-end tests on fixture data."""

from lra_jax import base_config


def tiny_config(task, data_dir, release_dir, max_length):
  """`task`, official protocol, shrunk to seconds on a CPU."""
  config = base_config.get_config(task, "softmax", "official")
  config.data.update(data_dir=data_dir, release_dir=release_dir, max_length=max_length,
                     padded_length=max_length, batch_size=4, eval_batch_size=4,
                     shuffle_buffer_size=16)
  hidden = (16, 8) if config.model.dual_encoder else (16,)
  config.model.update(emb_dim=16, num_heads=2, num_layers=1, qkv_dim=16, mlp_dim=16,
                      classifier_hidden_dims=hidden)
  config.train.update(num_train_steps=2, eval_every_steps=2, log_every_steps=2,
                      checkpoint_every_steps=2, warmup_steps=1)
  return config
