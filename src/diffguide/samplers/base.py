"""What every sampler shares: the model-function contract, grid checks, x0 with optional clipping.

A sampler is ``sample(model, z, lams, *, noise=None, ...) -> x``. ``model(z, lam)`` returns an
``eps`` tensor or a :class:`~diffguide.prediction.Prediction`, with ``z`` of shape ``(B, ...)`` and
``lam`` of shape ``(B,)``; if ``model`` has a ``start()`` method (a
:class:`~diffguide.guidance.Guidance`), the sampler calls it once at the start of the run and
evaluates what it returns, so per-run guidance state never outlives a run. ``lams`` is an
increasing grid (noisy to clean) ending in ``+inf`` (see :mod:`diffguide.schedule`); ``z`` the
starting latent at ``lams[0]`` (standard normal for a VP model started at ``lam_min``). Samplers
know nothing of labels or guidance, run under ``torch.no_grad()``, and raise if a prediction carries
a field they cannot honour.

Step coefficients are float64 Python scalars computed from the grid; tensors stay in ``z``'s dtype
(keep it float32: reduced precision belongs to network forwards only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..prediction import Prediction, eps_of, x0_of
from ..schedule import check_grid

ModelFn = Callable[[Tensor, Tensor], "Tensor | Prediction"]
EpsFn = ModelFn  # the first wave's name
Noise = Callable[[], Tensor]
Callback = Callable[[int, float, Tensor, Tensor], None]  # (step, lam, z, x0)


def alpha_sigma_f(lam: float) -> tuple[float, float]:
    """``(alpha, sigma)`` as Python floats, stable for any ``lam`` (``+inf`` -> ``(1, 0)``)."""
    if lam == math.inf:
        return 1.0, 0.0
    # alpha^2 = sigmoid(lam) = 1 / (1 + exp(-lam)), written to avoid overflow on either side.
    log_a2 = -math.log1p(math.exp(-lam)) if lam > 0 else lam - math.log1p(math.exp(lam))
    log_s2 = log_a2 - lam
    return math.exp(0.5 * log_a2), math.exp(0.5 * log_s2)


class Run:
    """One sampling run of a model function: evaluates it at a scalar ``lam`` and checks the result.

    ``takes``: the optional :class:`Prediction` fields this sampler honours; any other that is set
    raises, naming the sampler (no guidance is ever dropped silently).
    """

    def __init__(self, model: ModelFn, sampler: str, takes: frozenset[str]) -> None:
        start = getattr(model, "start", None)
        self.fn: ModelFn = start() if callable(start) else model
        self.sampler, self.takes = sampler, takes

    def __call__(self, z: Tensor, lam: float) -> Prediction:
        out = self.fn(z, torch.full((z.shape[0],), lam, dtype=z.dtype, device=z.device))
        pred = out if isinstance(out, Prediction) else Prediction(out)
        for name in ("eps", "eps_renoise", "mean_grad"):
            t = getattr(pred, name)
            if t is not None and t.shape != z.shape:
                raise ValueError(f"the model's {name} has shape {tuple(t.shape)}, expected {tuple(z.shape)} like z")
        for name, what in (("eps_renoise", "a re-noise eps (CFG++)"), ("mean_grad", "a DDPM mean shift"),
                           ("hold", "a held step (CFG-Zero* zero-init)")):
            value = getattr(pred, name)
            if value is not None and value is not False and name not in self.takes:
                raise ValueError(f"the {self.sampler} sampler cannot honour {what}: use another sampler "
                                 f"or guidance form")
        return pred


def check_order_grid(grid: list[float], sampler: str, min_steps: int) -> None:
    """Refuse a grid too short for the sampler to take a step of its order (``min_steps`` steps)."""
    steps = len(grid) - 1
    if steps < min_steps:
        raise ValueError(f"the {sampler} sampler needs a grid of at least {min_steps} steps to reach its order, got "
                         f"{steps} step{'s' if steps != 1 else ''} ({len(grid)} lam values); use more steps or ddim")


def checked_noise(noise: Noise, z: Tensor) -> Noise:
    """``noise`` with each draw checked to have ``z``'s shape."""
    def draw() -> Tensor:
        xi = noise()
        if not isinstance(xi, Tensor) or xi.shape != z.shape:
            raise ValueError(f"noise() returned shape {tuple(getattr(xi, 'shape', ()))}, expected "
                             f"{tuple(z.shape)} like z")
        return xi.to(z.dtype)
    return draw


def prepare(z: Tensor, lams: Tensor | list[float], noise: Noise | None) -> tuple[list[float], Noise]:
    """Validate inputs shared by all samplers; returns the grid as floats and a (checked) noise source."""
    if not isinstance(z, Tensor) or z.ndim < 1 or z.shape[0] == 0:
        raise ValueError(f"z must be a tensor of shape (B, ...) with B >= 1, got {getattr(z, 'shape', z)!r}")
    if not z.is_floating_point():
        raise ValueError(f"z must be a floating-point tensor, got dtype {z.dtype}")
    grid = check_grid(torch.as_tensor(lams)).tolist()
    return grid, checked_noise(noise, z) if noise is not None else (lambda: torch.randn_like(z))


