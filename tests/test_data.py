import gzip
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from dcgan_deploy import data
from dcgan_deploy.parallel import Batches


def write_idx(path, images):
    header = b"\x00\x00\x08\x03" + b"".join(int(v).to_bytes(4, "big") for v in images.shape)
    raw = header + images.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def test_mnist_sample_is_embedded():
    x = data.load("mnist-sample", 1, 28)
    assert x.shape == (5000, 1, 28, 28) and x.dtype == np.uint8
    labels = np.load(data.mnist_sample_path())["labels"]
    assert np.bincount(labels).tolist() == [500] * 10


def test_mnist_sample_heldout_keeps_fifty_of_each_digit_out_of_training():
    """``mnist-sample:heldout``: the same 500 images (50 per digit) held out on every call, for the
    memorisation check; the training images are the other 4,500."""
    d = data.load_dataset("mnist-sample:heldout", 1, 28)
    assert d.heldout.sum() == 500 and np.bincount(d.labels[d.heldout]).tolist() == [50] * 10
    assert np.array_equal(d.heldout, data.load_dataset("mnist-sample:heldout", 1, 28).heldout)
    assert len(data.load("mnist-sample:heldout", 1, 28)) == 4500 and len(data.load("mnist-sample", 1, 28)) == 5000
    assert data.load_dataset("mnist-sample", 1, 28).heldout is None


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"])
def test_idx_folder(tmp_path, name):
    imgs = np.random.default_rng(0).integers(0, 256, (10, 28, 28)).astype(np.uint8)
    write_idx(tmp_path / name, imgs)
    out = data.load(str(tmp_path), 1, 28)
    np.testing.assert_array_equal(out[:, 0], imgs)


def test_idx_errors(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 20)
    with pytest.raises(data.DataError, match="magic"):
        data.load(str(tmp_path), 1, 28)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28)))
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(data.DataError, match="truncated"):
        data.load(str(tmp_path), 1, 28)


def test_image_folder_recursive_resized_and_counted(tmp_path, caplog):
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (80, 40), (255, 0, 0)).save(tmp_path / "a" / "wide.png")
    rgba = Image.new("RGBA", (64, 64), (0, 0, 255, 0))  # fully transparent -> white background
    rgba.save(tmp_path / "a" / "b" / "clear.png")
    Image.new("L", (64, 64), 100).save(tmp_path / "grey.jpg")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING):
        x = data.load(str(tmp_path), 3, 32)
    assert x.shape == (3, 3, 32, 32)
    assert "skipped 1 unreadable image file(s) of 4" in caplog.text
    by_colour = {tuple(im[:, 16, 16]) for im in x}
    assert (255, 0, 0) in by_colour and (255, 255, 255) in by_colour
    grey = data.load(str(tmp_path / "a"), 1, 28)
    assert grey.shape == (2, 1, 28, 28)


def test_folder_errors(tmp_path):
    with pytest.raises(data.DataError, match="no image files"):
        data.load(str(tmp_path), 1, 28)
    (tmp_path / "x.png").write_bytes(b"junk")
    with pytest.raises(data.DataError, match="none of the 1 image files could be read"):
        data.load(str(tmp_path), 1, 28)
    with pytest.raises(data.DataError, match="not found"):
        data.load(str(tmp_path / "missing"), 1, 28)


def test_a_decompression_bomb_is_counted_as_unreadable(tmp_path, caplog):
    Image.new("L", (8, 8), 128).save(tmp_path / "ok.png")
    Image.new("1", (9000, 9000)).save(tmp_path / "bomb.png")  # 81 M pixels in a few kB
    with caplog.at_level(logging.WARNING):
        images = data.load(str(tmp_path), 1, 8)
    assert len(images) == 1 and "skipped 1 unreadable image file(s) of 2" in caplog.text


def test_a_strip_too_long_to_resize_is_refused_before_it_is_resized(tmp_path, caplog):
    Image.new("L", (8, 8), 128).save(tmp_path / "ok.png")
    Image.new("L", (20_000_000, 1)).save(tmp_path / "strip.png")  # 20 M pixels in 19 kB; resized: 1.3 G pixels
    with caplog.at_level(logging.WARNING):
        images = data.load(str(tmp_path), 1, 8)
    assert len(images) == 1 and "skipped 1 unreadable image file(s) of 2" in caplog.text
    with pytest.raises(ValueError, match="a 20000000x1 image would be 160000000x8 pixels"):
        data.read_image(tmp_path / "strip.png", 1, 8)
    (tmp_path / "ok.png").unlink()
    with pytest.raises(data.DataError, match="none of the 1 image files could be read"):
        data.load(str(tmp_path), 1, 8)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    Image.fromarray(np.rint(ramp / 257).astype(np.uint8)).save(tmp_path / "ramp8.png")
    sixteen, eight = (data.read_image(tmp_path / f"ramp{b}.png", 1, 64) for b in (16, 8))
    assert np.abs(sixteen.astype(int) - eight.astype(int)).max() <= 1 and 120 < sixteen.mean() < 135


