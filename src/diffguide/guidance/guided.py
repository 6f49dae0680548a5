"""Turn a network ``net(z, lam, c) -> eps`` (and optionally a classifier) into a sampler's ``eps_fn``.

Guidance is a weighted sum over (condition, weight) pairs, evaluated in **one batched forward**:
plain CFG is ``[(c, 1 + w), (null, -w)]``; a negative condition takes the null's place; several
conditions compose as ``eps(null) + sum_i w_i (eps(c_i) - eps(null))`` (Liu et al. 2022). The
condition is opaque here: any tensor whose first dimension is the batch (labels today, embeddings
tomorrow). Classifier guidance adds ``-s sigma grad log p(y|z)`` (score form) or hands the sampler
a mean shift (``GuidedEps.mean_grad``, DDPM only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from ..prediction import bcast
from .cfg import Weight, check_weight
from .classifier import Classifier, cg_eps, classifier_grad

__all__ = ["GuidedEps", "guided", "null_condition", "check_labels"]

Net = Callable[[Tensor, Tensor, Tensor], Tensor]


def null_condition(net: Net, c: Tensor) -> Tensor:
    """The null condition for a batch ``c``: label ``net.null_label`` (K) for a label network."""
    null = getattr(net, "null_label", None)
    if null is None:
        raise ValueError("this network has no `null_label` attribute: pass the null condition explicitly (null=...)")
    return torch.full_like(c, int(null))


def check_labels(c: Tensor, num_classes: int, *, allow_null: bool, what: str = "label") -> None:
    """Labels must be integers in ``[0, K)``, or ``[0, K]`` with the null label ``K`` allowed."""
    if c.is_floating_point() or c.is_complex() or c.dtype == torch.bool:
        raise ValueError(f"{what}s must be an integer tensor, got dtype {c.dtype}")
    hi = num_classes if allow_null else num_classes - 1
    bad = (c < 0) | (c > hi)
    if bad.any():
        v = c[bad].flatten()[0].item()
        raise ValueError(f"{what} {v} is out of range: expected integers in [0, {hi}]"
                         + (f" ({num_classes} is the null label)" if allow_null else ""))


# On CPU, oneDNN picks other kernels for forwards of very few rows (on the CPUs measured, 1-11 rows gave
# results ~1e-6 off those of the same rows in a bigger batch), which broke "same seed, same sample,
# whatever the batch size" in fp32. CPU forwards (network and classifier) of fewer rows are padded to
# this many by repeating the last row; the padding's outputs are dropped. tests/test_api.py checks
# the samples bit for bit. Other devices are not padded (a small max_batch there saves memory).
MIN_ROWS = 16


def _pad_rows(*ts: Tensor) -> tuple[Tensor, ...]:
    """``ts`` (same batch size) padded to :data:`MIN_ROWS` rows on CPU; unchanged otherwise."""
    n = ts[0].shape[0]
    if n >= MIN_ROWS or ts[0].device.type != "cpu":
        return ts
    return tuple(torch.cat([t, t[-1:].expand(MIN_ROWS - n, *t.shape[1:])]) for t in ts)


class GuidedEps:
    """``eps_fn(z, lam) = sum_i weight_i net(z, lam, cond_i) [- s sigma grad_z log p(y|z)]``.

    ``terms``: (condition, weight) pairs; each condition has batch size B, each weight is a float or
    a ``(B,)`` tensor; float terms with weight 0 are skipped. All remaining terms run as one forward
    over ``len(terms) * B`` rows, split into equal chunks of at most ``max_batch`` rows if given (same
    result; on CPU a chunk of fewer than :data:`MIN_ROWS` rows is padded up to that). ``autocast``:
    a reduced precision (e.g. ``torch.bfloat16``) for network forwards only; combination happens in
    float32. ``calls`` counts network forwards.
    """

    def __init__(self, net: Net, terms: Sequence[tuple[Tensor, Weight]], *,
                 classifier: Classifier | None = None, cg_labels: Tensor | None = None,
                 cg_scale: Weight = 0.0, cg_form: Literal["score", "mean"] = "score",
                 max_batch: int | None = None, autocast: torch.dtype | None = None) -> None:
        terms = [(cond, w) for cond, w in terms if isinstance(w, Tensor) or w != 0.0]
        if not terms:
            raise ValueError("guidance needs at least one (condition, weight) term with a nonzero weight")
        self.batch = int(terms[0][0].shape[0])
        for cond, _ in terms:
            if cond.shape[0] != self.batch:
                raise ValueError(f"all conditions need batch size {self.batch}, got one of shape {tuple(cond.shape)}")
        self.terms = [(cond, check_weight(w, "guidance weight", minimum=-float("inf"), batch=self.batch))
                      for cond, w in terms]
        if cg_form not in ("score", "mean"):
            raise ValueError(f"cg_form must be 'score' or 'mean', got {cg_form!r}")
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch must be a positive integer or None, got {max_batch!r}")
        self.cg_scale = check_weight(cg_scale, "cg_scale", minimum=0.0, batch=self.batch)
        if classifier is not None and cg_labels is None:
            raise ValueError("classifier guidance needs the labels to guide towards (cg_labels)")
        self.net, self.classifier, self.cg_labels = net, classifier, cg_labels
        self.cg_form, self.max_batch, self.autocast = cg_form, max_batch, autocast
        self.calls = 0
        self._cond: Tensor | None = None

    @property
    def uses_classifier(self) -> bool:
        return self.classifier is not None and (isinstance(self.cg_scale, Tensor) or self.cg_scale != 0.0)

    def _forward(self, z: Tensor, lam: Tensor, cond: Tensor) -> Tensor:
        n = z.shape[0]
        z, lam, cond = _pad_rows(z, lam, cond)
        ctx = torch.autocast(z.device.type, dtype=self.autocast) if self.autocast else contextlib.nullcontext()
        with ctx:
            out = self.net(z, lam, cond)[:n]
        self.calls += 1
        return out.to(torch.promote_types(out.dtype, torch.float32))  # bf16 -> fp32; fp64 stays

    def net_eps(self, z: Tensor, lam: Tensor) -> Tensor:
        """The guided network prediction (no classifier term), one batched forward."""
        if z.shape[0] != self.batch:
            raise ValueError(f"z has batch size {z.shape[0]}, but the conditions have {self.batch}")
        n = len(self.terms)
        zz, ll = torch.cat([z] * n), torch.cat([lam] * n)
        if self._cond is None or self._cond.device != z.device:  # conditions are fixed: concatenate once
            self._cond = torch.cat([cond.to(z.device) for cond, _ in self.terms])
        cc = self._cond
        rows = zz.shape[0]
        if self.max_batch is None or rows <= self.max_batch:
            eps = self._forward(zz, ll, cc)
        else:  # as few chunks as max_batch allows, of equal size: 200 rows at 128 -> 100 + 100, not 128 + 72
            chunks = -(-rows // self.max_batch)
            size = -(-rows // chunks)
            eps = torch.cat([self._forward(zz[i:i + size], ll[i:i + size], cc[i:i + size])
                             for i in range(0, rows, size)])
        parts = eps.split(self.batch)
        ws = [w for _, w in self.terms]
        w0, w1 = (ws + [0.0])[:2]
        if n == 2 and isinstance(w0, float) and isinstance(w1, float) and abs(w0 + w1 - 1.0) < 1e-12:
            return torch.lerp(parts[1], parts[0], w0)  # CFG: eps_u + (1 + w)(eps_c - eps_u)
        out = torch.zeros_like(parts[0])
        for w, e in zip(ws, parts, strict=True):
            if isinstance(w, Tensor):
                out.addcmul_(bcast(w.to(e.device), e), e)
            else:
                out.add_(e, alpha=w)
        return out

    def grad(self, z: Tensor, lam: Tensor) -> Tensor:
        """``grad_z log p(y|z)`` of the guiding classifier at the labels ``cg_labels``."""
        assert self.classifier is not None and self.cg_labels is not None
        n = z.shape[0]
        return classifier_grad(self.classifier, *_pad_rows(z, lam, self.cg_labels.to(z.device)))[:n]

    def mean_grad(self, z: Tensor, lam: Tensor) -> Tensor:
        """``s grad_z log p(y|z)``: the DDPM mean shift's direction (pass as ``ddpm(mean_grad=...)``)."""
        s = self.cg_scale
        return (bcast(s.to(z.device), z) if isinstance(s, Tensor) else s) * self.grad(z, lam)

    def __call__(self, z: Tensor, lam: Tensor) -> Tensor:
        eps = self.net_eps(z, lam)
        if self.uses_classifier and self.cg_form == "score":
            eps = cg_eps(eps, self.grad(z, lam), lam, self.cg_scale)
        return eps.to(z.dtype)

    def sampler_kwargs(self) -> dict[str, object]:
        """Extra sampler arguments this guidance needs: the mean shift for ``cg_form="mean"``."""
        return {"mean_grad": self.mean_grad} if self.uses_classifier and self.cg_form == "mean" else {}


