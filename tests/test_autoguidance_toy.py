"""The 2-D autoguidance experiment: its metrics against exact draws, its network, its outputs."""

from __future__ import annotations

import json

import torch

from diffguide.experiments.autoguidance_toy import ToyMLP, autoguidance_toy, toy_metrics, train_toy
from diffguide.nets.protocol import check_network
from diffguide.reference import GaussianMixture


def test_metrics_of_exact_draws_are_the_truth():
    gmm = GaussianMixture.example_2d()
    ref, cr = gmm.sample(20000, torch.arange(20000) % 3, generator=1, dtype=torch.float64)
    lp = gmm.log_prob(ref, cr)
    floor = torch.stack([torch.quantile(lp[cr == k], 0.01) for k in range(3)])
    x, c = gmm.sample(6000, torch.arange(6000) % 3, generator=2, dtype=torch.float64)
    m = toy_metrics(gmm, x, c, floor)
    assert abs(m["off_data"] - 0.01) < 0.006  # 1 % below the 1st percentile, by construction
    assert m["mode_tv"] < 0.03  # component shares are the true weights, up to sampling noise
    assert abs(m["shares"]["0"][0] - 0.6) < 0.03 and m["shares"]["1"] == [1.0]
    # a sampler that dropped class 0's second lobe: its TV is that lobe's weight (0.4), averaged over 2 classes
    keep = (c != 0) | (gmm.component_posterior(x, c)[:, 0] > 0.5)
    assert abs(toy_metrics(gmm, x[keep], c[keep], floor)["mode_tv"] - 0.2) < 0.03


def test_the_toy_network_learns_and_meets_the_protocol():
    gmm = GaussianMixture.example_2d()
    torch.manual_seed(0)
    net = check_network(ToyMLP(2, 3, width=32, depth=1))
    assert net.null_condition(torch.tensor([0, 2])).tolist() == [3, 3]
    losses = train_toy(net, gmm, steps=150, batch=256)
    assert sum(losses[-20:]) / 20 < 0.8 * sum(losses[:20]) / 20


def test_the_experiment_writes_its_table_figure_and_json(tmp_path):
    r = autoguidance_toy(tmp_path, ws=(1.0,), n=90, steps=8, main=(16, 1, 20), guide=(8, 1, 4))
    methods = [row["method"] for row in r.rows]
    assert methods == ["exact samples", "conditional", "cfg", "autoguidance", "cfg (exact)"]
    assert r.png.stat().st_size > 10_000 and "| autoguidance | 1 |" in r.md.read_text()
    saved = json.loads(r.json.read_text())
    assert saved["training"]["guide"]["steps"] == 4 and len(saved["rows"]) == 5
