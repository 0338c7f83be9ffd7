"""lra_jax: JAX/Flax efficient-attention research on the Long Range Arena.

Versions are pinned to a set that installs and runs together on Python 3.11+
(jax 0.10.x is the newest line that still supports Python 3.11).
"""

import setuptools

JAX_VERSION = "0.10.2"

setuptools.setup(
    name="lra_jax",
    version="0.1.0",
    description="Efficient attention on the Long Range Arena in JAX/Flax.",
    packages=setuptools.find_packages(include=["lra_jax", "lra_jax.*"]),
    # Published LRA results (lra_jax.published), read at run time.
    package_data={"lra_jax.published": ["*.json"]},
    python_requires=">=3.11",
    install_requires=[
        f"jax=={JAX_VERSION}",
        f"jaxlib=={JAX_VERSION}",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "clu==0.0.12",
        "ml-collections==1.1.0",
        "absl-py==2.5.1",
        "numpy==2.4.6",
        # Quasi-Monte-Carlo and special functions of the random-feature weight matrices.
        "scipy==1.17.1",
        # PNG plots of the benchmarks and the approximation-error heat maps.
        "matplotlib==3.11.2",
        # tf.data and TFDS only; TF never touches the accelerators.
        "tensorflow-cpu==2.21.0; platform_machine == 'x86_64' or platform_machine == 'AMD64'",
        "tensorflow==2.21.0; platform_machine != 'x86_64' and platform_machine != 'AMD64'",
        "tensorflow-datasets==4.9.10",
        # TFDS 4.9.10 imports it on every Python but declares it only for < 3.9
        # (tensorflow/datasets#11212); building our own datasets needs it.
        "importlib_resources==7.1.0",
        # Progress bars of the preparation scripts.
        "tqdm==4.70.1",
        # clu.metric_writers needs it and TF no longer depends on it.
        "tensorboard==2.21.0",
    ],
    extras_require={
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "sympy==1.14.0"],
        # NVIDIA GPUs (CUDA 12 wheels from PyPI).
        "cuda": [f"jax[cuda12]=={JAX_VERSION}"],
        # Cloud TPU VMs.
        "tpu": [f"jax[tpu]=={JAX_VERSION}"],
        # PyTorch implementations timed beside ours by benchmarks/attention.py
        # --torch (add --extra-index-url https://download.pytorch.org/whl/cpu
        # for the CPU-only torch wheel).
        "torch-reference": ["torch==2.14.1", "nystrom-attention==0.0.14",
                            "performer-pytorch==1.1.4", "linformer==0.2.3",
                            "reformer-pytorch==1.4.4", "transformers==5.23.0"],
    },
)
