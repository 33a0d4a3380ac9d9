import numpy as np
import pytest

from dcgan_deploy.latent import iter_latents, latents, lerp, path, slerp


@pytest.mark.parametrize("prior", ["normal", "uniform"])
def test_prefix_and_chunking_match_one_draw(prior):
    full = latents(50, seed=3, latent_dim=7, prior=prior)
    assert full.dtype == np.float32 and full.shape == (50, 7)
    np.testing.assert_array_equal(latents(13, 3, 7, prior), full[:13])
    np.testing.assert_array_equal(np.concatenate(list(iter_latents(50, 3, 7, prior, chunk=9))), full)


def test_priors_have_their_distribution():
    u = latents(4000, 1, 10, "uniform")
    assert u.min() >= -1 and u.max() <= 1 and abs(u.mean()) < 0.02
    z = latents(4000, 1, 10, "normal")
    assert abs(z.std() - 1) < 0.02 and z.min() < -3


def test_seed_pins_values():
    # The contract is numpy's default_rng(seed).standard_normal(float32): pin it.
    expected = np.random.default_rng(42).standard_normal((2, 3), dtype=np.float32)
    np.testing.assert_array_equal(latents(2, 42, 3), expected)
    assert not np.array_equal(latents(2, 43, 3), expected)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True])
def test_bad_counts_are_refused(bad):
    with pytest.raises(ValueError):
        latents(bad, 0, 3)


def test_bad_seed_and_prior():
    with pytest.raises(ValueError, match="seed"):
        latents(1, -5, 3)
    with pytest.raises(ValueError, match="prior"):
        latents(1, 0, 3, "cauchy")


def test_lerp_and_slerp_endpoints_and_norm():
    a, b = latents(2, 0, 64)
    for fn in (lerp, slerp):
        out = fn(a, b, np.array([0.0, 0.5, 1.0]))
        np.testing.assert_allclose(out[0], a, atol=1e-5)
        np.testing.assert_allclose(out[-1], b, atol=1e-5)
    # slerp keeps the midpoint near the endpoints' norm; lerp shrinks it
    mid_s, mid_l = slerp(a, b, 0.5), lerp(a, b, 0.5)
    assert abs(np.linalg.norm(mid_s) - np.linalg.norm(a)) < 0.1 * np.linalg.norm(a)
    assert np.linalg.norm(mid_l) < 0.85 * np.linalg.norm(a)
    # parallel latents fall back to lerp rather than dividing by zero
    assert np.isfinite(slerp(a, 2 * a, 0.3)).all()


def test_path_through_several_points():
    pts = list(latents(3, 0, 4))
    p = path(pts, 5, "lerp")
    assert p.shape == (11, 4)
    np.testing.assert_allclose(p[0], pts[0])
    np.testing.assert_allclose(p[5], pts[1], atol=1e-6)
    np.testing.assert_allclose(p[10], pts[2])
    with pytest.raises(ValueError):
        path(pts[:1], 5)
    with pytest.raises(ValueError):
        path(pts, 5, "cubic")
