"""The 64x64 RGB recipe's parts: DiffAugment, spectral normalisation, the losses, R1, the memorisation check, and a few steps of the recipe itself on a tiny folder of RGB images."""
import math
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from dcgan_deploy import augment as aug
from dcgan_deploy.checkpoint import load_torch
from dcgan_deploy import evaluate as ev
from dcgan_deploy.nets import DiscriminatorNet, NetConfig
from dcgan_deploy.train import TrainConfig, Trainer


def batch(n=8, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def state(seed=7):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("policy", [("flip",), ("translation",), ("cutout",), ("translation", "cutout"),
                                    ("flip", "translation", "cutout")])
def test_geometric_augmentation_is_one_transform_for_real_and_fake(policy):
    """Given the generator's state, flip, translation and cutout are one linear remapping of the
    pixels, whatever the batch holds: augmenting real, fake and real + fake gives aug(real) + aug(fake) = aug(real + fake)."""
    real, fake = batch(seed=1), batch(seed=2)
    a, b = aug.augment(real, policy, state()), aug.augment(fake, policy, state())
    assert torch.allclose(a + b, aug.augment(real + fake, policy, state()), atol=1e-6)
    assert not torch.allclose(a, aug.augment(real, policy, state(8)))  # another state, another transform


def test_flip_mirrors_about_half_the_images_left_to_right():
    """Each image comes back as itself or its mirror image (columns reversed), as drawn from the state:
    about half of them mirrored, the same ones for any batch of that size."""
    x = torch.rand(400, 3, 8, 8, generator=state(1)) * 2 - 1
    y = aug.flip(x, state())
    mirrored = (y == x.flip(3)).flatten(1).all(1)
    assert bool((mirrored | (y == x).flatten(1).all(1)).all()) and 0.4 < mirrored.float().mean() < 0.6
    assert torch.equal(mirrored, torch.rand(400, generator=state()) < 0.5)
    assert torch.equal(aug.flip(-x, state()), -y)


def test_colour_augmentation_is_one_transform_for_real_and_fake():
    """Per image, colour is x -> clamp(k_c (k_s (x + b - m_1) + m_1 - m_2) + m_2) with b, k_s, k_c from the
    state: the same numbers for real and fake (checked on images that the clamp does not touch)."""
    real, fake = 0.01 * batch(seed=1), 0.01 * batch(seed=2)
    a, b = aug.color(real, state()), aug.color(fake, state())
    brightness, saturation, contrast = torch.rand(3, 8, 1, 1, 1, generator=state())
    for x, y in ((real, a), (fake, b)):
        x = x + (brightness - 0.5)
        m = x.mean(1, keepdim=True)
        x = (x - m) * (saturation * 2) + m
        m = x.mean((1, 2, 3), keepdim=True)
        assert torch.allclose(((x - m) * (contrast + 0.5) + m).clamp(-1, 1), y, atol=1e-6)


def test_the_trainer_shows_d_augmented_real_and_fake_images(tmp_path, monkeypatch):
    import dcgan_deploy.train as train_mod
    seen = []
    real_augment = train_mod.augment

    def spy(x, policy, generator, p=1.0):
        seen.append((len(x), tuple(policy)))
        return real_augment(x, policy, generator, p)
    monkeypatch.setattr(train_mod, "augment", spy)
    # BatchNorm D: real and fake apart (each batch by its own statistics); spectral-norm D: in one forward
    for spectral in (False, True):
        seen.clear()
        cfg = TrainConfig.of(arch="dcgan64", data="synthetic:16", steps=1, batch_size=4, augment="color,cutout",
                             spectral_norm=spectral, net={"g_width": 8, "d_width": 8, "channels": 3})
        Trainer(cfg, tmp_path / f"{spectral}", progress=False).train_step()
        assert [n for n, _ in seen] == ([8] if spectral else [4, 4]) + [4]  # D's update on real and fake, then G's
        assert {p for _, p in seen} == {("color", "cutout")}


def test_augmentation_keeps_images_in_range_and_is_differentiable():
    x = (batch() * 1.0).requires_grad_(True)
    y = aug.augment(x, aug.POLICIES, torch.Generator().manual_seed(3))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not torch.equal(y, x) and aug.augment(x, (), torch.Generator()) is x


def test_adaptive_strength_gives_each_image_each_transform_with_probability_p():
    """ADA's strength p: 1 is DiffAugment, 0 leaves the batch alone, in between each image is either left
    alone or transformed as p = 1 would (for one policy), about a share p of them; still differentiable."""
    x = torch.rand(400, 3, 8, 8, generator=state(1)) * 2 - 1
    assert torch.equal(aug.augment(x, aug.POLICIES, state(), 1.0), aug.augment(x, aug.POLICIES, state()))
    assert aug.augment(x, aug.POLICIES, state(), 0.0) is x
    full = aug.augment(x, ("cutout",), state())
    x.requires_grad_(True)
    half = aug.augment(x, ("cutout",), state(), 0.5)
    kept = (half == x).flatten(1).all(1)
    changed = (half == full).flatten(1).all(1)
    assert bool((kept | changed).all()) and 0.4 < changed.float().mean() < 0.6 and 0.4 < kept.float().mean() < 0.6
    half.sum().backward()
    assert x.grad is not None and (x.grad[kept] == 1).all() and (x.grad[~kept] == 0).any()
    mixed = aug.augment(x.detach(), aug.POLICIES, state(), 0.3)
    assert mixed.min() >= -1 and mixed.max() <= 1


def test_ada_moves_the_strength_by_ds_overfitting_signal_and_resumes_exactly(tmp_path):
    """With ``ada_target``, p starts at 0 and after each step moves by batch / ada_images towards more
    augmentation while E[sign(D(real))] is above the target, less while below, within [0, 1]; the log shows
    both, and a run resumed half-way continues with the same p and the same weights."""
    import json
    from dcgan_deploy.checkpoint import load_torch
    cfg = dict(arch="dcgan64", data="synthetic:32", steps=8, batch_size=4, augment="color,translation,cutout",
               ada_target=0.2, ada_images=20, log_every=1, sample_every=8, checkpoint_every=4,
               net={"g_width": 8, "d_width": 8, "channels": 3})
    Trainer(TrainConfig.of(**cfg), tmp_path / "straight", progress=False).train()
    rows = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "augment_p" in r and "done" not in r]
    assert len(rows) == 8 and rows[0]["augment_p"] == 0
    for a, b in zip(rows, rows[1:]):
        direction = (a["ada_signal"] > 0.2) - (a["ada_signal"] < 0.2)
        assert b["augment_p"] == pytest.approx(min(1, max(0, a["augment_p"] + direction * 4 / 20)), abs=1e-5)
    assert max(r["augment_p"] for r in rows) > 0  # it did augment
    Trainer(TrainConfig.of(**{**cfg, "steps": 4}), tmp_path / "split", progress=False).train()
    Trainer.resume(tmp_path / "split", progress=False, steps=8).train()
    a, b = load_torch(tmp_path / "straight" / "train_state.pt"), load_torch(tmp_path / "split" / "train_state.pt")
    assert a["augment_p"] == b["augment_p"] and all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"])


