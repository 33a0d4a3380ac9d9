import pytest
import torch
from torch import nn

from dcgan_deploy.nets import ARCHITECTURES, DiscriminatorNet, GeneratorNet, NetConfig


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shapes_and_value_range(arch):
    cfg = NetConfig.for_arch(arch)
    torch.manual_seed(0)
    G, D = GeneratorNet(cfg).eval(), DiscriminatorNet(cfg).eval()
    z = torch.randn(3, cfg.latent_dim)
    x = G(z)
    assert x.shape == (3, cfg.channels, cfg.image_size, cfg.image_size)
    assert x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (3,)
    assert NetConfig.from_dict(cfg.to_dict()) == cfg


def count(module, kind):
    return sum(isinstance(m, kind) for m in module.modules())


def test_layer_recipes_follow_the_spec():
    g = GeneratorNet(NetConfig.for_arch("mnist-dcgan")).main
    assert [m.out_channels for m in g if isinstance(m, nn.Conv2d)] == [64, 128, 64, 1]
    assert g[0].out_features == 32 * 7 * 7 and count(g, nn.Upsample) == 2
    bn = [m for m in g if isinstance(m, nn.BatchNorm2d)][0]
    assert (bn.momentum, bn.eps) == (0.2, 1e-3)  # Keras momentum 0.8, eps 1e-3
    d = DiscriminatorNet(NetConfig.for_arch("mnist-dcgan")).main
    assert count(d, nn.ZeroPad2d) == 1 and count(d, nn.AdaptiveAvgPool2d) == 1

    w = GeneratorNet(NetConfig.for_arch("mnist-dcgan-wide")).main
    assert w[0].out_features == 128 * 7 * 7
    assert [m.out_channels for m in w if isinstance(m, nn.Conv2d)] == [128, 64, 1]
    assert count(DiscriminatorNet(NetConfig.for_arch("mnist-dcgan-wide")), nn.Dropout) == 4

    mlp = GeneratorNet(NetConfig.for_arch("mnist-mlp")).main
    assert [m.out_features for m in mlp if isinstance(m, nn.Linear)] == [256, 512, 1024, 784]
    assert count(mlp, nn.BatchNorm1d) == 3

    ct = NetConfig.for_arch("mnist-convt")
    assert (ct.latent_dim, ct.latent_prior) == (96, "uniform")
    g5 = GeneratorNet(ct).main
    assert [m.out_features for m in g5 if isinstance(m, nn.Linear)] == [1024, 7 * 7 * 128]
    d5 = DiscriminatorNet(ct).main
    assert count(d5, nn.MaxPool2d) == 2 and [m.negative_slope for m in d5 if isinstance(m, nn.LeakyReLU)] == [0.01] * 3


def test_dcgan64_matches_the_canonical_example_layout():
    cfg = NetConfig.for_arch("dcgan64")
    keys = set(GeneratorNet(cfg).state_dict())
    # pytorch/examples dcgan/main.py: main.0 ConvT, main.1 BN, ... main.12 ConvT
    assert {"main.0.weight", "main.1.weight", "main.1.running_mean", "main.12.weight"} <= keys
    assert not any(k.endswith("bias") and k.startswith("main.0") for k in keys)
    torch.manual_seed(0)
    g = GeneratorNet(cfg)
    w = g.main[3].weight
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002  # DCGAN init
    assert abs(g.main[1].weight.mean().item() - 1) < 0.01


def test_bad_configs():
    with pytest.raises(ValueError, match="unknown architecture"):
        NetConfig.for_arch("resnet")
    with pytest.raises(ValueError, match="not supported"):
        NetConfig.for_arch("mnist-dcgan", image_size=64)
    with pytest.raises(ValueError, match="unknown architecture settings"):
        NetConfig.for_arch("mnist-dcgan", depth=3)