def denoise(z: Tensor, eps: Tensor, alpha: float | Tensor, sigma: float | Tensor,
            clip_x0: float | None) -> tuple[Tensor, Tensor]:
    """``x0`` from ``eps``; with ``clip_x0`` the prediction is clamped to ``[-clip_x0, clip_x0]`` and
    ``eps`` recomputed to stay consistent with it. ``alpha``/``sigma``: floats, or per-sample tensors
    broadcasting with ``z`` (progressive distillation's teacher steps)."""
    x0 = x0_of(z, eps, alpha, sigma)
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = eps_of(z, x0, alpha, sigma)
    return x0, eps


def transitions(grid: list[float]) -> Iterator[tuple[int, float, float, tuple[float, float], tuple[float, float]]]:
    """``(i, lam, lam', (alpha, sigma), (alpha', sigma'))`` for each step ``lam -> lam'`` of the grid."""
    for i, (lam, lam_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        yield i, lam, lam_next, alpha_sigma_f(lam), alpha_sigma_f(lam_next)


def predict(run: Run, z: Tensor, i: int, lam: float, alpha: float, sigma: float, clip_x0: float | None,
            callback: Callback | None, last: bool) -> tuple[Tensor, Tensor, Prediction]:
    """``(x0, eps, prediction)`` at step ``i`` (see :func:`denoise`), reported to ``callback`` if given."""
    pred = run(z, lam)
    if pred.hold:
        if last:
            raise ValueError("the model held the final step: nothing would be denoised (fewer held steps than steps)")
        return z, pred.eps, pred
    x0, eps = denoise(z, pred.eps.to(z.dtype), alpha, sigma, clip_x0)
    if callback is not None:
        callback(i, lam, z, x0)
    return x0, eps, pred


@dataclass(frozen=True)
class Step:
    """One step ``lam -> lam_next`` (both finite) of a sampling run, after its evaluation at ``(z, lam)``:
    ``x0`` and ``eps`` (consistent with each other after ``clip_x0``), the model's prediction ``pred``,
    the grid's ``alpha``/``sigma`` at both ends, the noise source and, for samplers that evaluate
    again within a step (Heun), :meth:`evaluate`. ``last_finite``: this is the grid's last step
    between finite ``lam`` values (the step before the final denoise, or a finite-ended grid's last)."""

    i: int
    lam: float
    lam_next: float
    alpha: float
    sigma: float
    alpha_n: float
    sigma_n: float
    z: Tensor
    x0: Tensor
    eps: Tensor
    pred: Prediction
    noise: Noise
    run: Run
    clip_x0: float | None
    last_finite: bool

    def evaluate(self, z: Tensor) -> tuple[Tensor, Tensor, Prediction]:
        """``(x0, eps, prediction)`` at ``(z, lam_next)``: a second evaluation within this step."""
        x0, eps, pred = predict(self.run, z, self.i, self.lam_next, self.alpha_n, self.sigma_n, self.clip_x0, None,
                                False)
        if pred.hold:
            raise ValueError(f"the model held the second evaluation of a {self.run.sampler} step: a held step must "
                             f"be the step's first evaluation")
        return x0, eps, pred


def solve(model: ModelFn, z: Tensor, lams: Tensor | list[float], sampler: str, takes: frozenset[str],
          update: Callable[[Step], Tensor], *, noise: Noise | None, clip_x0: float | None,
          callback: Callback | None, min_steps: int = 1, check: Callable[[list[float]], None] | None = None) -> Tensor:
    """The loop every sampler shares: evaluate the model at each grid point; a held prediction leaves
    ``z`` as it is; the step to ``lam = +inf`` returns ``x0`` (every solver's step to the clean end);
    any other step sets ``z = update(step)``. Multistep history is the ``update`` closure's own.
    ``check(grid)``: a sampler's own check of the validated grid, before any evaluation."""
    grid, noise = prepare(z, lams, noise)
    check_order_grid(grid, sampler, min_steps)
    if check is not None:
        check(grid)
    run = Run(model, sampler, takes)
    last_finite = len(grid) - (3 if grid[-1] == math.inf else 2)
    for i, lam, lam_next, (alpha, sigma), (alpha_n, sigma_n) in transitions(grid):
        x0, eps, pred = predict(run, z, i, lam, alpha, sigma, clip_x0, callback, lam_next == math.inf)
        if pred.hold:
            continue
        if lam_next == math.inf:
            return x0
        z = update(Step(i, lam, lam_next, alpha, sigma, alpha_n, sigma_n, z, x0, eps, pred, noise, run, clip_x0,
                        i == last_finite))
    return z
