"""Fast solvers against the exact mixture: order of convergence, first steps, every guidance rule.

The analytic Gaussian mixture gives the exact eps; the exact ODE solution is approximated by a
very-fine-step Heun solve whose own convergence is checked first. Solver errors are then measured
against it and their observed orders compared with theory: 1 for DDIM/Euler, 2 for DPM-Solver++(2M)
and Heun, 3 for UniPC (order-2 predictor with its corrector).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from diffguide.api import sample_images
from diffguide.guidance import APG, guided
from diffguide.prediction import Prediction
from diffguide.samplers import SAMPLERS, ddim, dpmpp_2m, euler, evaluations, heun, unipc
from diffguide.sampling import SamplingConfig
from diffguide.schedule import ContinuousSchedule, sampling_grid

LO, HI = -8.0, 8.0
STEPS = (33, 65, 129)


def lam_grid(steps: int) -> torch.Tensor:
    """``steps`` lam values uniform on [LO, HI], then +inf: a fixed end point for every step count."""
    return torch.cat([torch.linspace(LO, HI, steps, dtype=torch.float64), torch.tensor([math.inf],
                                                                                       dtype=torch.float64)])


@pytest.fixture(scope="module")
def problem():
    from diffguide.reference.gmm import GaussianMixture

    gmm = GaussianMixture.example_2d()
    n = 96
    c = torch.arange(n) % gmm.num_classes
    z = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    refs = {}
    for w in (0.0, 3.0):
        fine, finer = heun(guided(gmm, c, w), z, lam_grid(2049)), heun(guided(gmm, c, w), z, lam_grid(4097))
        # Heun is second order, so finer's own error is about (fine - finer) / 3; Richardson removes most of it
        refs[w] = (finer + (finer - fine) / 3, (fine - finer).abs().max().item() / 3)
    return gmm, c, z, refs


def observed_order(errors: list[float]) -> float:
    """Least-squares slope of -log2(error) against log2(steps) (the steps double each time)."""
    y = [-math.log2(e) for e in errors]
    x = list(range(len(y)))
    xm, ym = sum(x) / len(x), sum(y) / len(y)
    return sum((a - xm) * (b - ym) for a, b in zip(x, y, strict=True)) / sum((a - xm) ** 2 for a in x)


@pytest.mark.parametrize("w", [0.0, 3.0])
def test_reference_solution_has_converged(problem, w):
    _, _, _, refs = problem
    _, self_diff = refs[w]
    assert self_diff < 2e-6  # Heun at 4097 steps: an error bound far below the errors measured below


@pytest.mark.parametrize("w", [0.0, 3.0])
@pytest.mark.parametrize("name, lo, hi", [("ddim", 0.8, 1.25), ("euler", 0.8, 1.25), ("dpmpp-2m", 1.8, 2.3),
                                           ("heun", 1.8, 2.3), ("unipc", 2.6, 3.8)])
def test_error_falls_at_the_expected_order(problem, w, name, lo, hi):
    gmm, c, z, refs = problem
    ref, ref_error = refs[w]
    errors = [(SAMPLERS[name](guided(gmm, c, w), z, lam_grid(n)) - ref).abs().max().item() for n in STEPS]
    assert errors[-1] > 10 * ref_error  # the reference is exact enough to measure against
    order = observed_order(errors)
    assert lo <= order <= hi, (name, w, errors, order)


@pytest.mark.parametrize("w", [0.0, 3.0])
def test_unipc_order_3_gains_another_order(problem, w):
    gmm, c, z, refs = problem
    ref, _ = refs[w]
    errors = [(unipc(guided(gmm, c, w), z, lam_grid(n), order=3) - ref).abs().max().item() for n in (17, 33, 65)]
    assert observed_order(errors) > 3.4, errors


def test_lower_order_final_makes_the_last_finite_step_ddim(problem):
    """On a grid ending at a finite lam, lower_order_final's last step is a DDIM step from the last point
    (UniPC without its corrector, whose correction of the last point the spy cannot see)."""
    gmm, c, z, _ = problem
    grid = torch.linspace(-6.0, 4.0, 8, dtype=torch.float64)  # no +inf: sampling ends at lam = 4
    for sampler in (dpmpp_2m, functools.partial(unipc, skip_corrector=99)):
        fn = guided(gmm, c, 2.0)
        last_point = _visited(sampler, fn, z, grid)[-1]
        x = sampler(fn, z, grid, lower_order_final=True)
        assert (x - ddim(fn, last_point, grid[-2:])).abs().max() < 1e-12, sampler
        assert (sampler(fn, z, grid) - x).abs().max() > 1e-6, sampler  # without it the step is second order


def test_unipc_without_corrector_is_dpmpp_2m_and_euler_is_ddim(problem):
    gmm, c, z, _ = problem
    fn, grid = guided(gmm, c, 3.0), lam_grid(20)
    no_corrector = unipc(fn, z, grid, skip_corrector=10**6)
    assert (no_corrector - dpmpp_2m(fn, z, grid)).abs().max() < 1e-12
    assert (euler(fn, z, grid) - ddim(fn, z, grid)).abs().max() < 1e-12
    assert (unipc(fn, z, grid) - no_corrector).abs().max() > 1e-4  # the corrector does act


def _visited(sampler, model, z, grid):
    """The points ``z`` at which ``sampler`` evaluates ``model``."""
    seen = []

    def spy(zz, lam):
        seen.append(zz.clone())
        return model(zz, lam)
    sampler(spy, z, grid)
    return seen


@pytest.mark.parametrize("name", ["dpmpp-2m", "unipc", "heun"])
def test_first_step_is_a_ddim_step(problem, name):
    """The first multistep step is DDIM (first order, no history); Heun's Euler predictor is too."""
    gmm, c, z, _ = problem
    fn, grid = guided(gmm, c, 2.0), lam_grid(6)
    ddim_point = _visited(ddim, fn, z, grid)[1]
    assert (_visited(SAMPLERS[name], fn, z, grid)[1] - ddim_point).abs().max() < 1e-12


