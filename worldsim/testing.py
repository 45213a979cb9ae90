"""Conformance kit for plugin authors: ``check_backbone``, ``check_tokenizer``, ``check_objective``, ``check_task``,
and for data: ``check_dataset``, ``check_video_task`` (:mod:`worldsim.testing_data`).

Each check builds tiny random inputs, verifies the contract of worldsim/hookspecs.py and raises
``AssertionError`` naming the property that broke (and the token, where there is one). Use it in your
plugin's tests::

    from worldsim.testing import check_backbone
    def test_my_backbone():
        check_backbone(build_my_backbone, token_shape=(8,), cond_dim=2, width=32)

Structural properties (causality, cache, batch independence) must hold for any weights, so the
backbone's parameters are randomly perturbed first (zero-initialized output layers would otherwise
hide a broken dependency). Checks run in float64 by default so "unchanged" can be tested tightly.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, NoReturn, Protocol, cast

import torch
from torch import nn

from worldsim.testing_data import check_dataset, check_video_task

__all__ = ["check_backbone", "check_tokenizer", "check_objective", "check_task", "check_dataset", "check_video_task"]


def _fail(prop: str, detail: str) -> NoReturn:
    raise AssertionError(f"{prop}: {detail}")


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _tol(dtype: torch.dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 1e-5


def _clone_tree(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone_tree(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _clone_tree(v) for k, v in obj.items()}
    return obj


def _same_tree(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return (
            isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(_same_tree(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_tree(a[k], b[k]) for k in a)
    return True  # non-tensor leaves (ints, None) are not compared


def _state_roundtrip(sd: dict[str, Any]) -> dict[str, Any]:
    """Through torch.save / torch.load(weights_only=True), as checkpoints are."""
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# -- backbones ---------------------------------------------------------------------------------
def check_backbone(
    factory: Callable[..., nn.Module],
    token_shape: tuple,
    cond_dim: int = 0,
    *,
    max_tokens: int | None = None,
    seq_len: int = 6,
    batch_size: int = 2,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    **kwargs: Any,
) -> nn.Module:
    """Check a backbone factory against the backbone contract; ``kwargs`` go to the factory.

    Properties: module with ``causal``/``max_tokens`` attributes; output shape == input shape and
    finite (also for a single token); the noise level of token t changes the output at t; cond is used
    (when cond_dim > 0); causality (when ``causal``: perturbing tokens > t leaves outputs <= t
    unchanged); batch independence; determinism (eval mode); cache (when ``init_cache``/``append``
    exist): prefix + cached forward == full forward for every split, token-by-token appends too,
    forward does not modify the cache; gradients reach every parameter; state_dict round trip through
    ``torch.save``/``torch.load(weights_only=True)``. Returns the (perturbed) model.
    """
    token_shape = tuple(token_shape)
    torch.manual_seed(seed)
    model = factory(token_shape=token_shape, cond_dim=cond_dim, max_tokens=max_tokens, **kwargs)
    seq_len = _check_attributes(model, seq_len)
    model = model.to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # structural properties must hold for any weights: leave the init point
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    model.eval()
    probe = _Probe(model, gen, dtype, (batch_size, seq_len, *token_shape), cond_dim)
    _check_output(probe)
    _check_noise_level(probe)
    _check_causality(probe)
    if hasattr(model, "init_cache") and hasattr(model, "append"):
        if not model.causal:
            _fail("cache", "backbone has init_cache/append but causal=False; a cache needs a causal backbone")
        # the hasattr test above is what makes it a _CachedBackbone, a fact mypy cannot derive from it
        _check_cache(cast(_CachedBackbone, model), probe.run, probe.x, probe.k, probe.cond, probe.out, probe.tol, _sl)
    _check_gradients(probe)
    # state_dict round trip
    torch.manual_seed(seed + 1)
    other = factory(token_shape=token_shape, cond_dim=cond_dim, max_tokens=max_tokens, **kwargs).to(dtype).eval()
    _check_state_dict(probe, other)
    return model


def _check_attributes(model: Any, seq_len: int) -> int:
    """The module and its ``causal`` / ``max_tokens`` attributes; returns the sequence length to test (within
    ``max_tokens``)."""
    if not isinstance(model, nn.Module):
        _fail("type", f"factory returned {type(model).__name__}, expected a torch.nn.Module")
    for attr in ("causal", "max_tokens"):
        if not hasattr(model, attr):
            _fail("attributes", f"backbone has no {attr!r} attribute")
    if not isinstance(model.causal, bool):
        _fail("attributes", f"'causal' must be a bool, got {model.causal!r}")
    mt = model.max_tokens
    if mt is not None:
        if not isinstance(mt, int) or mt < 1:
            _fail("attributes", f"'max_tokens' must be None or a positive int, got {mt!r}")
        seq_len = min(seq_len, mt)
    return seq_len


def _sl(c: torch.Tensor | None, a: int, b: int) -> torch.Tensor | None:
    return None if c is None else c[:, a:b]


class _Probe:
    """A backbone under test (eval mode), the generator of its random inputs, and the shared inputs: tokens ``x``
    ``shape`` (B, T, *token_shape), levels ``k``, conditions ``cond`` and the full forward's output ``out``."""

    def __init__(self, model: nn.Module, gen: torch.Generator, dtype: torch.dtype, shape: tuple, cond_dim: int):
        self.model, self.gen, self.dtype, self.tol = model, gen, dtype, _tol(dtype)
        B, T = shape[:2]
        self.x = self.rand(*shape)
        self.k = torch.rand(B, T, generator=gen, dtype=dtype) * 0.8 + 0.1
        self.cond = self.rand(B, T, cond_dim) if cond_dim else None
        self.out = self.run(self.x, self.k, self.cond)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen, dtype=self.dtype)

    def run(self, x: torch.Tensor, k: torch.Tensor, c: torch.Tensor | None, cache: Any = None) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x, k, c) if cache is None else self.model(x, k, c, cache=cache)


