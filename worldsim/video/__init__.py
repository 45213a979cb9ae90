"""The video world model: everything worldsim knows about frames, in one package.

- :mod:`worldsim.video.data`: the ``worldsim-video-v1`` file layout and the ``video`` data set
- :mod:`worldsim.video.tasks`: video tasks by name (the domains of the ``video`` data set)
- :mod:`worldsim.video.vae`: the convolutional VAE of the ``video_vae`` tokenizer and its loss
- :mod:`worldsim.video.training`: ``worldsim train`` with ``trainer.objective=vae``
- :mod:`worldsim.video.rollout`: ``worldsim rollout`` of a video world model (metrics, mp4/gif, TensorBoard)
- :mod:`worldsim.video.metrics`: PSNR, SSIM, finding a coloured object, FVD
- :mod:`worldsim.video.io`: video files and TensorBoard videos

The names below are the public API the tokenizer and video-task plugins build on (``worldsim_plugins.video_vae``
and the first-party video tasks use only these).
"""

from worldsim.video.metrics import find_agents
from worldsim.video.vae import ARCH_DEFAULTS, VideoVAE, check_arch, check_frame_size

__all__ = ["ARCH_DEFAULTS", "VideoVAE", "check_arch", "check_frame_size", "find_agents"]
