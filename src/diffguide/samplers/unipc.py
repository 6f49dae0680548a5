"""UniPC (Zhao et al. 2023): the bh2 predictor-corrector in data prediction, multistep.

Like DPM-Solver++ it works in ``lambda_DPM = lam / 2`` on the data prediction ``x0``. After each step's
network evaluation at the predicted point, the corrector UniC re-solves the step just taken with that
new evaluation and replaces the predicted point by the corrected one; the same evaluation then serves
the next predictor step, so the corrector costs no extra forward. UniC raises the order of accuracy by
one: the order-2 predictor (which equals DPM-Solver++(2M) for bh2) with its corrector is of order 3.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..validate import check_int
from .base import Callback, ModelFn, Noise, Step, solve

TAKES = frozenset({"eps_renoise", "hold"})


def _solve(R: list[list[float]], b: list[float]) -> list[float]:
    """``R rho = b`` for the small (at most 3 x 3) UniPC systems, in float64."""
    return torch.linalg.solve(torch.tensor(R, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)).tolist()


def _coefficients(h: float, rks: list[float]) -> tuple[list[list[float]], list[float], float]:
    """UniPC's order conditions for a step of size ``h`` (in ``lambda_DPM``) with the B(h) = e^{-h} - 1
    (bh2) choice: ``R[k][j] = rks[j]**k`` and ``b[k] = (k+1)! phi_{k+2}(-h) (-h)^{k+1} / B(h)``, with
    ``phi`` the exponential-integrator functions; returns ``(R, b, B)``."""
    hh = -h  # data prediction integrates e^{-h}
    B = math.expm1(hh)
    R, b = [], []
    h_phi_k, factorial = math.expm1(hh) / hh - 1.0, 1
    for k in range(1, len(rks) + 1):
        R.append([r ** (k - 1) for r in rks])
        b.append(h_phi_k * factorial / B)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return R, b, B


@torch.no_grad()
def unipc(model: ModelFn, z: Tensor, lams: Tensor | list[float], *, order: int = 2, skip_corrector: int = 0,
          lower_order_final: bool = False, noise: Noise | None = None, clip_x0: float | None = None,
          callback: Callback | None = None) -> Tensor:
    """Sample with UniPC-bh2 from ``z`` at ``lams[0]`` to the clean end; one evaluation per step.

    With ``m_j`` the data predictions of the last ``p`` evaluations (``p = min(order, evaluations so
    far)``), ``h = (lam' - lam)/2``, ``r_k = (lam_{i-k} - lam_i)/(2h)`` and ``D_k = (m_{i-k} - m_i)/r_k``:

    - predictor (UniP-p): ``z' = (sigma'/sigma) z - alpha' (e^{-h} - 1) (m_i + sum_k rho^p_k D_k)``;
    - corrector (UniC-p), once ``m'`` is evaluated at ``z'``: the same step from ``z`` with the
      differences ``D_1..D_{p-1}`` and ``D' = m' - m_i`` (``r = 1``), ``rho^c`` from the order conditions.

    For p = 2 the predictor's ``rho^p = 1/2`` (UniP-2 is DPM-Solver++(2M)); for p = 1 the corrector's
    ``rho^c = 1/2``; otherwise both solve the order conditions (:func:`_coefficients`). ``order`` is 1, 2
    or 3. ``skip_corrector=k``: the corrector is off for the first ``k`` steps (advised at large
    guidance). ``lower_order_final``: first order on the last step between finite ``lam`` (see
    :func:`~diffguide.samplers.dpmpp_2m`). The step to ``lam = +inf`` returns ``x0``, evaluated at the
    predicted (uncorrected) last point, since no evaluation follows its correction; ``callback``
    sees the predicted points too. ``eps_renoise`` (CFG++) adds ``sigma' (eps_renoise - eps)`` to each
    predictor and corrector step, as in :func:`~diffguide.samplers.dpmpp_2m`. ``noise`` is unused.
    """
    order = check_int(order, "order", 1, 3)
    skip_corrector = check_int(skip_corrector, "skip_corrector", 0)
    history: list[tuple[float, Tensor]] = []  # (lam, x0) of the evaluations so far, latest last
    # the step to correct: (z, lam, sigma, p, renoise) it started from
    last: list[tuple[Tensor, float, float, int, Tensor | None]] = []

    def update(s: Step) -> Tensor:
        z = s.z
        if last:  # UniC: correct the point just reached with its own evaluation
            z_prev, lam_prev, sigma_prev, p, renoise = last.pop()
            z = _step(z_prev, lam_prev, s.lam, sigma_prev, s.alpha, s.sigma, history, p, corrector=s.x0)
            if renoise is not None:
                z = z + s.sigma * renoise
        history[:] = [*history[-(order - 1):], (s.lam, s.x0)] if order > 1 else [(s.lam, s.x0)]
        p = 1 if lower_order_final and s.last_finite else min(order, len(history))
        renoise = None if s.pred.eps_renoise is None else s.pred.eps_renoise - s.eps
        if s.i >= skip_corrector:
            last.append((z, s.lam, s.sigma, p, renoise))
        z_next = _step(z, s.lam, s.lam_next, s.sigma, s.alpha_n, s.sigma_n, history, p)
        return z_next if renoise is None else z_next + s.sigma_n * renoise

    return solve(model, z, lams, "unipc", TAKES, update, noise=noise, clip_x0=clip_x0, callback=callback,
                 min_steps=1 if order == 1 else order + 1)


def _step(z: Tensor, lam: float, lam_next: float, sigma: float, alpha_n: float, sigma_n: float,
          history: list[tuple[float, Tensor]], p: int, corrector: Tensor | None = None) -> Tensor:
    """One UniP-p step from ``(z, lam)`` to ``lam_next`` with ``history[-1]`` the prediction at ``lam``
    and ``history[-p:-1]`` earlier ones; with ``corrector`` (the prediction at ``lam_next``), UniC-p."""
    h = (lam_next - lam) / 2
    lam_i, m_i = history[-1]
    rks, Ds = [], []
    for lam_k, m_k in reversed(history[-p:-1]):  # the p - 1 earlier evaluations, nearest first
        r = (lam_k - lam_i) / (lam_next - lam)
        rks.append(r)
        Ds.append((m_k - m_i) / r)
    z_next = (sigma_n / sigma) * z - (alpha_n * math.expm1(-h)) * m_i
    if corrector is not None:
        rks.append(1.0)
        Ds.append(corrector - m_i)
        R, b, B = _coefficients(h, rks)
        rho = [0.5] if p == 1 else _solve(R, b)
    elif Ds:
        R, b, B = _coefficients(h, rks)
        rho = [0.5] if p == 2 else _solve(R, b)
    else:
        return z_next
    correction = sum(r * D for r, D in zip(rho, Ds, strict=True))
    return z_next - (alpha_n * B) * correction
