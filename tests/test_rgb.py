"""The 64x64 RGB recipe's parts: DiffAugment, spectral normalisation, the minibatch standard-deviation layer,
the losses, R1, the memorisation check, and a few steps of the recipe itself on a tiny folder of RGB images."""
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


@pytest.mark.parametrize("policy", [("flip",), ("translation",), ("cutout",), ("translation", "cutout"), ("scale",),
                                    ("rotation",), ("flip", "translation", "scale", "rotation", "cutout")])
def test_geometric_augmentation_is_one_transform_for_real_and_fake(policy):
    """Given the generator's state, flip, translation, scale, rotation and cutout are one linear remapping of the
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


def _centroids(x):
    """Each image's centre of mass (channel 0) in the sampling grid's coordinates: x, y in (-1, 1), y down."""
    h, w = x.shape[-2:]
    ys = (torch.arange(h) + 0.5) / h * 2 - 1
    xs = (torch.arange(w) + 0.5) / w * 2 - 1
    m = x[:, 0]
    total = m.sum((1, 2))
    return torch.stack([(m * xs).sum((1, 2)) / total, (m * ys[:, None]).sum((1, 2)) / total], 1)


def test_scale_and_rotation_move_a_spot_as_their_drawn_parameters_say():
    """A bright spot off the centre lands where the zoom 2^N(0, 0.2) and the angle U(-30, 30) degrees drawn from
    the generator's state put it: times the zoom, turned by the angle (bilinear resampling keeps its mass)."""
    n = 16
    x = torch.zeros(n, 3, 64, 64)
    x[:, :, 18:22, 40:44] = 1                          # centre (42, 20) in pixels -> (0.3125, -0.375)
    spot = _centroids(x)[0]
    zoom = torch.exp2(torch.randn(n, generator=state()) * 0.2)
    assert torch.allclose(_centroids(aug.scale(x, state())), spot * zoom[:, None], atol=0.01)
    angle = (torch.rand(n, generator=state()) * 2 - 1) * math.radians(30)
    assert angle.abs().max() > math.radians(15)       # the check has turns worth seeing
    c, s = torch.cos(angle), torch.sin(angle)         # output o samples the input at R o: the spot goes to R^T p
    turned = torch.stack([c * spot[0] + s * spot[1], -s * spot[0] + c * spot[1]], 1)
    y = aug.rotation(x, state())
    assert torch.allclose(_centroids(y), turned, atol=0.01)
    assert torch.allclose(y[:, 0].sum((1, 2)), x[:, 0].sum((1, 2)), rtol=0.02)


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
    # BatchNorm D: real and fake apart; spectral-norm D: in one forward; with a minibatch-std layer apart again;
    # BatchNorm D with joint_batch: real and fake in one forward, in D's update and in G's
    for spectral, mbstd, joint in ((False, 0, False), (True, 0, False), (True, 2, False), (False, 0, True)):
        seen.clear()
        cfg = TrainConfig(arch="dcgan64", data="synthetic:16", steps=1, batch_size=4, augment="color,cutout",
                          spectral_norm=spectral, minibatch_std=mbstd, joint_batch=joint,
                          net={"g_width": 8, "d_width": 8, "channels": 3})
        Trainer(cfg, tmp_path / f"{spectral}{mbstd}{joint}", progress=False).train_step()
        d_step = [8] if (spectral and not mbstd) or joint else [4, 4]
        assert [n for n, _ in seen] == d_step + [8 if joint else 4]  # D's update on real and fake, then G's
        assert {p for _, p in seen} == {("color", "cutout")}