def _check_output(p: _Probe) -> None:
    """The output's shape (also of one token), finiteness and determinism."""
    x, k, cond, out = p.x, p.k, p.cond, p.out
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        _fail("shape", f"output shape {getattr(out, 'shape', type(out))} != input shape {tuple(x.shape)}")
    if not torch.isfinite(out).all():
        _fail("finite", "output contains NaN or inf")
    one = p.run(x[:, :1], k[:, :1], _sl(cond, 0, 1))
    if one.shape != x[:, :1].shape:
        _fail("shape", f"single-token output shape {tuple(one.shape)} != {tuple(x[:, :1].shape)}")
    if not torch.equal(p.run(x, k, cond), out):
        _fail("determinism", "two forward passes in eval mode on the same input differ")


def _check_noise_level(p: _Probe) -> None:
    """The noise level of token t changes the output at t, and cond (when there is one) changes the output."""
    x, k, cond, out = p.x, p.k, p.cond, p.out
    for t in range(x.shape[1]):
        k2 = k.clone()
        k2[:, t] = 1.0 - k2[:, t] if abs(float(k[0, t]) - 0.5) > 0.1 else k2[:, t] + 0.4
        d = _maxdiff(p.run(x, k2, cond)[:, t], out[:, t])
        if d <= p.tol:
            _fail(
                "noise level",
                f"changing the noise level of token {t} does not change the output at token {t} (max diff {d:.2e})",
            )
    if cond is not None:  # i.e. cond_dim > 0
        d = _maxdiff(p.run(x, k, cond + 1.0 + p.rand(*cond.shape)), out)
        if d <= p.tol:
            _fail("cond", f"changing cond (cond_dim={cond.shape[-1]}) does not change the output (max diff {d:.2e})")


def _check_causality(p: _Probe) -> None:
    """When ``causal``: perturbing tokens > t leaves the outputs <= t unchanged; then batch independence."""
    x, k, cond, out = p.x, p.k, p.cond, p.out
    B, T = x.shape[:2]
    for t in range(T - 1 if p.model.causal else 0):  # no token to check unless causal
        x2, k2 = x.clone(), k.clone()
        x2[:, t + 1 :] += 1.0 + p.rand(*x2[:, t + 1 :].shape)
        k2[:, t + 1 :] = 1.0 - k2[:, t + 1 :]
        c2 = None
        if cond is not None:
            c2 = cond.clone()
            c2[:, t + 1 :] += 1.0
        o2 = p.run(x2, k2, c2)
        for s in range(t + 1):
            d = _maxdiff(o2[:, s], out[:, s])
            if d > p.tol:
                _fail(
                    "causality",
                    f"backbone declares causal=True but perturbing tokens > {t} changed the output at token {s} (max diff {d:.2e})",
                )
    if B > 1:
        d = _maxdiff(p.run(x[:1], k[:1], None if cond is None else cond[:1]), out[:1])
        if d > p.tol:
            _fail(
                "batch independence",
                f"the output for sample 0 changes when other samples are in the batch (max diff {d:.2e})",
            )


