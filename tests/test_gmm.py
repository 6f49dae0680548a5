"""The analytic mixture against independent truth: autograd, scipy densities, Monte Carlo, Bayes' rule,
limits, sample moments and numerical integration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from diffguide.prediction import x0_from_eps
from diffguide.reference import GaussianMixture, MixtureClassifier
from diffguide.schedule import alpha_sigma

LAMS = [-10.0, -2.0, 0.0, 3.0, 15.0]


@pytest.fixture(scope="module")
def gmm() -> GaussianMixture:
    return GaussianMixture.random(3, 3, [1, 2, 3], generator=0)


def _noisy(gmm: GaussianMixture, n: int, lam: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``z = alpha x + sigma eps`` for ``x ~ p(x)``, float64, with the labels ``x`` was drawn from."""
    g = torch.Generator().manual_seed(seed)
    x, c = gmm.sample(n, generator=g, dtype=torch.float64)
    alpha, sigma = alpha_sigma(torch.tensor(lam, dtype=torch.float64))
    return alpha * x + sigma * torch.randn(x.shape, generator=g, dtype=torch.float64), c


def _all_labels(gmm: GaussianMixture, c: torch.Tensor) -> list[torch.Tensor]:
    return [c, torch.full_like(c, gmm.null_label), (c + 1) % gmm.num_classes]


# ------------------------------------------------------------------ densities
@pytest.mark.parametrize("lam", [*LAMS, math.inf])
def test_log_prob_matches_scipy(gmm: GaussianMixture, lam: float) -> None:
    z, _ = _noisy(gmm, 7, 0.0 if math.isinf(lam) else lam, seed=1)
    alpha, sigma = (float(t) for t in alpha_sigma(torch.tensor(lam, dtype=torch.float64)))
    mu, s2 = gmm.means.numpy(), gmm.variances.numpy()
    cls, prior = gmm.component_class.numpy(), gmm.prior.numpy()
    # Class-conditional densities from scipy, then mix with the prior.
    dens = np.zeros((7, gmm.num_classes))
    for m in range(gmm.num_components):
        pi = gmm.component_weights(int(cls[m]))[m].item()
        cov = np.diag(alpha**2 * s2[m] + sigma**2)
        dens[:, cls[m]] += pi * multivariate_normal(alpha * mu[m], cov).pdf(z.numpy())
    lam_arg = None if math.isinf(lam) else lam
    for k in range(gmm.num_classes):
        np.testing.assert_allclose(gmm.log_prob(z, k, lam_arg).numpy(), np.log(dens[:, k]), rtol=1e-10)
    np.testing.assert_allclose(gmm.log_prob(z, None, lam_arg).numpy(), np.log(dens @ prior), rtol=1e-10)
    np.testing.assert_allclose(gmm.log_prob(z, gmm.null_label, lam_arg).numpy(), np.log(dens @ prior),
                               rtol=1e-10)


@pytest.mark.parametrize("lam", [None, 0.0])
def test_log_prob_integrates_to_one_on_grid(lam: float | None) -> None:
    gmm = GaussianMixture.example_2d()
    t = torch.linspace(-7, 7, 281, dtype=torch.float64)  # h = 0.05: smooth integrand, tiny error
    X, Y = torch.meshgrid(t, t, indexing="ij")
    grid = torch.stack([X.flatten(), Y.flatten()], 1)
    cell = float(t[1] - t[0]) ** 2
    for c in [None, 0, 1, 2]:
        mass = gmm.log_prob(grid, c, lam).exp().sum().item() * cell
        assert mass == pytest.approx(1.0, abs=1e-8)


# ------------------------------------------------------------------ eps*
@pytest.mark.parametrize("lam", LAMS)
def test_eps_is_minus_sigma_autograd_score(gmm: GaussianMixture, lam: float) -> None:
    z, c = _noisy(gmm, 16, lam)
    sigma = alpha_sigma(torch.tensor(lam, dtype=torch.float64))[1]
    lam_b = torch.full((16,), lam)
    for labels in _all_labels(gmm, c):
        zz = z.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(gmm.log_prob(zz, labels, lam_b).sum(), zz)
        torch.testing.assert_close(gmm(z, lam_b, labels), -sigma * score, rtol=1e-9, atol=1e-12)


def test_eps_mixed_labels_in_one_batch(gmm: GaussianMixture) -> None:
    z, _ = _noisy(gmm, 8, 0.5)
    lam = torch.linspace(-5, 5, 8)
    labels = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    out = gmm(z, lam, labels)
    for i in range(8):
        torch.testing.assert_close(out[i], gmm(z[i : i + 1], lam[i : i + 1], labels[i : i + 1])[0])


