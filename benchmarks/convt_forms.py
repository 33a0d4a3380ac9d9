"""Is a transposed convolution faster in onnxruntime as an ordinary convolution?

    python benchmarks/convt_forms.py [--threads 2] [--batch-size 64] [--seconds 3]

For the generators with ConvTranspose2d(k=4, s=2, p=1) layers (dcgan64, mnist-convt),
exports four exactly equivalent graphs and times them side by side on the CPU:

- ``convt``: the layers as they are (ConvTranspose), BatchNorm folded;
- ``conv3x3_shuffle``: each as one Conv2d(k=3, p=1) to 4*Cout channels + PixelShuffle(2)
  (DepthToSpace): one large convolution, but 9 taps where 4 are non-zero (2.25x the
  multiply-adds);
- ``parity4``: each with at least 16 output channels as four 2x2 convolutions, one per output
  parity, stacked and pixel-shuffled (``forms.PhaseConvT``, the ReLU after it fused in): the
  same multiply-adds; the last (1 or 3 channels, which the blocked layout pads to 16) left a
  ConvTranspose;
- ``export``: what `dcgan-deploy export` writes (``forms.transposed_forms``): ``parity4``, and
  the last two layers as ``forms.PhaseConvTTail`` (the last transposed convolution computed
  from the parity maps of the one before by taps, no full-size middle map).

For dcgan64 the first layer (ConvTranspose on the 1x1 latent map) becomes a Gemm
(``forms.FirstLayerGemm``) in every rewrite. Every variant passes the parity gate against the
original PyTorch model.
"""
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from dcgan_deploy.export import deploy_form, fold_batchnorm
from dcgan_deploy.forms import FirstLayerGemm, PhaseConvT, transposed_forms
from dcgan_deploy.nets import GeneratorNet

from common import archs, gate_and_time, speed_args, trained_like

# Output pixel 2m + r of a k4/s2/p1 transposed convolution sums input m-1, m (r = 0, taps 3, 1)
# or m, m+1 (r = 1, taps 2, 0): PhaseConvT.KERNEL_ROWS; in a 3-tap window (-1, 0, +1) those offsets sit at
OFFSETS = {0: (0, 1), 1: (1, 2)}


class Conv3x3Shuffle(nn.Module):
    def __init__(self, convt: nn.ConvTranspose2d):
        super().__init__()
        cin, cout = convt.in_channels, convt.out_channels
        w = convt.weight.detach()                                  # [Cin, Cout, 4, 4]
        weight = torch.zeros(cout, 2, 2, cin, 3, 3)                 # [Cout, ry, rx, Cin, a, b]
        for ry in (0, 1):
            for rx in (0, 1):
                for a, ky in zip(OFFSETS[ry], PhaseConvT.KERNEL_ROWS[ry]):
                    for b, kx in zip(OFFSETS[rx], PhaseConvT.KERNEL_ROWS[rx]):
                        weight[:, ry, rx, :, a, b] = w[:, :, ky, kx].T
        self.conv = nn.Conv2d(cin, 4 * cout, 3, padding=1, bias=convt.bias is not None)
        self.conv.weight.data = weight.reshape(4 * cout, cin, 3, 3)
        if convt.bias is not None:
            self.conv.bias.data = convt.bias.detach().repeat_interleave(4)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x):
        return self.shuffle(self.conv(x))


def rewrite(model: GeneratorNet, form) -> GeneratorNet:
    model = copy.deepcopy(model)
    layers = list(model.main)
    for i, m in enumerate(layers):
        if isinstance(m, nn.ConvTranspose2d):
            if m.stride == (2, 2) and m.kernel_size == (4, 4) and m.padding == (1, 1):
                layers[i] = form(m)
            elif i == 0 and model.cfg.arch == "dcgan64":
                layers[i] = FirstLayerGemm(m)
    model.main = nn.Sequential(*layers)
    return model


def main():
    args = speed_args(__doc__)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs(("dcgan64", "mnist-convt"), args.smoke):
            g = trained_like(arch, args.smoke)
            folded = fold_batchnorm(g)
            for name, model in (("convt", folded), ("conv3x3_shuffle", rewrite(folded, Conv3x3Shuffle)),
                                ("parity4", transposed_forms(folded, tail=False)),
                                ("export", deploy_form(g))):
                if model is None:  # nothing of this form applies at this width
                    continue
                path = Path(tmp) / f"{arch}-{name}.onnx"
                gate, r = gate_and_time(g, model, path, args)
                rows.append({"arch": arch, "form": name, "images_per_s": r["images_per_s"], "p50_ms": r["p50_ms"],
                             "graph_gflops": r.get("gflops"), "parity_max_abs": gate["worst"]["max_abs"],
                             "parity_passed": gate["passed"]})
                print(f"{arch:<12} {name:<16} {r['images_per_s']:9.1f} img/s  p50 {r['p50_ms']:8.2f} ms  "
                      f"parity max abs {gate['worst']['max_abs']:.2g} ({'passed' if gate['passed'] else 'FAILED'})")
    print(json.dumps({"threads": args.threads, "batch": args.batch_size, "rows": rows}))


if __name__ == "__main__":
    sys.exit(main())
