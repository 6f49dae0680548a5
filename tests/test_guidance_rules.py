"""The guidance rules: each reduces to plain CFG in its neutral setting, each matches its paper's formula on
hand-computed tensors, forwards are counted, per-run state lives exactly one run, bad values are refused."""

import math

import pytest
import torch

from diffguide.guidance import (
    APG,
    CFGPlusPlus,
    CFGZeroStar,
    GuidanceSpec,
    Interval,
    apg_x0,
    dynamic_threshold,
    guided,
    optimized_scale,
    rescale_x0,
)
from diffguide.guidance.apg import APGState
from diffguide.guidance.weight_schedule import cosine, linear
from diffguide.noise import PerSampleNoise
from diffguide.prediction import x0_from_eps
from diffguide.samplers import ddim, ddpm
from diffguide.schedule import ContinuousSchedule, alpha_sigma

SCHED = ContinuousSchedule()


class Counting(torch.nn.Module):
    """The mixture, counting forwards and their rows."""

    def __init__(self, net):
        super().__init__()
        self.net, self.rows = net, []
        self.num_classes, self.null_label, self.sample_shape = net.num_classes, net.null_label, net.sample_shape
        self.train_schedule = net.train_schedule

    def null_condition(self, c):
        return self.net.null_condition(c)

    def forward(self, z, lam, c):
        self.rows.append(z.shape[0])
        return self.net(z, lam, c)


def _batch(gmm, B=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, 2, generator=g, dtype=torch.float64) * 1.5
    lam = torch.full((B,), 0.7, dtype=torch.float64)
    c = torch.randint(0, gmm.num_classes, (B,), generator=g)
    return z, lam, c


def _sample(guide, n=16, steps=12, sampler=ddim):
    noise = PerSampleNoise(range(n), (2,), dtype=torch.float64)
    return sampler(guide, noise(), SCHED.grid(steps), noise=noise)


# ------------------------------------------------------------------------------------- neutral settings
@pytest.mark.parametrize("w", [0.5, 3.0])
@pytest.mark.parametrize("neutral", [
    dict(rescale=0.0),
    dict(interval=(-math.inf, math.inf)),
    dict(interval=(-25.0, 25.0)),
    dict(rule=APG(beta=0.0, r=math.inf, eta=1.0, clip=math.inf)),
    dict(rule=CFGZeroStar(zero_init=0, optimized=False)),
    dict(w_schedule=lambda lam: torch.ones_like(lam)),
    dict(w_schedule="constant"),
    dict(threshold=0.999),  # the mixture's x0 stays inside [-1, 1]... not always: see the guard below
])
def test_every_rule_is_plain_cfg_in_its_neutral_setting(gmm, w, neutral):
    labels = torch.arange(16) % gmm.num_classes
    plain = _sample(guided(gmm, labels, w))
    if "threshold" in neutral:  # dynamic thresholding is neutral exactly where |x0| <= 1 everywhere
        small = gmm.__class__(gmm.means * 0.1, gmm.variances * 0.01)
        plain = _sample(guided(small, labels, w))
        got = _sample(guided(small, labels, w, **neutral))
    else:
        got = _sample(guided(gmm, labels, w, **neutral))
    torch.testing.assert_close(got, plain, rtol=0, atol=1e-12)


def test_neutral_settings_are_not_vacuous(gmm):
    # The same comparisons with the rules switched on do differ: the tests above can fail.
    labels = torch.arange(16) % gmm.num_classes
    plain = _sample(guided(gmm, labels, 3.0))
    for on in (dict(rescale=0.7), dict(interval=(0.0, 5.0)), dict(rule=APG(beta=-0.5, r=1.0, eta=0.0)),
               dict(rule="cfg-zero"), dict(w_schedule="linear"), dict(threshold=0.5)):
        assert (_sample(guided(gmm, labels, 3.0, **on)) - plain).abs().max() > 1e-4, on


# ------------------------------------------------------------------------------------- paper formulas
def test_rescale_formula_by_hand():
    x_c = torch.tensor([[1.0, 3.0]])        # std (unbiased) sqrt(2)
    x_cfg = torch.tensor([[0.0, 4.0]])      # std sqrt(8) = 2 sqrt(2)
    x_r = x_cfg * (math.sqrt(2) / math.sqrt(8))  # = [0, 2]
    torch.testing.assert_close(rescale_x0(x_cfg, x_c, 1.0), x_r)
    torch.testing.assert_close(rescale_x0(x_cfg, x_c, 0.7), 0.7 * x_r + 0.3 * x_cfg)
    torch.testing.assert_close(rescale_x0(x_cfg, x_c, 0.0), x_cfg)


