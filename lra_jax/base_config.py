"""Base configs: one per LRA task, in the two training protocols we reproduce.

A config file under `configs/` calls `get_config(task, attention, protocol)`
and overrides a few fields. Every field is documented here, once.

Protocols (pick with `protocol=`):

* `official`: Google's LRA JAX code (`lra_official_jax.md` §3, §5): task-sized
  models, sinusoidal or learned positions, CLS or MEAN pooling, Adam with
  decoupled weight decay (b2 0.98, eps 1e-9) and the factor-string schedule.
* `pytorch_lra`: the compact PyTorch LRA harness that Skyformer, Skeinformer,
  Spectraformer and SchoenbAt share, with the Skyformer repo's values
  (`skyformer_skeinformer.md` §2-4): 2 layers of width 64, learned positions,
  MEAN pooling, AdamW (eps 1e-6) with a one-cycle linear schedule that also
  cycles b1, gradient values clipped at 1. Lengths are padded to a power of
  two and embedding tables have the harness's sizes, so parameter counts
  match the papers'. Not reproduced: fp16 autocast and its loss scaler.

Quirks of the references that change results (MEAN pooling over padded
positions, ...) are off by default in both protocols; each is a named option
documented at its field (e.g. `model.mean_pooling`).
"""

from __future__ import annotations

import dataclasses
import typing

import ml_collections

from lra_jax import attention as attention_lib
from lra_jax import errors, official_models
from lra_jax.attention import maclaurin


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """What a task is, independent of protocol."""

  vocab_size: int  # token ids in [0, vocab_size); 0 is padding
  num_classes: int
  max_length: int  # tokens kept per example (per document for retrieval)
  dual_encoder: bool  # two documents per example (retrieval)


TASKS = {
    # Tokens: 15 ListOps symbols + pad + OOV (§1.1).
    "listops": TaskSpec(vocab_size=17, num_classes=10, max_length=2000, dual_encoder=False),
    # UTF-8 bytes + 1, pad 0 (§1.2); official length 1000.
    "text": TaskSpec(vocab_size=257, num_classes=2, max_length=1000, dual_encoder=False),
    # AAN pairs, bytes + 1, 4000 per document (§1.3).
    "retrieval": TaskSpec(vocab_size=257, num_classes=2, max_length=4000, dual_encoder=True),
    # Grayscale CIFAR-10 pixels as tokens, 32x32 (§1.4); ids pixel + 1 (the
    # official ids = pixel, vocab 256, with data.black_pixels_are_padding).
    "image": TaskSpec(vocab_size=257, num_classes=10, max_length=1024, dual_encoder=False),
    # Pathfinder-32, hardest difficulty, pixels as tokens (§1.5), ids as image.
    "pathfinder": TaskSpec(vocab_size=257, num_classes=2, max_length=1024, dual_encoder=False),
}

# Tasks whose tokens are pixels (lra_jax/data/pixels.py).
PIXEL_TASKS = ("image", "pathfinder")

PROTOCOLS = ("official", "pytorch_lra")


def _check_choice(field: str, value: str, valid) -> None:
  if value not in valid:
    raise errors.ConfigError(
        f"Unknown {field} {value!r}. Valid values: {', '.join(sorted(valid))}. "
        f"Pick one in the config file or on the command line, e.g. "
        f"--config=configs/lra.py:listops,softmax,official.")


def _attention_kwargs(attention: str) -> ml_collections.ConfigDict:
  """The method's hyper-parameters. Optional ones (default None) become typed
  placeholders, so the command line can set them (`X | None` -> X)."""
  kwargs = ml_collections.ConfigDict()
  types = typing.get_type_hints(attention_lib.get(attention))
  for name, value in attention_lib.default_hyperparameters(attention).items():
    if value is None:
      (value_type,) = [t for t in typing.get_args(types[name]) if t is not type(None)]
      value = ml_collections.config_dict.placeholder(value_type)
    kwargs[name] = value
  return kwargs


