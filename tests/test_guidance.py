"""Guidance functions and the batched wrapper, checked against the exact mixture."""

import math

import pytest
import torch

from diffguide.guidance import MIN_ROWS, cfg, cg_eps, classifier_grad, guided, resolve_w, w_from_scale
from diffguide.schedule import alpha_sigma


def _inputs(gmm, B=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, 2, generator=g, dtype=torch.float64) * 1.5
    lam = torch.empty(B, dtype=torch.float64).uniform_(-6, 8, generator=g)
    c = torch.randint(0, gmm.num_classes, (B,), generator=g)
    return z, lam, c


class Counting(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls, self.rows = net, 0, []
        self.num_classes, self.null_label = net.num_classes, net.null_label

    def forward(self, z, lam, c):
        self.calls += 1
        self.rows.append(z.shape[0])
        return self.net(z, lam, c)


def test_cfg_formula_and_scale():
    e_c, e_u = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0])
    torch.testing.assert_close(cfg(e_c, e_u, 2.0), 3 * e_c - 2 * e_u)
    torch.testing.assert_close(cfg(e_c, e_u, 0.0), e_c)
    torch.testing.assert_close(cfg(e_c, e_u, -1.0), e_u)
    assert w_from_scale(7.5) == 6.5 and w_from_scale(1.0) == 0.0
    assert resolve_w(None, 7.5) == 6.5 and resolve_w(2.0, None) == 2.0 and resolve_w(None, None) == 0.0
    with pytest.raises(ValueError, match="give w or scale, not both"):
        resolve_w(1.0, 2.0)


def test_scale_is_w_plus_one_everywhere(gmm):
    # a diffusers user's guidance_scale 7.5 is the CFG paper's w = 6.5
    z, lam, c = _inputs(gmm, B=8)
    torch.testing.assert_close(guided(gmm, c, scale=7.5)(z, lam).eps, guided(gmm, c, 6.5)(z, lam).eps,
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="give w or scale, not both"):
        guided(gmm, c, 1.0, scale=2.0)


@pytest.mark.parametrize("w", [0.5, 1.0, 3.0])
def test_cfg_equals_cg_with_the_implicit_classifier(gmm, w):
    # grad log p(c|z) = -(eps*(z,c) - eps*(z)) / sigma (PAPERS.md), so CFG(w) = CG(w) with the exact
    # classifier on the conditional model: eps(z,c) - w sigma grad log p(c|z). Autograd vs closed form.
    z, lam, c = _inputs(gmm)
    eps_c, eps_u = gmm(z, lam, c), gmm(z, lam, torch.full_like(c, gmm.null_label))
    grad = classifier_grad(gmm.as_classifier(), z, lam, c)
    assert grad.dtype == torch.float64  # computed in the input's dtype, not float32
    torch.testing.assert_close(cfg(eps_c, eps_u, w), cg_eps(eps_c, grad, lam, w), rtol=0, atol=1e-12)
    # and the wrapper: CFG(w) with no classifier == conditional + CG(w) with the exact classifier, in float64
    a = guided(gmm, c, w)(z, lam).eps
    b = guided(gmm, c, 0.0, classifier=gmm.as_classifier(), cg_scale=w)(z, lam).eps
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # a per-sample float64 w stays float64: the two CFG weights still sum to exactly 1
    wt = torch.full((z.shape[0],), w, dtype=torch.float64) + torch.linspace(0, 1e-3, z.shape[0], dtype=torch.float64)
    exact = eps_c + wt[:, None] * (eps_c - eps_u)
    torch.testing.assert_close(guided(gmm, c, wt)(z, lam).eps, exact, rtol=0, atol=1e-13)


def test_classifier_grad_is_per_sample(gmm):
    z, lam, c = _inputs(gmm, B=16)
    clf = gmm.as_classifier()
    full = classifier_grad(clf, z, lam, c)
    single = torch.cat([classifier_grad(clf, z[i:i + 1], lam[i:i + 1], c[i:i + 1]) for i in range(16)])
    torch.testing.assert_close(full, single)
    assert not full.requires_grad


def test_one_batched_forward_equals_two_passes(gmm):
    z, lam, c = _inputs(gmm)
    net = Counting(gmm)
    eps_fn = guided(net, c, 2.0)
    out = eps_fn(z, lam).eps
    assert net.calls == 1 and net.rows == [128] and eps_fn.calls == 1 and eps_fn.engine.evaluations == 2
    two_pass = cfg(gmm(z, lam, c), gmm(z, lam, torch.full_like(c, gmm.null_label)), 2.0)
    torch.testing.assert_close(out, two_pass, rtol=1e-12, atol=1e-12)
    # w = 0 skips the null pass entirely
    net0 = Counting(gmm)
    guided(net0, c, 0.0)(z, lam)
    assert net0.rows == [64]