def test_translation_and_cutout_do_what_they_say():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(64, 3, 1, 1) / 16
    moved = aug.translation(x, torch.Generator().manual_seed(0), ratio=0.25)  # shifts of -1..1 pixels
    for img in moved:  # each image is its source shifted by at most a pixel, with zeros coming in
        shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                  if torch.equal(img[0], torch.roll(x[0, 0], (-dy, -dx), (0, 1)) * shift_mask(dy, dx))]
        assert shifts
    cut = aug.cutout(torch.ones(64, 3, 8, 8), torch.Generator().manual_seed(0))
    zeros = (cut[:, 0] == 0).sum((1, 2))
    assert ((zeros > 0) & (zeros <= 16)).all()  # a 4x4 square, maybe hanging over the border


def shift_mask(dy, dx):
    m = torch.ones(4, 4)
    if dy > 0:
        m[-dy:] = 0
    if dy < 0:
        m[:-dy] = 0
    if dx > 0:
        m[:, -dx:] = 0
    if dx < 0:
        m[:, :-dx] = 0
    return m


def test_unknown_policies_are_refused():
    assert aug.parse_policy("cutout, color") == ("color", "cutout")
    with pytest.raises(ValueError, match="unknown policy 'blur'"):
        aug.parse_policy("color,blur")


def test_spectral_norm_bounds_each_layer_and_removes_batchnorm():
    cfg = NetConfig.for_arch("dcgan64", g_width=8, d_width=8, channels=3)
    d = DiscriminatorNet(cfg, spectral_norm=True)
    assert not d.has_batchnorm and DiscriminatorNet(cfg).has_batchnorm
    d.train()
    for _ in range(30):  # power iterations converge during training forwards
        d(torch.randn(4, 3, 64, 64))
    d.eval()
    with torch.no_grad():
        for m in d.modules():
            if isinstance(m, torch.nn.Conv2d):
                w = m.weight.reshape(m.weight.shape[0], -1)
                assert float(torch.linalg.matrix_norm(w, ord=2)) == pytest.approx(1.0, rel=0.05)