def _check_gradients(p: _Probe) -> None:
    """Gradients reach every parameter and the input tokens, finite (in train mode; eval mode again after)."""
    model = p.model
    model.train()
    model.zero_grad(set_to_none=True)
    xg = p.x.clone().requires_grad_(True)
    w = p.rand(*p.out.shape)
    (model(xg, p.k, p.cond) * w).sum().backward()
    params = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
    missing = [n for n, q in params if q.grad is None or not bool(q.grad.abs().sum() > 0)]
    if missing:
        _fail("gradients", f"no gradient reaches parameter(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    bad = [n for n, q in params if q.grad is not None and not torch.isfinite(q.grad).all()]
    if bad:
        _fail("gradients", f"non-finite gradient in {bad[:8]}")
    if xg.grad is None or not torch.isfinite(xg.grad).all():
        _fail("gradients", "no finite gradient with respect to the input tokens")
    model.zero_grad(set_to_none=True)
    model.eval()


def _check_state_dict(p: _Probe, other: nn.Module) -> None:
    """A fresh instance ``other`` loads the state dict through torch.save / torch.load(weights_only=True) and gives
    the same output."""
    try:
        other.load_state_dict(_state_roundtrip(p.model.state_dict()), strict=True)
    except Exception as e:
        _fail("state_dict", f"load_state_dict into a fresh instance failed: {e}")
    with torch.no_grad():
        o2 = other(p.x, p.k, p.cond)
    if not torch.equal(o2, p.out):
        _fail(
            "state_dict",
            f"a fresh instance loaded from the state dict gives a different output (max diff {_maxdiff(o2, p.out):.2e})",
        )


class _CachedBackbone(Protocol):
    """The cache half of the backbone contract (worldsim/hookspecs.py); a cache is any tree of tensors."""

    def init_cache(self, batch_size: int) -> Any: ...

    def append(self, cache: Any, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None) -> Any: ...


def _check_cache(
    model: _CachedBackbone,
    run: Callable[..., torch.Tensor],
    x: torch.Tensor,
    k: torch.Tensor,
    cond: torch.Tensor | None,
    out: torch.Tensor,
    tol: float,
    sl: Callable[[torch.Tensor | None, int, int], torch.Tensor | None],
) -> None:
    B, T = x.shape[:2]
    with torch.no_grad():
        empty = model.init_cache(B)
        snap = _clone_tree(empty)
        d = _maxdiff(run(x, k, cond, cache=empty), out)
        if d > tol:
            _fail("cache", f"forward with an empty cache differs from forward without cache (max diff {d:.2e})")
        if not _same_tree(empty, snap):
            _fail("cache", "forward(..., cache=c) modified the cache it was given")
        for s in range(1, T):
            cache = model.append(model.init_cache(B), x[:, :s], k[:, :s], sl(cond, 0, s))
            snap = _clone_tree(cache)
            tail = run(x[:, s:], k[:, s:], sl(cond, s, T), cache=cache)
            if tail.shape != x[:, s:].shape:
                _fail("cache", f"cached forward returned shape {tuple(tail.shape)}, expected {tuple(x[:, s:].shape)}")
            for j in range(T - s):
                d = _maxdiff(tail[:, j], out[:, s + j])
                if d > tol:
                    _fail(
                        "cache",
                        f"cache of tokens < {s} + forward differs from the full forward at token {s + j} (max diff {d:.2e})",
                    )
            if not _same_tree(cache, snap):
                _fail("cache", f"forward(..., cache=c) modified the cache (prefix of {s} tokens)")
        cache = model.init_cache(B)  # token by token, as a rollout does
        for t in range(T):
            step = run(x[:, t : t + 1], k[:, t : t + 1], sl(cond, t, t + 1), cache=cache)
            d = _maxdiff(step[:, 0], out[:, t])
            if d > tol:
                _fail(
                    "cache",
                    f"token-by-token appends: output at token {t} differs from the full forward (max diff {d:.2e})",
                )
            cache = model.append(cache, x[:, t : t + 1], k[:, t : t + 1], sl(cond, t, t + 1))


# -- tokenizers --------------------------------------------------------------------------------
def _new_tokenizer(factory: Callable[..., nn.Module], obs_shape: tuple, kwargs: dict[str, Any]) -> tuple[Any, int]:
    """The factory's tokenizer, checked for its type and attributes, and its frames per token."""
    tok = factory(obs_shape=obs_shape, **kwargs)
    if not isinstance(tok, nn.Module):
        _fail("type", f"factory returned {type(tok).__name__}, expected a torch.nn.Module")
    for attr in ("token_shape", "encode", "decode"):
        if not hasattr(tok, attr):
            _fail("attributes", f"tokenizer has no {attr!r}")
    fpt = getattr(tok, "frames_per_token", 1)
    if not isinstance(fpt, int) or fpt < 1:
        _fail("attributes", f"'frames_per_token' must be a positive int, got {fpt!r}")
    return tok, fpt


def _check_tok_encode(api: Any, obs: torch.Tensor, batch_size: int, tokens: int) -> torch.Tensor:
    """encode: the tokens' shape, finite values, the same tokens twice; returns the tokens."""
    x = api.encode(obs)
    want = (batch_size, tokens, *tuple(api.token_shape))
    if tuple(x.shape) != want:
        _fail("shape", f"encode of {tuple(obs.shape)} returned {tuple(x.shape)}, expected {want}")
    if not torch.isfinite(x).all():
        _fail("finite", "encoded tokens contain NaN or inf")
    if not torch.equal(api.encode(obs), x):
        _fail("determinism", "encoding the same observations twice differs (eval mode)")
    return x


def _check_tok_decode(api: Any, x: torch.Tensor, obs: torch.Tensor, roundtrip_atol: float | None) -> None:
    """decode: the observations' shape and, unless ``roundtrip_atol`` is None, the observations back."""
    back = api.decode(x)
    if tuple(back.shape) != tuple(obs.shape):
        _fail("shape", f"decode returned {tuple(back.shape)}, expected {tuple(obs.shape)}")
    if roundtrip_atol is not None:
        d = _maxdiff(back, obs)
        if d > roundtrip_atol:
            _fail("round trip", f"decode(encode(obs)) differs from obs (max diff {d:.2e} > {roundtrip_atol})")


def _check_tok_state_dict(tok: nn.Module, other: Any, obs: torch.Tensor, x: torch.Tensor) -> None:
    """A fresh instance (``other``) loaded from ``tok``'s state dict encodes ``obs`` as ``x``."""
    try:
        other.load_state_dict(_state_roundtrip(tok.state_dict()), strict=True)
    except Exception as e:
        _fail("state_dict", f"load_state_dict into a fresh instance failed: {e}")
    other.eval()
    try:
        x2 = other.encode(obs)
    except Exception as e:
        _fail("state_dict", f"a fresh instance loaded from the state dict cannot encode: {e}")
    if not torch.equal(x2, x):
        _fail(
            "state_dict",
            f"a fresh instance loaded from the state dict encodes differently (max diff {_maxdiff(x2, x):.2e})",
        )


def check_tokenizer(
    factory: Callable[..., nn.Module],
    obs_shape: tuple,
    *,
    batch_size: int = 2,
    tokens: int = 3,
    fit_data: Any = None,
    roundtrip_atol: float | None = 1e-5,
    seed: int = 0,
    **kwargs: Any,
) -> nn.Module:
    """Check a tokenizer factory; ``kwargs`` go to the factory.

    Properties: ``token_shape``/``frames_per_token`` attributes; ``fit`` (if present) accepts data
    (``fit_data``, default random observations (N, *obs_shape)); encode (B, L, *obs) -> (B, L / fpt,
    *token_shape), finite; decode back to (B, L, *obs) and, unless ``roundtrip_atol`` is None (lossy
    tokenizers), decode(encode(obs)) == obs; batch independence; determinism; state_dict round trip
    (a fresh instance loaded from the state dict encodes identically without being fitted again).
    """
    obs_shape = tuple(obs_shape)
    torch.manual_seed(seed)
    tok, fpt = _new_tokenizer(factory, obs_shape, kwargs)
    # The tokenizer API beyond nn.Module is duck-typed (worldsim/hookspecs.py) and verified here, not declared.
    api: Any = tok
    gen = torch.Generator().manual_seed(seed)
    L = tokens * fpt
    obs = torch.randn(batch_size, L, *obs_shape, generator=gen) * 3 + 1
    if hasattr(tok, "fit"):
        data = fit_data if fit_data is not None else torch.randn(64, *obs_shape, generator=gen) * 3 + 1
        api.fit(data)
    tok.eval()
    with torch.no_grad():
        x = _check_tok_encode(api, obs, batch_size, tokens)
        _check_tok_decode(api, x, obs, roundtrip_atol)
        if batch_size > 1 and _maxdiff(api.encode(obs[:1]), x[:1]) > 1e-5:
            _fail("batch independence", "encoding sample 0 alone differs from encoding it in a batch")
        torch.manual_seed(seed + 1)
        _check_tok_state_dict(tok, factory(obs_shape=obs_shape, **kwargs), obs, x)
    return tok


# -- guidance objectives -----------------------------------------------------------------------
def check_objective(
    objective: Callable[[torch.Tensor, Any], torch.Tensor],
    obs_shape: tuple,
    *,
    ctx: Any = None,
    batch_size: int = 3,
    horizon: int = 4,
    seed: int = 0,
) -> None:
    """Check a guidance objective ``objective(x0_obs (B, H, *obs_shape), ctx) -> (B,)``.

    Properties: returns a finite (B,) tensor; differentiable with a finite, nonzero gradient with
    respect to the observations; deterministic; sample b's value depends only on sample b (its
    gradient with respect to other samples is zero). ``ctx`` defaults to an empty dict.
    """
    ctx = {} if ctx is None else ctx
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, horizon, *tuple(obs_shape), generator=gen).requires_grad_(True)
    value = objective(x, ctx)
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != (batch_size,):
        _fail("shape", f"objective returned {getattr(value, 'shape', type(value))}, expected shape ({batch_size},)")
    if not torch.isfinite(value).all():
        _fail("finite", "objective value contains NaN or inf")
    if not value.requires_grad:
        _fail("gradient", "objective value does not depend differentiably on the observations")
    (grad,) = torch.autograd.grad(value[0], x, retain_graph=True)
    if not torch.isfinite(grad).all() or not bool(grad[0].abs().sum() > 0):
        _fail("gradient", "gradient of the value of sample 0 with respect to its observations is zero or not finite")
    if batch_size > 1 and bool(grad[1:].abs().sum() > 0):
        _fail("batch independence", "the value of sample 0 depends on other samples in the batch")
    with torch.no_grad():
        again = objective(x.detach(), ctx)
    if not torch.allclose(again, value.detach(), atol=1e-6, rtol=1e-6):
        _fail("determinism", "two evaluations on the same input differ")


