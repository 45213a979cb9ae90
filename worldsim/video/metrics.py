"""Per-frame video metrics for rollouts: PSNR, SSIM, finding a coloured object and its position error (what
video tasks measure with), their means per horizon, and FVD from a local TorchScript I3D model.

Frames are uint8 or float in [0, 255] with shape ``(..., H, W, C)`` (numpy arrays or CPU torch tensors);
per-frame metrics come back as float64 numpy arrays over the leading dims, usually ``(B, T)``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from worldsim.errors import CheckpointError, ConfigError, DataError, check_int

__all__ = [
    "psnr",
    "ssim",
    "find_agents",
    "position_error",
    "metrics_per_horizon",
    "gaussian_stats",
    "frechet_distance",
    "i3d_features",
    "fvd",
]


def _np64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _pair(pred, true) -> tuple[np.ndarray, np.ndarray]:
    p, t = _np64(pred), _np64(true)
    if p.shape != t.shape or p.ndim < 3:
        raise DataError(
            f"pred/true: expected two frame arrays of equal shape (..., H, W, C), got {p.shape} and {t.shape}"
        )
    return p, t


# ----------------------------------------------------------------------------------------------- PSNR
def psnr(pred, true, data_range: float = 255.0) -> np.ndarray:
    """Peak signal-to-noise ratio in dB per frame, ``10 log10(R^2 / MSE)`` over ``(H, W, C)``.

    Identical frames give ``inf`` (MSE 0); callers that report means should cap or drop those.
    """
    p, t = _pair(pred, true)
    mse = ((p - t) ** 2).mean(axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(float(data_range) ** 2 / mse)


# ----------------------------------------------------------------------------------------------- SSIM
SSIM_WIN, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def _gaussian_1d(size: int = SSIM_WIN, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _band(n: int, g: torch.Tensor) -> torch.Tensor:
    """``(n - k + 1, n)`` matrix whose rows are the window ``g`` shifted: ``band @ x`` is a 'valid' filter."""
    k = g.numel()
    m = torch.zeros(n - k + 1, n, dtype=g.dtype)
    for i in range(n - k + 1):
        m[i, i : i + k] = g
    return m


def _ssim_frames(p: torch.Tensor, t: torch.Tensor, data_range: float) -> torch.Tensor:
    """SSIM of ``(N, H, W, C)`` float64 frame pairs -> ``(N,)``, mean over channels and valid windows."""
    n, h, w, c = p.shape
    g = _gaussian_1d()
    x, y = p.permute(0, 3, 1, 2), t.permute(0, 3, 1, 2)  # (N, C, H, W)
    stack = torch.stack([x, y, x * x, y * y, x * y])  # filter all five moments at once
    mu_x, mu_y, e_xx, e_yy, e_xy = _band(h, g) @ stack @ _band(w, g).T  # separable Gaussian as two matmuls
    var_x, var_y, cov = e_xx - mu_x**2, e_yy - mu_y**2, e_xy - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return smap.reshape(n, -1).mean(dim=1)


def ssim(pred, true, data_range: float = 255.0, chunk: int = 64) -> np.ndarray:
    """Structural similarity (Wang et al. 2004, "Image quality assessment: from error visibility to
    structural similarity") per frame: 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, population
    (co)variances, computed per channel on valid window positions (no padding) and averaged over channels
    and positions -- the same number as skimage's ``structural_similarity(gaussian_weights=True,
    use_sample_covariance=False, channel_axis=-1)``. Frames must be at least 11x11. The separable
    Gaussian is applied as two banded matrix products in torch (float64), several times faster on CPU
    than ``conv2d`` with a 1-channel kernel and exactly the same 'valid' filter.
    """
    p, t = _pair(pred, true)
    lead, (h, w, c) = p.shape[:-3], p.shape[-3:]
    if h < SSIM_WIN or w < SSIM_WIN:
        raise DataError(f"ssim: frames must be at least {SSIM_WIN}x{SSIM_WIN}, got {h}x{w}")
    tp, tt = torch.from_numpy(p.reshape(-1, h, w, c)), torch.from_numpy(t.reshape(-1, h, w, c))
    chunk = check_int("ssim.chunk", chunk)
    out = [_ssim_frames(tp[i : i + chunk], tt[i : i + chunk], float(data_range)) for i in range(0, tp.shape[0], chunk)]
    return (torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)).numpy().reshape(lead)


# ------------------------------------------------------------------------------------------ agent finding
def _label(mask: np.ndarray) -> np.ndarray:
    """4-connected components of every ``(H, W)`` mask in ``(N, H, W)`` at once: each masked pixel gets the
    smallest flat index in its component, others ``N*H*W``. Min-label propagation with pointer jumping."""
    size = mask.size
    cur = np.where(mask, np.arange(size).reshape(mask.shape), size)
    while True:
        new = cur.copy()
        np.minimum(new[:, 1:], cur[:, :-1], out=new[:, 1:])
        np.minimum(new[:, :-1], cur[:, 1:], out=new[:, :-1])
        np.minimum(new[:, :, 1:], cur[:, :, :-1], out=new[:, :, 1:])
        np.minimum(new[:, :, :-1], cur[:, :, 1:], out=new[:, :, :-1])
        new[~mask] = size
        flat = new.reshape(-1)
        inside = flat < size
        flat[inside] = flat[flat[inside]]  # labels always point at masked cells of the same component
        if np.array_equal(new, cur):
            return cur
        cur = new


def _agent_mask(rgb: np.ndarray, color: np.ndarray, palette: np.ndarray, tol: float | None) -> np.ndarray:
    """The agent-coloured pixels of frames ``(n, H, W, 3)``: within ``tol`` of ``color``, or (no ``tol``) nearer to
    it than to every other ``palette`` colour."""
    to_agent = np.linalg.norm(rgb - color, axis=-1)
    if tol is not None:
        mask = to_agent < float(tol)
    else:  # nearer to the agent colour than to every other palette colour
        mask = np.ones(to_agent.shape, dtype=bool)
        for other in palette:
            if not np.array_equal(other, color):
                mask &= to_agent < np.linalg.norm(rgb - other, axis=-1)
    return mask


def _agent_blobs(
    mask: np.ndarray, h: int, w: int, min_area: int, spread: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``found`` (n,), ``centroid`` (n, 2) and ``count`` (n,) of the agent-coloured ``mask`` (n, H, W): the
    components of at least ``min_area`` pixels, and the frames whose one component fits in ``spread``."""
    n = mask.shape[0]
    found, count = np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64)
    centroid = np.full((n, 2), np.nan)
    if mask.any():
        labels = _label(mask)[mask]
        f, r, c = np.nonzero(mask)  # same C order as labels
        ids, comp, sizes = np.unique(labels, return_inverse=True, return_counts=True)
        keep = sizes >= min_area
        comp_frame = ids // (h * w)
        count = np.bincount(comp_frame[keep], minlength=n)
        k = len(ids)
        rmin, rmax = np.full(k, h), np.full(k, -1)
        cmin, cmax = np.full(k, w), np.full(k, -1)
        for fn, acc, val in (
            (np.minimum, rmin, r),
            (np.maximum, rmax, r),
            (np.minimum, cmin, c),
            (np.maximum, cmax, c),
        ):
            fn.at(acc, comp, val)
        compact = np.maximum(rmax - rmin + 1, cmax - cmin + 1) <= spread
        good = keep & compact & (count[comp_frame] == 1)
        found[comp_frame[good]] = True
        cen = (
            np.stack(
                [np.bincount(comp, weights=r + 0.5, minlength=k), np.bincount(comp, weights=c + 0.5, minlength=k)],
                axis=-1,
            )
            / sizes[:, None]
        )
        centroid[comp_frame[good]] = cen[good]
    return found, centroid, count


