"""Is nearest-upsample + 3x3 convolution cheaper in another, exactly equivalent form?

    python benchmarks/upsample_forms.py [--threads 2] [--batch-size 64] [--seconds 3]

Upsample(x2, nearest) followed by Conv2d(k=3, p=1) reads every input pixel several times
through duplicated neighbours: each output pixel sees only a 2x2 window of the input.
For the generators built that way (mnist-dcgan, mnist-dcgan-wide) this exports three
forms of every such pair (BatchNorm folded, as `dcgan-deploy export` writes them):

- ``upsample_conv3x3``: as trained (what the export writes);
- ``subpixel_conv2x2``: one Conv2d(k=2, p=1) to 4*Cout channels on the small map,
  DepthToSpace(2) and a one-pixel crop: 16(H+1)^2 instead of 36H^2 multiply-adds per
  channel pair (1.7-2x fewer) and no upsampled copy of the activations;
- ``convtranspose_4x4``: the same collapsed taps as one ConvTranspose2d(k=4, s=2, p=1);
- ``phase_tail``: the last upsample and the two convolutions after it on the small map, per
  output parity (four 2x2 convolutions, then the output convolution by taps), one
  DepthToSpace of the 1-channel image at the end (``dcgan_deploy.forms.PhaseTail``);
- ``export``: what `dcgan-deploy export` writes (``deploy_form``): the phase tail, and every other
  upsample + conv + ReLU per output phase too, the four phases interleaved channels-last into the
  full-size map the next layer reads (``dcgan_deploy.forms.PhaseUp``).

Each form passes the parity gate against the original PyTorch model, and all are timed
side by side on the CPU with PyTorch eager on the original in the same run
(BENCHMARKS.md has the figures and what limits the cheaper forms).
"""
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from ceiling import count_macs
from dcgan_deploy.export import deploy_form, fold_batchnorm
from dcgan_deploy.forms import phase_tail
from dcgan_deploy.nets import GeneratorNet

from common import archs, gate_and_time, speed_args, trained_like


class SubpixelConv(nn.Module):
    """``Upsample(x2, nearest)`` then ``conv`` (3x3, stride 1, padding 1), computed on the small map.

    Each output pixel of the pair sees a 2x2 window of the input: parity 0 of an axis reads
    inputs (m-1, m) with taps (w0, w1+w2), parity 1 reads (m, m+1) with (w0+w1, w2). One
    Conv2d(k=2, p=1) to 4*Cout channels computes every parity at every window position
    p = 0..H; ordering the channels so that DepthToSpace puts parity 1 first gives
    ``out[k] = shuffled[k + 1]``, so a one-pixel crop finishes it. Multiply-adds per
    channel pair: 16 (H+1)^2 instead of 36 H^2.
    """

    # rows: parity 0, parity 1; columns: the 3 taps; entries: which of the 2 window taps they join
    COLLAPSE = torch.tensor([[[1., 0., 0.], [0., 1., 1.]], [[1., 1., 0.], [0., 0., 1.]]])

    def __init__(self, conv: nn.Conv2d, act: nn.Module | None = None):
        super().__init__()
        self.act = act or nn.Identity()  # an elementwise activation, applied before the shuffle
        w = conv.weight.detach()                                           # [Cout, Cin, 3, 3]
        cout, cin = w.shape[:2]
        k = self.COLLAPSE.to(w.dtype)
        # kernel[c, i, j] for DepthToSpace slot (i, j) = output parity (1 - i, 1 - j)
        kernel = torch.einsum("yab,xcd,oibd->oyxiac", k, k, w)             # [Cout, ry, rx, Cin, 2, 2]
        kernel = kernel.flip(1, 2).reshape(4 * cout, cin, 2, 2)
        self.conv = nn.Conv2d(cin, 4 * cout, 2, padding=1, bias=conv.bias is not None)
        self.conv.weight.data = kernel.contiguous()
        if conv.bias is not None:
            self.conv.bias.data = conv.bias.detach().repeat_interleave(4)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x):
        h, w = x.shape[-2:]
        return self.shuffle(self.act(self.conv(x)))[..., 1:2 * h + 1, 1:2 * w + 1]


def rewrite(model: GeneratorNet, form) -> GeneratorNet:
    """A copy of ``model`` with every nearest x2 Upsample + 3x3 Conv2d pair as ``form(conv)`` (a
    ``SubpixelConv`` takes a ReLU right after the convolution along, so that it runs fused with it)."""
    model = copy.deepcopy(model)
    layers, out = list(model.main), []
    for m in layers:
        prev = out[-1] if out else None
        if (isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1)
                and m.dilation == (1, 1) and m.groups == 1 and isinstance(prev, nn.Upsample)
                and prev.mode == "nearest" and prev.scale_factor in (2, 2.0, (2, 2), (2.0, 2.0))):
            out[-1] = form(m)
        elif isinstance(m, nn.ReLU) and isinstance(prev, SubpixelConv) and isinstance(prev.act, nn.Identity):
            prev.act = m
        else:
            out.append(m)
    model.main = nn.Sequential(*out)
    return model


# ConvTranspose(k=4, s=2, p=1) writes output 2i + k - 1 from input i: kernel tap k of the
# collapsed 1-d filter [w2, w1 + w2, w0 + w1, w0] (rows: k; columns: the 3x3 taps).
TO_CONVT = torch.tensor([[0., 0., 1.], [0., 1., 1.], [1., 1., 0.], [1., 0., 0.]])


def convtranspose_form(conv: nn.Conv2d) -> nn.ConvTranspose2d:
    ct = nn.ConvTranspose2d(conv.in_channels, conv.out_channels, 4, 2, 1, bias=conv.bias is not None)
    ct.weight.data = torch.einsum("ka,lb,oiab->iokl", TO_CONVT, TO_CONVT, conv.weight.detach()).contiguous()
    if conv.bias is not None:
        ct.bias.data = conv.bias.detach().clone()
    return ct


def main():
    args = speed_args(__doc__)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs(("mnist-dcgan", "mnist-dcgan-wide"), args.smoke):
            g = trained_like(arch, args.smoke)
            folded = fold_batchnorm(g)
            for name, model in (("upsample_conv3x3", folded), ("subpixel_conv2x2", rewrite(folded, SubpixelConv)),
                                ("convtranspose_4x4", rewrite(folded, convtranspose_form)),
                                ("phase_tail", phase_tail(folded)), ("export", deploy_form(g))):
                path = Path(tmp) / f"{arch}-{name}.onnx"
                gate, r = gate_and_time(g, model, path, args, eager=True)
                eager = r["torch_images_per_s"]
                row = {"arch": arch, "form": name, "images_per_s": r["images_per_s"], "p50_ms": r["p50_ms"],
                       "mmacs_per_image": round(count_macs(path) / 1e6, 2), "graph_gflops": r.get("gflops"),
                       "torch_eager_images_per_s": eager, "speedup_vs_torch": r["speedup_vs_torch"],
                       "parity_max_abs": gate["worst"]["max_abs"], "parity_passed": gate["passed"]}
                rows.append(row)
                print(f"{arch:<17} {name:<18} {row['mmacs_per_image']:6.2f} MMAC/img {r['images_per_s']:8.1f} img/s  "
                      f"x{row['speedup_vs_torch']:4.2f} vs eager ({eager:.0f})  parity max abs "
                      f"{gate['worst']['max_abs']:.2g} ({'passed' if gate['passed'] else 'FAILED'})")
    print(json.dumps({"threads": args.threads, "batch": args.batch_size, "rows": rows}))


if __name__ == "__main__":
    sys.exit(main())