def _check_task_names(task: Any) -> None:
    """``name`` and ``env_id`` are strings."""
    for attr in ("name", "env_id"):
        if not isinstance(getattr(task, attr, None), str):
            _fail(attr, f"task.{attr} must be a string, got {getattr(task, attr, None)!r}")


def _check_step_layout(task: Any) -> dict[str, Any]:
    """``step_layout``: action = slice(0, A), then observation = slice(A, D), position (velocity) inside it."""
    layout = dict(getattr(task, "step_layout", {}) or {})
    for key in ("action", "observation", "position"):
        if not isinstance(layout.get(key), slice):
            _fail("step_layout", f"step_layout[{key!r}] must be a slice, got {layout.get(key)!r}")
    act, obs_part = layout["action"], layout["observation"]
    if act.start != 0 or obs_part.start != act.stop or obs_part.stop <= obs_part.start or act.stop <= 0:
        _fail("step_layout", f"expected action = slice(0, A) then observation = slice(A, D), got {act} and {obs_part}")
    for key in ("position", "velocity"):
        part = layout.get(key)
        if part is not None and not (
            isinstance(part, slice) and obs_part.start <= part.start < part.stop <= obs_part.stop
        ):
            _fail("step_layout", f"step_layout[{key!r}] = {part} must lie inside the observation {obs_part}")
    return layout


