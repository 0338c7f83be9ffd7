"""PyTorch implementations to time beside ours in the same run (optional: needs torch).

Two kinds, each a factory `make(length, batch, heads, head_dim)` returning a
zero-argument callable that runs one forward+backward pass:

* `seed:<name>`: the attention cores of the seed repos (Skyformer's LRA
  harness), written from their specification in
  ../shared/reference/skyformer_skeinformer.md §1 (float32, no autocast, no
  gradient checkpointing), so that the per-method ratios compare like with
  like on this machine.
* `pypi:<package>`: what a user would otherwise pick from the package index:
  `nystrom-attention`, `performer-pytorch`, `linformer`, `reformer-pytorch`
  (lucidrains). These include their own projections where the package does
  not expose the core alone (noted per entry).

Install with `pip install -e .[torch-reference]` (see README). Run as a script
it times them and prints JSON; benchmarks/attention.py runs it in a separate
process, so that PyTorch's and XLA's thread pools never compete.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from typing import Callable

import torch

Factory = Callable[[int, int, int, int], Callable[[], None]]


def _qkv(length, batch, heads, head_dim, layout="bhnd"):
  generator = torch.Generator().manual_seed(0)
  shape = (batch, heads, length, head_dim) if layout == "bhnd" else (batch, length, heads * head_dim)
  tensors = [torch.randn(shape, generator=generator, requires_grad=True) for _ in range(3)]
  return tensors, torch.ones(batch, length)


def _fwd_bwd(fn, inputs):
  def run():
    for x in inputs:
      x.grad = None
    out = fn()
    (out ** 2).sum().backward()
  return run


def seed_softmax(length, batch, heads, head_dim):
  (q, k, v), mask = _qkv(length, batch, heads, head_dim)

  def forward():
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim) - 1e6 * (1 - mask[:, None, None, :])
    return torch.softmax(scores, dim=-1) @ v
  return _fwd_bwd(forward, (q, k, v))


def _gaussian_kernel(x, y):
  return torch.exp(x @ y.transpose(-2, -1) - 0.5 * (x * x).sum(-1)[..., :, None]
                   - 0.5 * (y * y).sum(-1)[..., None, :])


def seed_kernelized(length, batch, heads, head_dim):
  (q, k, v), mask = _qkv(length, batch, heads, head_dim)
  scale = head_dim ** -0.25

  def forward():
    m = mask[:, None, :, None]
    return _gaussian_kernel(q * m * scale, k * m * scale) @ v
  return _fwd_bwd(forward, (q, k, v))


def _newton_schulz_pinv(matrix, iterations=6):
  identity = torch.eye(matrix.shape[-1])
  inverse = matrix.transpose(-1, -2) / torch.max(torch.sum(matrix.abs(), dim=-2))
  for _ in range(iterations):
    product = matrix @ inverse
    inverse = 0.25 * inverse @ (13 * identity - product @ (15 * identity - product @ (7 * identity - product)))
  return inverse


def seed_skyformer(length, batch, heads, head_dim, num_landmarks=128, jitter=0.1):
  (q, k, v), mask = _qkv(length, batch, heads, head_dim)
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
    core = c_xl[:, :, index] + jitter * torch.eye(num_landmarks)
    degree = core.sum(-1) ** -0.5
    normalised = degree[..., :, None] * core * degree[..., None, :]
    inverse = _newton_schulz_pinv(normalised)
    key_features = c_xl[:, :, length:] * m * degree[..., None, :] @ inverse * degree[..., None, :]
    return c_xl[:, :, :length] @ (key_features.transpose(-1, -2) @ (v * m))
  return _fwd_bwd(forward, (q, k, v))


def seed_nystrom(length, batch, heads, head_dim, num_landmarks=128):
  (q, k, v), mask = _qkv(length, batch, heads, head_dim)
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
  return _fwd_bwd(forward, (q, k, v))


def seed_linformer(length, batch, heads, head_dim, projected_length=128):
  (q, k, v), mask = _qkv(length, batch, heads, head_dim)
  projection = torch.randn(heads, projected_length, length) * 0.02

  def forward():
    m = mask[:, None, :, None]
    k_p, v_p = projection @ (k * m), projection @ (v * m)
    return torch.softmax(q @ k_p.transpose(-1, -2) / math.sqrt(head_dim), dim=-1) @ v_p
  return _fwd_bwd(forward, (q, k, v))


def pypi_performer(length, batch, heads, head_dim):
  """performer-pytorch's FastAttention, the module the seeds wrap (128 features)."""
  from performer_pytorch import FastAttention
  (q, k, v), _ = _qkv(length, batch, heads, head_dim)
  module = FastAttention(dim_heads=head_dim, nb_features=128)
  return _fwd_bwd(lambda: module(q, k, v), (q, k, v))


