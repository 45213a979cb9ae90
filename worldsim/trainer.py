"""The trainer: AdamW + warmup, grad clip, EMA, bf16 autocast, torch.compile, DDP, checkpoints, TensorBoard.

Each step trains on the Diffusion Forcing loss (DF Alg. 1, ``worldsim.diffusion.loss``), or on any loss
given as ``loss_fn(module, batch, generator)`` (e.g. the VAE's, ``worldsim.video.vae.VAELoss``). All the
randomness of step ``s`` on rank ``r`` (the batch and the noise) comes from a generator seeded by
(seed, s, r), and the checkpoint holds weights, EMA, optimizer state and the global RNG state, so a
run resumed from a checkpoint ends with exactly the weights of a run that never stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from worldsim.checkpoint import link_checkpoint, load_checkpoint, remove_stale_temp_files, save_checkpoint
from worldsim.diffusion.loss import DiffusionLoss, LossSettings
from worldsim.diffusion.model import DiffusionModel
from worldsim.errors import CheckpointError, ConfigError, TrainingDiverged, WorldsimError
from worldsim.runs import RunFolder
from worldsim.settings import LR_SCHEDULES, TrainerSettings

_RESERVED = ("format", "step", "model", "ema", "optimizer", "rng", "loss_state")


# -- small helpers -------------------------------------------------------------------------------


def lr_at(step: int, *, lr: float, warmup_steps: int, total_steps: int, schedule: str = "constant") -> float:
    """Learning rate for the optimizer step with 0-based index ``step``: linear warmup, then constant or cosine."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    raise ConfigError(f"trainer.lr_schedule: got {schedule!r}; expected one of {', '.join(LR_SCHEDULES)}")


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """A CPU generator for one training step of one rank, independent of everything run before it."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


class EMA:
    """Exponential moving average of a module's floating-point state (parameters and buffers).

    The decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates (as in TensorFlow's
    ExponentialMovingAverage), so short runs are not dominated by the initial weights.
    ``state_dict()`` has the module's keys: load it into the model to use the averaged weights.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in module.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v.detach(), 1.0 - decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, weights: Mapping[str, torch.Tensor], updates: int) -> None:
        differing = set(self.shadow) ^ set(weights)
        if differing:
            raise KeyError(f"EMA weights do not match the model: differing keys {sorted(differing)[:5]}")
        for k, v in weights.items():
            self.shadow[k].copy_(v)
        self.updates = int(updates)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when this process group was started here (and is ended here)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(backend: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); ``backend``: gloo (CPU) or nccl (CUDA)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"trainer.device: got {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device: {name!r} requested but CUDA is not available; use device=cpu or auto")
    return device


# -- the trainer ---------------------------------------------------------------------------------


PLAIN_PROGRESS_EVERY_S = 15.0