@pytest.mark.parametrize("label", [1, None])
def test_eps_matches_importance_sampled_posterior_mean(label: int | None) -> None:
    # E[eps | z, c] = E_{x ~ p(x|c)}[N(z; alpha x, sigma^2) (z - alpha x) / sigma] / E[N(z; alpha x, sigma^2)].
    gmm = GaussianMixture.example_2d()
    lam, n = -1.0, 400_000
    alpha, sigma = (float(t) for t in alpha_sigma(torch.tensor(lam, dtype=torch.float64)))
    z = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    x, _ = gmm.sample(n, c=label, generator=7, dtype=torch.float64)
    log_w = -0.5 * ((z - alpha * x) ** 2).sum(1) / sigma**2
    w = torch.softmax(log_w, 0)
    f = (z - alpha * x) / sigma
    est = (w[:, None] * f).sum(0)
    se = ((w[:, None] ** 2) * (f - est) ** 2).sum(0).sqrt()  # self-normalised IS (delta method)
    c = torch.tensor([gmm.null_label if label is None else label])
    exact = gmm(z, torch.tensor([lam]), c)[0]
    assert ((est - exact).abs() < 4 * se).all(), (est, exact, se)


def test_limits_pure_noise_and_clean() -> None:
    gmm = GaussianMixture.example_2d()
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    c = torch.arange(64) % (gmm.num_classes + 1)
    # lam = -20: alpha ~ 4.5e-5, z is (almost) pure noise, so eps* ~ z.
    torch.testing.assert_close(gmm(z, torch.full((64,), -20.0), c), z, rtol=0, atol=1e-3)
    # lam = 20: sigma ~ 4.5e-5, the posterior mean of x is (almost) z itself.
    lam = torch.full((64,), 20.0)
    torch.testing.assert_close(x0_from_eps(z, gmm(z, lam, c), lam), z, rtol=0, atol=1e-3)
    # lam = +inf (clean end): eps* = 0 exactly, no NaN.
    assert torch.equal(gmm(z, torch.full((64,), math.inf), c), torch.zeros_like(z))


def test_eps_accurate_at_lam_20_against_autograd() -> None:
    gmm = GaussianMixture.example_2d()
    z, c = _noisy(gmm, 32, 20.0, seed=5)
    lam = torch.full((32,), 20.0)
    sigma = alpha_sigma(lam.double())[1][:, None]
    zz = z.clone().requires_grad_(True)
    (score,) = torch.autograd.grad(gmm.log_prob(zz, c, lam).sum(), zz)
    torch.testing.assert_close(gmm(z, lam, c), -sigma * score, rtol=1e-8, atol=1e-14)


def test_dtype_in_dtype_out_and_float64_buffers(gmm: GaussianMixture) -> None:
    z, c = _noisy(gmm, 8, 1.0)
    lam = torch.full((8,), 1.0)
    ref = gmm(z, lam, c)
    for dt in (torch.float32, torch.bfloat16):
        out = gmm(z.to(dt), lam.to(dt), c)
        assert out.dtype == dt
        assert gmm.classifier(z.to(dt), lam).dtype == dt
    torch.testing.assert_close(gmm(z.float(), lam, c), ref.float(), rtol=1e-5, atol=1e-6)
    g16 = GaussianMixture.random(3, 3, [1, 2, 3], generator=0).half()
    assert g16.means.dtype == torch.float64 and g16.variances.dtype == torch.float64
    torch.testing.assert_close(g16(z, lam, c), ref)


