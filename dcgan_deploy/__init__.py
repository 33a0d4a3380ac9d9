"""dcgan-deploy: DCGAN generators exported to ONNX, run with numpy + onnxruntime.

    >>> from dcgan_deploy import Generator
    >>> gen = Generator.load()                  # the bundled default model
    >>> images = gen.generate(16, seed=0)       # uint8 [16, H, W, C]

Importing this package never imports torch, onnx, gradio or click.
"""
__version__ = "0.1.0"

from .runtime import CpuDependentWarning, Generator, ModelError, UnverifiedModelWarning  # noqa: E402

__all__ = ["CpuDependentWarning", "Generator", "ModelError", "UnverifiedModelWarning", "__version__"]
