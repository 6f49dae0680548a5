r"""A class-conditional Gaussian mixture with exact ``eps*(z, lam, c)``, ``eps*(z, lam)`` and
``p(c | z)`` at every log-SNR ``lam``: the ground truth for samplers and guidance.

Model. ``K`` classes with prior ``p(c)``; class ``c`` is a mixture of components ``m`` with weights
``pi_m`` (summing to 1 within the class), means ``mu_m`` and diagonal variances ``s2_m`` (all ``(d,)``).
Components are stored flat (``M`` in all, grouped by class); ``component_class[m]`` is ``c_m``.

Formulas (``alpha, sigma = alpha_sigma(lam)``; sums over ``m in c`` are over class ``c``'s components):

* Noisy marginals. ``z = alpha x + sigma eps`` with independent ``x | m ~ N(mu_m, s2_m)``,
  ``eps ~ N(0, I)``, and a sum of independent Gaussians is Gaussian, so
  ``z | m ~ N(alpha mu_m, v_m)``, ``v_m = alpha^2 s2_m + sigma^2`` (diagonal). Hence
  ``p_lam(z | c) = sum_{m in c} pi_m N(z; alpha mu_m, v_m)`` and ``p_lam(z) = sum_c p(c) p_lam(z | c)``.
* Optimal noise prediction. Tweedie: ``E[alpha x | z] = z + sigma^2 grad_z log p_lam(z)``, so
  ``eps* = E[eps | z] = (z - E[alpha x | z]) / sigma = -sigma grad_z log p_lam(z)`` (likewise given c).
  Differentiating the mixture, ``grad_z log p = sum_m r_m grad_z log N_m = -sum_m r_m (z - alpha mu_m) / v_m``
  with responsibilities ``r_m = softmax_m(log w_m + log N_m)``, so
  ``eps* = sum_m r_m sigma (z - alpha mu_m) / v_m``. Conditional: ``w_m = pi_m``, ``m in c``; null label
  ``K``: ``w_m = p(c_m) pi_m`` over all components. Evaluated as written in float64 (log-sum-exp for
  ``r``), it stays accurate for ``lam`` in ``[-20, 20]`` (and gives ``eps* = 0`` at ``lam = +inf``).
* Noisy classifier. Bayes: ``log p_lam(c | z) = logsumexp_{m in c}(log p(c) pi_m N_m)
  - logsumexp_m(log p(c_m) pi_m N_m)``; differentiating and using the line above gives the identity
  linking the two guidances (PAPERS.md): ``grad_z log p_lam(c | z) = -(eps*(z, c) - eps*(z)) / sigma``.
* Clean end (``lam = +inf``): ``alpha = 1, sigma = 0, v_m = s2_m``, so the same code gives ``p(x | c)``.
* Guidance tilt. CFG's ``eps~ = (1 + w) eps*(z, c) - w eps*(z)`` is ``-sigma grad_z`` of
  ``log[p_lam(z | c)^(1+w) p_lam(z)^(-w)]``, and at the clean end that density is
  ``p(x | c)^(1+w) p(x)^(-w) ∝ p(x | c) p(c | x)^w``. The tilt does not commute with the Gaussian
  convolution of the forward process: the tilted noisy densities are in general *not* the noisy
  marginals of the tilted clean density, so even exact guided sampling need not draw from the clean
  tilt (see e.g. Bradley & Nakkiran 2024, "Classifier-free guidance is a predictor-corrector").

All arithmetic is float64 (the buffers stay float64 even under ``.to(dtype)``/``.half()``; only the
device follows); inputs may be any float dtype and outputs come back in the input's dtype and device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..schedule import ContinuousSchedule, alpha_sigma
from ..validate import is_positive_int, positive_int

__all__ = ["GaussianMixture", "MixtureClassifier"]

_LOG_2PI = math.log(2.0 * math.pi)
_F64 = torch.float64


def _tensor(value: Any, name: str) -> Tensor:
    """``value`` as a CPU float64 tensor, all finite."""
    try:
        t = torch.as_tensor(value.detach() if isinstance(value, Tensor) else value, dtype=_F64).cpu()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name}: cannot convert to a float tensor ({e})") from None
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t


def _per_class(value: Any, name: str) -> list[Any]:
    """Split a per-class argument: a tensor/array along its first axis, a sequence into its items."""
    if isinstance(value, Tensor) or hasattr(value, "__array__"):
        t = _tensor(value, name)
        if t.ndim == 0:
            raise ValueError(f"{name} must have one entry per class, got a scalar")
        return list(t.unbind(0))
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    raise ValueError(f"{name} must be a sequence with one entry per class, got {type(value).__name__}")


def _generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    raise ValueError(f"generator must be a torch.Generator, an int seed or None, got {generator!r}")


class GaussianMixture(nn.Module):
    """Class-conditional Gaussian mixture in ``d`` dimensions with closed-form noisy scores.

    Args:
        means: per class, ``(J_c, d)`` component means (or ``(d,)`` for a single component); may be
            one ``(K, J, d)`` tensor (or ``(K, d)``: one component per class).
        variances: per-coordinate variances ``s2``, all positive: a scalar for every component, or per
            class a scalar, ``(J_c,)`` (isotropic per component), ``(J_c, d)`` (diagonal), or ``(d,)``
            for a single-component class.
        weights: per class, the components' positive weights ``(J_c,)`` (normalised within each class);
            ``None`` means equal weights.
        prior: ``(K,)`` positive class prior ``p(c)`` (normalised); ``None`` means uniform.

    Labels are ints in ``[0, K)``; ``null_label = K`` means "no condition" (the marginal) wherever a
    label is taken, matching the CFG networks' convention, so ``gmm(z, lam, c)`` is a drop-in network.
    """

    means: Tensor
    variances: Tensor
    log_weights: Tensor
    log_prior: Tensor
    component_class: Tensor
    _class_mask: Tensor

    def __init__(self, means: Any, variances: Any, weights: Any = None, prior: Any = None) -> None:
        super().__init__()
        mean_list = [_tensor(m, f"means[{k}]") for k, m in enumerate(_per_class(means, "means"))]
        K = len(mean_list)
        if K == 0:
            raise ValueError("need at least one class, got none")
        for k, m in enumerate(mean_list):
            if m.ndim == 1:
                mean_list[k] = m = m.unsqueeze(0)
            if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
                raise ValueError(
                    f"means[{k}] must have shape (J_c, d) with J_c >= 1 and d >= 1, got {tuple(m.shape)}")
        d = mean_list[0].shape[1]
        for k, m in enumerate(mean_list):
            if m.shape[1] != d:
                raise ValueError(f"all classes need the same dimension: means[0] has d={d}, "
                                 f"means[{k}] has d={m.shape[1]}")
        J = [m.shape[0] for m in mean_list]

        # Variances: a global scalar, or per class a scalar / (J_c,) / (J_c, d) / (d,) when J_c == 1.
        scalar = isinstance(variances, (int, float)) and not isinstance(variances, bool)
        if not scalar and (isinstance(variances, Tensor) or hasattr(variances, "__array__")):
            scalar = _tensor(variances, "variances").ndim == 0
        var_items = [variances] * K if scalar else _per_class(variances, "variances")
        if len(var_items) != K:
            raise ValueError(f"variances has {len(var_items)} class entries, means has {K}")
        var_list = []
        for k, (v, j) in enumerate(zip(var_items, J, strict=True)):
            v = _tensor(v, f"variances[{k}]")
            if v.ndim == 0:
                v = v.expand(j, d)
            elif v.ndim == 1 and v.shape[0] == j:
                v = v[:, None].expand(j, d)
            elif v.ndim == 1 and j == 1 and v.shape[0] == d:
                v = v[None, :]
            elif v.shape != (j, d):
                raise ValueError(f"variances[{k}] must have shape (), ({j},) or ({j}, {d}) for a class "
                                 f"with {j} components in d={d}, got {tuple(v.shape)}")
            if not (v > 0).all():
                raise ValueError(f"variances[{k}] must be positive, got {v.tolist()}")
            var_list.append(v)

        if weights is None:
            w_list = [torch.full((j,), 1.0 / j, dtype=_F64) for j in J]
        else:
            w_items = _per_class(weights, "weights")
            if len(w_items) != K:
                raise ValueError(f"weights has {len(w_items)} class entries, means has {K}")
            w_list = []
            for k, (w, j) in enumerate(zip(w_items, J, strict=True)):
                w = _tensor(w, f"weights[{k}]").reshape(-1) if j == 1 else _tensor(w, f"weights[{k}]")
                if w.shape != (j,):
                    raise ValueError(f"weights[{k}] must have shape ({j},), got {tuple(w.shape)}")
                if not (w > 0).all():
                    raise ValueError(f"weights[{k}] must be positive, got {w.tolist()}")
                w_list.append(w / w.sum())

        p = torch.full((K,), 1.0 / K, dtype=_F64) if prior is None else _tensor(prior, "prior")
        if p.shape != (K,):
            raise ValueError(f"prior must have shape ({K},) (one entry per class), got {tuple(p.shape)}")
        if not (p > 0).all():
            raise ValueError(f"prior must be positive, got {p.tolist()}")
        p = p / p.sum()

        self.num_classes: int = K
        self.null_label: int = K
        self.dim: int = d
        self.sample_shape: tuple[int, ...] = (d,)
        self.train_schedule = ContinuousSchedule()  # exact at every lam: any grid works; this is the default
        self.num_components: int = sum(J)
        cls = torch.repeat_interleave(torch.arange(K), torch.tensor(J))
        self.register_buffer("means", torch.cat(mean_list).contiguous())
        self.register_buffer("variances", torch.cat(var_list).contiguous())
        # log(p(c_m) pi_m): the joint weight of component m in the marginal p(x).
        self.register_buffer("log_weights", torch.log(p)[cls] + torch.log(torch.cat(w_list)))
        self.register_buffer("log_prior", torch.log(p))
        self.register_buffer("component_class", cls)
        self.register_buffer("_class_mask", cls[None, :] == torch.arange(K)[:, None], persistent=False)

    # ---------------------------------------------------------------- construction helpers
    @classmethod
    def example_2d(cls) -> GaussianMixture:
        """A 2-D, three-class mixture of data scale ~1 for pictures: class 0 is two lobes upper left,
        class 1 one round blob upper right, class 2 an elongated pair below; neighbouring classes
        overlap, so ``p(c | x)`` is far from one-hot near the borders and guidance visibly matters."""
        return cls(
            means=[
                [[-1.2, 0.5], [-0.5, 1.25]],
                [[0.8, 0.75]],
                [[-0.15, -0.85], [1.0, -0.55]],
            ],
            variances=[
                [[0.12, 0.06], [0.05, 0.10]],
                [0.15],
                [[0.20, 0.05], [0.06, 0.06]],
            ],
            weights=[[0.6, 0.4], [1.0], [0.5, 0.5]],
            prior=[0.35, 0.25, 0.40],
        )

    @classmethod
    def random(
        cls,
        d: int,
        K: int,
        components_per_class: int | Sequence[int] = 2,
        *,
        generator: torch.Generator | int | None = None,
        isotropic: bool = False,
        var_range: tuple[float, float] = (0.05, 0.3),
    ) -> GaussianMixture:
        """A random mixture: means ``~ N(0, I)``, variances uniform in ``var_range`` (per coordinate,
        or per component if ``isotropic``), component weights ``~ Dirichlet(1)`` floored at 0.1 of
        uniform, prior uniform in ``[0.5, 1.5]`` then normalised. ``generator`` may be an int seed."""
        positive_int(d, "d")
        positive_int(K, "K")
        J = [components_per_class] * K if isinstance(components_per_class, int) else list(components_per_class)
        if len(J) != K or not all(is_positive_int(j) for j in J):
            raise ValueError(f"components_per_class must be a positive int or {K} positive ints, "
                             f"got {components_per_class!r}")
        lo, hi = var_range
        if not 0 < lo <= hi:
            raise ValueError(f"var_range must satisfy 0 < lo <= hi, got {var_range!r}")
        g = _generator(generator)
        means, variances, weights = [], [], []
        for j in J:
            means.append(torch.randn(j, d, generator=g, dtype=_F64))
            u = torch.rand(j, 1 if isotropic else d, generator=g, dtype=_F64)
            variances.append((lo + (hi - lo) * u).expand(j, d))
            e = -torch.log(torch.rand(j, generator=g, dtype=_F64))  # Exp(1); normalised -> Dirichlet(1)
            weights.append(e / e.sum() + 0.1 / j)
        prior = 0.5 + torch.rand(K, generator=g, dtype=_F64)
        return cls(means, variances, weights, prior)

    def _apply(self, fn: Any, recurse: bool = True) -> GaussianMixture:
        # Follow .to(device)/.cuda() but keep float64: dtype casts would only lose precision here.
        for name, b in self._buffers.items():
            if b is not None:
                self._buffers[name] = b.to(device=fn(b).device)
        return self

    # ---------------------------------------------------------------- properties
    @property
    def prior(self) -> Tensor:
        """``(K,)`` class prior ``p(c)``, float64."""
        return self.log_prior.exp()

    def component_weights(self, c: int | None = None) -> Tensor:
        """``(M,)`` float64 mixture weights aligned with :attr:`component_class`: ``p(c_m) pi_m`` (the
        marginal's) for ``c=None`` or the null label, else ``pi_m`` for class ``c``'s components, 0 elsewhere."""
        if c is None or c == self.null_label:
            return self.log_weights.exp()
        c = self._check_label(c)
        w = torch.zeros_like(self.log_weights)
        mask = self.component_class == c
        w[mask] = (self.log_weights[mask] - self.log_prior[c]).exp()
        return w

    # ---------------------------------------------------------------- input handling
    def _check_label(self, c: int) -> int:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < self.num_classes:
            raise ValueError(f"class label must be an int in [0, {self.num_classes}), got {c!r}")
        return c

    def _z(self, z: Tensor, name: str = "z") -> tuple[Tensor, torch.dtype]:
        if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[1] != self.dim:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"{name} must be a (B, {self.dim}) tensor, got {shape}")
        out = z.dtype if z.is_floating_point() else torch.get_default_dtype()
        return z.to(self.means.device, _F64), out

    def _lam(self, lam: Tensor | float | None, B: int) -> Tensor:
        if lam is None:
            return torch.full((B,), math.inf, dtype=_F64, device=self.means.device)
        lam = torch.as_tensor(lam).to(self.means.device, _F64)
        if lam.ndim == 0:
            lam = lam.expand(B)
        if lam.shape != (B,):
            raise ValueError(f"lam must be a scalar or have shape ({B},), got {tuple(lam.shape)}")
        if torch.isnan(lam).any():
            raise ValueError("lam contains NaN")
        return lam

    def _labels(self, c: Tensor | int | None, B: int) -> Tensor:
        """``(B,)`` int64 labels in ``[0, K]``; ``None`` means the null label (marginal)."""
        if c is None:
            return torch.full((B,), self.null_label, dtype=torch.long, device=self.means.device)
        c = torch.as_tensor(c, device=self.means.device)
        if c.is_floating_point() or c.is_complex() or c.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got dtype {c.dtype}")
        if c.ndim == 0:
            c = c.expand(B)
        if c.shape != (B,):
            raise ValueError(f"labels must be an int or have shape ({B},), got {tuple(c.shape)}")
        if B and (int(c.min()) < 0 or int(c.max()) > self.null_label):
            raise ValueError(f"labels must lie in [0, {self.null_label}] ({self.null_label} = null), "
                             f"got range [{int(c.min())}, {int(c.max())}]")
        return c.long()

    # ---------------------------------------------------------------- core
    def _components(self, z: Tensor, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per component, at float64 ``z (B, d)``: ``log N(z; alpha mu_m, v_m)`` ``(B, M)``, the whitened
        residual ``(z - alpha mu_m) / v_m`` ``(B, M, d)`` and ``sigma`` ``(B, 1)``."""
        alpha, sigma = alpha_sigma(lam)
        a, s = alpha[:, None, None], sigma[:, None, None]
        v = a**2 * self.variances + s**2  # z | m ~ N(alpha mu_m, v_m)
        diff = z[:, None, :] - a * self.means
        log_n = -0.5 * (torch.log(v) + _LOG_2PI + diff**2 / v).sum(-1)
        return log_n, diff / v, sigma[:, None]

    def _log_joint(self, log_n: Tensor, c: Tensor) -> Tensor:
        """``log(p(c_m) pi_m N_m)`` ``(B, M)``, ``-inf`` outside class ``c`` (all kept for the null label)."""
        keep = (self.component_class[None, :] == c[:, None]) | (c[:, None] == self.null_label)
        return (self.log_weights + log_n).masked_fill(~keep, -math.inf)

    def forward(self, z: Tensor, lam: Tensor | float, c: Tensor | int) -> Tensor:
        """Exact ``eps*(z, lam, c) = E[eps | z, c] = -sigma grad_z log p_lam(z | c)`` ``(B, d)``; rows with
        ``c == null_label`` give the unconditional ``eps*(z, lam)``. ``lam`` is ``(B,)`` or a scalar."""
        z64, dtype = self._z(z)
        lam64, c = self._lam(lam, z.shape[0]), self._labels(c, z.shape[0])
        log_n, white, sigma = self._components(z64, lam64)
        r = torch.softmax(self._log_joint(log_n, c), dim=1)  # responsibilities p(m | z, c)
        eps = sigma * (r[:, :, None] * white).sum(1)  # eps* = sum_m r_m sigma (z - alpha mu_m) / v_m
        return eps.to(z.device, dtype)

    def classifier(self, z: Tensor, lam: Tensor | float | None) -> Tensor:
        """``(B, K)`` logits equal to ``log p_lam(c | z)`` (already normalised, so ``log_softmax`` is a
        no-op); differentiable w.r.t. ``z``. ``lam=None`` is the clean end."""
        z64, dtype = self._z(z)
        log_n, _, _ = self._components(z64, self._lam(lam, z.shape[0]))
        lj = self.log_weights + log_n  # (B, M)
        # log p(c, z) = logsumexp over class c's components; Bayes normalises by p(z).
        log_cz = torch.logsumexp(torch.where(self._class_mask, lj[:, None, :], -math.inf), dim=2)
        return (log_cz - torch.logsumexp(lj, dim=1, keepdim=True)).to(z.device, dtype)

    def null_condition(self, c: Tensor) -> Tensor:
        """The null label ``K`` for a batch of labels (network protocol)."""
        return torch.full_like(c, self.null_label)

    def as_classifier(self) -> MixtureClassifier:
        """This mixture's exact noisy classifier as a module: ``clf(z, lam) -> (B, K)`` logits."""
        return MixtureClassifier(self)

    def log_prob(self, x: Tensor, c: Tensor | int | None = None, lam: Tensor | float | None = None) -> Tensor:
        """``(B,)`` ``log p_lam(x | c)``: ``c=None`` (or the null label) gives the marginal ``log p_lam(x)``;
        ``lam=None`` (or ``+inf``) is the clean data density. Differentiable w.r.t. ``x``."""
        x64, dtype = self._z(x, "x")
        c = self._labels(c, x.shape[0])
        log_n, _, _ = self._components(x64, self._lam(lam, x.shape[0]))
        # p(x | c) = sum_{m in c} pi_m N_m: drop the class prior folded into log_weights.
        log_pc = torch.where(c == self.null_label, 0.0, self.log_prior[c.clamp(max=self.num_classes - 1)])
        return (torch.logsumexp(self._log_joint(log_n, c), dim=1) - log_pc).to(x.device, dtype)

    def posterior(self, x: Tensor, lam: Tensor | float | None = None) -> Tensor:
        """``(B, K)`` class posterior ``p(c | x)`` (clean end by default; ``lam`` gives ``p_lam(c | z)``)."""
        return self.classifier(x, lam).exp()

    def component_posterior(self, x: Tensor, c: Tensor | int | None = None,
                            lam: Tensor | float | None = None) -> Tensor:
        """``(B, M)`` responsibilities ``p(m | x)`` (columns aligned with :attr:`component_class`); with
        ``c``, ``p(m | x, c)`` (zero outside class ``c``). Clean end unless ``lam`` is given."""
        x64, dtype = self._z(x, "x")
        log_n, _, _ = self._components(x64, self._lam(lam, x.shape[0]))
        return torch.softmax(self._log_joint(log_n, self._labels(c, x.shape[0])), dim=1).to(x.device, dtype)

    def guided_log_density(self, x: Tensor, c: Tensor | int, w: Tensor | float,
                           lam: Tensor | float | None = None) -> Tensor:
        """``(B,)`` unnormalised ``(1 + w) log p(x | c) - w log p(x)``: the log of the CFG tilt
        ``p(x | c)^(1+w) p(x)^(-w) ∝ p(x | c) p(c | x)^w`` (``w`` in the CFG paper's convention).

        By default this is the tilt of the *clean* density. With ``lam`` it is the tilt of the noisy
        marginals, whose ``-sigma grad_z`` is exactly CFG's ``eps~ = (1+w) eps*(z,c) - w eps*(z)``; that
        is in general *not* the noisy marginal of the clean tilt (see the module docstring)."""
        if isinstance(w, Tensor):
            w = w.to(self.means.device, _F64)
        out = (1 + w) * self.log_prob(x, c, lam).to(_F64) - w * self.log_prob(x, None, lam).to(_F64)
        return out.to(x.device, x.dtype if x.is_floating_point() else torch.get_default_dtype())

    @torch.no_grad()
    def sample(self, n: int, c: Tensor | int | None = None,
               generator: torch.Generator | int | None = None,
               dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """Exact draws ``x ~ p(x | c)``: returns ``(x (n, d), c (n,) int64)``. ``c`` is an int, an ``(n,)``
        tensor, or ``None`` (classes drawn from the prior). ``generator`` may be an int seed (CPU
        generators; results are moved to the mixture's device)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        g = _generator(generator)
        cpu = {k: b.cpu() for k, b in self._buffers.items() if b is not None}
        if c is None:
            c = torch.multinomial(cpu["log_prior"].exp(), n, replacement=True, generator=g) if n else \
                torch.zeros(0, dtype=torch.long)
        else:
            c = self._labels(c, n).cpu()
            if n and int(c.max()) == self.null_label:
                raise ValueError(f"cannot sample the null label {self.null_label}; pass c=None for p(x)")
        # Component within the class: categorical over pi_m (rows of the masked weight table).
        table = (cpu["log_weights"][None, :] - cpu["log_prior"][:, None]).exp() * cpu["_class_mask"]
        m = torch.multinomial(table[c], 1, generator=g).squeeze(1) if n else c
        e = torch.randn(n, self.dim, generator=g, dtype=_F64)
        x = cpu["means"][m] + cpu["variances"][m].sqrt() * e
        return x.to(self.means.device, dtype), c.to(self.means.device)

    def extra_repr(self) -> str:
        return f"d={self.dim}, K={self.num_classes}, components={self.num_components}"


class MixtureClassifier(nn.Module):
    """A :class:`GaussianMixture`'s exact noisy classifier as a drop-in ``classifier(z, lam)`` module."""

    def __init__(self, gmm: GaussianMixture) -> None:
        super().__init__()
        self.gmm = gmm
        self.num_classes = gmm.num_classes
        self.sample_shape = gmm.sample_shape

    def forward(self, z: Tensor, lam: Tensor | float | None) -> Tensor:
        """``(B, K)`` logits ``= log p_lam(c | z)``."""
        return self.gmm.classifier(z, lam)