def pypi_nystrom_attention(length, batch, heads, head_dim):
  """nystrom-attention's NystromAttention (128 landmarks, no conv); includes its projections."""
  from nystrom_attention import NystromAttention
  (x, _, _), _ = _qkv(length, batch, heads, head_dim, layout="bnc")
  module = NystromAttention(dim=heads * head_dim, dim_head=head_dim, heads=heads, num_landmarks=128,
                            residual=False)
  return _fwd_bwd(lambda: module(x), (x,))


def pypi_linformer(length, batch, heads, head_dim):
  """linformer's LinformerSelfAttention (k 128, shared K/V projection); includes its projections."""
  from linformer import LinformerSelfAttention
  (x, _, _), _ = _qkv(length, batch, heads, head_dim, layout="bnc")
  module = LinformerSelfAttention(dim=heads * head_dim, seq_len=length, k=128, heads=heads,
                                  dim_head=head_dim, share_kv=True)
  return _fwd_bwd(lambda: module(x), (x,))


def pypi_reformer(length, batch, heads, head_dim):
  """reformer-pytorch's LSHAttention (bucket 64, 2 hashes) on shared QK, heads folded into batch."""
  from reformer_pytorch import LSHAttention
  generator = torch.Generator().manual_seed(0)
  qk, v = (torch.randn(batch * heads, length, head_dim, generator=generator, requires_grad=True)
           for _ in range(2))
  module = LSHAttention(bucket_size=64, n_hashes=2)
  return _fwd_bwd(lambda: module(qk, v)[0], (qk, v))


REFERENCES: dict[str, Factory] = {
    "seed:softmax": seed_softmax,
    "seed:kernelized": seed_kernelized,
    "seed:skyformer": seed_skyformer,
    "seed:nystrom": seed_nystrom,
    "seed:linformer": seed_linformer,
    "pypi:performer-pytorch": pypi_performer,
    "pypi:nystrom-attention": pypi_nystrom_attention,
    "pypi:linformer": pypi_linformer,
    "pypi:reformer-pytorch": pypi_reformer,
}

# Which of our methods each reference is compared with.
COUNTERPART = {
    "seed:softmax": "softmax", "seed:kernelized": "kernelized", "seed:skyformer": "skyformer",
    "seed:nystrom": "nystrom", "seed:linformer": "linformer",
    "pypi:performer-pytorch": "performer", "pypi:nystrom-attention": "nystrom",
    "pypi:linformer": "linformer", "pypi:reformer-pytorch": "reformer",
}


def _median_ms(run, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return 1000.0 * statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description="Time the PyTorch references; prints JSON.")
  parser.add_argument("--lengths", default="1024,4096")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--skip", default="", help="comma-separated 'label@length' to skip")
  args = parser.parse_args()
  skip = set(filter(None, args.skip.split(",")))
  results = []
  for length in (int(x) for x in args.lengths.split(",")):
    for label, make in REFERENCES.items():
      if f"{label}@{length}" in skip:
        continue
      run = make(length, 4, 2, 32)
      run()  # warm-up
      results.append({"name": label, "length": length, "median_ms": _median_ms(run, args.repeats)})
  print(json.dumps({"results": results, "counterpart": COUNTERPART, "torch": torch.__version__,
                    "threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