def guided(net: Net, c: Tensor, w: Weight = 0.0, *, null: Tensor | None = None, unconditional: bool = False,
           classifier: Classifier | None = None, cg_scale: Weight = 0.0,
           cg_form: Literal["score", "mean"] = "score", max_batch: int | None = None,
           autocast: torch.dtype | None = None) -> GuidedEps:
    """The usual guided ``eps_fn`` for a batch of conditions ``c`` (labels, shape ``(B,)``).

    - CFG with the paper's ``w`` (float or ``(B,)``, ``>= -1``): ``(1+w) eps(z,c) - w eps(z, null)``.
      ``null`` defaults to the network's null label; pass another condition for a negative prompt.
    - ``unconditional=True``: the network's null-condition prediction alone (``w`` must be 0) —
      classifier guidance of an unconditional model.
    - ``classifier``/``cg_scale`` (``>= 0``): classifier guidance towards ``c``, on top of either.
    """
    K = getattr(net, "num_classes", None)
    w = check_weight(w, "w", minimum=-1.0, batch=c.shape[0])
    if K is not None and not c.is_floating_point():
        check_labels(c, int(K), allow_null=False)
    if classifier is not None:
        Kc = getattr(classifier, "num_classes", None)
        if K is not None and Kc is not None and int(K) != int(Kc):
            raise ValueError(f"classifier has {Kc} classes but the network has {K}")
        if Kc is not None:
            check_labels(c, int(Kc), allow_null=False)
    null = null_condition(net, c) if null is None else null
    if unconditional:
        if isinstance(w, Tensor) or w != 0.0:
            raise ValueError(f"unconditional sampling takes no CFG weight, got w={w}")
        terms: list[tuple[Tensor, Weight]] = [(null, 1.0)]
    else:
        terms = [(c, 1 + w), (null, -w)]
    return GuidedEps(net, terms, classifier=classifier, cg_labels=c if classifier is not None else None,
                     cg_scale=cg_scale, cg_form=cg_form, max_batch=max_batch, autocast=autocast)