def find_agents(
    frames, color, palette=None, tol: float | None = None, min_area: int = 2, max_spread_px: float | None = None
) -> dict[str, np.ndarray]:
    """Find the blob of colour ``color`` (the agent) in RGB frames ``(..., H, W, 3)``.

    With ``palette`` (every colour the frames are drawn with, ``color`` among them), a pixel is agent-coloured
    when ``color`` is the nearest palette colour to it: each pixel of a generated frame is read as what it is
    closest to, and a soft-edged agent counts where it is at least half way from its neighbour colour to the
    agent's. With ``tol`` instead, a pixel is agent-coloured when its RGB L2 distance to ``color`` is below ``tol``
    (a stricter rule that also rejects agents drawn a little darker or lighter). Components are 4-connected; those
    smaller than ``min_area`` pixels are ignored as speckle. A frame has its agent ``found`` when exactly one component
    remains and it is compact: its bounding box is at most ``max_spread_px`` pixels high and wide (default
    ``max(4, min(H, W) // 4)``).

    Returns ``found`` bool, ``centroid_px`` float ``(..., 2)`` (row, col) in continuous pixel coordinates
    (pixel ``(i, j)`` spans ``[i, i+1) x [j, j+1)``, so a lone pixel has centroid ``(i + .5, j + .5)``;
    NaN where not found) and ``count`` int (components kept), all over the leading dims.
    """
    if palette is None and tol is None:
        raise ConfigError("find_agents.palette: give the frames' palette (or a colour tolerance, tol)")
    palette = [color] if palette is None else palette
    color = np.asarray(color, dtype=np.float64)
    palette = np.asarray(palette, dtype=np.float64)
    if color.shape != (3,) or palette.ndim != 2 or palette.shape[1] != 3:
        raise DataError(
            f"find_agents: expected an RGB color (3,) and a palette (n, 3), got {color.shape} and {palette.shape}"
        )
    x = _np64(frames)
    if x.ndim < 3 or x.shape[-1] != 3:
        raise DataError(f"find_agents.frames: expected RGB frames (..., H, W, 3), got shape {x.shape}")
    min_area = check_int("find_agents.min_area", min_area)
    lead, (h, w) = x.shape[:-3], x.shape[-3:-1]
    spread = max(4, min(h, w) // 4) if max_spread_px is None else float(max_spread_px)
    rgb = x.reshape(-1, h, w, 3)
    mask = _agent_mask(rgb, color, palette, tol)
    found, centroid, count = _agent_blobs(mask, h, w, min_area, spread)
    return {"found": found.reshape(lead), "centroid_px": centroid.reshape(*lead, 2), "count": count.reshape(lead)}


def position_error(centroid_px, true_pos_cells, to_cells: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Euclidean distance between the found object and its true position, per frame, in the unit of the true
    positions: ``to_cells`` maps ``(..., 2)`` pixel (row, col) coordinates to that unit (a video task's
    ``to_position``); NaN where the object was not found.
    """
    cen, true = _np64(centroid_px), _np64(true_pos_cells)
    if cen.shape != true.shape or cen.shape[-1:] != (2,):
        raise DataError(
            f"position_error: expected centroid_px and true_pos_cells of equal shape (..., 2), "
            f"got {cen.shape} and {true.shape}"
        )
    missing = np.isnan(cen).any(axis=-1)
    cells = np.asarray(to_cells(np.where(missing[..., None], 0.0, cen)), dtype=np.float64)
    err = np.linalg.norm(cells - true, axis=-1)
    err[missing] = np.nan
    return err


# ------------------------------------------------------------------------------------------ per horizon
def metrics_per_horizon(
    per_frame: Mapping[str, np.ndarray], train_len: int, multiples: Sequence[int] = (1, 2, 4, 8)
) -> list[dict]:
    """Mean of each per-frame metric ``(B, T)`` over the batch and the frames of each horizon window.

    For each multiple ``h`` with ``h * train_len <= T``, the window is frames ``(h-1)*train_len + 1 ..
    h*train_len`` (1-based, reported as ``"frames": [first, last]``), so "2x" shows how a model trained on
    ``train_len`` frames does on the next ``train_len`` ones. Means ignore NaN (a missing agent); a
    window with no value gives NaN. The boolean metric ``found`` is reported as ``agent_found``, the
    share of frames with the agent found. Any other metric names pass through unchanged.
    """
    train_len = check_int("metrics_per_horizon.train_len", train_len)
    arrays = {k: np.atleast_2d(_np64(v)) for k, v in per_frame.items()}
    sizes = {a.shape for a in arrays.values()}
    if len(sizes) > 1 or any(len(s) != 2 for s in sizes):
        raise DataError(
            f"metrics_per_horizon.per_frame: expected (B, T) arrays of one shape, got "
            f"{ {k: a.shape for k, a in arrays.items()} }"
        )
    t = next(iter(sizes))[1] if sizes else 0
    rows = []
    for h in multiples:
        h = check_int("metrics_per_horizon.multiples", h)
        if h * train_len > t:
            continue
        lo, hi = (h - 1) * train_len, h * train_len
        rows.append({"horizon": f"{h}x", "frames": [lo + 1, hi], **_window_means(arrays, lo, hi)})
    return rows


def overall_metrics(per_frame: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Each per-frame metric ``(B, T)`` averaged over all frames, named as in :func:`metrics_per_horizon`."""
    arrays = {k: np.atleast_2d(_np64(v)) for k, v in per_frame.items()}
    t = max((a.shape[1] for a in arrays.values()), default=0)
    return {"frames": [1, t], **_window_means(arrays, 0, t)}


def _window_means(arrays: Mapping[str, np.ndarray], lo: int, hi: int) -> dict[str, float]:
    """NaN-ignoring means of frames ``lo:hi`` (0-based, end excluded); ``found`` is reported as ``agent_found``."""
    row = {}
    for name, a in arrays.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN window -> NaN
            row["agent_found" if name == "found" else name] = float(np.nanmean(a[:, lo:hi]))
    return row


# ------------------------------------------------------------------------------------------------- FVD
def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample covariance (ddof 1, as in FID/FVD) of ``(N, D)`` features, N >= 2."""
    f = _np64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise DataError(f"features: expected (N, D) with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((a + a.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between Gaussians ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` (Dowson &
    Landau 1982; FID, Heusel et al. 2017; FVD, Unterthiner et al. 2018). ``tr((S1 S2)^(1/2))`` is computed
    as ``tr((S1^(1/2) S2 S1^(1/2))^(1/2))`` from symmetric eigendecompositions, which is exact for PSD
    matrices and avoids complex square roots."""
    mu1, mu2, s1, s2 = (np.atleast_1d(_np64(v)) for v in (mu1, mu2, sigma1, sigma2))
    s1, s2 = np.atleast_2d(s1), np.atleast_2d(s2)
    r1 = _sqrtm_psd(s1)
    m = r1 @ s2 @ r1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


# keyword arguments of the common TorchScript I3D (StyleGAN-V / fvd-comparison): pre-logit features,
# inputs already in [-1, 1], resized to 224 inside; only those the model's forward accepts are passed
_I3D_KWARGS = {"rescale": False, "resize": True, "return_features": True}


def _load_i3d(i3d_path) -> torch.jit.ScriptModule:
    if i3d_path is None or not os.path.isfile(i3d_path):
        raise ConfigError(
            f"fvd.i3d_path: expected a local TorchScript I3D file (nothing is downloaded), got {i3d_path!r}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still the I3D format
            return torch.jit.load(str(i3d_path), map_location="cpu").eval()
    except Exception as e:
        raise CheckpointError(
            f"fvd.i3d_path: {i3d_path} is not a loadable TorchScript model ({type(e).__name__})"
        ) from None


@torch.no_grad()
def i3d_features(videos, model, batch_size: int = 8, device: str | torch.device = "cpu") -> np.ndarray:
    """Features ``(N, D)`` of videos ``(N, T, H, W, 3)`` in [0, 255]: fed as ``(N, 3, T, H, W)`` in [-1, 1]."""
    v = _np64(videos)
    if v.ndim != 5 or v.shape[-1] != 3:
        raise DataError(f"fvd: expected videos (N, T, H, W, 3), got shape {v.shape}")
    try:
        names = {a.name for a in model.forward.schema.arguments}
    except AttributeError:
        names = set()
    kwargs = {k: val for k, val in _I3D_KWARGS.items() if k in names}
    model = model.to(device)
    out = []
    for i in range(0, v.shape[0], check_int("fvd.batch_size", batch_size)):
        x = torch.from_numpy(v[i : i + batch_size]).to(device=device, dtype=torch.float32)
        x = x.permute(0, 4, 1, 2, 3) / 127.5 - 1.0
        out.append(model(x, **kwargs).reshape(x.shape[0], -1).double().cpu())
    return torch.cat(out).numpy()


def fvd(real, fake, i3d_path, batch_size: int = 8, device: str | torch.device = "cpu") -> float:
    """Frechet Video Distance (Unterthiner et al. 2018) between two sets of videos ``(N, T, H, W, 3)``
    in [0, 255], from the features of a local TorchScript I3D model at ``i3d_path`` (``torch.jit.load``;
    nothing is downloaded; a missing path is a ConfigError). Needs at least 2 videos per set; the usual
    protocol uses 16-frame clips and hundreds of videos."""
    model = _load_i3d(i3d_path)
    mu_r, s_r = gaussian_stats(i3d_features(real, model, batch_size, device))
    mu_f, s_f = gaussian_stats(i3d_features(fake, model, batch_size, device))
    if mu_r.shape != mu_f.shape:
        raise DataError(f"fvd: feature sizes differ ({mu_r.shape[0]} vs {mu_f.shape[0]})")
    return frechet_distance(mu_r, s_r, mu_f, s_f)