def test_solver_evaluations_are_counted(problem):
    gmm, c, z, _ = problem
    for name, fn in SAMPLERS.items():
        if name == "ddpm":
            continue
        guide = guided(gmm, c, 1.0)
        fn(guide, z, lam_grid(7))
        # one batched forward per model evaluation (CFG's pair together), two network evaluations per sample
        assert guide.engine.forwards == evaluations(name, 7) == (13 if name == "heun" else 7), name
        assert guide.engine.evaluations == 2 * guide.engine.forwards


def test_apg_state_advances_on_every_evaluation_including_heuns_second(problem):
    gmm, c, z, _ = problem
    calls = []

    class Counting(APG):
        def pair(self, eps_c, eps_u, z, lam, w, state):
            calls.append(float(lam[0]))
            return super().pair(eps_c, eps_u, z, lam, w, state)
    heun(guided(gmm, c, 2.0, rule=Counting()), z, lam_grid(5))
    grid = lam_grid(5).tolist()
    # step i evaluates at lam_i and lam_{i+1}; the last step (to +inf) once
    assert calls == [v for i in range(4) for v in (grid[i], grid[i + 1])] + [grid[4]]


RULES = {
    "cfg": {}, "rescale": {"rescale": 0.7}, "interval": {"interval": (-2.0, 2.0)}, "apg": {"rule": "apg"},
    "cfg-zero": {"rule": "cfg-zero"}, "schedule": {"w_schedule": "cosine"}, "threshold": {"threshold": 0.995},
}


@pytest.mark.parametrize("name", [n for n in SAMPLERS if n != "ddpm"])
@pytest.mark.parametrize("rule", list(RULES))
def test_every_rule_runs_with_every_solver(problem, name, rule):
    gmm, c, z, _ = problem
    x = SAMPLERS[name](guided(gmm, c, 1.0, **RULES[rule]), z, lam_grid(6))
    assert x.shape == z.shape and torch.isfinite(x).all()


