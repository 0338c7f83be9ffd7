"""Approximation error of every Spectraformer pair (component function x weight matrix), as heat maps.

    python benchmarks/random_feature_error_map.py
    python benchmarks/random_feature_error_map.py --kernel=softmax --nb_features=64 --draws=16

The analogue of the Spectraformer paper's error figure, for the 5 x 10 pairs
of lra_jax/attention/spectraformer.py. Each of `--draws` seeds draws fresh
inputs q, k, v (one sequence of `--length` tokens, head_dim `--head_dim`,
q and k i.i.d. N(0, input_std^2), v N(0, 1)), a fresh weight matrix W of
`--nb_features` rows (fastfood_learnable at its initialisation) and
GERF/SADERF's A from its initialisation law U(-0.125, 0.125); then, on
x = q / d^(1/4), y = k / d^(1/4):

  kernel error:    ||K_hat - K||_F / ||K||_F of the [length, length] kernel
                   matrix, K_hat = phi(X) phi(Y)^T the raw estimator (no
                   stabilisers, no eps), K = exp(-||x - y||^2 / 2) (Gaussian,
                   Spectraformer's target) or exp(x.y) (--kernel=softmax);
  attention error: ||out - exact||_F / ||exact||_F of spectraformer_attention
                   (its defaults: stabilisers, eps 1e-4) against the exact
                   attention normalised over the keys with that kernel.

A cell is the median over the draws (the mean is in the tables and the JSON:
with A near its bound 1/8, where their variance becomes infinite, GERF and
SADERF have heavy-tailed errors, and a few draws dominate a mean). Writes
<out>/<name>.png (both maps), <name>.json (every number, per draw, with the
settings) and <name>.md (the tables).
The default run (d 32, m 128, 256 tokens, 8 draws) takes well under a minute
on a CPU. --reference_weight_matrices draws the reference's constructions
(zero SCRF, unnormalised SORF/ROM, degenerate SGQ, ...) instead.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from lra_jax import attention
from lra_jax.attention import component_functions, spectraformer, weight_matrices
from lra_jax.benchmark import errors, report

matplotlib.use("Agg")
import matplotlib.colors  # noqa: E402  (after the backend is chosen)
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

MAPS = component_functions.COMPONENT_FUNCTIONS
MATRICES = weight_matrices.WEIGHT_MATRICES
ERRORS = ("kernel", "attention")


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--kernel", default="gaussian", choices=component_functions.KERNELS)
  parser.add_argument("--head_dim", type=int, default=32)
  parser.add_argument("--nb_features", type=int, default=128)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--draws", type=int, default=8)
  parser.add_argument("--input_std", type=float, default=0.5,
                      help="std of q and k entries (0.5: ||x||^2 ~ 1.4 at head_dim 32)")
  parser.add_argument("--reference_weight_matrices", action="store_true",
                      help="the reference's constructions (reference_weight_matrix=True)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="benchmarks/results", help="output directory")
  parser.add_argument("--name", default="", help="file stem (default random_feature_error_map"
                      "[_softmax][_reference])")
  return parser.parse_args(argv)


def _exact_kernel(x, y, kernel):
  dots = jnp.einsum("id,jd->ij", x, y)
  if kernel == "softmax":
    return jnp.exp(dots)
  return jnp.exp(dots - 0.5 * jnp.sum(x * x, -1)[:, None] - 0.5 * jnp.sum(y * y, -1)[None])


def _relative(approximation, exact):
  return jnp.linalg.norm(approximation - exact) / jnp.linalg.norm(exact)


# Compile time dominates (the run takes ~0.2 s): XLA's cheap optimisation level.
@functools.partial(jax.jit, static_argnames=("weight_matrix", "args"),
                   compiler_options={"xla_backend_optimization_level": 0,
                                     "xla_llvm_disable_expensive_passes": True})
def _errors(weight_matrix, keys, args):
  """[draws, maps, 2 (kernel, attention)] relative errors for one weight matrix."""
  head_dim, length, kernel = args.head_dim, args.length, args.kernel
  mask = jnp.ones((1, length), bool)

  def one(key):
    input_key, matrix_key, parameter_key = jax.random.split(key, 3)
    q, k, v = jax.random.normal(input_key, (3, 1, length, 1, head_dim))
    q, k = args.input_std * q, args.input_std * k
    w = spectraformer.draw_projection(matrix_key, weight_matrix, args.nb_features, head_dim,
                                      reference_construction=args.reference_weight_matrices)
    a = component_functions.draw_gerf_parameter(parameter_key, (1,))
    scale = head_dim ** -0.25
    exact_kernel = _exact_kernel(scale * q[0, :, 0], scale * k[0, :, 0], kernel)
    if kernel == "softmax":
      exact_out = attention.softmax_attention(q, k, v, mask)
    else:
      exact_out = errors.kernelized_normalized_attention(q, k, v, mask)
    out = []
    for name in MAPS:
      qf, kf = component_functions.query_key_features(
          name, q, k, w, mask, kernel=kernel, gerf_a=a, numerical_stabilizer=0.0, stabilize=False)
      estimate = jnp.einsum("bihm,bjhm->ij", qf, kf)
      approximate_out = attention.spectraformer_attention(
          q, k, v, mask, feature_map=name, weight_matrix=weight_matrix, projection=w, gerf_a=a,
          kernel=kernel)
      out.append(jnp.stack([_relative(estimate, exact_kernel),
                            _relative(approximate_out, exact_out)]))
    return jnp.stack(out)

  return jax.vmap(one)(keys)


def measure(args) -> dict[str, np.ndarray]:
  """{error: [maps, matrices, draws]} over every pair."""
  keys = jax.random.split(jax.random.key(args.seed), args.draws)
  by_matrix = []
  for weight_matrix in MATRICES:
    start = time.perf_counter()
    by_matrix.append(np.asarray(_errors(weight_matrix, keys, _Static(args)), np.float64))
    print(f"  {weight_matrix:20s} {time.perf_counter() - start:5.1f} s", flush=True)
  stacked = np.stack(by_matrix, axis=2)  # [draws, maps, matrices, errors]
  return {error: np.moveaxis(stacked[..., i], 0, -1) for i, error in enumerate(ERRORS)}


class _Static:
  """Hashable view of the settings, a static argument of the jitted measurement."""

  def __init__(self, args):
    self._items = tuple(sorted((k, v) for k, v in vars(args).items() if k not in ("out", "name")))
    for key, value in self._items:
      setattr(self, key, value)

  def __hash__(self):
    return hash(self._items)

  def __eq__(self, other):
    return isinstance(other, _Static) and self._items == other._items


def heat_maps(medians: dict[str, np.ndarray], args, path: pathlib.Path) -> None:
  figure, axes = plt.subplots(1, len(ERRORS), figsize=(8.5 * len(ERRORS), 4.6), layout="constrained")
  target = "exp(x.y)" if args.kernel == "softmax" else "exp(-||x - y||^2 / 2)"
  for axis, error in zip(axes, ERRORS):
    values = medians[error]
    finite = values[np.isfinite(values) & (values > 0)]
    norm = matplotlib.colors.LogNorm(vmin=finite.min(), vmax=finite.max()) if finite.size else None
    image = axis.imshow(np.where(np.isfinite(values), values, np.nan), cmap="viridis_r", norm=norm,
                        aspect="auto")
    for (i, j), value in np.ndenumerate(values):
      axis.text(j, i, _number(value), ha="center", va="center", fontsize=8,
                color="white" if norm is not None and np.isfinite(value)
                and norm(value) > 0.6 else "black")
    axis.set_xticks(range(len(MATRICES)), MATRICES, rotation=40, ha="right")
    axis.set_yticks(range(len(MAPS)), MAPS)
    axis.set_xlabel("weight matrix")
    axis.set_ylabel("component function")
    axis.set_title(f"relative {error} error, K = {target}")
    colorbar = figure.colorbar(image, ax=axis, shrink=0.9)
    for ticks in (colorbar.ax.yaxis.set_major_formatter, colorbar.ax.yaxis.set_minor_formatter):
      ticks(matplotlib.ticker.FormatStrFormatter("%.2g"))
  figure.suptitle(f"Spectraformer random features: d = {args.head_dim}, m = {args.nb_features}, "
                  f"{args.length} tokens, q, k ~ N(0, {args.input_std}^2), median of {args.draws} "
                  f"draws" + (", reference constructions" if args.reference_weight_matrices else ""))
  figure.savefig(path, dpi=120)
  plt.close(figure)


def _number(value: float) -> str:
  if not np.isfinite(value):
    return "inf"
  return f"{value:.3g}" if value < 100 else f"{value:.2g}"


def markdown(medians: dict[str, np.ndarray], means: dict[str, np.ndarray], args, png: str) -> str:
  lines = [f"# Spectraformer random-feature approximation error ({args.kernel} kernel)", "",
           f"{datetime.date.today()}, {platform.machine()}, jax {jax.__version__}. Head_dim "
           f"{args.head_dim}, {args.nb_features} features, {args.length} tokens, q and k entries "
           f"N(0, {args.input_std}^2); median (mean) over {args.draws} draws of inputs, W and A"
           + (", the reference's weight-matrix constructions" if args.reference_weight_matrices
              else "") + f". Command: `python benchmarks/random_feature_error_map.py "
           f"--kernel={args.kernel}`. Heat maps: `{png}`.", ""]
  for error in ERRORS:
    lines += [f"## Relative {error} error", "",
              "| component function | " + " | ".join(MATRICES) + " |",
              "| --- | " + " | ".join("---" for _ in MATRICES) + " |"]
    for i, name in enumerate(MAPS):
      cells = [f"{_number(medians[error][i, j])} ({_number(means[error][i, j])})"
               for j in range(len(MATRICES))]
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)


def main(argv=None):
  args = _parse_args(argv)
  name = args.name or ("random_feature_error_map" + ("_softmax" if args.kernel == "softmax" else "")
                       + ("_reference" if args.reference_weight_matrices else ""))
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  print(f"Errors of {len(MAPS)} x {len(MATRICES)} pairs, {args.draws} draws each:", flush=True)
  per_draw = measure(args)
  with np.errstate(invalid="ignore"):
    medians = {error: np.median(values, -1) for error, values in per_draw.items()}
    means = {error: values.mean(-1) for error, values in per_draw.items()}
  png = out / f"{name}.png"
  heat_maps(medians, args, png)
  payload = {"settings": {k: v for k, v in vars(args).items()}, "component_functions": list(MAPS),
             "weight_matrices": list(MATRICES),
             "errors": {error: {"median": _jsonable(medians[error]), "mean": _jsonable(means[error]),
                                "per_draw": _jsonable(per_draw[error])} for error in ERRORS}}
  text = markdown(medians, means, args, png.name)
  report.write_report(out / f"{name}.md", text, payload)
  print(text)
  print(f"Wrote {png}, {out / name}.md and .json")


def _jsonable(values: np.ndarray):
  return np.where(np.isfinite(values), values, None).tolist()


if __name__ == "__main__":
  main()
