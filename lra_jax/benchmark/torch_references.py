"""PyTorch implementations timed beside ours in the same run (optional: needs the torch-reference extra).

    python -m lra_jax.benchmark.torch_references --lengths=1024,4096 --dtypes=float32

prints one JSON line with every timing; `python -m lra_jax.benchmark
attention --torch` runs it as a child process (so PyTorch's and XLA's thread
pools never compete) at the same shapes, lengths and dtypes as ours.

Two kinds, each a factory `make(length, batch, heads, head_dim, dtype)`
returning `(forward, leaves)`: a zero-argument callable running the forward
pass and the tensors the backward pass differentiates:

* `seed:<name>`: the attention cores of the seed repos (Skyformer's LRA
  harness), written from their specification in
  ../shared/reference/skyformer_skeinformer.md §1 (no autocast, no gradient
  checkpointing), so the per-method ratios compare like with like.
* `pypi:<package>` and `hf:<model>`: what a user would otherwise pick from
  the package index: `nystrom-attention`, `performer-pytorch`, `linformer`,
  `reformer-pytorch` (lucidrains) and HuggingFace `transformers`'
  Nyströmformer self-attention. These include their own projections where
  the package does not expose the core alone (noted per entry); at
  head_dim 32 and 2 heads the projections are a small part of the cost.

Timing as ours: `warmup` untimed calls, then `repeats` timed ones; forward
under `torch.no_grad()`, forward+backward as sum(out^2).backward(); on a
CUDA device (the default when there is one) each call is synchronised.
Install with `pip install -e .[torch-reference]` (see README).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
import types
from typing import Callable

import numpy as np
import torch

Factory = Callable[..., tuple[Callable[[], torch.Tensor], tuple[torch.Tensor, ...]]]


def _generator():
  return torch.Generator(device=torch.get_default_device()).manual_seed(0)


def _qkv(length, batch, heads, head_dim, dtype, layout="bhnd"):
  generator = _generator()
  shape = (batch, heads, length, head_dim) if layout == "bhnd" else (batch, length, heads * head_dim)
  tensors = [torch.randn(shape, generator=generator).to(dtype).requires_grad_() for _ in range(3)]
  return tensors, torch.ones(batch, length, dtype=dtype)


def seed_softmax(length, batch, heads, head_dim, dtype):
  (q, k, v), mask = _qkv(length, batch, heads, head_dim, dtype)

  def forward():
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim) - 1e6 * (1 - mask[:, None, None, :])
    return torch.softmax(scores, dim=-1) @ v
  return forward, (q, k, v)


def _gaussian_kernel(x, y):
  return torch.exp(x @ y.transpose(-2, -1) - 0.5 * (x * x).sum(-1)[..., :, None]
                   - 0.5 * (y * y).sum(-1)[..., None, :])


def seed_kernelized(length, batch, heads, head_dim, dtype):
  (q, k, v), mask = _qkv(length, batch, heads, head_dim, dtype)
  scale = head_dim ** -0.25

  def forward():
    m = mask[:, None, :, None]
    return _gaussian_kernel(q * m * scale, k * m * scale) @ v
  return forward, (q, k, v)


def _newton_schulz_pinv(matrix, iterations=6):
  identity = torch.eye(matrix.shape[-1], dtype=matrix.dtype)
  inverse = matrix.transpose(-1, -2) / torch.max(torch.sum(matrix.abs(), dim=-2))
  for _ in range(iterations):
    product = matrix @ inverse
    inverse = 0.25 * inverse @ (13 * identity
                                - product @ (15 * identity - product @ (7 * identity - product)))
  return inverse


def seed_skyformer(length, batch, heads, head_dim, dtype, num_landmarks=128, jitter=0.1):
  (q, k, v), mask = _qkv(length, batch, heads, head_dim, dtype)
  scale = head_dim ** -0.25

  def forward():
    m = mask[:, None, :, None]
    x = torch.cat([q * m * scale, k * m * scale], dim=2)
    with torch.no_grad():
      u = torch.rand(num_landmarks)
      half = num_landmarks // 2
      index = (u * length).long()
      index[half:] += length
    landmarks = x[:, :, index]
    c_xl = _gaussian_kernel(x, landmarks)
    core = c_xl[:, :, index] + jitter * torch.eye(num_landmarks, dtype=dtype)
    degree = core.sum(-1) ** -0.5
    normalised = degree[..., :, None] * core * degree[..., None, :]
    inverse = _newton_schulz_pinv(normalised)
    key_features = c_xl[:, :, length:] * m * degree[..., None, :] @ inverse * degree[..., None, :]
    return c_xl[:, :, :length] @ (key_features.transpose(-1, -2) @ (v * m))
  return forward, (q, k, v)


def seed_nystrom(length, batch, heads, head_dim, dtype, num_landmarks=128):
  (q, k, v), mask = _qkv(length, batch, heads, head_dim, dtype)
  scale = head_dim ** -0.25

  def forward():
    m = mask[:, None, :, None]
    qs, ks = q * m * scale, k * m * scale
    segment = length // num_landmarks
    q_l = qs.reshape(batch, heads, num_landmarks, segment, head_dim).mean(-2)
    k_l = ks.reshape(batch, heads, num_landmarks, segment, head_dim).mean(-2)
    kernel_1 = torch.softmax(qs @ k_l.transpose(-1, -2), dim=-1)
    kernel_2 = torch.softmax(q_l @ k_l.transpose(-1, -2), dim=-1)
    kernel_3 = torch.softmax(q_l @ ks.transpose(-1, -2) - 1e9 * (1 - mask[:, None, None, :]), dim=-1)
    return (kernel_1 @ _newton_schulz_pinv(kernel_2)) @ (kernel_3 @ v)
  return forward, (q, k, v)


def seed_linformer(length, batch, heads, head_dim, dtype, projected_length=128):
  (q, k, v), mask = _qkv(length, batch, heads, head_dim, dtype)
  projection = (torch.randn(heads, projected_length, length) * 0.02).to(dtype)

  def forward():
    m = mask[:, None, :, None]
    k_p, v_p = projection @ (k * m), projection @ (v * m)
    return torch.softmax(q @ k_p.transpose(-1, -2) / math.sqrt(head_dim), dim=-1) @ v_p
  return forward, (q, k, v)


def pypi_performer(length, batch, heads, head_dim, dtype):
  """performer-pytorch's FastAttention, the module the seeds wrap (128 features)."""
  from performer_pytorch import FastAttention
  (q, k, v), _ = _qkv(length, batch, heads, head_dim, dtype)
  module = FastAttention(dim_heads=head_dim, nb_features=128).to(dtype)
  return (lambda: module(q, k, v)), (q, k, v)


