"""Every config file loads, and the model it describes builds and runs.

Configs are shrunk (2 layers, width 16, length <= 64) so the model of every
file can be initialised and applied in seconds; the full sizes are checked by
parameter count in tests/models/test_encoder.py.
"""

import importlib.util
import inspect
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_jax import attention, base_config, errors, models, trainer
from lra_jax.attention import maclaurin

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.py"))


def load(path, *args):
  return _module(path).get_config(*args)


def _variants(path):
  """(path, argument) pairs: every protocol of files that take one."""
  parameters = inspect.signature(_module(path).get_config).parameters
  if "protocol" in parameters:
    return [(path, (protocol,)) for protocol in base_config.PROTOCOLS] + [(path, ())]
  return [(path, ())]


def _module(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def shrink(config):
  config.data.max_length = min(config.data.max_length, 64)
  config.data.padded_length = min(config.data.padded_length, 64)
  config.model.update(emb_dim=16, num_heads=2, num_layers=min(config.model.num_layers, 2),
                      qkv_dim=16, mlp_dim=32,
                      classifier_hidden_dims=tuple(16 for _ in config.model.classifier_hidden_dims))
  return config


def build_and_apply(config):
  model = models.create_model(config)
  rng = np.random.default_rng(0)
  inputs = [jnp.asarray(rng.integers(0, config.model.vocab_size, (2, config.data.padded_length)),
                        jnp.int32) for _ in models.input_names(config)]
  variables = model.init({"params": jax.random.key(0), attention.ATTENTION_RNG: jax.random.key(1)},
                         *inputs, deterministic=True)
  logits = model.apply(variables, *inputs, deterministic=False,
                       rngs={"dropout": jax.random.key(2), attention.ATTENTION_RNG: jax.random.key(3)})
  assert logits.shape == (2, config.model.num_classes)
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("path,args", [v for path in CONFIG_FILES for v in _variants(path)],
                         ids=lambda x: x.name if isinstance(x, pathlib.Path) else ",".join(x))
def test_config_file_builds_its_model(path, args):
  config = load(path, *args)
  assert config.task in base_config.TASKS
  assert __doc__ and _module(path).__doc__ and "python -m lra_jax.train" in _module(path).__doc__
  build_and_apply(shrink(config))


@pytest.mark.parametrize("task", sorted(base_config.TASKS))
@pytest.mark.parametrize("protocol", base_config.PROTOCOLS)
def test_every_task_method_protocol_is_reachable(task, protocol):
  for name in attention.names():
    config = load(CONFIG_DIR / "lra.py", f"{task},{name},{protocol}")
    assert (config.task, config.model.attention, config.protocol) == (task, name, protocol)


# Every method's model is built and run under both protocols, each on one of
# the tasks in turn (so every task, dual encoder and pixel tasks included,
# builds about a fifth of the methods), instead of all 5 x 2 x methods models.
_TASK_OF_METHOD = {name: sorted(base_config.TASKS)[i % len(base_config.TASKS)]
                   for i, name in enumerate(attention.names())}


@pytest.mark.parametrize("name", attention.names())
@pytest.mark.parametrize("protocol", base_config.PROTOCOLS)
def test_every_method_builds_and_runs_under_each_protocol(name, protocol):
  config = load(CONFIG_DIR / "lra.py", f"{_TASK_OF_METHOD[name]},{name},{protocol}")
  config.model.attention_kwargs.update(attention.get_method(name).small_input_kwargs)
  build_and_apply(shrink(config))


@pytest.mark.parametrize("task", ["listops", "text", "retrieval"])
def test_rmfa_by_config_argument_trains_schoenbats_step_count_under_the_pytorch_harness(task):
  # The same as configs/<task>_rmfa.py:...,pytorch_lra (tests/attention/test_maclaurin.py).
  assert (load(CONFIG_DIR / "lra.py", f"{task},rmfa,pytorch_lra").train.num_train_steps
          == maclaurin.SCHOENBAT_TRAIN_STEPS)
  assert load(CONFIG_DIR / "lra.py", f"{task},softmax,pytorch_lra").train.num_train_steps == 50_000


def test_every_task_has_a_softmax_config_file():
  for task in base_config.TASKS:
    assert (CONFIG_DIR / f"{task}_softmax.py").exists()


@pytest.mark.parametrize("arg,message", [("listops", "TASK,ATTENTION"),
                                         ("chess,softmax", "Valid values"),
                                         ("listops,softmax,torch", "pytorch_lra")])
def test_bad_arguments_say_what_is_valid(arg, message):
  with pytest.raises(errors.ConfigError, match=message):
    load(CONFIG_DIR / "lra.py", arg)


@pytest.mark.parametrize("name", attention.names())
def test_attention_kwargs_start_at_the_reference_defaults(name):
  # The official protocol puts the official LRA code's settings on its
  # table's methods instead (tests/test_official_models.py).
  kwargs = base_config.get_config("text", name, "pytorch_lra").model.attention_kwargs
  assert kwargs.to_dict() == attention.default_hyperparameters(name)


def test_optional_hyperparameters_can_be_set_on_a_locked_config():
  config = base_config.get_config("listops", "nystrom")
  config.lock()
  assert config.model.attention_kwargs.conv_kernel_size is None
  config.model.attention_kwargs.conv_kernel_size = 35
  assert config.model.attention_kwargs.conv_kernel_size == 35
  with pytest.raises(TypeError):
    config.model.attention_kwargs.conv_kernel_size = "wide"


def test_heads_that_do_not_split_qkv_dim_fail_in_the_library_too():
  # Library callers of trainer.train_and_evaluate get the same check as the command line.
  config = base_config.get_config("listops", "softmax", "official")
  config.model.update(qkv_dim=30, num_heads=4)
  with pytest.raises(errors.ConfigError, match="does not split into model.num_heads=4"):
    trainer.check_config(config, num_devices=1, num_processes=1)