def test_joint_batch_normalises_real_and_generated_images_together(tmp_path):
    """With joint_batch, a BatchNorm D's logit for a generated image depends on the real batch beside it (they
    share the batch statistics), in D's update and in G's, and G's loss is over the generated images' logits of
    that joint forward; without it, a generated image's logit depends on the generated batch alone."""
    import torch.nn.functional as F
    net = {"g_width": 8, "d_width": 8, "channels": 3}
    logits = {}
    for joint in (False, True):
        cfg = TrainConfig(arch="dcgan64", data="synthetic:16", steps=1, batch_size=4, joint_batch=joint, net=net)
        t = Trainer(cfg, tmp_path / str(joint), progress=False)
        fake = t.G(torch.randn(4, t.net.latent_dim, generator=state(1))).detach()
        real_a, real_b = batch(4, 1), batch(4, 2)
        real_a, real_b = (F.interpolate(r, size=64) for r in (real_a, real_b))
        logits[joint] = [t.discriminate(r, fake)[1] for r in (real_a, real_b)]
        if joint:  # G's step: its loss is the non-saturating loss of the fakes' logits in the joint forward
            t.D.requires_grad_(False)
            expected = F.binary_cross_entropy_with_logits(logits[True][0], torch.ones(4))
            assert torch.allclose(t.g_loss(t.D(torch.cat([real_a, fake]))[4:]), expected)
    assert torch.equal(logits[False][0], logits[False][1])          # each batch by its own statistics
    assert not torch.allclose(logits[True][0], logits[True][1])     # together: the real batch matters
    with pytest.raises(ValueError, match="joint_batch and minibatch_std do not go together"):
        TrainConfig(arch="dcgan64", data="synthetic:16", joint_batch=True, minibatch_std=2).check()


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
    Trainer(TrainConfig(**cfg), tmp_path / "straight", progress=False).train()
    rows = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "augment_p" in r and "done" not in r]
    assert len(rows) == 8 and rows[0]["augment_p"] == 0
    for a, b in zip(rows, rows[1:]):
        direction = (a["ada_signal"] > 0.2) - (a["ada_signal"] < 0.2)
        assert b["augment_p"] == pytest.approx(min(1, max(0, a["augment_p"] + direction * 4 / 20)), abs=1e-5)
    assert max(r["augment_p"] for r in rows) > 0  # it did augment
    Trainer(TrainConfig(**{**cfg, "steps": 4}), tmp_path / "split", progress=False).train()
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


def test_minibatch_std_appends_each_groups_deviation():
    from dcgan_deploy.nets import MinibatchStd
    x = torch.randn(8, 5, 4, 4, generator=state(2))
    y = MinibatchStd(4)(x)
    assert y.shape == (8, 6, 4, 4) and torch.equal(y[:, :5], x)
    for g in range(2):  # images 0-3 and 4-7: one group each, one value for all of it, at every position
        group = x[4 * g:4 * g + 4]
        want = group.std(0, unbiased=False).mean()
        assert torch.allclose(y[4 * g:4 * g + 4, 5], want.expand(4, 4, 4), atol=1e-5)
    assert not torch.allclose(y[0, 5], y[4, 5])
    same = MinibatchStd(4)(x[:1].expand(4, 5, 4, 4))  # no variety: deviation ~0
    assert same[:, 5].abs().max() < 1e-3
    assert MinibatchStd(4)(torch.randn(6, 3)).shape == (6, 4)  # a divisor of 6 up to 4 (3); flat features too
    assert torch.allclose(MinibatchStd(4)(x[:1])[:, 5], torch.full((1, 4, 4), 1e-4))  # one image: sqrt(eps)


def test_a_minibatch_std_d_tells_a_batch_without_variety_apart():
    """With the layer, an image's logit depends on the others of its group (not beyond it), and gradients
    reach every image; without it (a spectral-norm D) each logit is its image's own."""
    cfg = NetConfig.for_arch("dcgan64", g_width=8, d_width=8, channels=3)
    d = DiscriminatorNet(cfg, spectral_norm=True, minibatch_std=2).eval()
    assert d.mixes_batch and not DiscriminatorNet(cfg, spectral_norm=True).mixes_batch
    x = torch.rand(4, 3, 64, 64, generator=state(3)) * 2 - 1
    changed = x.clone()
    changed[1] = -changed[1]
    a, b = d(x), d(changed)
    assert a[0] != b[0] and torch.equal(a[2:], b[2:])  # image 0 shares a group with image 1, images 2-3 do not
    x.requires_grad_(True)
    d(x).sum().backward()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()
    plain = DiscriminatorNet(cfg, spectral_norm=True).eval()
    assert torch.equal(plain(changed)[0], plain(x.detach())[0])


