"""Video files (mp4, gif), side-by-side layout and TensorBoard GIF summaries."""

import imageio.v3 as iio
import numpy as np
import pytest

from worldsim.errors import ConfigError, DataError
from worldsim.video.io import BAR_COLORS, log_video, side_by_side, write_video


def _video(t=6, h=12, w=10, seed=0):
    # distinct, smooth frames (a moving gradient): GIF merges identical frames and mp4 blurs noise
    ys, xs = np.mgrid[:h, :w]
    frames = [((ys * 20 + xs * 7 + 25 * k) % 256)[..., None] * np.array([1, 0.5, 0.25]) for k in range(t)]
    return np.stack(frames).astype(np.uint8)


def test_side_by_side_layout_bars_and_padding():
    truth, gen = _video(6), _video(4, seed=1)
    out = side_by_side([truth, gen], labels=["truth", "model"], scale=3, phase=["context"] * 2 + ["generated"] * 4)
    bar = 6
    assert out.shape == (6, bar + 12 * 3, 2 * 10 * 3 + 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, bar:, :30], truth.repeat(3, axis=1).repeat(3, axis=2))
    np.testing.assert_array_equal(out[:, bar:, 30:32], 20)  # 2-px separator
    np.testing.assert_array_equal(out[5, bar:, 32:], gen[-1].repeat(3, axis=0).repeat(3, axis=1))  # padded
    assert (out[:, :bar, :30] == BAR_COLORS["truth"]).all()
    assert (out[:2, :bar, 32:] == BAR_COLORS["context"]).all()
    assert (out[2:, :bar, 32:] == BAR_COLORS["generated"]).all()
    auto = side_by_side([np.zeros((2, 32, 32, 3), np.uint8)])  # 32x32 -> scale 4, bar 8
    assert auto.shape == (2, 8 + 128, 128, 3) and (auto[:, :8] == BAR_COLORS["generated"]).all()
    with pytest.raises(DataError, match="one size"):
        side_by_side([truth, _video(6, h=8)])
    with pytest.raises(DataError, match="labels"):
        side_by_side([truth], labels=["a", "b"])


@pytest.mark.parametrize("suffix,size", [(".mp4", (12, 10)), (".mp4", (11, 9)), (".gif", (11, 9))])
def test_write_video_roundtrip(tmp_path, suffix, size):
    v = _video(7, *size)
    path = write_video(tmp_path / "sub" / f"roll{suffix}", v, fps=5)
    assert path.exists() and [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    back = iio.imread(path, index=None)
    even = tuple(s + s % 2 for s in size) if suffix == ".mp4" else size
    assert back.shape[0] == 7 and back.shape[1:3] == even
    if suffix == ".gif":
        assert np.abs(back[..., :3].astype(int) - v).mean() < 8  # palette quantization only
    else:
        assert np.abs(back[:, : size[0], : size[1]].astype(int) - v).mean() < 20


def test_write_video_rejects_bad_suffix_and_fps(tmp_path):
    with pytest.raises(ConfigError, match=".mp4 or .gif"):
        write_video(tmp_path / "x.avi", _video(), fps=5)
    with pytest.raises(ConfigError, match="fps"):
        write_video(tmp_path / "x.gif", _video(), fps=0)
    with pytest.raises(DataError, match="frames"):
        write_video(tmp_path / "x.gif", np.zeros((4, 4, 3)), fps=5)
    assert list(tmp_path.iterdir()) == []


def test_log_video_writes_gif_image_summary(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    log_video(writer, "rollout/video", _video(5), step=3, fps=4)
    writer.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    (ev,) = acc.Images("rollout/video")
    assert ev.step == 3 and (ev.height, ev.width) == (12, 10)
    frames = iio.imread(ev.encoded_image_string, index=None, extension=".gif")
    assert frames.shape[:3] == (5, 12, 10)
