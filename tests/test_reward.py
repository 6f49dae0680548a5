"""Reward guidance (training-free guidance by a differentiable log-likelihood), against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from diffguide.guidance import RewardGuidance, guided, reward_grad
from diffguide.models import build_model
from diffguide.prediction import x0_from_eps
from diffguide.samplers import ddim, dpmpp_2m, unipc
from diffguide.schedule import alpha_sigma


def lam_grid(steps: int) -> torch.Tensor:
    return torch.cat([torch.linspace(-8.0, 8.0, steps, dtype=torch.float64),
                      torch.tensor([math.inf], dtype=torch.float64)])


def exact_log_posterior(gmm):
    """``log p_lam(c | z)`` by Bayes from the mixture's noisy densities (not its classifier):
    ``log p(z | c) + log p(c) - log p(z)``."""
    def reward(z, lam, c):
        return gmm.log_prob(z, c, lam) + gmm.log_prior[c] - gmm.log_prob(z, None, lam)
    return reward


@pytest.mark.parametrize("sampler", [ddim, dpmpp_2m, unipc])
def test_reward_of_the_exact_noisy_posterior_is_classifier_guidance(gmm, sampler):
    c = torch.arange(60) % gmm.num_classes
    z = torch.randn(60, 2, dtype=torch.float64)
    cg = sampler(guided(gmm, c, unconditional=True, classifier=gmm.as_classifier(), cg_scale=2.0), z, lam_grid(10))
    rg = sampler(guided(gmm, c, unconditional=True, reward=RewardGuidance(exact_log_posterior(gmm), scale=2.0)),
                 z, lam_grid(10))
    assert (rg - cg).abs().max() < 1e-12
    # and, the exact posterior's gradient being (eps_u - eps_c) / sigma, both are CFG at w = s - 1
    cfg = sampler(guided(gmm, c, 1.0), z, lam_grid(10))
    assert (rg - cfg).abs().max() < 1e-10


def test_one_evaluation_is_the_score_form_closed_form(gmm):
    """A quadratic reward -|z - m|^2 / 2 on z has gradient m - z: eps - s g(lam) sigma (m - z), clipped."""
    c = torch.arange(8) % gmm.num_classes
    z, lam = torch.randn(8, 2, dtype=torch.float64) * 3, torch.full((8,), 0.7, dtype=torch.float64)
    m = torch.tensor([1.0, -2.0], dtype=torch.float64)
    quad = lambda x, lam, c: -0.5 * ((x - m) ** 2).sum(1)  # noqa: E731
    sigma = alpha_sigma(lam)[1][:, None]
    eps = gmm(z, lam, c)
    got = guided(gmm, c, reward=RewardGuidance(quad, scale=1.5, schedule="linear"))(z, lam).eps
    assert torch.allclose(got, eps - 1.5 * 2 * torch.sigmoid(lam)[:, None] * sigma * (m - z), atol=1e-12)
    got = guided(gmm, c, reward=RewardGuidance(quad, scale=1.5, clip=0.5))(z, lam).eps
    g = m - z
    g = g * torch.clamp(0.5 / g.norm(dim=1, keepdim=True), max=1.0)
    assert torch.allclose(got, eps - 1.5 * sigma * g, atol=1e-12)


def test_x0_guidance_differentiates_through_the_network(gmm):
    """On x0: grad_z r(x0_hat(z)) = J^T grad r, with x0_hat from the network (here the exact mixture)."""
    c = torch.arange(6) % gmm.num_classes
    z, lam = torch.randn(6, 2, dtype=torch.float64), torch.full((6,), -0.3, dtype=torch.float64)
    m = torch.tensor([0.5, 0.5], dtype=torch.float64)
    quad = lambda x, lam, c: -0.5 * ((x - m) ** 2).sum(1)  # noqa: E731
    got = reward_grad(quad, z, lam, c, net=gmm)
    zz = z.clone().requires_grad_(True)
    x0 = x0_from_eps(zz, gmm(zz, lam, c), lam)
    (want,) = torch.autograd.grad(quad(x0, lam, c).sum(), zz)
    assert torch.allclose(got, want, atol=1e-12)


def test_backward_steps_move_x0_by_the_closed_form(gmm):
    """Universal guidance's backward steps on -k |x - m|^2 / 2: delta_{j+1} = delta_j + lr s k (m - x0 - delta_j),
    so x0 + delta = m + (1 - lr s k)^J (x0 - m); the forward term is off (x0 reward, scale on x0 only)."""
    c = torch.arange(5) % gmm.num_classes
    z, lam = torch.randn(5, 2, dtype=torch.float64), torch.full((5,), 1.0, dtype=torch.float64)
    m, k, lr, J = torch.tensor([1.0, 1.0], dtype=torch.float64), 2.0, 0.1, 4
    quad = lambda x, lam, c: -0.5 * k * ((x - m) ** 2).sum(1)  # noqa: E731
    spec = RewardGuidance(quad, scale=1.0, on="x0", x0_steps=J, x0_lr=lr)
    term = guided(gmm, c, reward=spec).reward
    eps0 = gmm(z, lam, c)
    base = term(eps0, z, lam, 1)  # forward guidance plus J backward steps from its x0
    fwd = eps0 - alpha_sigma(lam)[1][:, None] * reward_grad(quad, z, lam, c, net=gmm)
    x0 = x0_from_eps(z, fwd, lam)
    want = m + (1 - lr * k) ** J * (x0 - m)
    assert torch.allclose(x0_from_eps(z, base, lam), want, atol=1e-10)


def test_a_constant_reward_on_x0_is_unguided_bit_for_bit():
    net = build_model("diffusion", "tiny", channels=1, image_size=8, num_classes=3).eval()
    c, z = torch.arange(6) % 3, torch.randn(6, 1, 8, 8)
    for const in (lambda x, lam, c: x.new_full((x.shape[0],), 3.0),  # no path to x at all
                  lambda x, lam, c: (0 * x).flatten(1).sum(1) + 1.0):  # a path, with zero gradient
        with torch.no_grad():
            plain = ddim(guided(net, c, 1.0), z, lam_grid(6).float())
            rg = ddim(guided(net, c, 1.0, reward=RewardGuidance(const, scale=5.0, on="x0")), z, lam_grid(6).float())
        assert torch.equal(plain, rg)


def test_gradients_are_per_sample():
    net = build_model("diffusion", "tiny", channels=1, image_size=8, num_classes=3).eval()
    c, z, lam = torch.arange(5) % 3, torch.randn(5, 1, 8, 8), torch.full((5,), 0.5)
    only_first = lambda x, lam, c: (x.flatten(1) ** 2).sum(1) * (torch.arange(x.shape[0]) == 0)  # noqa: E731
    g = reward_grad(only_first, z, lam, c, net=net)
    assert g[0].abs().sum() > 0 and torch.equal(g[1:], torch.zeros_like(g[1:]))
    ink = lambda x, lam, c: x.flatten(1).mean(1)  # noqa: E731
    g = reward_grad(ink, z, lam, c, net=net)
    z2 = z.clone()
    z2[1:] = torch.randn(4, 1, 8, 8)  # other samples move; the first one's gradient must not
    assert torch.allclose(reward_grad(ink, z2, lam, c, net=net)[0], g[0], atol=1e-6)
    # chunks of max_batch rows give the same gradients
    assert torch.allclose(reward_grad(ink, z, lam, c, net=net, max_batch=2), g, atol=1e-6)


def test_x0_reward_guidance_moves_the_mixture_towards_the_class(gmm):
    """DPS with the exact clean posterior log p(c | x) on the unconditional mixture: more samples in class c."""
    c = torch.zeros(400, dtype=torch.long)
    z = torch.randn(400, 2, dtype=torch.float64)
    clean = lambda x, lam, c: gmm.classifier(x, None).gather(1, c[:, None])[:, 0]  # noqa: E731
    share = []
    for s in (0.0, 1.0, 3.0):
        x = ddim(guided(gmm, c, unconditional=True, reward=RewardGuidance(clean, scale=s, on="x0")), z, lam_grid(25))
        share.append(gmm.posterior(x)[:, 0].mean().item())
    assert share[0] < share[1] < share[2]
    assert abs(share[0] - gmm.prior[0].item()) < 0.1  # unguided: the prior's share, up to sampling noise


def test_bad_rewards_are_named_with_the_evaluation_and_lam(gmm):
    c, z = torch.arange(4) % gmm.num_classes, torch.randn(4, 2, dtype=torch.float64)
    cases = [(lambda x, lam, c: x.sum(), r"shape \(\) at evaluation 1 \(lam = -8\): expected \(16,\)"),  # padded
             (lambda x, lam, c: x[:, 0] * math.nan, r"returned nan for sample 0 at evaluation 1 \(lam = -8\)"),
             (lambda x, lam, c: (x ** 2).sum(1) * torch.where(lam > 0, math.inf, 1.0),
              r"returned inf for sample 0 at evaluation 7 \(lam = 1\.6\)"),
             (lambda x, lam, c: [0.0] * 4, "returned list")]
    for fn, msg in cases:
        with pytest.raises(ValueError, match=msg):
            ddim(guided(gmm, c, 1.0, reward=RewardGuidance(fn)), z, lam_grid(11))
    for kwargs, msg in [({"scale": -1.0}, "reward scale must be a finite number >= 0, got -1.0"),
                        ({"on": "eps"}, "acts on 'z' or 'x0', got on='eps'"),
                        ({"clip": 0.0}, "clip .* must be a finite number > 0 or None, got 0.0"),
                        ({"x0_steps": 2}, r"need a clean-image reward: on='x0'"),
                        ({"schedule": "cubic"}, "unknown guidance schedule 'cubic'")]:
        with pytest.raises(ValueError, match=msg):
            RewardGuidance(lambda x, lam, c: x.sum(1), **kwargs)
    with pytest.raises(ValueError, match="reward must be a RewardGuidance"):
        guided(gmm, c, 1.0, reward=lambda x, lam, c: x.sum(1))


def test_the_api_takes_a_reward_with_per_sample_scales_across_batches():
    from diffguide.api import Pipeline

    net = build_model("diffusion", "tiny", channels=1, image_size=8, num_classes=3).eval()
    pipe = Pipeline(net)
    ink = lambda x, lam, c: ((x + 1) / 2).flatten(1).sum(1)  # noqa: E731
    labels = torch.arange(8) % 3
    s = torch.tensor([0.0] * 4 + [0.5] * 4)
    mixed = pipe.sample(labels, 1.0, sampler="ddim", steps=4, batch_size=4,
                        reward=RewardGuidance(ink, scale=s, on="x0"))
    plain = pipe.sample(labels, 1.0, sampler="ddim", steps=4, batch_size=4)
    pushed = pipe.sample(labels, 1.0, sampler="ddim", steps=4, batch_size=4,
                         reward=RewardGuidance(ink, scale=0.5, on="x0"))
    assert torch.equal(mixed[:4], plain[:4]) and torch.allclose(mixed[4:], pushed[4:], atol=1e-6)
    assert ink(pushed, None, None).mean() > ink(plain, None, None).mean()  # more ink, as asked