def test_rescale_acts_on_x0_not_eps(gmm):
    # Through Guidance: the guided x0's per-sample std becomes the conditional x0's at phi = 1.
    z, lam, c = _batch(gmm)
    g = guided(gmm, c, 3.0, rescale=1.0)(z, lam).eps
    x0 = x0_from_eps(z, g, lam)
    x0_c = x0_from_eps(z, gmm(z, lam, c), lam)
    torch.testing.assert_close(x0.std(1), x0_c.std(1), rtol=1e-12, atol=1e-12)


def test_apg_formula_by_hand():
    # delta = x_c - x_u = [3, 4] (norm 5); r = 2.5 halves it; x_c = [1, 0]: parallel [1.5, 0], perp [0, 2].
    x_c, x_u = torch.tensor([[1.0, 0.0]]), torch.tensor([[-2.0, -4.0]])
    st = APGState()
    out = apg_x0(x_c, x_u, 2.0, st, beta=-0.5, r=2.5, eta=0.0)
    torch.testing.assert_close(out, x_c + 2.0 * torch.tensor([[0.0, 2.0]]))
    torch.testing.assert_close(st.avg, torch.tensor([[3.0, 4.0]]))  # momentum holds the un-clipped average
    # second call, same inputs: avg = delta + beta avg = [3, 4] - 0.5 [3, 4] = [1.5, 2] (norm 2.5: not clipped)
    out2 = apg_x0(x_c, x_u, 2.0, st, beta=-0.5, r=2.5, eta=0.5)
    torch.testing.assert_close(st.avg, torch.tensor([[1.5, 2.0]]))
    torch.testing.assert_close(out2, x_c + 2.0 * (torch.tensor([[0.0, 2.0]]) + 0.5 * torch.tensor([[1.5, 0.0]])))


def test_cfgpp_step_by_hand(gmm):
    # One DDIM step lam -> lam': x0 = (z - sigma eps_l)/alpha with eps_l = eps_u + l (eps_c - eps_u),
    # z' = alpha' x0 + sigma' eps_u (Chung et al. 2024, Alg. 1).
    z, _, c = _batch(gmm, B=8)
    lam0, lam1, l = -1.0, 1.5, 0.6
    grid = torch.tensor([lam0, lam1, math.inf], dtype=torch.float64)
    seen = []
    guide = guided(gmm, c, scale=l, rule="cfgpp")
    ddim(guide, z, grid, callback=lambda i, lam, z_, x0: seen.append(z_.clone()))
    lam = torch.full((8,), lam0, dtype=torch.float64)
    e_c, e_u = gmm(z, lam, c), gmm(z, lam, gmm.null_condition(c))
    (a0, s0), (a1, s1) = (alpha_sigma(torch.tensor(v, dtype=torch.float64)) for v in (lam0, lam1))
    x0 = (z - s0 * (e_u + l * (e_c - e_u))) / a0
    torch.testing.assert_close(seen[1], a1 * x0 + s1 * e_u, rtol=1e-12, atol=1e-12)


def test_cfg_zero_optimized_scale_by_hand():
    e_c = torch.tensor([[1.0, 2.0]])
    e_u = torch.tensor([[2.0, 0.0]])
    s = optimized_scale(e_c, e_u)  # <e_c, e_u> / ||e_u||^2 = 2 / 4
    torch.testing.assert_close(s, torch.tensor([0.5]), rtol=1e-7, atol=1e-7)
    pred = CFGZeroStar().pair(e_c, e_u, e_c, torch.zeros(1), 2.0, None).eps
    torch.testing.assert_close(pred, 0.5 * e_u + 3.0 * (e_c - 0.5 * e_u), rtol=1e-7, atol=1e-7)


def test_cfg_zero_holds_the_first_steps(gmm):
    # zero_init = k: the first k steps do not move z and run no network; then it is CFG-Zero* from the noise.
    labels = torch.arange(16) % gmm.num_classes
    net = Counting(gmm)
    held = _sample(guided(net, labels, 2.0, rule=CFGZeroStar(zero_init=2)), steps=12)
    assert len(net.rows) == 10  # 12 steps, 2 held
    noise = PerSampleNoise(range(16), (2,), dtype=torch.float64)
    later = ddim(guided(gmm, labels, 2.0, rule=CFGZeroStar(zero_init=0)), noise(), SCHED.grid(12)[2:], noise=noise)
    torch.testing.assert_close(held, later, rtol=0, atol=0)


def test_dynamic_threshold_by_hand():
    x0 = torch.tensor([[0.5, -3.0, 2.0, 1.0], [0.1, -0.2, 0.3, 0.9]])
    p = 0.75  # quantile of |x0| = [0.5, 3, 2, 1] at 0.75 (linear interpolation): 2.25
    s = 2.25
    torch.testing.assert_close(dynamic_threshold(x0, p)[0], x0[0].clamp(-s, s) / s)
    torch.testing.assert_close(dynamic_threshold(x0, p)[1], x0[1])  # s floored at 1: unchanged
    assert dynamic_threshold(x0 * 100, 0.995).abs().max() <= 1