def test_labelled_sources_split_by_group(tmp_path):
    d = data.load_dataset("mnist-sample", 1, 28)
    assert d.labels is not None and len(d.classes) == 10 and d.groups is None and d.heldout is None
    images = np.zeros((6, 1, 8, 8), np.uint8)
    np.savez(tmp_path / "l.npz", images=images, labels=np.array([0, 0, 1, 1, 1, 0]), classes=np.array(["a", "b"]),
             groups=np.array([0, 0, 1, 1, 2, 3]), heldout=np.array([0, 0, 0, 0, 1, 0], bool))
    d = data.load_dataset(str(tmp_path / "l.npz"), 1, 8)
    assert d.classes == ("a", "b") and len(d.training.images) == 5 and len(data.load(str(tmp_path / "l.npz"), 1, 8)) == 5
    np.savez(tmp_path / "bad.npz", images=images, labels=np.array([0, 1]))
    with pytest.raises(data.DataError, match="'labels' has shape \\[2\\], expected \\[6\\]"):
        data.load_dataset(str(tmp_path / "bad.npz"), 1, 8)


def test_an_emoji_package_is_read_with_categories_and_variant_groups(tmp_path):
    pkg = tmp_path / "package"
    (pkg / "img" / "twitter" / "64").mkdir(parents=True)
    entries = [{"image": "a.png", "category": "Smileys", "has_img_twitter": True},
               {"image": "b.png", "category": "People", "has_img_twitter": True,
                "skin_variations": {"1F3FB": {"image": "b-1.png", "has_img_twitter": True},
                                    "1F3FC": {"image": "b-2.png", "has_img_twitter": False}}},
               {"image": "c.png", "category": "Smileys", "has_img_twitter": False}]
    (pkg / "emoji.json").write_text(json.dumps(entries))
    for name in ("a.png", "b.png", "b-1.png"):
        Image.new("RGBA", (64, 64), (255, 0, 0, 128)).save(pkg / "img" / "twitter" / "64" / name)
    d = data.load_dataset(str(pkg), 3, 64)
    assert d.images.shape == (3, 3, 64, 64) and d.classes == ("Smileys", "People")
    assert d.labels.tolist() == [0, 1, 1] and d.groups.tolist() == [0, 1, 1]
    assert d.images[0, :, 0, 0].tolist() == [255, 127, 127]  # composited on white


def test_synthetic_is_seeded():
    a, b = data.load("synthetic:20", 3, 64, seed=1), data.load("synthetic:20", 3, 64, seed=1)
    assert a.shape == (20, 3, 64, 64) and np.array_equal(a, b) and a.max() > 100
    assert not np.array_equal(a, data.load("synthetic:20", 3, 64, seed=2))


def test_batches_resume_exactly_and_scale():
    images = data.load("synthetic:50", 1, 28)
    b1 = Batches(images, 8, seed=3)
    first = [b1.next() for _ in range(4)]
    state = b1.state_dict()
    rest = [b1.next() for _ in range(10)]  # crosses an epoch boundary
    b2 = Batches(images, 8, seed=99)
    b2.load_state_dict(state)
    for x, y in zip(rest, [b2.next() for _ in range(10)]):
        assert torch.equal(x, y)
    assert first[0].min() >= -1 and first[0].max() <= 1 and first[0].dtype == torch.float32
    with pytest.raises(data.DataError, match="fewer than one batch"):
        Batches(images[:4], 8, seed=0)


def test_ranks_take_disjoint_slices_of_one_global_batch():
    images = data.load("synthetic:64", 1, 28)
    whole = Batches(images, 16, seed=0).next(0, 1)
    r0 = Batches(images, 8, seed=0).next(0, 2)
    r1 = Batches(images, 8, seed=0).next(1, 2)
    assert torch.equal(torch.cat([r0, r1]), whole)


def test_a_folder_of_class_subfolders_is_labelled_by_them(tmp_path):
    """The ImageFolder convention: pets/cat/*.png, pets/dog/*.png -> classes ("cat", "dog")."""
    for cls, n in (("dog", 2), ("cat", 3)):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "pets" / cls / f"{i}.png")
    d = data.load_dataset(str(tmp_path / "pets"), 3, 64)
    assert d.classes == ("cat", "dog") and d.labels.tolist() == [0, 0, 0, 1, 1]
    Image.new("RGB", (8, 8)).save(tmp_path / "pets" / "loose.png")  # an image outside the subfolders: unlabelled
    assert data.load_dataset(str(tmp_path / "pets"), 3, 64).labels is None
    s = data.load_dataset("synthetic:9:3", 1, 28)
    assert s.classes == ("a", "b", "c") and s.labels.tolist() == [0, 1, 2] * 3
    with pytest.raises(data.DataError, match="synthetic:N:K takes a number of classes K from 2 to 26"):
        data.load_dataset("synthetic:9:1", 1, 28)
