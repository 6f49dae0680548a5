"""Samplers with the exact mixture as the network: their samples must follow p(x | c)."""

import math

import pytest
import torch
from scipy import stats

from diffguide.guidance import guided
from diffguide.noise import PerSampleNoise, sample_seeds
from diffguide.prediction import Prediction
from diffguide.samplers import ddim, ddpm, get_sampler
from diffguide.schedule import ContinuousSchedule, DiscreteSchedule

N = 4000  # samples per class
SCHED = ContinuousSchedule()


def assert_follows(gmm, x, c: int, *, n_sigma: float = 3.0):
    """x ~ p(x | c): per-component weights within n_sigma standard errors, mean/variance close, and a
    sliced Kolmogorov-Smirnov two-sample test against exact draws (Bonferroni over 6 directions)."""
    n = x.shape[0]
    x = x.double()
    pi = gmm.component_weights(c)
    resp = gmm.component_posterior(x, c).mean(0)  # E[p(m | x, c)] = pi_m exactly under p(x | c)
    se = (pi * (1 - pi) / n).sqrt()
    assert ((resp - pi).abs() <= n_sigma * se + 1e-12).all(), (resp, pi)
    ref, _ = gmm.sample(50_000, c, generator=123, dtype=torch.float64)
    m, v = ref.mean(0), ref.var(0)
    assert ((x.mean(0) - m).abs() <= 4 * (v / n).sqrt()).all(), (x.mean(0), m)
    assert ((x.var(0) / v - 1).abs() <= 0.1).all(), (x.var(0), v)
    exact, _ = gmm.sample(n, c, generator=7, dtype=torch.float64)
    angles = torch.arange(6, dtype=torch.float64) * math.pi / 6
    dirs = torch.stack([angles.cos(), angles.sin()], 1)
    pvals = [stats.ks_2samp((x @ d).numpy(), (exact @ d).numpy()).pvalue for d in dirs]
    assert min(pvals) > 0.01 / len(pvals), pvals


def run(gmm, sampler, c: int, n: int = N, steps: int = 250, seed: int = 0, w=0.0, **kw):
    labels = torch.full((n,), c)
    gen = torch.Generator().manual_seed(seed)  # one stream: per-sample streams are tested below

    def noise():
        return torch.randn(n, 2, generator=gen, dtype=torch.float64)

    eps_fn = guided(gmm, labels, w, **kw.pop("guide", {}))
    return sampler(eps_fn, noise(), SCHED.grid(steps), noise=noise, **kw)


@pytest.mark.parametrize("c", [0, 2])
def test_ddpm_matches_conditional(gmm, c):
    assert_follows(gmm, run(gmm, ddpm, c, steps=250), c)


def test_ddpm_v1_matches_conditional(gmm):
    assert_follows(gmm, run(gmm, ddpm, 0, steps=250, v=1.0), 0)


@pytest.mark.parametrize("c", [0, 2])
def test_ddim_matches_conditional(gmm, c):
    assert_follows(gmm, run(gmm, ddim, c, steps=100), c)


def test_ddim_eta1_matches_conditional(gmm):
    assert_follows(gmm, run(gmm, ddim, 1, steps=250, eta=1.0), 1)


def test_discrete_schedule_grid_matches_conditional(gmm):
    # A DDPM-style table shares the samplers: its lam_T ~ -10 is noisy enough for z ~ N(0, I). All T = 1000
    # steps, as Ho et al. sample: at 250 of them the narrow direction comes out ~8% under-dispersed.
    labels = torch.full((N,), 2)
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(N, 2, generator=gen, dtype=torch.float64)
    x = ddpm(guided(gmm, labels), z, DiscreteSchedule.linear().grid(1000),
             noise=lambda: torch.randn(N, 2, generator=gen, dtype=torch.float64))
    assert_follows(gmm, x, 2)


