"""Exactly equivalent generator forms that onnxruntime runs faster.

The idea. A layer that doubles a map's size -- nearest upsampling then a 3x3 convolution, or a
transposed convolution with kernel 4, stride 2, padding 1 -- computes each output pixel from a
small window of the *small* map, and which window and which kernel taps depends only on the
output pixel's *phase*: its row and column index mod 2 (four phases). So each phase is an
ordinary small convolution (2x2) on the small map, and the four results, interleaved, are the
big map. The arithmetic is the same multiply-adds as the original (for upsample + 3x3, only 4/9
of them: the copies upsampling makes are never multiplied), the big map of the middle layers
never has to exist, and every piece runs as a plain convolution in onnxruntime's fast blocked
layout (its transposed convolution and its DepthToSpace do not). Each form is exact up to
float32 summation order, and the parity gate checks the written graph against the original
PyTorch model at every export. (`benchmarks/upsample_forms.py`, `benchmarks/convt_forms.py`
and `benchmarks/export_form_ab.py` measure them; `export --no-forms` writes the plain graph.)

Here "phase" always means this sub-pixel position; "parity" means only the export gate.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .nets import GeneratorNet


def _phase_maps():
    """P[r, k, d]: output phase r, 3x3 tap k reads the small map at offset d - 1; Q[r, k, r2, d]: on a
    phase-split map, that tap reads phase r2 at small-map offset d - 1."""
    p, q = torch.zeros(2, 3, 3), torch.zeros(2, 3, 2, 3)
    for r in range(2):
        for k in range(3):
            fine = r + k - 1                     # fine-grid offset of the tap from 2 * i
            p[r, k, fine // 2 + 1] = 1
            q[r, k, fine % 2, fine // 2 + 1] = 1
    return p, q


class _PerPhase(nn.Module):
    """Four 2x2 convolutions on one map, one per output phase (r, s) of a map twice its size, each with
    its own one-sided zero padding (phase r reads offsets r - 1 and r), then ``act``."""

    def __init__(self, kernels: list, bias: torch.Tensor | None, act: nn.Module | None):
        super().__init__()
        self.convs, self.pads = nn.ModuleList(), []
        for (r, s), kernel in zip([(0, 0), (0, 1), (1, 0), (1, 1)], kernels):   # [Cout, Cin, 2, 2]
            part = nn.Conv2d(kernel.shape[1], kernel.shape[0], 2, bias=bias is not None)
            part.weight.data = kernel.contiguous()
            if bias is not None:
                part.bias.data = bias.clone()
            self.convs.append(part)
            self.pads.append((1 - s, s, 1 - r, r))                        # left, right, top, bottom
        self.act = act if act is not None else nn.Identity()
        self.cout = kernels[0].shape[0]

    def phases(self, x) -> list:
        """The four output phases (index 2 r + s), each at the input's size."""
        return [self.act(conv(F.pad(x, pad))) for conv, pad in zip(self.convs, self.pads)]


class PhaseConv(_PerPhase):
    """``Upsample(x2, nearest) -> conv (3x3) -> act`` computed on the small map, one map per output phase.

    Each output phase of the pair sees only a 2x2 window of the small map, so each phase is one 2x2
    convolution on the small map: 4/9 of the multiply-adds of the 3x3 convolution on the large map,
    and the large map never exists. ``forward`` concatenates the phases phase-major (channel
    ``(2 r + s) * C + c``).
    """

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        p, _ = _phase_maps()
        w = conv.weight.detach()                                          # [C, Cin, 3, 3]
        k = torch.einsum("rya,sxb,ciyx->rsciab", p.to(w.dtype), p.to(w.dtype), w)  # [2, 2, C, Cin, 3, 3]
        # phase r reads small-map offsets r - 1 and r: the window [r, r + 2) of the 3 offsets
        kernels = [k[r, s, :, :, r:r + 2, s:s + 2] for r in range(2) for s in range(2)]
        super().__init__(kernels, None if conv.bias is None else conv.bias.detach(), act)

    def forward(self, x):
        return torch.cat(self.phases(x), 1)