@pytest.mark.parametrize("name", ["ddim", "dpmpp-2m", "unipc"])
def test_cfgpp_runs_on_the_solvers_that_renoise_and_reduces_to_ddim_first(problem, name):
    gmm, c, z, _ = problem
    make = functools.partial(guided, gmm, c, scale=0.6, rule="cfgpp")
    x = SAMPLERS[name](make(), z, lam_grid(6))
    assert torch.isfinite(x).all()
    # the first step re-noises with eps_u: z' = alpha' x0_lam + sigma' eps_u, whatever the solver
    assert (_visited(SAMPLERS[name], make(), z, lam_grid(6))[1] - _visited(ddim, make(), z, lam_grid(6))[1]
            ).abs().max() < 1e-12


@pytest.mark.parametrize("name", ["heun", "euler", "ddpm"])
def test_undefined_combinations_raise(problem, name):
    gmm, c, z, _ = problem
    with pytest.raises(ValueError, match=f"the {name} sampler cannot honour a re-noise eps"):
        SAMPLERS[name](guided(gmm, c, scale=0.6, rule="cfgpp"), z, lam_grid(6))
    with pytest.raises(ValueError, match="cannot honour a DDPM mean shift"):
        SAMPLERS["heun" if name == "ddpm" else name](lambda zz, lam: Prediction(zz, mean_grad=zz), z, lam_grid(6))


def test_classifier_guidance_score_form_with_every_solver(problem):
    gmm, c, z, _ = problem
    for name, fn in SAMPLERS.items():
        if name == "ddpm":
            continue
        x = fn(guided(gmm, c, 0.0, classifier=gmm.as_classifier(), cg_scale=2.0), z, lam_grid(6))
        assert torch.isfinite(x).all(), name


def test_cfg_equals_classifier_guidance_with_the_exact_classifier_on_every_solver(problem):
    """CFG(w) and CG(w) with the exact p(c|z) are the same eps (Ho & Salimans 2022, Sec. 3.2)."""
    gmm, c, z, _ = problem
    for name, fn in SAMPLERS.items():
        if name == "ddpm":
            continue
        a = fn(guided(gmm, c, 2.0), z, lam_grid(8))
        b = fn(guided(gmm, c, 0.0, classifier=gmm.as_classifier(), cg_scale=2.0), z, lam_grid(8))
        assert (a - b).abs().max() < 1e-10, name


@pytest.mark.parametrize("name, steps", [("dpmpp-2m", 2), ("unipc", 2), ("heun", 1)])
def test_a_grid_too_short_for_the_order_is_refused(problem, name, steps):
    gmm, c, z, _ = problem
    with pytest.raises(ValueError, match=f"the {name} sampler needs a grid of at least {steps + 1} steps"):
        SAMPLERS[name](guided(gmm, c, 1.0), z, lam_grid(steps))


def test_bad_solver_options_and_grids_are_named(problem):
    gmm, c, z, _ = problem
    with pytest.raises(ValueError, match="order must be an integer in \\[1, 3\\], got 4"):
        unipc(guided(gmm, c), z, lam_grid(6), order=4)
    with pytest.raises(ValueError, match="skip_corrector must be an integer >= 0, got -1"):
        unipc(guided(gmm, c), z, lam_grid(6), skip_corrector=-1)
    with pytest.raises(ValueError, match="strictly increasing"):
        dpmpp_2m(guided(gmm, c), z, torch.tensor([0.0, 1.0, 1.0, 2.0, math.inf]))
    sched = ContinuousSchedule()
    with pytest.raises(ValueError, match="rho must be a finite number > 0, got 0"):
        sampling_grid(sched, 5, "karras", rho=0)
    with pytest.raises(ValueError, match="unknown grid 'cosine'; expected one of schedule, lam, karras"):
        sampling_grid(sched, 5, "cosine")
    with pytest.raises(ValueError, match="rho must be a finite number > 0, got -1"):
        SamplingConfig(rho=-1)
    with pytest.raises(ValueError, match="unknown sampler 'dpm'; expected one of ddpm, ddim, dpmpp-2m, unipc"):
        SamplingConfig(sampler="dpm")
    with pytest.raises(ValueError, match="eta = 0.5 applies to the ddim sampler, not to 'unipc'"):
        SamplingConfig.make(sampler="unipc", eta=0.5)
    with pytest.raises(ValueError, match="mean-shift form of classifier guidance needs a sampler that takes it"):
        SamplingConfig(sampler="unipc", cg_form="mean")
    with pytest.raises(ValueError, match="callback, noise: supplied to the sampler at each call, not a sampler option"):
        SamplingConfig.make(sampler="ddim", noise=print, callback=print)