def test_ddim_error_shrinks_with_steps(gmm):
    labels = torch.arange(3).repeat(100)
    z = PerSampleNoise(sample_seeds(1, 300), (2,), dtype=torch.float64)()
    eps_fn = guided(gmm, labels, 1.0)
    ref = ddim(eps_fn, z, SCHED.grid(4000))
    errs = [(ddim(eps_fn, z, SCHED.grid(s)) - ref).norm(dim=1).mean().item() for s in (10, 20, 40, 80, 160)]
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False)), errs
    assert errs[-1] < 0.2 * errs[0], errs


def test_classifier_guidance_of_unconditional_model_is_conditional(gmm):
    # CG at scale w + 1 on the unconditional model = w on the conditional one (PAPERS.md); here w = 0.
    clf = gmm.as_classifier()
    for sampler, steps, form in ((ddim, 100, "score"), (ddpm, 250, "score"), (ddpm, 250, "mean")):
        x = run(gmm, sampler, 0, steps=steps, guide={"unconditional": True, "classifier": clf, "cg_scale": 1.0,
                                                     "cg_form": form})
        assert_follows(gmm, x, 0)


def test_mean_shift_and_score_forms_agree_as_steps_grow(gmm):
    clf = gmm.as_classifier()
    gaps = []
    for steps in (25, 100, 400):
        xs = {form: run(gmm, ddpm, 0, n=2000, steps=steps, guide={"unconditional": True, "classifier": clf,
                                                                  "cg_scale": 3.0, "cg_form": form})
              for form in ("score", "mean")}
        gaps.append((xs["score"] - xs["mean"]).norm(dim=1).mean().item())
    assert gaps[0] > gaps[1] > gaps[2], gaps


def test_guidance_sharpens(gmm):
    labels = torch.arange(3).repeat(700)
    p = []
    for w in (0.0, 0.5, 1.0, 2.0, 4.0):
        noise = PerSampleNoise(sample_seeds(5, labels.numel()), (2,), dtype=torch.float64)
        x = ddim(guided(gmm, labels, w), noise(), SCHED.grid(50))
        p.append(gmm.posterior(x).gather(1, labels[:, None]).mean().item())
    assert all(a < b for a, b in zip(p, p[1:], strict=False)), p


def test_classifier_guidance_sharpens(gmm):
    labels = torch.arange(3).repeat(700)
    clf, p = gmm.as_classifier(), []
    for s in (0.0, 1.0, 3.0, 6.0):
        noise = PerSampleNoise(sample_seeds(5, labels.numel()), (2,), dtype=torch.float64)
        x = ddim(guided(gmm, labels, classifier=clf, cg_scale=s), noise(), SCHED.grid(50))
        p.append(gmm.posterior(x).gather(1, labels[:, None]).mean().item())
    assert all(a < b for a, b in zip(p, p[1:], strict=False)), p


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_same_seed_same_sample_whatever_the_batch(gmm, name):
    sampler = get_sampler(name)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    kw = {"eta": 1.0} if name == "ddim" else {}

    def draw(idx):
        noise = PerSampleNoise([sample_seeds(9, 7)[i] for i in idx], (2,))
        return sampler(guided(gmm, labels[idx], 1.0), noise(), SCHED.grid(20), noise=noise, **kw)

    whole = draw(list(range(7)))
    parts = torch.cat([draw([0, 1, 2]), draw([3]), draw([4, 5, 6])])
    assert torch.equal(whole, parts)