def test_losses_and_r1(tmp_path):
    cfg = TrainConfig(arch="dcgan64", data="synthetic:16", steps=1, batch_size=4, loss="hinge", r1=2.0, r1_every=1,
                      spectral_norm=True, net={"g_width": 8, "d_width": 8, "channels": 3})
    t = Trainer(cfg, tmp_path, progress=False)
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert t.d_loss(real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1.5) / 2)  # relu(1 - r) + relu(1 + f)
    t.cfg.loss = "bce"
    assert t.d_loss(real, fake).item() == pytest.approx(
        torch.nn.functional.softplus(-real).mean().item() + torch.nn.functional.softplus(fake).mean().item())
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    t.policy = ()  # no augmentation: the penalty is then exactly gamma / 2 * r1_every * E |grad_x D(x)|^2
    t.D.eval()  # (no power iteration in between)
    penalty = t.r1_penalty(images)
    x = images.clone().requires_grad_(True)
    grad, = torch.autograd.grad(t.D(x).sum(), x)
    assert penalty.requires_grad
    assert penalty.item() == pytest.approx(2.0 / 2 * 1 * grad.pow(2).flatten(1).sum(1).mean().item(), rel=1e-5)
    penalty.backward()  # it trains D: gradients reach D's weights
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in t.D.parameters())


def test_lecam_penalty_and_its_anchors(tmp_path):
    """LeCam: E[relu(D(x) - a_fake)^2] + E[relu(a_real - D(G(z)))^2] with anchors that the first batch sets and
    later batches move by 1 - LECAM_DECAY; it trains D, and a checkpoint carries the anchors."""
    from dcgan_deploy.train import LECAM_DECAY
    cfg = TrainConfig(arch="dcgan64", data="synthetic:16", steps=1, batch_size=4, lecam=0.3, checkpoint_every=1,
                      sample_every=1, net={"g_width": 8, "d_width": 8, "channels": 3})
    t = Trainer(cfg, tmp_path, progress=False)
    real, fake = torch.tensor([3.0, 1.0]), torch.tensor([-1.0, -3.0])
    first = t.lecam_penalty(real, fake)  # anchors: real 2, fake -2
    assert t.lecam_anchors.tolist() == [2.0, -2.0]
    assert first.item() == pytest.approx((5 ** 2 + 3 ** 2) / 2 + (3 ** 2 + 5 ** 2) / 2)
    real2, fake2 = torch.tensor([-4.0, 0.0]), torch.tensor([2.0, 4.0])  # means -2, 3
    second = t.lecam_penalty(real2, fake2)
    a_real, a_fake = 2 + (1 - LECAM_DECAY) * (-2 - 2), -2 + (1 - LECAM_DECAY) * (3 + 2)
    assert t.lecam_anchors.tolist() == pytest.approx([a_real, a_fake])
    relu = torch.nn.functional.relu
    assert second.item() == pytest.approx((relu(real2 - a_fake).pow(2).mean() + relu(a_real - fake2).pow(2).mean()).item())
    # one-sided: only the real logit above the fake anchor (0 - a_fake = 1.95) costs; a two-sided penalty would add
    # (-4 - a_fake)^2 and both generated logits' squares
    assert a_fake == pytest.approx(-1.95) and second.item() == pytest.approx((0 - a_fake) ** 2 / 2)
    t.lecam_anchors = None
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    d_real, d_fake = t.discriminate(images, -images)
    t.lecam_penalty(d_real, d_fake).backward()  # it trains D: gradients reach D's weights
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in t.D.parameters())
    t.train()
    state = load_torch(tmp_path / "train_state.pt")
    assert state["lecam_anchors"].shape == (2,) and torch.equal(state["lecam_anchors"], t.lecam_anchors)