def test_grids_end_where_they_should():
    sched = ContinuousSchedule()
    k = sampling_grid(sched, 8, "karras")
    s = torch.exp(-k[:-1] / 2)
    # EDM's sigma range 80 ... 0.002, within the training range
    assert k[-1] == math.inf and abs(s[0] - 80) < 1e-9 and abs(s[-1] - 0.002) < 1e-12
    # eq. 5: s^(1/rho) is uniform in i
    step = (s[-1] ** (1 / 7) - s[0] ** (1 / 7)).item() / 7
    assert torch.allclose(torch.diff(s ** (1 / 7)), torch.full((7,), step, dtype=torch.float64))
    u = sampling_grid(sched, 8, "lam")
    assert torch.allclose(torch.diff(u[:-1]), torch.full((7,), 40 / 7, dtype=torch.float64))
    assert torch.equal(sampling_grid(sched, 8), sched.grid(8))
    wide = sampling_grid(sched, 8, "karras", lam_min=-20.0, lam_max=20.0)
    assert abs(wide[0] + 20) < 1e-9 and abs(wide[-2] - 20) < 1e-9
    assert SamplingConfig(sampler="heun").grid_kind == "karras" and SamplingConfig().grid_kind == "schedule"


def test_heun_refuses_a_grid_starting_far_out(problem):
    """From sigma = exp(10) Heun's trapezoid multiplies eps changes by ~1e4 (FID 672 on the shipped model)."""
    gmm, c, z, _ = problem
    with pytest.raises(ValueError, match="this grid starts at lam = -20 .* e.g. grid='karras'"):
        heun(guided(gmm, c), z, ContinuousSchedule().grid(5))
    with pytest.raises(ValueError, match="this grid starts at lam = -3000"):
        heun(guided(gmm, c), z, torch.tensor([-3000.0, 0.0, math.inf]))
    with pytest.raises(ValueError, match="lam grid must be 1-D with at least 2 entries"):
        heun(guided(gmm, c), z, torch.tensor([]))


def test_sampling_config_is_one_value_for_the_api(problem):
    """A config and the same fields as keywords give the same samples; a partial carries options."""
    from diffguide.models import build_model

    torch.manual_seed(0)
    net = build_model("diffusion", "tiny", channels=1, image_size=28, num_classes=10).eval()
    labels = torch.arange(4)
    cfg = SamplingConfig(sampler=functools.partial(ddim, eta=1.0), steps=4, seed=3)
    a = sample_images(net, labels, 1.0, sampling=cfg)
    b = sample_images(net, labels, 1.0, sampler="ddim", eta=1.0, steps=4, seed=3)
    assert torch.equal(a, b)
    assert cfg.key()["eta"] == 1.0 and cfg.name == "ddim"
    assert SamplingConfig(sampler="unipc", steps=10).key()["sampler"] == "unipc"
    # options at the sampler's own defaults do not change the key (a sweep folder stays valid)
    assert SamplingConfig.make(sampler="unipc", order=2).key() == SamplingConfig(sampler="unipc").key()
    assert SamplingConfig.make(sampler="unipc", order=3).key()["options"] == {"order": 3}
    assert SamplingConfig().key() == {"sampler": "ddim", "steps": 50, "seed": 0, "eta": 0.0, "v": 0.0,
                                      "cg_form": "auto", "clip_x0": 1.0}  # the first wave's key
    assert SamplingConfig(sampler="heun", steps=5).evaluations == 9