# ------------------------------------------------------------------ classifier
@pytest.mark.parametrize("lam", LAMS)
def test_classifier_is_bayes_rule(gmm: GaussianMixture, lam: float) -> None:
    z, _ = _noisy(gmm, 16, lam)
    logits = gmm.classifier(z, torch.full((16,), lam))
    log_joint = torch.stack([gmm.log_prob(z, k, lam) for k in range(gmm.num_classes)], 1) + gmm.prior.log()
    expected = log_joint - torch.logsumexp(log_joint, 1, keepdim=True)
    torch.testing.assert_close(torch.log_softmax(logits, 1), expected, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(logits.exp().sum(1), torch.ones(16, dtype=torch.float64))


@pytest.mark.parametrize("lam", LAMS)
def test_classifier_gradient_is_eps_difference(gmm: GaussianMixture, lam: float) -> None:
    # PAPERS.md: grad_z log p(c|z) = -(eps*(z,c) - eps*(z)) / sigma.
    z, c = _noisy(gmm, 16, lam, seed=2)
    lam_b = torch.full((16,), lam)
    sigma = alpha_sigma(torch.tensor(lam, dtype=torch.float64))[1]
    clf = gmm.as_classifier()
    assert isinstance(clf, MixtureClassifier)
    zz = z.clone().requires_grad_(True)
    log_p = torch.log_softmax(clf(zz, lam_b), 1).gather(1, c[:, None]).sum()
    (grad,) = torch.autograd.grad(log_p, zz)
    implicit = -(gmm(z, lam_b, c) - gmm(z, lam_b, torch.full_like(c, gmm.null_label))) / sigma
    torch.testing.assert_close(grad, implicit, rtol=1e-7, atol=1e-9 / float(sigma))


def test_classifier_float32_autograd() -> None:
    gmm = GaussianMixture.example_2d()
    z = torch.randn(4, 2, requires_grad=True)
    (g,) = torch.autograd.grad(gmm.as_classifier()(z, torch.zeros(4))[:, 0].sum(), z)
    assert g.dtype == torch.float32 and torch.isfinite(g).all()


def test_posteriors_and_component_weights() -> None:
    gmm = GaussianMixture.example_2d()
    x, c = gmm.sample(20_000, generator=11, dtype=torch.float64)
    # E_x[p(c|x)] = p(c) and E_x[p(m|x)] = p(c_m) pi_m, within Monte Carlo error.
    post, comp = gmm.posterior(x), gmm.component_posterior(x)
    torch.testing.assert_close(post.sum(1), torch.ones(20_000, dtype=torch.float64))
    for est, truth in ((post, gmm.prior), (comp, gmm.component_weights())):
        se = est.std(0) / math.sqrt(len(x))
        assert ((est.mean(0) - truth).abs() < 4 * se + 1e-12).all()
    # Summing component responsibilities within a class gives the class posterior.
    by_class = torch.zeros_like(post).index_add_(1, gmm.component_class, comp)
    torch.testing.assert_close(by_class, post)
    # Given the class: zero outside it, rows sum to 1, and they average to pi_m for that class.
    comp1 = gmm.component_posterior(x[c == 1], 1)
    assert (comp1[:, gmm.component_class != 1] == 0).all()
    torch.testing.assert_close(gmm.component_weights(1).sum(), torch.tensor(1.0, dtype=torch.float64))
    x0, _ = gmm.sample(20_000, c=0, generator=12, dtype=torch.float64)
    se = gmm.component_posterior(x0, 0).std(0) / math.sqrt(len(x0))
    assert ((gmm.component_posterior(x0, 0).mean(0) - gmm.component_weights(0)).abs() < 4 * se + 1e-12).all()


def test_guided_log_density() -> None:
    gmm = GaussianMixture.example_2d()
    z, c = _noisy(gmm, 12, 0.7)
    torch.testing.assert_close(gmm.guided_log_density(z, c, 0.0), gmm.log_prob(z, c))
    # Tilt identity: p(x|c)^(1+w) p(x)^-w = p(x|c) p(c|x)^w / p(c)^w.
    w = 2.5
    post = gmm.classifier(z, None).gather(1, c[:, None])[:, 0]
    torch.testing.assert_close(gmm.guided_log_density(z, c, w),
                               gmm.log_prob(z, c) + w * (post - gmm.prior.log()[c]))
    # With lam: -sigma grad of the noisy tilt is CFG's eps~ = (1+w) eps(z,c) - w eps(z).
    lam = torch.full((12,), 0.7)
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(gmm.guided_log_density(zz, c, w, lam).sum(), zz)
    sigma = alpha_sigma(lam.double())[1][:, None]
    cfg = (1 + w) * gmm(z, lam, c) - w * gmm(z, lam, torch.full_like(c, gmm.null_label))
    torch.testing.assert_close(-sigma * g, cfg)


# ------------------------------------------------------------------ sampling
def _mixture_moments(gmm: GaussianMixture, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Law of total expectation / variance over the class's components.
    pi = gmm.component_weights(c)[:, None]
    mean = (pi * gmm.means).sum(0)
    var = (pi * (gmm.variances + gmm.means**2)).sum(0) - mean**2
    return mean, var


@pytest.mark.parametrize("c", [0, 2])
def test_sample_moments(gmm: GaussianMixture, c: int) -> None:
    n = 40_000
    x, labels = gmm.sample(n, c=c, generator=c + 100, dtype=torch.float64)
    assert x.shape == (n, gmm.dim) and (labels == c).all() and labels.dtype == torch.long
    mean, var = _mixture_moments(gmm, c)
    assert ((x.mean(0) - mean).abs() < 4 * (var / n).sqrt()).all()
    m4 = ((x - x.mean(0)) ** 4).mean(0)
    assert ((x.var(0) - var).abs() < 4 * ((m4 - var**2) / n).sqrt()).all()


def test_sample_class_frequencies_and_per_row_labels() -> None:
    gmm = GaussianMixture.example_2d()
    n = 40_000
    x, c = gmm.sample(n, generator=5)
    assert x.dtype == torch.float32 and x.shape == (n, 2)
    freq = torch.bincount(c, minlength=gmm.num_classes).double() / n
    p = gmm.prior
    assert ((freq - p).abs() < 4 * (p * (1 - p) / n).sqrt()).all()
    # Per-row labels: each row drawn from its own class.
    labels = torch.arange(n) % gmm.num_classes
    x, c = gmm.sample(n, c=labels, generator=6, dtype=torch.float64)
    assert torch.equal(c, labels)
    for k in range(gmm.num_classes):
        mean, var = _mixture_moments(gmm, k)
        xs = x[labels == k]
        assert ((xs.mean(0) - mean).abs() < 4 * (var / len(xs)).sqrt()).all()


def test_sample_reproducible_and_empty() -> None:
    gmm = GaussianMixture.example_2d()
    assert torch.equal(gmm.sample(10, generator=1)[0], gmm.sample(10, generator=1)[0])
    x, c = gmm.sample(0)
    assert x.shape == (0, 2) and c.shape == (0,)


def test_random_mixture() -> None:
    a = GaussianMixture.random(5, 4, 3, generator=9, isotropic=True)
    b = GaussianMixture.random(5, 4, 3, generator=torch.Generator().manual_seed(9), isotropic=True)
    assert torch.equal(a.means, b.means)
    assert a.num_classes == 4 and a.null_label == 4 and a.num_components == 12 and a.dim == 5
    assert (a.variances == a.variances[:, :1]).all()
    torch.testing.assert_close(a.prior.sum(), torch.tensor(1.0, dtype=torch.float64))


# ------------------------------------------------------------------ construction
def test_construction_forms_agree() -> None:
    # A (K, J, d) tensor, nested lists, scalar / isotropic / diagonal variances describe the same mixture.
    means = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[2.0, 2.0], [-1.0, 0.5]]])
    a = GaussianMixture(means, 0.2, weights=torch.tensor([[1.0, 3.0], [1.0, 1.0]]), prior=[1.0, 3.0])
    b = GaussianMixture(means.tolist(), [[0.2, 0.2], [[0.2, 0.2], [0.2, 0.2]]],
                        weights=[[0.25, 0.75], [0.5, 0.5]], prior=[0.25, 0.75])
    for name in ("means", "variances", "log_weights", "log_prior", "component_class"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))
    # Single-component classes: a (d,) mean and a (d,) diagonal variance.
    single = GaussianMixture([[0.0, 0.0], [1.0, 1.0]], [[0.1, 0.2], 0.3])
    torch.testing.assert_close(single.variances, torch.tensor([[0.1, 0.2], [0.3, 0.3]], dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"means": [], "variances": 1.0}, "at least one class"),
        ({"means": [[[0.0, 0.0]], [[0.0, 0.0, 0.0]]], "variances": 1.0}, "same dimension"),
        ({"means": [torch.zeros(1, 1, 2)], "variances": 1.0}, r"shape \(J_c, d\)"),
        ({"means": [[[0.0, 0.0]]], "variances": -1.0}, "positive"),
        ({"means": [[[0.0, 0.0]]], "variances": [[0.0, 1.0]]}, "positive"),
        ({"means": [[[0.0, 0.0], [1.0, 1.0]]], "variances": [[0.1, 0.1, 0.1]]}, r"variances\[0\]"),
        ({"means": [[[0.0, 0.0]], [[1.0, 1.0]]], "variances": [0.1]}, "1 class entries"),
        ({"means": [[[0.0, float("nan")]]], "variances": 1.0}, "finite"),
        ({"means": [[[0.0, 0.0], [1.0, 1.0]]], "variances": 1.0, "weights": [[1.0, 0.0]]}, "positive"),
        ({"means": [[[0.0, 0.0], [1.0, 1.0]]], "variances": 1.0, "weights": [[1.0]]}, r"shape \(2,\)"),
        ({"means": [[[0.0, 0.0]], [[1.0, 1.0]]], "variances": 1.0, "prior": [1.0]}, r"shape \(2,\)"),
        ({"means": [[[0.0, 0.0]], [[1.0, 1.0]]], "variances": 1.0, "prior": [1.0, -1.0]}, "positive"),
        ({"means": "abc", "variances": 1.0}, "sequence"),
    ],
)
def test_bad_construction_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kwargs)


def test_bad_call_inputs_raise() -> None:
    gmm = GaussianMixture.example_2d()
    z = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        gmm(torch.zeros(3, 3), torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        gmm(z, torch.zeros(3), torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="integers"):
        gmm(z, torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="lam"):
        gmm(z, torch.zeros(2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="null label"):
        gmm.sample(4, c=3)
    with pytest.raises(ValueError):
        GaussianMixture.random(0, 3)
    with pytest.raises(ValueError):
        GaussianMixture.random(2, 3, [1, 2])