def test_max_batch_splits_without_changing_the_result(gmm):
    z, lam, c = _inputs(gmm, B=50)
    net = Counting(gmm)
    whole = guided(gmm, c, 1.5)(z, lam).eps
    split = guided(net, c, 1.5, max_batch=32)(z, lam).eps
    assert net.rows == [25, 25, 25, 25]  # 100 rows in as few equal chunks of <= 32 rows as possible
    torch.testing.assert_close(split, whole, rtol=0, atol=0)
    z, lam, c = _inputs(gmm, B=10)
    net = Counting(gmm)
    split = guided(net, c, 1.5, max_batch=8)(z, lam).eps
    assert net.rows == [MIN_ROWS] * 3  # chunks of 7, 7 and 6 rows, each padded on CPU
    torch.testing.assert_close(split, guided(gmm, c, 1.5)(z, lam).eps, rtol=0, atol=0)


def test_per_sample_w(gmm):
    z, lam, c = _inputs(gmm, B=6)
    w = torch.tensor([0.0, 0.5, 1.0, 2.0, 4.0, 8.0])
    out = guided(gmm, c, w)(z, lam).eps
    for i, wi in enumerate(w.tolist()):
        torch.testing.assert_close(out[i:i + 1], guided(gmm, c[i:i + 1], wi)(z[i:i + 1], lam[i:i + 1]).eps)


def test_composed_conditions_and_negative_condition(gmm):
    # eps(null) + sum_i (1 + w_i) (eps(c_i) - eps(null)) (Liu et al. 2022, in the CFG paper's w) in one forward
    z, lam, _ = _inputs(gmm, B=8)
    c0, c1, null = (torch.full((8,), k) for k in (0, 1, gmm.null_label))
    net = Counting(gmm)
    out = guided(net, [c0, c1], [0.5, -0.5])(z, lam).eps
    e0, e1, eu = gmm(z, lam, c0), gmm(z, lam, c1), gmm(z, lam, null)
    torch.testing.assert_close(out, eu + 1.5 * (e0 - eu) + 0.5 * (e1 - eu))
    assert net.calls == 1 and net.rows == [24]
    neg = guided(gmm, c0, 2.0, null=c1)(z, lam).eps
    torch.testing.assert_close(neg, 3 * e0 - 2 * e1)


def test_score_form_uses_sigma(gmm):
    z, lam, c = _inputs(gmm, B=8)
    eps = torch.zeros_like(z)
    g = torch.ones_like(z)
    torch.testing.assert_close(cg_eps(eps, g, lam, 2.0), -2.0 * alpha_sigma(lam)[1][:, None] * g)


@pytest.mark.parametrize("kwargs, match", [
    ({"w": math.nan}, "w = nan is invalid"),
    ({"w": math.inf}, "w = inf is invalid"),
    ({"w": -1.5}, "w = -1.5 is invalid"),
    ({"w": torch.tensor([0.0, math.nan, 1.0, 1.0])}, r"w\[1\] = nan"),
    ({"w": torch.ones(3)}, r"shape \(4,\)"),
    ({"cg_scale": -1.0}, "cg_scale = -1.0 is invalid"),
    ({"cg_scale": math.nan}, "cg_scale = nan is invalid"),
    ({"cg_form": "median"}, "cg_form must be"),
    ({"max_batch": 0}, "max_batch must be"),
    ({"unconditional": True, "w": 1.0}, "takes no CFG weight"),
])
def test_bad_guidance_arguments(gmm, kwargs, match):
    c = torch.zeros(4, dtype=torch.long)
    kwargs.setdefault("classifier", gmm.as_classifier())
    with pytest.raises(ValueError, match=match):
        guided(gmm, c, **kwargs)


def test_bad_labels(gmm):
    with pytest.raises(ValueError, match=r"label 3 is out of range: expected integers in \[0, 2\]"):
        guided(gmm, torch.tensor([0, 3]), 1.0)
    with pytest.raises(ValueError, match="label -1 is out of range"):
        guided(gmm, torch.tensor([0, -1]), 1.0)


def test_class_count_mismatch(gmm):
    from diffguide.reference import GaussianMixture
    other = GaussianMixture.random(2, 5, generator=0).as_classifier()
    with pytest.raises(ValueError, match="classifier has 5 classes but the network has 3"):
        guided(gmm, torch.zeros(2, dtype=torch.long), classifier=other, cg_scale=1.0)
