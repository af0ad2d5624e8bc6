"""Install megatron_hds.

torch is required but not pinned from above: GPU clusters need their own CUDA build.
NVIDIA apex is never a dependency (the registry's `apex` is an unrelated package);
see docs/training.md for its from-source install.
"""
from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the C speed-ups when a compiler is there; otherwise install anyway
    (megatron_hds falls back to the equivalent pure-Python code)."""

    def run(self):
        try:
            super().run()
        except Exception as error:  # noqa: BLE001 - any build failure means "use the fallback"
            print(f"WARNING: C extensions not built ({error}); using the pure-Python fallbacks")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as error:  # noqa: BLE001
            print(f"WARNING: extension {ext.name} not built ({error}); using its pure-Python fallback")


# Hugging Face export/import (tools/checkpoint/) and lm-evaluation-harness (tools/evaluate.py):
# protobuf reads the SentencePiece model for the tokenizer export; accelerate is lm-eval's HF backend's.
HF_EXTRA = ["transformers>=5.0", "safetensors>=0.4.3", "tokenizers>=0.21", "protobuf>=3.20",
            "lm-eval>=0.4.9", "accelerate>=0.26"]

setup(
    name="megatron_hds",
    version="0.1.0",
    description="Megatron-style GPT pre-training with the Holistic Data Scheduler (SAC data mixing)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The repository's top-level kernels/ folder installs as megatron_hds.kernels: a top-level
    # "kernels" package would clash with the registry's package of that name.
    packages=[*find_packages(include=["megatron_hds", "megatron_hds.*"]), "megatron_hds.kernels"],
    package_dir={"megatron_hds.kernels": "kernels"},
    ext_modules=[Extension("megatron_hds.data._mtld", ["megatron_hds/data/_mtld.c"], extra_compile_args=["-O3"])],
    cmdclass={"build_ext": OptionalBuildExt},
    install_requires=[
        "torch>=2.6",  # the oldest release the suite passes on (docs/versions.md)
        "numpy>=1.24",
        "sentencepiece>=0.1.99",
        "zstandard>=0.21",
        "tqdm>=4.60",
        "triton>=3.2; platform_system == 'Linux'",  # torch 2.6 ships 3.2; older interpreters compute the kernels wrongly
    ],
    entry_points={"console_scripts": ["megatron-hds-pretrain = megatron_hds.training.pretrain:main",
                                      "megatron-hds-evaluate = megatron_hds.evaluation.downstream:cli"]},
    extras_require={
        "test": ["pytest>=7", "matplotlib>=3.5", *HF_EXTRA],
        "hf": HF_EXTRA,
        "te": ["transformer-engine[pytorch]"],
        "plot": ["matplotlib>=3.5"],
        "tensorboard": ["tensorboard>=2.10"],
        "wandb": ["wandb"],
    },
)
