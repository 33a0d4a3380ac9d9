"""Exactly equivalent generator forms that onnxruntime runs faster (each proven by the parity gate
against the original model at every export; `benchmarks/upsample_forms.py` measures them)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .nets import Generator


def _phase_maps():
    """P[r, k, d]: output parity r, 3x3 tap k reads the small map at offset d - 1; Q[r, k, r2, d]: on a
    parity-split map, that tap reads parity r2 at small-map offset d - 1."""
    p, q = torch.zeros(2, 3, 3), torch.zeros(2, 3, 2, 3)
    for r in range(2):
        for k in range(3):
            fine = r + k - 1                     # fine-grid offset of the tap from 2 * i
            p[r, k, fine // 2 + 1] = 1
            q[r, k, fine % 2, fine // 2 + 1] = 1
    return p, q


class PhaseTail(nn.Module):
    """The generator's last ``Upsample(x2) -> conv_a (3x3) -> act -> conv_b (3x3) -> out_act``, computed
    on the small map with the four output parities as channels, and shuffled to full size at the end.

    ``conv_a`` becomes a 3x3 convolution on the small map to 4*C channels (parity-major): the same
    multiply-adds, but no upsampled copy of the activations. ``conv_b`` becomes a 3x3 convolution from
    those 4*C parity channels to 4*Cout (each output parity reads the input parities its taps land on),
    and a DepthToSpace of the small Cout-channel result finishes: the large map never exists before
    the last, tiny shuffle.
    """

    def __init__(self, conv_a: nn.Conv2d, act: nn.Module, conv_b: nn.Conv2d, out_act: nn.Module):
        super().__init__()
        p, q = _phase_maps()
        wa, wb = conv_a.weight.detach(), conv_b.weight.detach()        # [C, Cin, 3, 3], [Co, C, 3, 3]
        c, cin = wa.shape[:2]
        co = wb.shape[0]
        p, q = p.to(wa.dtype), q.to(wa.dtype)
        ka = torch.einsum("rya,sxb,ciyx->rsciab", p, p, wa).reshape(4 * c, cin, 3, 3)
        kb = torch.einsum("ryua,sxvb,ocyx->orsuvcab", q, q, wb).reshape(4 * co, 4 * c, 3, 3)
        self.conv_a = nn.Conv2d(cin, 4 * c, 3, padding=1, bias=conv_a.bias is not None)
        self.conv_a.weight.data = ka.contiguous()
        if conv_a.bias is not None:
            self.conv_a.bias.data = conv_a.bias.detach().repeat(4)
        self.conv_b = nn.Conv2d(4 * c, 4 * co, 3, padding=1, bias=conv_b.bias is not None)
        self.conv_b.weight.data = kb.contiguous()
        if conv_b.bias is not None:
            self.conv_b.bias.data = conv_b.bias.detach().repeat_interleave(4)
        self.act, self.out_act, self.shuffle = act, out_act, nn.PixelShuffle(2)

    def forward(self, x):
        return self.shuffle(self.out_act(self.conv_b(self.act(self.conv_a(x)))))


def _same_conv3x3(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1)
            and m.dilation == (1, 1) and m.groups == 1 and m.padding_mode == "zeros")


def phase_tail(model: Generator) -> Generator | None:
    """A copy of ``model`` (BatchNorm already folded) whose last Upsample(x2, nearest), Conv 3x3, ReLU,
    Conv 3x3, Tanh run as one ``PhaseTail``; ``None`` when the generator does not end that way."""
    model = copy.deepcopy(model)  # nothing of the result is shared with the argument
    layers = list(model.main)
    if len(layers) < 5:
        return None
    up, conv_a, act, conv_b, out_act = layers[-5:]
    if not (isinstance(up, nn.Upsample) and up.mode == "nearest" and up.size is None
            and up.scale_factor in (2, 2.0, (2, 2), (2.0, 2.0)) and _same_conv3x3(conv_a) and _same_conv3x3(conv_b)
            and isinstance(act, nn.ReLU) and isinstance(out_act, nn.Tanh)):
        return None
    model.main = nn.Sequential(*layers[:-5], PhaseTail(conv_a, act, conv_b, out_act))
    return model