def test_schedules_by_hand():
    lam = torch.tensor([-math.inf, 0.0, math.inf])
    torch.testing.assert_close(linear(lam), torch.tensor([0.0, 1.0, 2.0]))  # 2 alpha^2
    torch.testing.assert_close(cosine(lam), torch.tensor([0.0, 1.0, 2.0]), atol=1e-7, rtol=0)  # 1 + cos(pi sigma^2)


def test_schedule_scales_w(gmm):
    z, lam, c = _batch(gmm, B=8)
    a = guided(gmm, c, 3.0, w_schedule=lambda l: torch.full_like(l, 0.5))(z, lam).eps
    torch.testing.assert_close(a, guided(gmm, c, 1.5)(z, lam).eps, rtol=1e-14, atol=1e-14)
    per_sample = torch.linspace(0.0, 4.0, 8, dtype=torch.float64)
    b = guided(gmm, c, per_sample, w_schedule="linear")(z, lam).eps
    torch.testing.assert_close(b, guided(gmm, c, per_sample * 2 * torch.sigmoid(lam))(z, lam).eps,
                               rtol=1e-14, atol=1e-14)


def test_interval_from_sigma():
    iv = Interval.from_sigma(0.28, 1.61)
    assert iv.lo == pytest.approx(-2 * math.log(1.61)) and iv.hi == pytest.approx(-2 * math.log(0.28))
    assert Interval.from_sigma(0.0, 1.0).hi == math.inf


# ------------------------------------------------------------------------------------- forwards counted
def test_interval_runs_one_forward_outside_and_one_batched_pair_inside(gmm):
    labels = torch.arange(16) % gmm.num_classes
    grid = SCHED.grid(20)
    lo, hi = -1.0, 3.0
    inside = sum(lo <= v <= hi for v in grid[:-1].tolist())
    assert 0 < inside < 20
    net = Counting(gmm)
    guide = guided(net, labels, 2.0, interval=(lo, hi))
    ddim(guide, torch.randn(16, 2, dtype=torch.float64), grid)
    assert len(net.rows) == 20  # one network forward per step, always
    assert net.rows.count(32) == inside and net.rows.count(16) == 20 - inside  # pair batched / conditional only
    assert guide.engine.evaluations == 20 + inside
    # ... and outside the interval the step is exactly the conditional model's
    z, _, c = _batch(gmm, B=16)
    lam = torch.full((16,), 5.0, dtype=torch.float64)
    torch.testing.assert_close(guided(gmm, c, 2.0, interval=(lo, hi))(z, lam).eps, gmm(z, lam, c), rtol=0, atol=0)


def test_rules_compose_in_one_batched_forward(gmm):
    labels = torch.arange(16) % gmm.num_classes
    for rule in ("cfg", "apg", "cfg-zero"):
        net = Counting(gmm)
        _sample(guided(net, labels, 2.0, rule=rule, rescale=0.5, threshold=0.99, w_schedule="cosine"), steps=6)
        assert set(net.rows) == {32}, (rule, net.rows)


# ------------------------------------------------------------------------------------- per-run state
@pytest.mark.parametrize("rule", [APG(beta=-0.6, r=0.5), CFGZeroStar(zero_init=2)])
def test_two_runs_with_one_guidance_are_identical(gmm, rule):
    labels = torch.arange(16) % gmm.num_classes
    guide = guided(gmm, labels, 2.0, rule=rule)
    first, second = _sample(guide), _sample(guide)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    # the state matters: a run that inherits the first run's state gives other samples
    run = guide.start()
    _sample(lambda z, lam: run(z, lam))
    stale = _sample(lambda z, lam: run(z, lam))
    assert (stale - first).abs().max() > 1e-6