def pypi_nystrom_attention(length, batch, heads, head_dim, dtype):
  """nystrom-attention's NystromAttention (128 landmarks, no conv); includes its projections."""
  from nystrom_attention import NystromAttention
  (x, _, _), _ = _qkv(length, batch, heads, head_dim, dtype, layout="bnc")
  module = NystromAttention(dim=heads * head_dim, dim_head=head_dim, heads=heads, num_landmarks=128,
                            residual=False).to(dtype)
  return (lambda: module(x)), (x,)


def hf_nystromformer(length, batch, heads, head_dim, dtype):
  """transformers' NystromformerSelfAttention (128 landmarks, no conv); includes its projections.

  It needs the length to be a multiple of the landmarks (segment means).
  """
  from transformers.models.nystromformer.modeling_nystromformer import NystromformerSelfAttention
  # The fields the layer reads. Not a NystromformerConfig: its validation
  # wants an int conv_kernel_size, while the layer reads None as "no conv
  # skip", the setting of ours and of nystrom-attention here.
  config = types.SimpleNamespace(hidden_size=heads * head_dim, num_attention_heads=heads,
                                 num_landmarks=128, segment_means_seq_len=length,
                                 conv_kernel_size=None, inv_coeff_init_option=False,
                                 attention_probs_dropout_prob=0.0)
  (x, _, _), _ = _qkv(length, batch, heads, head_dim, dtype, layout="bnc")
  module = NystromformerSelfAttention(config).to(dtype)
  return (lambda: module(x)[0]), (x,)


def pypi_linformer(length, batch, heads, head_dim, dtype):
  """linformer's LinformerSelfAttention (k 128, shared K/V projection); includes its projections."""
  from linformer import LinformerSelfAttention
  (x, _, _), _ = _qkv(length, batch, heads, head_dim, dtype, layout="bnc")
  module = LinformerSelfAttention(dim=heads * head_dim, seq_len=length, k=128, heads=heads,
                                  dim_head=head_dim, share_kv=True).to(dtype)
  return (lambda: module(x)), (x,)


def pypi_reformer(length, batch, heads, head_dim, dtype):
  """reformer-pytorch's LSHAttention (bucket 64, 2 hashes) on shared QK, heads folded into batch."""
  from reformer_pytorch import LSHAttention
  generator = _generator()
  qk, v = (torch.randn(batch * heads, length, head_dim, generator=generator).to(dtype).requires_grad_()
           for _ in range(2))
  module = LSHAttention(bucket_size=64, n_hashes=2)
  return (lambda: module(qk, v)[0]), (qk, v)