def _pixel_vocab_size(data: ml_collections.ConfigDict) -> ml_collections.FieldReference:
  """257 (ids = pixel + 1), or 256 when data.black_pixels_are_padding (ids = pixel).

  A reference, not a number, so the vocab follows the option when it is set
  after get_config (on the command line); setting model.vocab_size itself
  still overrides it.
  """
  return 257 - data.get_ref("black_pixels_are_padding").to_int()


def _common(task: str, attention: str, protocol: str) -> ml_collections.ConfigDict:
  """Fields shared by every task and protocol, with their documentation."""
  spec = TASKS[task]
  c = ml_collections.ConfigDict()
  # Which LRA task: listops, text, retrieval, image or pathfinder.
  c.task = task
  # Which training protocol the values below come from (see module docstring).
  c.protocol = protocol
  # Root seed: parameters, dropout, attention randomness and data order.
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  # Where examples come from: 'tfds' (our readers: the TFDS datasets and
  # release files below) or 'lra_processed' (the PyTorch LRA harness's
  # pickles in lra_processed_dir, as Skyformer & co. publish them; ids,
  # lengths and checks in lra_jax/data/lra_processed.py).
  c.data.source = "tfds"
  # Directory of lra-<task>.{train,dev,test}.pickle, read when source is
  # 'lra_processed' (preprocess/convert_lra_processed.py writes them).
  c.data.lra_processed_dir = ""
  # TFDS data directory holding the prepared datasets ('' = TFDS's default);
  # for ListOps also a directory of basic_{train,val,test}.tsv. Nothing is
  # ever downloaded into it (preprocess/build_tfds.py prepares it).
  c.data.data_dir = ""
  if task in ("listops", "retrieval", "pathfinder"):
    # The extracted LRA release (nested or flat), or generated data in its
    # layout: the lra_<task> TFDS dataset is prepared from it into data_dir on
    # first use when missing there. '' = <data_dir>/downloads/manual.
    c.data.release_dir = ""
  # Tokens kept per example (per document for retrieval); longer ones are cut.
  c.data.max_length = spec.max_length
  # Every batch is padded to this length (>= max_length).
  c.data.padded_length = spec.max_length
  if task == "retrieval":
    # Bytes of each raw document kept before tokenising (official: 10,000).
    c.data.max_document_bytes = 10_000
  if task in PIXEL_TASKS:
    # Token id = pixel value, so black pixels are padding and masked out (the
    # official and PyTorch LRA quirk, vocab 256), instead of pixel + 1 (vocab
    # 257). model.vocab_size follows it.
    c.data.black_pixels_are_padding = False
  if task == "pathfinder":
    # Image side: 32 (Pathfinder), 64, 128 (Path-X) or 256; and difficulty:
    # 'baseline', 'intermediate' or 'hard' (the paper's, §1.5).
    c.data.pathfinder_resolution = 32
    c.data.pathfinder_difficulty = "hard"
    # One token per pixel: max_length and padded_length follow the resolution.
    c.data.max_length = c.data.get_ref("pathfinder_resolution") ** 2
    c.data.padded_length = c.data.get_ref("max_length")
  # Global batch size (all devices and hosts together), train and eval.
  c.data.batch_size = 32
  c.data.eval_batch_size = 32
  # Examples in the tf.data shuffle buffer of the training split.
  c.data.shuffle_buffer_size = 10_000
  if task in ("listops", "pathfinder"):
    # Generate missing data offline: ListOps' three TSVs into data_dir,
    # Pathfinder's images into release_dir (then prepared as released data).
    c.data.generate_if_missing = False
  if task == "listops":
    # ListOps generator settings (lra_official_jax.md §2), used when generating.
    c.data.listops_generator = ml_collections.ConfigDict(dict(
        num_train=96_000, num_val=2_000, num_test=2_000,
        min_length=500, max_length=2_000, max_depth=10, max_args=10, seed=0))
  if task == "pathfinder":
    # Pathfinder generator settings (the release: 200 files x 1,000 images).
    c.data.pathfinder_generator = ml_collections.ConfigDict(dict(
        num_images=200_000, images_per_file=1_000, seed=0))

  c.model = ml_collections.ConfigDict()
  # Attention method, a name from lra_jax.attention.names().
  c.model.attention = attention
  # Hyper-parameters of that method, passed to its module; they start at the
  # reference values documented on the module (lra_jax/attention/<family>.py).
  c.model.attention_kwargs = _attention_kwargs(attention)
  # Embedding table rows; ids must be below it.
  c.model.vocab_size = _pixel_vocab_size(c.data) if task in PIXEL_TASKS else spec.vocab_size
  c.model.num_classes = spec.num_classes
  # Two documents through one shared encoder, then a pair classifier.
  c.model.dual_encoder = spec.dual_encoder
  # How the dual encoder combines the two pooled vectors: 'concat' = [u, v];
  # 'nli' = [u, v, u*v, u-v].
  c.model.dual_combination = "concat"
  # Model width, heads, blocks, attention width (heads x head_dim), MLP width.
  c.model.emb_dim = 512
  c.model.num_heads = 8
  c.model.num_layers = 4
  c.model.qkv_dim = 512
  c.model.mlp_dim = 1024
  # Dropout on embeddings, attention output and MLP; on attention weights.
  c.model.dropout_rate = 0.1
  c.model.attention_dropout_rate = 0.1
  # 'sinusoidal' (fixed) or 'learned' position embeddings.
  c.model.position_embedding = "sinusoidal"
  # Std of the normal init of token (and learned position) embeddings.
  c.model.embedding_init_std = 1.0
  c.model.position_init_std = 0.02
  # 'CLS' (learned token prepended, its output classified) or 'MEAN'.
  c.model.pooling = "CLS"
  # MEAN pooling: 'real_tokens' averages real tokens only (correct); the
  # references' quirks: 'all_positions' (official LRA: averages every position,
  # padded ones included) and 'zeroed_padding' (PyTorch LRA: padded outputs
  # zeroed, sum divided by the padded length).
  c.model.mean_pooling = "real_tokens"
  # Hidden widths of the classifier MLP (ReLU between layers).
  c.model.classifier_hidden_dims = (1024,)
  c.model.layer_norm_epsilon = 1e-6
  # Biases on the Q/K/V and output projections of attention.
  c.model.attention_bias = False
  # 'jax' (official: xavier-uniform kernels, N(1e-6) MLP biases) or 'pytorch'
  # (torch.nn.Linear defaults: U(+-1/sqrt(fan_in)) kernels and biases).
  c.model.init = "jax"
  # tanh approximation of GELU (official) or the exact erf form (PyTorch).
  c.model.gelu_approximate = True
  # Compute dtype of the model: 'float32' or 'bfloat16'. Parameters stay
  # float32; softmaxes, feature maps and pseudo-inverses run in float32.
  c.model.dtype = "float32"

  c.train = ml_collections.ConfigDict()
  c.train.num_train_steps = 5_000
  # Optimiser 'adamw': Adam with decoupled weight decay multiplied by the LR,
  # on every parameter (flax.optim.Adam and torch AdamW both do this).
  c.train.learning_rate = 0.05
  c.train.b1 = 0.9
  c.train.b2 = 0.98
  c.train.eps = 1e-9
  c.train.weight_decay = 0.1
  # Schedule 'factors': product of the factors named in `factors` (official
  # LRA); 'one_cycle': PyTorch OneCycleLR with linear annealing (peak
  # learning_rate after warmup_steps, start peak/div_factor, end
  # start/final_div_factor), optionally cycling b1 between the two momenta.
  c.train.schedule = "factors"
  c.train.factors = "constant * linear_warmup * rsqrt_decay"
  c.train.warmup_steps = 1_000
  # Cycle length of the 'cosine_decay' factor.
  c.train.steps_per_cycle = 100_000
  c.train.div_factor = 25.0
  c.train.final_div_factor = 1e4
  # One-cycle b1 cycling (max -> base -> max); None keeps b1 fixed.
  c.train.cycle_b1 = None
  # Gradient clipping before the optimiser: global norm and/or element value.
  c.train.grad_clip_norm = None
  c.train.grad_clip_value = None
  # Micro-batches per step (the seed repos' bz_rate): same maths, less memory.
  c.train.grad_accum_steps = 1
  # A step whose loss, gradients or updated parameters are not finite stops
  # training (the last good checkpoint is kept; nothing of that state is
  # saved). True skips such updates instead: parameters and optimiser state
  # stay, the step counter advances (so data order and random draws remain
  # functions of the seed and step), and the skips are logged and counted in
  # results.json.
  c.train.skip_nonfinite_steps = False
  # Early stopping (the Skeinformer repo's rule, skyformer_skeinformer.md §4):
  # stop when the validation loss has not improved on its best for this many
  # consecutive evaluations; None trains all num_train_steps. Never before
  # early_stopping_min_steps (the reference's num_init_steps guard, which its
  # code never enforces: 0 reproduces it). The test metrics of the final,
  # early-stopped state are the reference's reported numbers.
  c.train.early_stopping_patience = ml_collections.config_dict.placeholder(int)
  c.train.early_stopping_min_steps = 0
  # Evaluate on validation every N steps, over at most num_eval_steps batches
  # (-1: the whole split). The final test always uses the whole test split.
  c.train.eval_every_steps = 50
  c.train.num_eval_steps = -1
  c.train.log_every_steps = 50
  c.train.checkpoint_every_steps = 1_000
  # Latest checkpoints kept (the best-by-validation one is kept separately).
  c.train.max_checkpoints_to_keep = 2
  return c