def _check_make_env(task: Any, env_id: str | None, act: slice) -> None:
    """``make_env`` refuses an unknown id with a ConfigError and gives an env whose actions are A wide."""
    from worldsim.errors import ConfigError

    try:
        task.make_env("worldsim-check/NoSuchEnv-v0").close()
    except ConfigError:
        pass
    else:
        _fail("make_env", "an env id the task does not know must raise a ConfigError naming --env")
    one = task.make_env(env_id)
    shape = getattr(one.action_space, "shape", None)
    one.close()
    if shape != (act.stop,):
        _fail("make_env", f"the env's actions have shape {shape}, the step layout says ({act.stop},)")


def _task_observed(task: Any, obs: Any, info: dict[str, Any], where: str, width: int, n_pos: int) -> Any:
    """``observe``, ``goal`` and ``success`` of a vector env of two: their shapes (and finite observations)."""
    import numpy as np

    o = np.asarray(task.observe(obs))
    if o.shape != (2, width) or not np.isfinite(o).all():
        _fail("observe", f"{where}: expected finite values of shape (2, {width}), got {o.shape}")
    goal, success = np.asarray(task.goal(info)), np.asarray(task.success(info))
    if goal.shape != (2, n_pos):
        _fail("goal", f"{where}: expected shape (2, {n_pos}) (the position's width), got {goal.shape}")
    if success.shape != (2,) or success.dtype != bool:
        _fail("success", f"{where}: expected (2,) bools, got {success.shape} {success.dtype}")
    return o