def test_ddpm_takes_every_rule_but_cfgpp(gmm):
    labels = torch.arange(16) % gmm.num_classes
    for rule in ("cfg", "apg", "cfg-zero"):
        x = _sample(guided(gmm, labels, 1.0, rule=rule, rescale=0.3), sampler=ddpm)
        assert torch.isfinite(x).all()


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(rescale=1.5), r"rescale phi = 1.5 is invalid: expected a number in \[0, 1\]"),
    (dict(rescale=-0.1), r"rescale phi = -0.1 is invalid"),
    (dict(interval=(2.0, 1.0)), r"guidance interval \[2.0, 1.0\] is empty: expected lo < hi"),
    (dict(interval=(1.0, 1.0)), r"is empty"),
    (dict(interval=(math.nan, 1.0)), r"guidance interval lo = nan is invalid"),
    (dict(rule=dict(beta=1.0)), r"APG beta = 1.0 is invalid: expected \|beta\| < 1"),
    (dict(rule=dict(beta=-1.2)), r"APG beta = -1.2 is invalid"),
    (dict(rule=dict(r=0.0)), r"APG r = 0.0 is invalid: expected a norm threshold > 0"),
    (dict(rule=dict(r=-3.0)), r"APG r = -3.0 is invalid"),
    (dict(rule=dict(clip=0.0)), r"APG clip = 0.0 is invalid"),
    (dict(threshold=1.0), r"percentile p = 1.0 is invalid: expected a number in \(0, 1\)"),
    (dict(threshold=0.0), r"percentile p = 0.0 is invalid"),
    (dict(scale=2.0, w=1.0), r"give w or scale, not both \(w = 1.0, scale = 2.0"),
    (dict(w_schedule="exponential"), r"unknown guidance schedule 'exponential'"),
    (dict(rule="cfg+++"), r"unknown guidance rule 'cfg\+\+\+'"),
])
def test_bad_rule_parameters(gmm, kwargs, match):
    c = torch.zeros(4, dtype=torch.long)
    if isinstance(kwargs.get("rule"), dict):
        with pytest.raises(ValueError, match=match):
            APG(**kwargs["rule"])
        return
    kwargs.setdefault("w", 1.0)
    with pytest.raises(ValueError, match=match):
        guided(gmm, c, **kwargs)


@pytest.mark.parametrize("scale, match", [(1.5, r"lambda = 1 \+ w in \[0, 1\].*got w = 0.5 \(lambda = 1.5\)"),
                                          (-0.5, r"scale = -0.5 is invalid")])
def test_cfgpp_lambda_outside_unit_interval(gmm, scale, match):
    with pytest.raises(ValueError, match=match):
        guided(gmm, torch.zeros(4, dtype=torch.long), scale=scale, rule=CFGPlusPlus())


def test_schedule_returning_nan_is_refused(gmm):
    z, lam, c = _batch(gmm, B=4)
    guide = guided(gmm, c, 1.0, w_schedule=lambda l: torch.where(l > 0, math.nan, 1.0))
    with pytest.raises(ValueError, match=r"guidance schedule returned nan at lam = 0.7: expected a finite number"):
        guide(z, lam)
    with pytest.raises(ValueError, match="guidance schedule returned inf"):
        guided(gmm, c, 1.0, w_schedule=lambda l: math.inf)(z, lam)


def test_stateful_rules_refuse_a_one_off_call(gmm):
    # a stateful rule evaluated outside a run would lose its state at every call: refused, not wrong
    z, lam, c = _batch(gmm, B=4)
    for rule in ("apg", "cfg-zero"):
        with pytest.raises(ValueError, match="keeps state across the steps of a sampling run: call start"):
            guided(gmm, c, 1.0, rule=rule)(z, lam)
        assert guided(gmm, c, 1.0, rule=rule).start()(z, lam).eps.shape == z.shape


def test_cfgpp_takes_no_strength_schedule(gmm):
    with pytest.raises(ValueError, match="a strength schedule is not defined for cfgpp"):
        guided(gmm, torch.zeros(4, dtype=torch.long), scale=0.6, rule="cfgpp", w_schedule="linear")


def test_apg_at_small_w_is_the_conditional_model(gmm):
    # the data-range clamp enters only the update, so w -> 0 is continuous with the conditional model
    z, lam, c = _batch(gmm, B=8)
    lam = torch.full_like(lam, -12.0)  # alpha tiny: x0 far outside [-1, 1], where the clamp acts
    run = guided(gmm, c, 1e-9, rule="apg").start()
    torch.testing.assert_close(run(z, lam).eps, gmm(z, lam, c), rtol=1e-6, atol=1e-6)


def test_composed_conditions_refuse_other_rules(gmm):
    c0, c1 = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    with pytest.raises(ValueError, match="composed conditions are defined for plain CFG only, not for apg"):
        guided(gmm, [c0, c1], [1.0, 1.0], rule="apg")


def test_guidance_spec_round_trip():
    spec = GuidanceSpec.method("apg", beta=-0.7, r=5.0)
    assert spec.tag == "apg-b-0.7-r5-e0" and spec.asdict() == {"rule": "apg", "beta": -0.7, "r": 5.0}
    assert GuidanceSpec(**spec.asdict()) == spec
    assert GuidanceSpec.method("rescale").phi == 0.7 and GuidanceSpec.method("interval").interval is not None
    assert GuidanceSpec().is_plain and GuidanceSpec().tag == "cfg"
    with pytest.raises(ValueError, match="unknown guidance method 'pag'"):
        GuidanceSpec.method("pag")