class Trainer:
    """Trains a :class:`DiffusionModel` on windows of tokens (or any module on any loss) and writes ``run_dir``.

    Checkpoints (the newest, plus one every ``ckpt_every`` steps) and TensorBoard events go to the run
    folder ``run_dir`` (:class:`worldsim.runs.RunFolder`). With ``resume`` (default) its newest checkpoint is continued.
    ``extra_state`` goes into every checkpoint (e.g. ``config``, ``tokenizer``); a ``config`` there
    replaces the default ``{"trainer": ..., "diffusion": ...}``.

    Each step minimizes ``loss_fn(module, batch, generator).loss`` (``batch = data.sample(...)`` moved to
    the device): the Diffusion Forcing loss (:class:`worldsim.diffusion.loss.DiffusionLoss` of ``loss``, the loss's
    :class:`~worldsim.diffusion.loss.LossSettings`, when ``loss_fn`` is None), the VAE's
    (:class:`worldsim.video.vae.VAELoss`) or any other.
    ``module`` is the model compiled and/or wrapped in DDP, or the part of it the loss's
    ``training_view(model, wrap)`` chooses. The result's ``.logs`` are logged too: a scalar tensor is
    averaged over the steps of a log window, a (sum, count) pair pooled. A ``loss_fn`` with ``state_dict`` /
    ``load_state_dict`` (e.g. a GAN discriminator it trains) is saved in checkpoints as ``loss_state``.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,  # a TokenWindows, or anything with .sample(batch_size, generator) -> batch with .mask and .to(device)
        *,
        settings: TrainerSettings,
        loss: LossSettings | None = None,
        run_dir: Path,
        seed: int = 0,
        extra_state: dict | None = None,
        loss_fn: Callable[..., Any] | None = None,  # (module, batch, generator) -> output with .loss
    ):
        self.settings = settings
        if loss_fn is None:
            if not isinstance(model, DiffusionModel) or loss is None:
                raise TypeError(
                    f"Trainer: without loss_fn the model must be a DiffusionModel and loss its LossSettings, got "
                    f"{type(model).__name__} and {loss!r}"
                )
            loss_fn = DiffusionLoss(loss)
        self.loss_fn: Callable[..., Any] = loss_fn
        clash = sorted(set(extra_state or {}) & set(_RESERVED))
        if clash:
            raise ValueError(f"extra_state may not set the trainer's checkpoint keys {clash}")
        self.extra_state = {
            "config": {"trainer": settings.to_dict(), "diffusion": None if loss is None else dataclasses.asdict(loss)},
            "tokenizer": None,
        }
        self.extra_state.update(extra_state or {})
        self.model, self.data, self.seed = model, data, int(seed)
        self.run_dir = Path(run_dir)
        self.folder = RunFolder(self.run_dir)
        self.step = 0  # optimizer steps taken

        wanted = str(self.settings.device)
        on_cuda = wanted.startswith("cuda") or (wanted == "auto" and torch.cuda.is_available())
        self.dist = setup_distributed("nccl" if on_cuda else "gloo")
        self.device = resolve_device(wanted, self.dist.local_rank)
        self.autocast_dtype = self._autocast_dtype()
        self.model.to(self.device)
        self.train_model = self._training_view()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=self.settings.lr,
            betas=self.settings.betas,
            weight_decay=self.settings.weight_decay,
        )
        self.ema = EMA(self.model, self.settings.ema_decay)  # after DDP's broadcast: same on every rank
        self.resumed_from: Path | None = None
        self.last_good: Path | None = None  # newest checkpoint this trainer wrote or resumed from
        self.last_good_step = 0  # the step it holds
        if self.dist.is_main and self.folder.checkpoints.is_dir():
            remove_stale_temp_files(self.folder.checkpoints)
        if self.settings.resume and self.folder.last.exists():
            self.load(self.folder.last)

    # -- setup ---------------------------------------------------------------------------------
    def _autocast_dtype(self) -> torch.dtype | None:
        precision = self.settings.precision
        if precision == "bf16" and self.device.type != "cuda":
            raise ConfigError(
                f"trainer.precision: bf16 needs a CUDA device, got {self.device}; use precision=auto or fp32"
            )
        if precision == "bf16" or (
            precision == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        ):
            return torch.bfloat16
        return None

    def _training_view(self) -> nn.Module:
        """The model the loss runs through: the same weights, compiled and/or wrapped in DDP (see the class doc)."""
        if not (self.settings.compile or self.dist.world_size > 1):
            return self.model

        def wrap(net: nn.Module) -> nn.Module:
            if self.settings.compile:
                net = cast(nn.Module, torch.compile(net))  # an OptimizedModule; the stub types it as the plain callable
            if self.dist.world_size > 1:
                from torch.nn.parallel import DistributedDataParallel

                devices = [self.device.index] if self.device.type == "cuda" else None
                net = DistributedDataParallel(net, device_ids=devices)
            return net

        view = getattr(self.loss_fn, "training_view", None)
        return view(self.model, wrap) if view is not None else wrap(self.model)

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {
            **self.extra_state,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
        }
        if hasattr(self.loss_fn, "state_dict"):
            state["loss_state"] = self.loss_fn.state_dict()
        return state

    def save(self) -> Path:
        """Write the newest checkpoint (and the step file every ckpt_every); rank 0 only. Returns its path."""
        last = self.folder.last
        if self.dist.is_main:
            try:
                save_checkpoint(last, self.state())
                self.last_good, self.last_good_step = last, self.step
                if self.step % self.settings.ckpt_every == 0:  # a second name of the same file (see link_checkpoint)
                    link_checkpoint(last, self.folder.step_checkpoint(self.step))
            except CheckpointError as exc:  # a full disk: the newest complete checkpoint is still there
                raise CheckpointError(f"{exc}; last good checkpoint: {self._last_good()}") from None
        self.last_good, self.last_good_step = last, self.step
        return last

    def _last_good(self) -> str:
        if self.last_good is None:
            return "none (no checkpoint written yet)"
        return f"{self.last_good} (step {self.last_good_step})"

    def load(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        try:
            self.model.load_state_dict(ckpt["model"])
            self.ema.load_state_dict(ckpt["ema"], updates=int(ckpt["step"]))  # one EMA update per step
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if hasattr(self.loss_fn, "load_state_dict") and "loss_state" in ckpt:
                self.loss_fn.load_state_dict(ckpt["loss_state"])
        except (KeyError, RuntimeError, ValueError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"checkpoint {path}: does not match this model/optimizer ({reason[:200]})") from None
        torch.set_rng_state(ckpt["rng"]["torch"])
        if (
            "cuda" in ckpt["rng"]
            and torch.cuda.is_available()
            and len(ckpt["rng"]["cuda"]) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        self.step = int(ckpt["step"])
        self.resumed_from = self.last_good = Path(path)
        self.last_good_step = self.step

    # -- memory --------------------------------------------------------------------------------
    PROBE_LENGTHS = (2, 4, 8)  # tokens per probe sequence (a window at most this long is probed whole)
    # the backward pass holds gradients beside the saved activations; measured: toy at data.seq_len=4000 peaked at
    # 7.9 GB RSS against an estimate of 8.8 GB with this factor
    ACTIVATION_OVERHEAD = 1.5
    STATE_COPIES = 5  # weights, gradients, AdamW's two moments, EMA

    def step_memory(self) -> tuple[int, list[str], str]:
        """Estimated bytes of one training step, the settings that size it and what it is (for the error message).

        Autograd's saved tensors are measured on probe sequences of one window (``worldsim.runtime.
        activation_bytes``), extrapolated to ``seq_len`` tokens and scaled by the batch size; the weights
        count once per copy the trainer keeps. Nothing here touches the weights, the optimizer or the RNG.
        """
        from worldsim.runtime import activation_bytes

        seq_len = getattr(self.data, "seq_len", None)
        probe_data = self.data
        if seq_len is not None and seq_len > max(self.PROBE_LENGTHS):
            probe_data = copy.copy(self.data)  # shorter windows of the same data: never allocate a full one
            probe_data.seq_len = max(self.PROBE_LENGTHS)
        window = probe_data.sample(1, torch.Generator().manual_seed(0))
        seq_len = int(seq_len or window.x.shape[1])
        lengths = list(self.PROBE_LENGTHS) if seq_len > max(self.PROBE_LENGTHS) else [seq_len]

        # copies: the probe leaves the trained model and a stateful loss (a GAN discriminator it trains) untouched
        model, loss_fn = copy.deepcopy(self.model), copy.deepcopy(self.loss_fn)

        def run_step(n: int) -> None:
            part = window.to(self.device)
            part.x, part.mask = part.x[:, :n], part.mask[:, :n]
            part.cond = None if part.cond is None else part.cond[:, :n]
            gen = torch.Generator().manual_seed(0)
            with torch.random.fork_rng(devices=[]):
                loss_fn(model, part, gen).loss.backward()
            model.zero_grad(set_to_none=True)

        params = list(model.parameters())
        try:
            per_window = activation_bytes(run_step, lengths, exclude=params)(seq_len)
        except (RuntimeError, ValueError, WorldsimError):  # a model that takes only some lengths (a temporal VAE)
            per_window = activation_bytes(run_step, [int(window.x.shape[1])], exclude=params)(seq_len)
        state = sum(p.numel() * p.element_size() for p in params) * self.STATE_COPIES
        need = int(self.settings.batch_size * per_window * self.ACTIVATION_OVERHEAD + state)
        shape = tuple(window.x.shape[2:])  # the token's shape: the resolution of frames or latents
        settings = [f"data.seq_len={seq_len}", f"trainer.batch_size={self.settings.batch_size}"]
        return (
            need,
            settings,
            f"a training step ({self.settings.batch_size} windows of {seq_len} tokens of shape {shape})",
        )

    def check_memory(self) -> None:
        """Refuse a step that cannot fit (:class:`worldsim.runtime.ResourceError`) before it is allocated."""
        from worldsim.runtime import available_memory, check_fits

        available = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else available_memory()
        if available is None:
            return
        need, settings, what = self.step_memory()
        check_fits(
            settings, need, what, available, hint="lower data.seq_len or trainer.batch_size (or use a smaller backbone)"
        )

    # -- training ------------------------------------------------------------------------------
    def train_step(self) -> dict[str, Any]:
        """One optimizer step. Raises TrainingDiverged (weights untouched) on a non-finite loss or gradient."""
        gen = step_generator(self.seed, self.step, self.dist.rank)
        batch = self.data.sample(self.settings.batch_size, gen)
        tokens = int(batch.mask.sum()) * self.dist.world_size  # counted on the CPU: no device sync
        batch = batch.to(self.device)
        lr = lr_at(
            self.step,
            lr=self.settings.lr,
            warmup_steps=self.settings.warmup_steps,
            total_steps=self.settings.steps,
            schedule=self.settings.lr_schedule,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.train_model.train()
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else nullcontext()
        )
        with autocast:
            out = self.loss_fn(self.train_model, batch, gen)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        clip = self.settings.grad_clip or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self._check_finite(out.loss, grad_norm)
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        return {"loss": out.loss.detach(), "grad_norm": grad_norm.detach(), "lr": lr, "out": out, "tokens": tokens}

    def _check_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        bad = (~torch.isfinite(loss.detach().float()) | ~torch.isfinite(grad_norm.float())).float()
        if self.dist.world_size > 1:  # every rank must stop together, whichever rank saw the NaN
            import torch.distributed as dist

            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item() == 0:
            return
        value = loss.item()
        if not math.isfinite(value):
            what = f"loss is {value}"
        elif not math.isfinite(grad_norm.item()):
            what = f"gradient norm is {grad_norm.item()}"
        else:
            what = "loss is not finite on another rank"
        where = str(self.last_good) if self.last_good else "none (no checkpoint written yet)"
        raise TrainingDiverged(f"training diverged at step {self.step + 1}: {what}; last good checkpoint: {where}")

    def fit(self) -> dict[str, Any]:
        """Train to ``steps``, checkpointing every ``ckpt_every`` and at the end.

        Returns ``{"final_loss", "steps", "tokens_per_s", "checkpoint", "tensorboard", "resumed_from"}``;
        raises :class:`TrainingDiverged` on a NaN/inf loss (the newest checkpoint then still holds the last good state).
        """
        total = self.settings.steps
        if self.step < total:
            self.check_memory()
        bar, writer = self._open_logs()
        loss, tokens, started = None, 0, time.perf_counter()
        printed, window, last = started, _LogWindow(self.device), self.folder.last
        try:
            while self.step < total:
                info = self.train_step()
                loss = info["loss"]
                tokens += info["tokens"]
                window.add(info)
                bar.update(1)
                if self.step % self.settings.log_every == 0 or self.step == total:
                    printed = self._log(window.flush(), bar, writer, printed)
                if self.step % self.settings.ckpt_every == 0 or self.step == total:
                    last = self.save()
        finally:
            self._close_logs(bar, writer)
        seconds = time.perf_counter() - started
        return {
            "final_loss": float("nan") if loss is None else loss.item(),  # nan: nothing left to train
            "steps": self.step,
            "tokens_per_s": tokens / seconds if tokens else 0.0,
            "checkpoint": str(last),
            "tensorboard": str(self.folder.tensorboard),
            "resumed_from": None if self.resumed_from is None else str(self.resumed_from),
        }

    # -- progress and logs -----------------------------------------------------------------------
    def _open_logs(self) -> tuple[Any, Any]:
        """The progress bar (shown on the main process's terminal) and the TensorBoard writer (main process only)."""
        from tqdm.auto import tqdm

        writer = None
        if self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.folder.tensorboard))
        bar = tqdm(
            total=self.settings.steps,
            initial=self.step,
            desc="train",
            dynamic_ncols=True,
            disable=not (self.dist.is_main and sys.stderr.isatty()),
        )
        return bar, writer

    def _log(self, stats: dict[str, float], bar: Any, writer: Any, printed: float) -> float:
        """A log window's statistics to the bar and TensorBoard; without a terminal (CI, nohup) a plain line now and
        then instead of the bar. Returns when the last plain line was printed."""
        bar.set_postfix(loss=f"{stats['loss']:.4g}")
        if bar.disable and self.dist.is_main and time.perf_counter() - printed > PLAIN_PROGRESS_EVERY_S:
            printed = time.perf_counter()
            print(
                f"train: step {self.step}/{self.settings.steps} loss {stats['loss']:.4g} "
                f"{stats['tokens_per_s']:.0f} tokens/s",
                file=sys.stderr,
                flush=True,
            )
        if writer is not None:
            for tag, value in stats.items():
                writer.add_scalar(f"train/{tag}", value, self.step)
        return printed

    def _close_logs(self, bar: Any, writer: Any) -> None:
        """Close the bar and the writer, and the process group this trainer started."""
        bar.close()
        if writer is not None:
            writer.close()
        if self.dist.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