REFERENCES: dict[str, Factory] = {
    "seed:softmax": seed_softmax,
    "seed:kernelized": seed_kernelized,
    "seed:skyformer": seed_skyformer,
    "seed:nystrom": seed_nystrom,
    "seed:linformer": seed_linformer,
    "pypi:performer-pytorch": pypi_performer,
    "pypi:nystrom-attention": pypi_nystrom_attention,
    "hf:nystromformer": hf_nystromformer,
    "pypi:linformer": pypi_linformer,
    "pypi:reformer-pytorch": pypi_reformer,
}

# Which of our methods each reference is compared with.
COUNTERPART = {
    "seed:softmax": "softmax", "seed:kernelized": "kernelized", "seed:skyformer": "skyformer",
    "seed:nystrom": "nystrom", "seed:linformer": "linformer",
    "pypi:performer-pytorch": "performer", "pypi:nystrom-attention": "nystrom",
    "hf:nystromformer": "nystrom", "pypi:linformer": "linformer",
    "pypi:reformer-pytorch": "reformer",
}

# Their n x n matrices outgrow memory with ours (--max_quadratic_length).
QUADRATIC = ("seed:softmax", "seed:kernelized")


def time_reference(make: Factory, length: int, dtype: torch.dtype, mode: str, *, batch: int = 4,
                   heads: int = 2, head_dim: int = 32, repeats: int = 5, warmup: int = 1,
                   autocast: bool = False) -> list[float]:
  """Wall times (ms) of `repeats` calls after `warmup`; mode 'forward' or 'forward_backward'.

  With `autocast`, inputs and weights stay float32 and the calls run under
  `torch.autocast(dtype=dtype)` (PyTorch's usual mixed precision); else
  they are cast to `dtype`.
  """
  device = torch.get_default_device()
  forward, leaves = make(length, batch, heads, head_dim, torch.float32 if autocast else dtype)
  synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

  def run():
    with torch.autocast(device.type, dtype=dtype, enabled=autocast):
      if mode == "forward":
        with torch.no_grad():
          forward()
      else:
        for leaf in leaves:
          leaf.grad = None
        (forward().float() ** 2).sum().backward()
    synchronize()

  for _ in range(warmup):
    run()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(1000.0 * (time.perf_counter() - start))
  return times


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description="Time the PyTorch references; prints one JSON line.")
  parser.add_argument("--lengths", default="1024,4096")
  parser.add_argument("--dtypes", default="float32")
  parser.add_argument("--modes", default="forward,forward_backward")
  parser.add_argument("--references", default=",".join(REFERENCES),
                      help="comma-separated labels (default: all)")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--heads", type=int, default=2)
  parser.add_argument("--head_dim", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--max_quadratic_length", type=int, default=8192)
  parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
  args = parser.parse_args(argv)
  torch.set_default_device(args.device)
  results, failures = [], []
  for label in filter(None, args.references.split(",")):
    for dtype_name in args.dtypes.split(","):
      dtype = getattr(torch, dtype_name)
      for length in sorted(int(x) for x in args.lengths.split(",")):
        if label in QUADRATIC and length > args.max_quadratic_length:
          continue
        for mode in args.modes.split(","):
          record = {"name": label, "length": length, "dtype": dtype_name, "mode": mode}
          # Reduced precision: the package's tensors in that dtype first; some
          # packages make float32 constants inside (torch.eye), and then
          # autocast, which PyTorch users would reach for, is timed instead.
          attempts = [False, True] if dtype != torch.float32 else [False]
          for autocast in attempts:
            try:
              times = time_reference(REFERENCES[label], length, dtype, mode, batch=args.batch,
                                     heads=args.heads, head_dim=args.head_dim,
                                     repeats=args.repeats, warmup=args.warmup, autocast=autocast)
            except Exception as error:  # one failing package must not hide the others
              if autocast or len(attempts) == 1:
                failures.append({**record, "error": f"{type(error).__name__}: {error}"[:500],
                                 "traceback": traceback.format_exc(limit=3)[-1500:]})
              continue
            q1, median, q3 = np.percentile(times, [25, 50, 75])
            results.append({**record, "autocast": autocast, "median_ms": float(median),
                            "q1_ms": float(q1), "q3_ms": float(q3), "min_ms": min(times),
                            "max_ms": max(times), "repeats": len(times)})
            _log(f"  {label:32s} {dtype_name:8s} {length:6d} {mode:16s} {median:10.2f} ms"
                 + (" (autocast)" if autocast else ""))
            break
          else:
            _log(f"  {label:32s} {dtype_name:8s} {length:6d} {mode:16s} failed: "
                 f"{failures[-1]['error']}")
  print(json.dumps({"results": results, "failures": failures, "counterpart": COUNTERPART,
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "device": args.device}))


if __name__ == "__main__":
  main()
