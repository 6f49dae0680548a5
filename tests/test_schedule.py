import math

import pytest
import torch

from diffguide import prediction as P
from diffguide.samplers.base import alpha_sigma_f
from diffguide.schedule import ContinuousSchedule, DiscreteSchedule, alpha_sigma, check_grid, get_schedule

LAMS = torch.linspace(-30, 30, 241, dtype=torch.float64)


def test_alpha_sigma_identities():
    alpha, sigma = alpha_sigma(LAMS)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(LAMS), rtol=0, atol=1e-15)
    torch.testing.assert_close(torch.log(alpha**2 / sigma**2), LAMS, rtol=0, atol=1e-12)
    # fp32 keeps full relative precision at the tails (no sqrt(1 - x) of a rounded number)
    a32, s32 = alpha_sigma(LAMS.float())
    torch.testing.assert_close(a32.double(), alpha, rtol=1e-6, atol=0)
    torch.testing.assert_close(s32.double(), sigma, rtol=1e-6, atol=0)
    a, s = alpha_sigma(torch.tensor([math.inf]))
    assert a.item() == 1.0 and s.item() == 0.0


def test_scalar_alpha_sigma_matches_tensor_version():
    alpha, sigma = alpha_sigma(LAMS)
    for lam, a, s in zip(LAMS.tolist(), alpha.tolist(), sigma.tolist(), strict=True):
        af, sf = alpha_sigma_f(lam)
        assert af == pytest.approx(a, rel=1e-14) and sf == pytest.approx(s, rel=1e-14)
    assert alpha_sigma_f(math.inf) == (1.0, 0.0)


def test_continuous_schedule_endpoints_and_round_trip():
    s = ContinuousSchedule()
    lam = s.lam(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(lam, torch.tensor([20.0, -20.0], dtype=torch.float64))
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(s.u(s.lam(u)), u, rtol=0, atol=1e-10)
    torch.testing.assert_close(s.lam(s.u(LAMS.clamp(-20, 20))), LAMS.clamp(-20, 20), rtol=0, atol=1e-8)
    # lam(u) is decreasing in u; at u = 1/2 it is 0 for the symmetric range
    assert (s.lam(u)[1:] < s.lam(u)[:-1]).all()
    assert s.lam(torch.tensor(0.5, dtype=torch.float64)).abs().item() < 1e-12


def test_continuous_training_lams_follow_truncated_sech():
    # lam = -2 log tan(a u + b) has density proportional to sech(lam/2) on [lam_min, lam_max]:
    # P(lam > 0) = 1/2 and P(|lam| < 2) = (atan(e) - atan(e^-1)) / a for the symmetric range.
    s = ContinuousSchedule()
    lam = s.sample_lam(200_000, generator=torch.Generator().manual_seed(0)).double()
    assert lam.min() >= -20 and lam.max() <= 20
    a, _ = s._ab
    p = (math.atan(math.e) - math.atan(math.exp(-1))) / a
    n = lam.numel()
    assert abs((lam.abs() < 2).double().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert abs((lam > 0).double().mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)


def test_grids():
    s = ContinuousSchedule()
    g = s.grid(10)
    assert g.shape == (11,) and g[0].item() == pytest.approx(-20, abs=1e-9) and g[-1] == math.inf
    torch.testing.assert_close(s.u(g[:-1]), 1 - torch.arange(10, dtype=torch.float64) / 10)
    gl = s.grid(8, spacing="lam")
    torch.testing.assert_close(gl[1:-1] - gl[:-2], torch.full((7,), 5.0, dtype=torch.float64))
    check_grid(g)
    check_grid(gl)


def test_discrete_tables_match_closed_forms():
    lin = DiscreteSchedule.linear()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(lin.table, torch.log(abar / (1 - abar)), rtol=1e-10, atol=1e-10)
    cos = DiscreteSchedule.cosine()
    t = torch.arange(1, 1001, dtype=torch.float64)
    f = lambda t: torch.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    abar_c = f(t) / f(torch.zeros(1, dtype=torch.float64))
    # the closed form holds wherever betas were not clipped at 0.999 (all but the last step)
    torch.testing.assert_close(cos.table[:-1], torch.log(abar_c / (1 - abar_c))[:-1], rtol=1e-8, atol=1e-8)
    g = lin.grid(50)
    assert g.shape == (51,) and g[0] == lin.table[-1] and g[-2] == lin.table[0] and g[-1] == math.inf
    check_grid(g)
    lam = lin.sample_lam(10_000, generator=torch.Generator().manual_seed(0)).double()
    assert torch.isin(lam, lin.table.float().double()).all()


def test_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    z, eps = torch.randn(64, 3, 4, 4, generator=g), torch.randn(64, 3, 4, 4, generator=g)
    lam = torch.linspace(-8, 8, 64)
    x0 = P.x0_from_eps(z, eps, lam)
    torch.testing.assert_close(P.eps_from_x0(z, x0, lam), eps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(P.eps_from_score(P.score_from_eps(eps, lam), lam), eps)
    torch.testing.assert_close(P.eps_from_v(z, P.v_from_eps(z, eps, lam), lam), eps, rtol=1e-4, atol=1e-4)
    # v = alpha eps - sigma x0 (Salimans & Ho 2022)
    alpha, sigma = (P.bcast(t, z) for t in alpha_sigma(lam))
    torch.testing.assert_close(P.v_from_eps(z, eps, lam), alpha * eps - sigma * x0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("grid, match", [
    ([0.0, 0.0, math.inf], "strictly increasing"),
    ([1.0, 0.0], "strictly increasing"),
    ([0.0, math.nan], "NaN"),
    ([-math.inf, 0.0], "finite except a final"),
    ([0.0], "at least 2"),
])
def test_bad_grids(grid, match):
    with pytest.raises(ValueError, match=match):
        check_grid(torch.tensor(grid))


def test_bad_schedule_inputs():
    with pytest.raises(ValueError, match="lam_min < lam_max"):
        ContinuousSchedule(lam_min=5, lam_max=-5)
    with pytest.raises(ValueError, match="positive integer"):
        ContinuousSchedule().grid(0)
    with pytest.raises(ValueError, match="exceeds"):
        DiscreteSchedule.linear(T=10).grid(20)
    with pytest.raises(ValueError, match="unknown schedule 'foo'"):
        get_schedule("foo")