def test_top_k_training_learns_from_the_best_scored_images(tmp_path):
    """Top-k: G's loss over only the k images D scores highest, k the batch shrinking by TOPK_DECAY per epoch
    down to top_k of it; the others get no gradient. Off, every image counts."""
    from dcgan_deploy.train import TOPK_DECAY
    cfg = TrainConfig(arch="dcgan64", data="synthetic:16", steps=3, batch_size=8, top_k=0.5, checkpoint_every=3,
                      sample_every=3, net={"g_width": 8, "d_width": 8, "channels": 3})
    t = Trainer(cfg, tmp_path, progress=False)
    assert t.top_k_count() == 8  # step 0: the whole batch
    t.step = 10  # 5 epochs of 16 images: 8 * 0.99 ** 5 = 7.6 -> 8
    assert t.top_k_count() == math.ceil(8 * TOPK_DECAY ** 5) == 8
    t.step = 60  # 30 epochs: 8 * 0.74 = 5.9 -> 6
    assert t.top_k_count() == math.ceil(8 * TOPK_DECAY ** 30) == 6
    t.step = 10_000  # long past: the floor, half the batch
    assert t.top_k_count() == 4
    logits = torch.tensor([3.0, -1.0, 0.5, -5.0, 2.0, -2.0, 0.0, 1.0], requires_grad=True)
    loss = t.g_loss(logits)
    assert loss.item() == pytest.approx(torch.nn.functional.softplus(-torch.tensor([3.0, 2.0, 1.0, 0.5])).mean().item())
    loss.backward()
    assert (logits.grad != 0).tolist() == [True, False, True, False, True, False, False, True]
    t.cfg.loss = "hinge"
    assert t.g_loss(logits).item() == pytest.approx(-(3.0 + 2.0 + 1.0 + 0.5) / 4)
    t.cfg.top_k, t.cfg.loss = 0.0, "bce"  # off: every image
    assert t.g_loss(logits).item() == pytest.approx(torch.nn.functional.softplus(-logits).mean().item())
    t.cfg.top_k, t.step = 0.5, 0
    assert t.train()["step"] == 3  # it trains


def test_the_memorisation_check_catches_a_copying_generator():
    rng = np.random.default_rng(0)
    training = rng.standard_normal((600, 16))
    heldout = rng.standard_normal((200, 16))
    honest = rng.standard_normal((500, 16))
    copies = training[rng.integers(0, 600, 500)] + 0.01 * rng.standard_normal((500, 16))
    assert ev.memorisation(honest, heldout, training)["passed"]
    caught = ev.memorisation(copies, heldout, training)
    assert not caught["passed"] and caught["close_share"] > 0.9 and caught["median_ratio"] < 0.1


def test_class_shares_flag_a_major_class_that_is_missing():
    real = np.eye(3)[np.r_[np.zeros(60, int), np.ones(30, int), np.full(10, 2)]]
    fine = np.eye(3)[np.r_[np.zeros(50, int), np.ones(40, int), np.full(10, 2)]]
    short = np.eye(3)[np.r_[np.zeros(90, int), np.ones(10, int)]]
    assert ev.class_shares(fine, real, ["a", "b", "c"])["passed"]
    out = ev.class_shares(short, real, ["a", "b", "c"])
    assert not out["passed"] and out["short"] == ["b", "c"] and out["major"] == ["a", "b", "c"]


def test_a_few_steps_of_the_folder_recipe_on_a_tiny_rgb_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), np.uint8)).save(folder / f"{i}.png")
    cfg = TrainConfig.from_file(ROOT / "training" / "dcgan64-folder.toml", data=str(folder), steps=3, batch_size=8)
    cfg.net = {**cfg.net, "g_width": 8, "d_width": 8}  # the recipe, narrow: a few seconds
    cfg.sample_every = cfg.checkpoint_every = 3
    assert (cfg.average_start, cfg.average_every) == (cfg.lr_decay_start, 1000)  # the mean over the decay ...
    cfg.average_start, cfg.average_every = 2, 1  # ... here over the last two steps
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    record = trainer.train()
    assert record["step"] == 3 and trainer.policy == ("translation", "cutout") and trainer.ema is not None
    assert trainer.average["count"] == 2
    # the recipe's two time-scales reach the optimisers: G at twice D's rate (before the decay, at step 15,000)
    assert cfg.lr == 2 * cfg.lr_d and cfg.lr_decay_start == 15000
    assert trainer.optG.param_groups[0]["lr"] == cfg.lr and trainer.optD.param_groups[0]["lr"] == cfg.lr_d
    assert (tmp_path / "run" / "generator.safetensors").exists() and (tmp_path / "run" / "samples" / "step_000003.png").exists()