def test_samplers_reject_bad_input(gmm):
    eps_fn = guided(gmm, torch.zeros(4, dtype=torch.long))
    z = torch.randn(4, 2)
    with pytest.raises(ValueError, match="strictly increasing"):
        ddim(eps_fn, z, torch.tensor([0.0, -1.0, math.inf]))
    with pytest.raises(ValueError, match="eta"):
        ddim(eps_fn, z, SCHED.grid(5), eta=float("nan"))
    with pytest.raises(ValueError, match=r"v \(variance interpolation\)"):
        ddpm(eps_fn, z, SCHED.grid(5), v=1.5)
    with pytest.raises(ValueError, match="floating-point"):
        ddim(eps_fn, torch.zeros(4, 2, dtype=torch.long), SCHED.grid(5))
    with pytest.raises(ValueError, match="batch size 3"):
        ddim(eps_fn, torch.randn(3, 2), SCHED.grid(5))
    with pytest.raises(ValueError, match="unknown sampler 'rk45'.*ddpm, ddim, dpmpp-2m, unipc, heun, euler"):
        get_sampler("rk45")
    with pytest.raises(ValueError, match=r"the model's eps has shape \(4, 3\), expected \(4, 2\)"):
        ddim(lambda z, lam: torch.zeros(4, 3), z, SCHED.grid(5))
    with pytest.raises(ValueError, match=r"the model's mean_grad has shape \(4, 1\), expected \(4, 2\)"):
        ddpm(lambda z, lam: Prediction(torch.zeros_like(z), mean_grad=torch.zeros(4, 1)), z, SCHED.grid(5))
    with pytest.raises(ValueError, match=r"noise\(\) returned shape \(4, 5\), expected \(4, 2\)"):
        ddpm(eps_fn, z, SCHED.grid(5), noise=lambda: torch.zeros(4, 5))


def test_no_sampler_drops_guidance_silently(gmm):
    # A field of the Prediction that a sampler cannot honour raises instead of being ignored.
    labels = torch.zeros(4, dtype=torch.long)
    z = torch.randn(4, 2, dtype=torch.float64)
    mean_cg = guided(gmm, labels, classifier=gmm.as_classifier(), cg_scale=2.0, cg_form="mean")
    with pytest.raises(ValueError, match="ddim sampler cannot honour a DDPM mean shift"):
        ddim(mean_cg, z, SCHED.grid(5))
    with pytest.raises(ValueError, match="ddpm sampler cannot honour a re-noise eps"):
        ddpm(guided(gmm, labels, scale=0.6, rule="cfgpp"), z, SCHED.grid(5))
    # ... and the mean shift does reach DDPM: guided and unguided samples differ
    noise = PerSampleNoise(range(4), (2,), dtype=torch.float64)
    unguided = ddpm(guided(gmm, labels), noise(), SCHED.grid(5), noise=noise)
    noise = PerSampleNoise(range(4), (2,), dtype=torch.float64)
    shifted = ddpm(mean_cg, noise(), SCHED.grid(5), noise=noise)
    assert (shifted - unguided).abs().max() > 1e-3


def test_held_steps_leave_z_unchanged(gmm):
    # Prediction.hold: the step is a no-op; a sampler holding its first k steps equals one started k steps later.
    labels = torch.zeros(4, dtype=torch.long)
    z = torch.randn(4, 2, dtype=torch.float64)
    grid = SCHED.grid(10)
    eps_fn = guided(gmm, labels, 1.0)
    calls = []

    def held(z_, lam):
        calls.append(1)
        return Prediction(torch.full_like(z_, math.nan), hold=True) if len(calls) <= 2 else eps_fn(z_, lam)

    for sampler in (ddim, ddpm):
        calls.clear()
        noise = PerSampleNoise(range(4), (2,), dtype=torch.float64)
        a = sampler(held, z, grid, noise=noise)
        noise = PerSampleNoise(range(4), (2,), dtype=torch.float64)
        b = sampler(eps_fn, z, grid[2:], noise=noise)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="held the final step"):
        ddim(lambda z_, lam: Prediction(z_, hold=True), z, grid)


def test_ks_helper_can_fail(gmm):
    # The distribution check must reject samples from the wrong class (it is not vacuous).
    x, _ = gmm.sample(N, 1, generator=0)
    with pytest.raises(AssertionError):
        assert_follows(gmm, x, 0)