def test_losses_and_r1():
    from dcgan_deploy.losses import LOSSES, r1_penalty
    from dcgan_deploy.nets import DiscriminatorNet, NetConfig
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert LOSSES["hinge"].d(real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1.5) / 2)  # relu(1 - r) + relu(1 + f)
    assert LOSSES["hinge"].g(fake).item() == pytest.approx(0.75)                                  # -D(G(z))
    softplus = torch.nn.functional.softplus
    assert LOSSES["bce"].d(real, fake).item() == pytest.approx(softplus(-real).mean().item() + softplus(fake).mean().item())
    assert LOSSES["bce"].g(fake).item() == pytest.approx(softplus(-fake).mean().item())           # non-saturating
    d = DiscriminatorNet(NetConfig.for_arch("dcgan64", g_width=8, d_width=8, channels=3), spectral_norm=True).eval()
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    penalty = r1_penalty(d, images, gamma=2.0, every=3)  # gamma / 2 * every * E |grad_x D(x)|^2
    x = images.clone().requires_grad_(True)
    grad, = torch.autograd.grad(d(x).sum(), x)
    assert penalty.requires_grad
    assert penalty.item() == pytest.approx(2.0 / 2 * 3 * grad.pow(2).flatten(1).sum(1).mean().item(), rel=1e-5)
    penalty.backward()  # it trains D: gradients reach D's weights
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.parameters())


def test_the_memorisation_check_catches_a_copying_generator():
    rng = np.random.default_rng(0)
    training = rng.standard_normal((600, 16))
    heldout = rng.standard_normal((200, 16))
    honest = rng.standard_normal((500, 16))
    copies = training[rng.integers(0, 600, 500)] + 0.01 * rng.standard_normal((500, 16))
    assert ev.memorisation(honest, heldout, training)["passed"]
    caught = ev.memorisation(copies, heldout, training)
    assert not caught["passed"] and caught["close_share"] > 0.9 and caught["median_ratio"] < 0.1
    # a generator exactly as far from its training set as unseen real images sits at 1 give or take the
    # held-out median's noise: a ratio a little under 1 passes, one well under the noise does not
    unseen = ev.memorisation(heldout, heldout, training)
    assert unseen["passed"] and unseen["median_ratio"] == 1.0 and 0.8 < unseen["median_ratio_floor"] < 1.0
    nearest = training[np.argmin(((honest[:, None] - training[None]) ** 2).sum(-1), 1)]
    for shrink, passes in ((1 - (1 - unseen["median_ratio_floor"]) / 4, True), (0.75, False)):
        closer = nearest + shrink * (honest - nearest)  # every distance to the training set times shrink
        out = ev.memorisation(closer, heldout, training)
        assert out["passed"] is passes, (shrink, out)


def test_class_shares_flag_a_major_class_that_is_missing():
    real = np.eye(3)[np.r_[np.zeros(60, int), np.ones(30, int), np.full(10, 2)]]
    fine = np.eye(3)[np.r_[np.zeros(50, int), np.ones(40, int), np.full(10, 2)]]
    short = np.eye(3)[np.r_[np.zeros(90, int), np.ones(10, int)]]
    assert ev.class_shares(fine, real, ["a", "b", "c"])["passed"]
    out = ev.class_shares(short, real, ["a", "b", "c"])
    assert not out["passed"] and out["short"] == ["b", "c"] and out["major"] == ["a", "b", "c"]


@pytest.mark.slow
def test_a_few_steps_of_the_folder_recipe_on_a_tiny_rgb_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), np.uint8)).save(folder / f"{i}.png")
    cfg = TrainConfig.from_file(ROOT / "training" / "dcgan64-folder.toml", data=str(folder), steps=3, batch_size=8)
    cfg.net = {**cfg.net, "g_width": 8, "d_width": 8}  # the recipe, narrow: a few seconds
    cfg.run.sample_every = cfg.run.checkpoint_every = 3
    g, o = cfg.generator, cfg.optim
    assert (g.average_start, g.average_every) == (o.lr_decay_start, 1000)  # the mean over the decay ...
    g.average_start, g.average_every = 2, 1  # ... here over the last two steps
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    record = trainer.train()
    assert record["step"] == 3 and trainer.policy == ("translation", "cutout") and trainer.ema is not None
    assert trainer.average["count"] == 2
    # the recipe's two time-scales reach the optimisers: G at twice D's rate (before the decay, at step 15,000)
    assert o.lr == 2 * o.lr_d and o.lr_decay_start == 15000
    assert trainer.optG.param_groups[0]["lr"] == o.lr and trainer.optD.param_groups[0]["lr"] == o.lr_d
    assert (tmp_path / "run" / "generator.safetensors").exists() and (tmp_path / "run" / "samples" / "step_000003.png").exists()