def _check_task_steps(task: Any, env_id: str | None, layout: dict[str, Any], steps: int, seed: int) -> Any:
    """A vector env of two observes well after reset and each step, the same after a second reset; returns the first."""
    import gymnasium as gym
    import numpy as np

    act, obs_part = layout["action"], layout["observation"]
    width, n_pos = obs_part.stop - obs_part.start, layout["position"].stop - layout["position"].start

    def observed(obs: Any, info: dict[str, Any], where: str) -> Any:
        return _task_observed(task, obs, info, where, width, n_pos)

    envs = gym.vector.SyncVectorEnv([lambda: task.make_env(env_id) for _ in range(2)])
    try:
        first = observed(*envs.reset(seed=[seed, seed + 1]), "after reset")
        for t in range(steps):
            obs, _, _, _, info = envs.step(np.zeros((2, act.stop), dtype=np.float32))
            observed(obs, info, f"after step {t + 1}")
        if not np.allclose(observed(*envs.reset(seed=[seed, seed + 1]), "after a second reset"), first):
            _fail("determinism", "two resets with the same seeds observe different things")
    finally:
        envs.close()
    return first


def _check_task_extras(task: Any, env_id: str | None, layout: dict[str, Any], first: Any) -> None:
    """``guidance_context``, ``reference_returns`` and ``plot_xy``."""
    import numpy as np

    context = task.guidance_context()
    if not isinstance(context, dict) or {"goal", "position"} & set(context):
        _fail("guidance_context", f"expected a dict without 'goal' or 'position' (the planner's), got {context!r}")
    refs = task.reference_returns(env_id if env_id is not None else task.env_id)
    if refs is not None and not (len(refs) == 2 and np.isfinite(refs).all() and refs[1] > refs[0]):
        _fail("reference_returns", f"expected None or (random, expert) with expert > random, got {refs!r}")
    obs_part, where = layout["observation"], layout["position"]
    xy = np.asarray(task.plot_xy(first[:, where.start - obs_part.start : where.stop - obs_part.start]))
    if xy.shape != (2, 2):
        _fail("plot_xy", f"expected (2, 2) plot coordinates of two positions, got {xy.shape}")


def check_task(task: Any, *, env_id: str | None = None, steps: int = 3, seed: int = 0) -> None:
    """Check a planning task (the ``worldsim_add_tasks`` contract) in its env (``env_id``; None: the task's).

    Properties: ``name`` and ``env_id`` are strings; ``step_layout`` has ``action`` = ``slice(0, A)``, then
    ``observation`` = ``slice(A, D)`` ending the step, ``position`` (and ``velocity``, if given) inside the
    observation; ``make_env`` gives an env whose actions are A wide and refuses an unknown id with a ConfigError;
    in a vector env of two, ``observe`` gives (2, D - A) finite values, ``goal`` (2, position width) and
    ``success`` (2,) bools after reset and after each of ``steps`` steps; a reset with the same seeds observes the
    same; ``guidance_context`` is a dict that leaves ``goal`` and ``position`` to the planner;
    ``reference_returns`` is None or (random, expert) with expert > random; ``plot_xy`` maps positions to (x, y).
    """
    _check_task_names(task)
    layout = _check_step_layout(task)
    _check_make_env(task, env_id, layout["action"])
    first = _check_task_steps(task, env_id, layout, steps, seed)
    _check_task_extras(task, env_id, layout, first)
