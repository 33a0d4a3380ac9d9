"""Gradio latent-space demo, Hugging Face Spaces style: `python demo/app.py`.

A thin launcher over `dcgan_deploy.demo`; `dcgan-deploy demo` is the same app with
command-line options. Models: every bundled model, or the .onnx files named in
DCGAN_DEPLOY_MODELS (comma-separated).
"""
import os

from dcgan_deploy import bundled
from dcgan_deploy.demo import Demo

names = [m for m in os.environ.get("DCGAN_DEPLOY_MODELS", "").split(",") if m]
models = {os.path.splitext(os.path.basename(m))[0]: bundled.resolve(m) for m in names} or bundled.bundled_models()
demo = Demo(models)
app = demo.build()

if __name__ == "__main__":
    # Spaces sets GRADIO_SERVER_NAME=0.0.0.0 itself; locally this stays on loopback.
    demo.launch(app, server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