class _LogWindow:
    """Accumulates per-step statistics on the device between logs (no per-step host syncs beyond the NaN check)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.n, self.tokens, self.t0 = 0, 0, time.perf_counter()
        self.loss = torch.zeros((), device=self.device)
        self.grad_norm = torch.zeros((), device=self.device)
        self.lr = 0.0
        self.logs: dict[str, torch.Tensor] = {}  # sums of a loss_fn's .logs scalars (averaged over steps)
        self.pooled: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # sums of its (sum, count) pairs

    def add(self, info: dict[str, Any]) -> None:
        out = info["out"]
        self.n += 1
        self.tokens += info["tokens"]
        self.loss += info["loss"].float()
        self.grad_norm += info["grad_norm"].float()
        self.lr = info["lr"]
        for name, value in (getattr(out, "logs", None) or {}).items():
            if isinstance(value, tuple):
                total, count = (torch.as_tensor(v, device=self.device).detach().float() for v in value)
                if name in self.pooled:
                    total, count = total + self.pooled[name][0], count + self.pooled[name][1]
                self.pooled[name] = (total, count)
                continue
            value = torch.as_tensor(value, device=self.device).detach().float()
            self.logs[name] = self.logs[name] + value if name in self.logs else value

    def flush(self) -> dict[str, float]:
        seconds = time.perf_counter() - self.t0
        stats = {
            "loss": self.loss.item() / self.n,
            "grad_norm": self.grad_norm.item() / self.n,
            "lr": self.lr,
            "tokens_per_s": self.tokens / seconds if seconds > 0 else 0.0,
        }
        for name, (total, count) in self.pooled.items():
            if count.item() > 0:
                stats[name] = total.item() / count.item()
        for name, total in self.logs.items():
            stats[name] = total.item() / self.n
        self.reset()
        return stats