class PhaseUp(nn.Module):
    """``Upsample(x2, nearest) -> conv (3x3) -> act`` inside the generator (before its tail): a
    ``PhaseConv`` (4/9 of the multiply-adds; the upsampled copy is never made) whose four phase maps
    ``interleave`` to the full-size map the next layer reads."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        self.phase = PhaseConv(conv, act)

    def forward(self, x):
        return interleave(self.phase.phases(x))


class PhaseTail(nn.Module):
    """The generator's last ``Upsample(x2) -> conv_a (3x3) -> act -> conv_b (3x3) -> out_act``, computed
    on the small map per output phase, and shuffled to full size at the end.

    ``conv_a`` becomes a ``PhaseConv``: four 2x2 convolutions on the small map, one per output phase
    (4/9 of the multiply-adds, no upsampled copy of the activations). ``conv_b`` goes to Co channels,
    few, which onnxruntime's blocked layout pads to 16; it takes one of two forms:

    - ``taps=True`` (float32): taken apart by taps. On the phase maps the taps of each of its 4*Co
      (output channel, output phase) pairs lie in a 2x2 window of small-map offsets, and each tap
      reads exactly one input phase. So one 1x1 convolution per input phase computes the 16*Co tap
      maps (summed over the phases: no concatenation), and a grouped 3x3 convolution with one-hot
      weights shifts each tap map to its offset and adds a pair's four taps.
    - ``taps=False`` (for int8, where each tap map would be rounded to 8 bits on its own): one 2x2
      convolution from the concatenated 4*C phase channels to the 4*Co output phases. Output phase
      (r, s) reads small-map rows r - 1, r and columns s - 1, s of every input phase (the other taps
      of a 3x3 window on the phase maps are zero), so a 2x2 convolution padded by 1 on every side
      computes all of them on an (H+1)x(W+1) grid, phase (r, s) at offset (r, s): 4/9 of a 3x3's
      products, then each phase's HxW window is cut out of the small result. For int8, ``split``
      gives it 4*Co more output channels.

    A DepthToSpace of the small Co-channel result finishes: the large map never exists before the
    last, tiny shuffle.
    """

    def __init__(self, conv_a: nn.Conv2d, act: nn.Module, conv_b: nn.Conv2d, out_act: nn.Module, taps: bool = True):
        super().__init__()
        _, q = _phase_maps()
        wb = conv_b.weight.detach()                                       # [Co, C, 3, 3]
        co, c = wb.shape[:2]
        # kb[o, r, s, u, v, c, a, b]: output channel o at phase (r, s) reads input phase (u, v),
        # channel c, at small-map offset (a - 1, b - 1)
        kb = torch.einsum("ryua,sxvb,ocyx->orsuvcab", q.to(wb.dtype), q.to(wb.dtype), wb)
        bias = None if conv_b.bias is None else conv_b.bias.detach().repeat_interleave(4)
        self.head = PhaseConv(conv_a, act)
        self.taps = self.shift = self.conv_b = None
        if taps:
            tap_w = torch.zeros(4, 16 * co, c, dtype=wb.dtype)           # [input phase, tap, C]
            shift = torch.zeros(4 * co, 4, 3, 3, dtype=wb.dtype)          # 4 taps per (o, r, s)
            t = 0
            for o in range(co):
                for r in range(2):
                    for s in range(2):
                        for a in (r, r + 1):
                            for b in (s, s + 1):
                                tap_w[:, t] = kb[o, r, s, :, :, :, a, b].reshape(4, c)
                                shift[t // 4, t % 4, a, b] = 1
                                t += 1
            self.taps = nn.ModuleList()
            for weight in tap_w:
                tap = nn.Conv2d(c, 16 * co, 1, bias=False)
                tap.weight.data = weight[:, :, None, None].contiguous()
                self.taps.append(tap)
            self.shift = nn.Conv2d(16 * co, 4 * co, 3, padding=1, groups=4 * co, bias=bias is not None)
            self.shift.weight.data = shift
            if bias is not None:
                self.shift.bias.data = bias
        else:
            window = [kb[:, r, s, ..., r:r + 2, s:s + 2] for r in range(2) for s in range(2)]  # [Co, 2, 2, C, 2, 2]
            self.conv_b = nn.Conv2d(4 * c, 4 * co, 2, padding=1, bias=bias is not None)
            self.conv_b.weight.data = torch.stack(window, 1).reshape(4 * co, 4 * c, 2, 2).contiguous()
            if bias is not None:
                self.conv_b.bias.data = bias
        self.out_act, self.shuffle = out_act, nn.PixelShuffle(2)
        self.gains = []  # each level's gain after the first (``split``)

    def split(self, weight_bits: int, rest_range: float, limit: float) -> float:
        """int8 form: one more level for ``conv_b``'s weights. The finest level so far (at first the weights
        themselves) becomes its rounding as the quantizer will do it (symmetric per output channel,
        ``weight_bits`` bits: the largest weight at the top level), and what that rounding loses, times a
        gain, becomes 4*Co more output channels of the same convolution; ``forward`` adds each level back
        divided by its gain before ``out_act``. In float nothing changes. In int8 each level is rounded on
        its own, so the last layer's weights carry about ``weight_bits`` more bits per level -- on the
        bundled model its 7-bit weights were the largest error of the int8 file -- in integers as before,
        at the price of output channels (from 16, onnxruntime's x86 int8 convolution runs its indirect
        kernel instead of copying an im2col). The gain is the largest power of two (exact to divide by; at
        least 1, at most 2**(16 * level)) that keeps the rest's outputs, ``rest_range`` at gain 1 on the
        calibration latents (``rounding_rest``), within ``limit``. Returns the gain."""
        w = self.conv_b.weight.data
        n = w.shape[0] // (len(self.gains) + 1)      # 4*Co: one level's channels
        top = self.gains[-1] if self.gains else 1.0  # the finest level's gain
        cap = 16 * (len(self.gains) + 1)
        gain = float(2 ** np.clip(np.floor(np.log2(max(limit, 1e-12) / max(rest_range, 1e-12))), 0, cap))
        finest = w[-n:]
        rest = _rounding_rest(finest, weight_bits)   # in the finest level's units (its weights x its gain)
        split = nn.Conv2d(w.shape[1], w.shape[0] + n, 2, padding=1, bias=self.conv_b.bias is not None)
        split.weight.data = torch.cat([w[:-n], finest - rest, rest * (gain / top)])
        if self.conv_b.bias is not None:
            b = self.conv_b.bias.data
            split.bias.data = torch.cat([b, torch.zeros_like(b[:n])])
        self.conv_b = split
        self.gains.append(gain)
        return gain

    def rounding_rest(self, weight_bits: int) -> torch.Tensor:
        """What rounding the finest level of ``conv_b``'s weights (at first the weights themselves) to
        ``weight_bits`` bits, symmetric per output channel, loses: in the weights' own units."""
        w = self.conv_b.weight.data
        n = w.shape[0] // (len(self.gains) + 1)
        return _rounding_rest(w[-n:], weight_bits) / (self.gains[-1] if self.gains else 1.0)

    def forward(self, x):
        phases = self.head.phases(x)
        if self.taps is not None:
            parts = [tap(h) for tap, h in zip(self.taps, phases)]
            return self.shuffle(self.out_act(self.shift(sum(parts[1:], parts[0]))))
        y = self.conv_b(torch.cat(phases, 1))                          # [N, 4 Co, H + 1, W + 1]
        if self.gains:
            n = y.shape[1] // (len(self.gains) + 1)
            levels = [y[:, k * n:(k + 1) * n] for k in range(len(self.gains) + 1)]
            y = levels[0]
            for level, gain in zip(levels[1:], self.gains):
                y = y + level * (1 / gain)
        y = self.out_act(y)
        n, c4, h, w = y.shape[0], y.shape[1], y.shape[2] - 1, y.shape[3] - 1
        windows = [y[:, k::4, k // 2:k // 2 + h, k % 2:k % 2 + w] for k in range(4)]  # phase k = 2 r + s
        return self.shuffle(torch.stack(windows, 2).reshape(n, c4, h, w))


class ChannelAffine(nn.Module):
    """An eval-mode BatchNorm as ``x * scale + shift`` per feature (two ops, each exactly rounded): the int8
    form's stand-in for a BatchNorm that cannot be folded (``export.int8_form``), which onnxruntime would
    otherwise run as one op of several roundings in float between the integer products."""

    def __init__(self, bn: nn.BatchNorm1d | nn.BatchNorm2d):
        super().__init__()
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.detach().double() - bn.running_mean.double() * scale
        shape = (-1,) + (1,) * (2 if isinstance(bn, nn.BatchNorm2d) else 0)
        self.register_buffer("scale", scale.float().reshape(shape))
        self.register_buffer("shift", shift.float().reshape(shape))

    def forward(self, x):
        return x * self.scale + self.shift


def _rounding_rest(w: torch.Tensor, weight_bits: int) -> torch.Tensor:
    """What rounding ``w`` ([Co, ...]) to ``weight_bits`` bits, symmetric per output channel, loses."""
    top = 2 ** (weight_bits - 1) - (weight_bits == 8)  # the quantizer's level for the largest weight: 64, or 127
    step = w.abs().flatten(1).amax(1).clamp_min(1e-30)[:, None, None, None] / top
    return w - torch.round(w / step) * step


def _same_conv3x3(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1)
            and m.dilation == (1, 1) and m.groups == 1 and m.padding_mode == "zeros")


def phase_tail(model: GeneratorNet, taps: bool = True) -> GeneratorNet | None:
    """A copy of ``model`` (BatchNorm already folded) whose last Upsample(x2, nearest), Conv 3x3, (leaky) ReLU,
    Conv 3x3, Tanh run as one ``PhaseTail`` (``taps``: its float32 form, else its int8 form);
    ``None`` when the generator does not end that way."""
    model = copy.deepcopy(model)  # nothing of the result is shared with the argument
    layers = list(model.main)
    if len(layers) < 5:
        return None
    up, conv_a, act, conv_b, out_act = layers[-5:]
    if not (_upsample_conv_act(up, conv_a, act) and _same_conv3x3(conv_b) and isinstance(out_act, nn.Tanh)):
        return None
    model.main = nn.Sequential(*layers[:-5], PhaseTail(conv_a, act, conv_b, out_act, taps))
    return model


def _upsample_conv_act(up: nn.Module, conv: nn.Module, act: nn.Module) -> bool:
    """``Upsample(x2, nearest) -> Conv 3x3 (same size) -> (leaky) ReLU``."""
    return (isinstance(up, nn.Upsample) and up.mode == "nearest" and up.size is None
            and up.scale_factor in (2, 2.0, (2, 2), (2.0, 2.0)) and _same_conv3x3(conv)
            and isinstance(act, (nn.ReLU, nn.LeakyReLU)))


def phase_upsamples(model: GeneratorNet) -> GeneratorNet | None:
    """A copy of ``model`` (BatchNorm folded; its tail in its form already) with every remaining
    ``Upsample(x2, nearest) -> Conv 3x3 -> (leaky) ReLU`` as a ``PhaseUp``; ``None`` when it has none."""
    model = copy.deepcopy(model)
    layers, out, i = list(model.main), [], 0
    while i < len(layers):
        if i + 2 < len(layers) and _upsample_conv_act(*layers[i:i + 3]):
            out.append(PhaseUp(layers[i + 1], layers[i + 2]))
            i += 3
        else:
            out.append(layers[i])
            i += 1
    if len(out) == len(layers):
        return None
    model.main = nn.Sequential(*out)
    return model


class PhaseConvT(_PerPhase):
    """``ConvTranspose2d(kernel 4, stride 2, padding 1) [-> ReLU]`` as four 2x2 convolutions on the input
    map, one per output phase, interleaved to full size (``interleave``).

    Output row ``2 m + r`` of the transposed convolution takes kernel rows 3 and 1 at input rows
    ``m - 1`` and ``m`` (r = 0), or 2 and 0 at ``m`` and ``m + 1`` (r = 1): a 2x2 convolution with
    one-sided padding, the same multiply-adds. onnxruntime's CPU ConvTranspose runs image by image
    outside the blocked (NCHWc) layout; these convolutions run in it, the ReLU fused into them.
    """

    KERNEL_ROWS = ((3, 1), (2, 0))  # per output phase: the kernel rows at input offsets (r - 1, r)

    def __init__(self, convt: nn.ConvTranspose2d, act: nn.Module | None = None):
        w = convt.weight.detach()                                         # [Cin, Cout, 4, 4]
        rows = self.KERNEL_ROWS
        kernels = [w[:, :, rows[r]][:, :, :, rows[s]].transpose(0, 1) for r in range(2) for s in range(2)]
        super().__init__(kernels, None if convt.bias is None else convt.bias.detach(), act)

    def forward(self, x):
        return interleave(self.phases(x))


def interleave(phases: list[torch.Tensor]) -> torch.Tensor:
    """Four phase maps ``[N, C, H, W]`` (row phase major) -> the ``[N, C, 2H, 2W]`` map they tile,
    exactly what stacking them and a PixelShuffle give (values moved, never computed), by ops
    onnxruntime runs fast.

    Written channels-last: the phases as ``[N, H, W, C]``, stacked to ``[N, H, W, 2, 2, C]``, the
    phase rows moved next to the map rows, reshaped to ``[N, 2H, 2W, C]`` and back to channels-first.
    onnxruntime runs the convolutions on either side channels-last (int8) or blocked, so the outer
    transposes cancel against its own layout changes and what is left moves whole C-value blocks: one
    concatenation and one transpose. Its DepthToSpace is a generic element-wise transpose (8 ms for
    dcgan64's 16x16 map at batch 64 on 2 threads), and placing values by 0/1 products (this function's
    previous form) is a float product per value, which an int8 graph would have to leave in float."""
    n, c, h, w = phases[0].shape
    y = torch.stack([p.permute(0, 2, 3, 1) for p in phases], 3).reshape(n, h, w, 2, 2, c)
    return y.permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


def _convt_phase_taps(phase: int) -> dict[int, tuple[int, int]]:
    """One dimension of a k4/s2/p1 transposed convolution applied to a map held as its two phases:
    output row ``4 j + phase`` (phase = 2 a + r; row ``2 m + r`` with m = 2 j + a) takes two kernel
    rows, each from one input phase. Returns {input phase: (offset in j, kernel row)}."""
    a, r = divmod(phase, 2)
    taps = {}
    for delta, k in (((0, 1), (-1, 3)) if r == 0 else ((1, 0), (0, 2))):  # input row m + delta, kernel row k
        u, e = (a + delta) % 2, (a + delta) // 2
        taps[u] = (e, k)
    return taps


class PhaseConvTTail(nn.Module):
    """The transposed-convolution generators' end, ``PhaseConvT -> [BatchNorm2d] -> ConvTranspose2d
    (k4, s2, p1; to Co channels, few) -> out_act``, without ever shuffling the middle map to full size.

    The last transposed convolution reads the PhaseConvT's four phase maps directly: its output, at
    4x the phase maps' size, has 16 phases per channel, each the sum of four taps, and the four taps
    of a phase read the four input phases once each. So per input phase one 1x1 convolution (with
    the BatchNorm folded in: it has no padding) computes one tap map per (channel, phase), a
    depthwise 3x3 convolution with one-hot weights shifts each to its offset, the four phases'
    results add up to the 16*Co phase maps, and one DepthToSpace (block 4) makes the image. The
    (up to) 16x larger middle map and its shuffle are never made; all of it runs in onnxruntime's
    blocked layout.
    """

    def __init__(self, head: PhaseConvT, bn: nn.BatchNorm2d | None, convt: nn.ConvTranspose2d, out_act: nn.Module):
        super().__init__()
        w = convt.weight.detach()                                         # [C, Co, 4, 4]
        c, co = w.shape[:2]
        scale, shift = torch.ones(c, dtype=w.dtype), torch.zeros(c, dtype=w.dtype)
        if bn is not None:
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias.detach() - bn.running_mean * scale
        self.head, self.out_act, self.co = head, out_act, co
        self.taps, self.shifts = nn.ModuleList(), nn.ModuleList()
        phases = [_convt_phase_taps(f) for f in range(4)]
        for uy in range(2):
            for ux in range(2):                                           # input phase 2 uy + ux
                tap_w = torch.zeros(co * 16, c, dtype=w.dtype)
                one_hot = torch.zeros(co * 16, 1, 3, 3, dtype=w.dtype)
                for o in range(co):
                    for fy in range(4):
                        for fx in range(4):                               # channel o * 16 + 4 fy + fx
                            (ey, ky), (ex, kx) = phases[fy][uy], phases[fx][ux]
                            ch = o * 16 + 4 * fy + fx
                            tap_w[ch] = w[:, o, ky, kx]
                            one_hot[ch, 0, ey + 1, ex + 1] = 1
                tap = nn.Conv2d(c, co * 16, 1)
                tap.weight.data = (tap_w * scale)[:, :, None, None].contiguous()
                tap.bias.data = tap_w @ shift
                move = nn.Conv2d(co * 16, co * 16, 3, padding=1, groups=co * 16, bias=False)
                move.weight.data = one_hot
                self.taps.append(tap)
                self.shifts.append(move)
        self.bias = None if convt.bias is None else nn.Parameter(convt.bias.detach().repeat_interleave(16)[None, :, None, None].clone())

    def forward(self, x):
        parts = [move(tap(p)) for tap, move, p in zip(self.taps, self.shifts, self.head.phases(x))]
        y = sum(parts[1:], parts[0])
        if self.bias is not None:
            y = y + self.bias
        return F.pixel_shuffle(self.out_act(y), 4)


class FirstLayerGemm(nn.Module):
    """``ConvTranspose2d(kernel k, stride 1, padding 0)`` on a 1x1 map (the 64x64 DCGAN's first layer)
    as one matrix product and a reshape: the same multiply-adds, one Gemm for the whole batch instead
    of a transposed convolution per image."""

    def __init__(self, convt: nn.ConvTranspose2d):
        super().__init__()
        w = convt.weight.detach()                                         # [Cin, Cout, k, k]
        cin, self.cout, self.k = w.shape[0], w.shape[1], w.shape[2]
        self.linear = nn.Linear(cin, self.cout * self.k * self.k)
        self.linear.weight.data = w.reshape(cin, -1).t().contiguous()
        bias = convt.bias.detach() if convt.bias is not None else torch.zeros(self.cout, dtype=w.dtype)
        self.linear.bias.data = bias.repeat_interleave(self.k * self.k)

    def forward(self, x):
        return self.linear(x.flatten(1)).reshape(-1, self.cout, self.k, self.k)


def _is_convt(m: nn.Module, kernel: int, stride: int, padding: int) -> bool:
    return (isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (kernel, kernel) and m.stride == (stride, stride)
            and m.padding == (padding, padding) and m.output_padding == (0, 0) and m.dilation == (1, 1)
            and m.groups == 1)


def transposed_forms(model: GeneratorNet, min_channels: int = 16, tail: bool = True) -> GeneratorNet | None:
    """A copy of ``model`` (BatchNorm already folded) with its transposed convolutions rewritten: a
    generator ending in ``ConvT (k4, s2, p1) -> ReLU -> [BatchNorm2d] -> ConvT (k4, s2, p1) -> Tanh``
    ends in a ``PhaseConvTTail``; the 64x64 DCGAN's first layer on the 1x1 latent becomes a
    ``FirstLayerGemm``; every other stride-2 one with at least ``min_channels`` outputs (the blocked
    layout pads fewer to 16) a ``PhaseConvT``, absorbing a ReLU after it. ``tail=False`` leaves the
    last two as they are (for comparison). ``None`` when there is nothing to rewrite."""
    model = copy.deepcopy(model)
    layers, end_form = list(model.main), []
    for k in (5, 4) if tail else ():  # with and without the BatchNorm between the two transposed convolutions
        end = layers[-k:]
        if len(layers) >= k and _is_convt(end[0], 4, 2, 1) and isinstance(end[1], nn.ReLU) and _is_convt(end[-2], 4, 2, 1) \
                and isinstance(end[-1], nn.Tanh) and (k == 4 or isinstance(end[2], nn.BatchNorm2d)):
            end_form = [PhaseConvTTail(PhaseConvT(end[0], nn.ReLU()), end[2] if k == 5 else None, end[-2], end[-1])]
            layers = layers[:-k]
            break
    out, i, changed = [], 0, bool(end_form)
    while i < len(layers):
        m = layers[i]
        if i == 0 and model.cfg.arch == "dcgan64" and _is_convt(m, m.kernel_size[0], 1, 0):
            out.append(FirstLayerGemm(m))
            changed = True
        elif _is_convt(m, 4, 2, 1) and m.out_channels >= min_channels:
            relu = i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU)
            out.append(PhaseConvT(m, nn.ReLU() if relu else None))
            changed = True
            i += relu
        else:
            out.append(m)
        i += 1
    if not changed:
        return None
    model.main = nn.Sequential(*out, *end_form)
    return model
