"""Video metrics: PSNR, SSIM against a slow float64 reference, agent finding, horizons, Frechet distance."""

import math

import numpy as np
import pytest
import torch

from worldsim.errors import ConfigError, DataError
from worldsim.video.metrics import (
    find_agents,
    frechet_distance,
    fvd,
    gaussian_stats,
    metrics_per_horizon,
    position_error,
    psnr,
    ssim,
)

AGENT = (40, 90, 220)
PALETTE = ((235, 235, 225), (90, 90, 90), (220, 50, 50), AGENT)  # floor, wall, goal, agent: the frames' colours


def _frames(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape).astype(np.uint8)


def _ssim_reference(x, y, data_range=255.0):
    """The plain formula, window by window: Gaussian 11x11 (sigma 1.5) weighted moments on every valid
    position, per channel; mean over positions and channels."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    r = np.arange(11) - 5.0
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w2 = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for ch in range(x.shape[-1]):
        for i in range(x.shape[0] - 10):
            for j in range(x.shape[1] - 10):
                a, b = x[i : i + 11, j : j + 11, ch], y[i : i + 11, j : j + 11, ch]
                ma, mb = (w2 * a).sum(), (w2 * b).sum()
                va, vb = (w2 * (a - ma) ** 2).sum(), (w2 * (b - mb) ** 2).sum()
                cov = (w2 * (a - ma) * (b - mb)).sum()
                vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_psnr_values_and_identical_frames_are_inf():
    x = _frames((2, 3, 8, 8, 3))
    y = x.astype(np.float64) + 5.0  # MSE 25 everywhere
    p = psnr(y, x)
    assert p.shape == (2, 3)
    np.testing.assert_allclose(p, 10 * np.log10(255.0**2 / 25.0))
    assert np.isinf(psnr(x, x)).all()
    assert psnr(torch.from_numpy(y), torch.from_numpy(x.astype(np.float64))).shape == (2, 3)  # torch in


def test_ssim_matches_slow_reference_and_is_one_on_identity():
    x = _frames((2, 2, 13, 14, 3), seed=1)
    noise = np.random.default_rng(2).normal(0, 30, size=x.shape)
    y = np.clip(x + noise, 0, 255)
    s = ssim(y, x)
    assert s.shape == (2, 2) and s.dtype == np.float64
    for b in range(2):
        for t in range(2):
            assert abs(s[b, t] - _ssim_reference(y[b, t], x[b, t])) < 1e-6
    np.testing.assert_allclose(ssim(x, x), 1.0, atol=1e-12)


def test_ssim_decreases_with_noise_and_rejects_small_frames():
    x = np.repeat(np.linspace(0, 255, 32)[None, :, None], 32, axis=0).repeat(3, axis=-1)[None]  # (1, 32, 32, 3)
    rng = np.random.default_rng(3)
    scores = [float(ssim(np.clip(x + rng.normal(0, s, x.shape), 0, 255), x)[0]) for s in (5, 20, 60)]
    assert 1.0 > scores[0] > scores[1] > scores[2]
    with pytest.raises(DataError, match="11x11"):
        ssim(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)))
    with pytest.raises(DataError, match="equal shape"):
        ssim(np.zeros((1, 16, 16, 3)), np.zeros((2, 16, 16, 3)))


def _scene(h=16, w=16):
    img = np.full((h, w, 3), 235, dtype=np.uint8)
    img[0, :] = (90, 90, 90)
    return img


def test_find_agents_single_blob_speckle_two_blobs_and_spread():
    frames = np.stack([_scene() for _ in range(5)])[None]  # (1, 5, 16, 16, 3)
    frames[0, 0, 4:6, 6:8] = AGENT  # 2x2 blob: centroid (5, 7)
    frames[0, 1, 4:6, 6:8] = AGENT
    frames[0, 1, 12, 1] = (45, 95, 215)  # one near-agent pixel = speckle, ignored
    frames[0, 2, 2:4, 2:4] = AGENT  # two blobs -> not found
    frames[0, 2, 10:12, 10:12] = AGENT
    frames[0, 4, 3, 0:16] = AGENT  # a long line: one component but not compact
    out = find_agents(frames, AGENT, PALETTE)
    assert out["found"].tolist() == [[True, True, False, False, False]]
    assert out["count"].tolist() == [[1, 1, 2, 0, 1]]
    np.testing.assert_allclose(out["centroid_px"][0, 0], [5.0, 7.0])
    np.testing.assert_allclose(out["centroid_px"][0, 1], [5.0, 7.0])
    assert np.isnan(out["centroid_px"][0, 2:]).all()
    assert find_agents(frames, AGENT, PALETTE, max_spread_px=16)["found"][0, 4]
    one = _scene()[None]
    one[0, 7, 3] = AGENT
    res = find_agents(one, AGENT, PALETTE, min_area=1)
    np.testing.assert_allclose(res["centroid_px"][0], [7.5, 3.5])  # pixel (i, j) spans [i, i+1)
    assert not find_agents(one, AGENT, PALETTE)["found"][0]  # a lone pixel is speckle with min_area=2


def test_find_agents_reads_each_pixel_as_its_nearest_palette_colour():
    """A soft-edged agent (a dark centre, a halo blending into the floor) is found by the nearest-colour rule;
    the strict tolerance rule misses it, and a faint ghost (mostly floor) is found by neither."""
    agent, floor = AGENT, PALETTE[0]

    def blend(share):  # share of the agent colour over the floor
        return tuple(round(share * a + (1 - share) * f) for a, f in zip(agent, floor, strict=True))

    soft, ghost = _scene()[None].copy(), _scene()[None].copy()
    soft[0, 5:9, 5:9] = blend(0.3)  # halo: closer to the floor
    soft[0, 6:8, 5:9] = blend(0.6)  # inner ring: past half way, reads as agent
    soft[0, 6:8, 6:8] = (20, 40, 150)  # dark centre: 92 from the agent colour, but nearest to it
    ghost[0, 5:9, 5:9] = blend(0.35)
    out = find_agents(soft, AGENT, PALETTE)
    assert out["found"][0] and out["count"][0] == 1
    np.testing.assert_allclose(out["centroid_px"][0], [7.0, 7.0])
    assert not find_agents(soft, AGENT, tol=60)["found"][0]
    assert find_agents(ghost, AGENT, PALETTE)["count"][0] == 0
    with pytest.raises(DataError, match="expected an RGB color"):
        find_agents(soft, color=(1, 2), palette=[(0, 0, 0)])
    with pytest.raises(ConfigError, match="find_agents.palette"):
        find_agents(soft, AGENT)


def test_label_handles_snake_shaped_component():
    mask = np.zeros((9, 9), dtype=bool)
    mask[::2, :] = True
    mask[1::4, -1] = True
    mask[3::4, 0] = True  # one serpentine path through the whole frame
    frame = _scene(9, 9)
    frame[mask] = AGENT
    out = find_agents(frame[None], AGENT, PALETTE, max_spread_px=9)
    assert out["count"][0] == 1 and out["found"][0]


def test_position_error_uses_mapping_and_keeps_nan():
    cen = np.array([[[8.0, 8.0], [np.nan, np.nan], [4.0, 12.0]]])
    true = np.array([[[1.0, 1.0], [0.0, 0.0], [0.0, 2.5]]])
    err = position_error(cen, true, lambda px: px / 4.0 - 0.5)
    np.testing.assert_allclose(err[0, [0, 2]], [math.hypot(0.5, 0.5), math.hypot(0.5, 0.0)])
    assert np.isnan(err[0, 1])
    with pytest.raises(DataError, match="equal shape"):
        position_error(cen, true[:, :2], lambda px: px)


def test_metrics_per_horizon_windows_and_nan():
    t, L = 40, 8
    psnr_v = np.tile(np.arange(1, t + 1, dtype=np.float64), (2, 1))
    err = np.full((2, t), np.nan)
    err[0, :8] = 2.0
    found = np.zeros((2, t), dtype=bool)
    found[:, :8] = True
    found[0, 8:16] = True
    rows = metrics_per_horizon({"psnr": psnr_v, "position_error": err, "found": found}, L)
    assert [r["horizon"] for r in rows] == ["1x", "2x", "4x"]  # 8x needs 64 frames
    assert [r["frames"] for r in rows] == [[1, 8], [9, 16], [25, 32]]
    assert rows[1]["psnr"] == pytest.approx(np.mean(np.arange(9, 17)))
    assert rows[0]["position_error"] == 2.0 and math.isnan(rows[1]["position_error"])
    assert rows[0]["agent_found"] == 1.0 and rows[1]["agent_found"] == 0.5 and rows[2]["agent_found"] == 0.0
    assert metrics_per_horizon({"psnr": psnr_v[:, :5]}, L) == []
    with pytest.raises(DataError):
        metrics_per_horizon({"a": np.zeros((2, 5)), "b": np.zeros((2, 6))}, 2)
    with pytest.raises(ConfigError, match="train_len"):
        metrics_per_horizon({"a": np.zeros((2, 5))}, 0)


def _frechet_reference(mu1, s1, mu2, s2):
    """float64 reference: tr((S1 S2)^(1/2)) from the (real, non-negative) eigenvalues of S1 S2."""
    ev = np.linalg.eigvals(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev.real, 0, None)).sum())


def test_frechet_distance_against_reference():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(200, 6)), rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6)) + 0.3
    (m1, s1), (m2, s2) = gaussian_stats(a), gaussian_stats(b)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(_frechet_reference(m1, s1, m2, s2), rel=1e-9, abs=1e-9)
    assert abs(frechet_distance(m1, s1, m1, s1)) < 1e-9  # identical sets -> ~0
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    m3, s3 = gaussian_stats(a + shift)
    assert frechet_distance(m1, s1, m3, s3) == pytest.approx((shift**2).sum(), rel=1e-9)
    with pytest.raises(DataError, match="N >= 2"):
        gaussian_stats(a[:1])


class _DummyI3D(torch.nn.Module):
    def forward(
        self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False
    ) -> torch.Tensor:
        assert not rescale and return_features
        return torch.stack([x.mean(dim=(1, 2, 3, 4)), x.amax(dim=(1, 2, 3, 4)), x[:, 0].std(dim=(1, 2, 3))], dim=1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script/save are deprecated in torch 2.x
def test_fvd_path_plumbing(tmp_path):
    path = tmp_path / "i3d.pt"
    torch.jit.save(torch.jit.script(_DummyI3D()), str(path))
    real = _frames((6, 4, 8, 8, 3), seed=5)
    assert abs(fvd(real, real, path, batch_size=4)) < 1e-9
    assert fvd(real, np.clip(real.astype(np.float64) * 0.5, 0, 255), path) > 1e-3
    with pytest.raises(ConfigError, match="i3d_path"):
        fvd(real, real, tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(Exception, match="TorchScript"):
        fvd(real, real, bad)