def _official(c: ml_collections.ConfigDict) -> None:
  """Official LRA settings (lra_official_jax.md §3.2, §3.3), per-model ones included."""
  task = c.task
  if task == "listops":
    # base_listops_config: 4 x 512, 8 heads, MLP 1024; rsqrt schedule, warmup 1000.
    c.train.update(num_train_steps=5_000, eval_every_steps=50, warmup_steps=1_000)
  elif task == "text":
    c.model.update(emb_dim=256, num_heads=4, num_layers=4, qkv_dim=256, mlp_dim=1024)
    c.train.update(num_train_steps=20_000, eval_every_steps=100, warmup_steps=8_000)
  elif task == "retrieval":
    c.model.update(emb_dim=128, num_heads=4, num_layers=4, qkv_dim=128, mlp_dim=512)
    c.train.update(num_train_steps=5_000, eval_every_steps=100, warmup_steps=8_000)
  elif task == "image":
    # CIFAR-10 transformer_base: 1 layer, 8 heads, learned positions.
    c.data.update(batch_size=256, eval_batch_size=256)
    c.model.update(emb_dim=128, num_heads=8, num_layers=1, qkv_dim=64, mlp_dim=128,
                   dropout_rate=0.3, attention_dropout_rate=0.2,
                   position_embedding="learned")
    c.train.update(num_train_steps=35_000, eval_every_steps=175, warmup_steps=175,
                   steps_per_cycle=35_000, learning_rate=5e-4, weight_decay=0.0,
                   factors="constant * linear_warmup * cosine_decay")
  elif task == "pathfinder":
    # pathfinder32 transformer_base: 4 layers, MEAN pooling, sinusoidal.
    c.data.update(batch_size=512, eval_batch_size=512)
    c.model.update(emb_dim=32, num_heads=4, num_layers=4, qkv_dim=16, mlp_dim=32,
                   dropout_rate=0.2, attention_dropout_rate=0.1, pooling="MEAN")
    c.train.update(num_train_steps=62_400, eval_every_steps=312, warmup_steps=312,
                   steps_per_cycle=62_400, learning_rate=1e-3, weight_decay=0.0,
                   factors="constant * linear_warmup * cosine_decay")
  c.model.classifier_hidden_dims = (
      (c.model.mlp_dim, c.model.mlp_dim // 2) if c.model.dual_encoder else (c.model.mlp_dim,))
  c.train.log_every_steps = c.train.eval_every_steps
  official_models.apply(c)


# Skyformer repo config.py (skyformer_skeinformer.md §3, §3.1): embedding
# table rows, batch, peak LR, warm-up, eval period and eval batches per task.
_PYTORCH_LRA = {
    "listops": dict(vocab=32, batch=32, lr=1e-4, warmup=1_000, eval_every=500, eval_steps=62),
    "text": dict(vocab=512, batch=32, lr=1e-4, warmup=80, eval_every=500, eval_steps=200),
    "retrieval": dict(vocab=512, batch=16, lr=2e-4, warmup=800, eval_every=1_000, eval_steps=300),
    # None: the rows the data's ids need (the harness's 256 with
    # data.black_pixels_are_padding, 257 without).
    "image": dict(vocab=None, batch=256, lr=1e-4, warmup=175, eval_every=50, eval_steps=20),
    "pathfinder": dict(vocab=512, batch=128, lr=2e-4, warmup=312, eval_every=500, eval_steps=156),
}


def _pytorch_lra(c: ml_collections.ConfigDict) -> None:
  """The compact PyTorch LRA harness (skyformer_skeinformer.md §2-4)."""
  t = _PYTORCH_LRA[c.task]
  # max_seq_len rounded up to a power of two: 2000 -> 2048, 4000 -> 4096
  # (Pathfinder's R*R already is one, and keeps following the resolution).
  if c.task in ("text", "retrieval"):
    c.data.max_length = 4_000
  if c.task != "pathfinder":
    c.data.padded_length = 1 << (c.data.max_length - 1).bit_length()
  c.data.update(batch_size=t["batch"], eval_batch_size=t["batch"])
  if t["vocab"] is not None:
    c.model.vocab_size = t["vocab"]
  c.model.update(
      emb_dim=64, num_heads=2, num_layers=2, qkv_dim=64, mlp_dim=128,
      dropout_rate=0.1, attention_dropout_rate=0.1, position_embedding="learned",
      embedding_init_std=0.02, position_init_std=0.02, pooling="MEAN",
      classifier_hidden_dims=(128,), layer_norm_epsilon=1e-5,
      attention_bias=True, init="pytorch", gelu_approximate=False, dual_combination="nli")
  c.train.update(
      num_train_steps=50_000, learning_rate=t["lr"], b1=0.9, b2=0.999, eps=1e-6,
      weight_decay=0.0, schedule="one_cycle", warmup_steps=t["warmup"], div_factor=25.0,
      final_div_factor=1e4, cycle_b1=(0.85, 0.95), grad_clip_value=1.0,
      eval_every_steps=t["eval_every"], num_eval_steps=t["eval_steps"],
      log_every_steps=t["eval_every"])
  if c.model.attention == "rmfa":
    # SchoenbAt's copy of the harness trains 10,000 steps (spectraformer_schoenbat.md §6.7).
    c.train.num_train_steps = maclaurin.SCHOENBAT_TRAIN_STEPS


def get_config(task: str = "listops", attention: str = "softmax",
               protocol: str = "official") -> ml_collections.ConfigDict:
  """The base config of `task` under `protocol`, with `attention` selected."""
  _check_choice("task", task, TASKS)
  _check_choice("protocol", protocol, PROTOCOLS)
  c = _common(task, attention, protocol)
  if protocol == "official":
    _official(c)
  else:
    _pytorch_lra(c)
  return c
