"""Sampler + guidance wrapper overhead: the time of a guided sampling run divided by the time of the bare
network forwards it performs (target <= 1.05 at batch 256, 50 steps).

Two networks, both guided with CFG at w = 2 (one batched forward of 2 x 256 = 512 rows a step):
(a) the exact 2-D mixture (``GaussianMixture.example_2d()``), a "network" of a few dozen tiny tensor ops;
(b) a small conv net on 1x28x28 defined here (Conv2d + GroupNorm + SiLU blocks, label embedding).

Variants: DDIM (eta = 0, no noise), DDPM with the default batch noise (``randn_like``), and DDPM with
per-sample noise streams (``PerSampleNoise``: 256 generators, one draw each a step). The baseline is 50
forwards of the same network on pre-built 512-row inputs. Runs are interleaved (the order rotates each
repeat) and summarised by medians: the ratio of medians, and the median of per-repeat (paired) ratios.
Because that ratio is a quotient of two noisy times, the overhead is also measured directly: the same
sampling run with the network replaced by a stub returning a pre-built output (``stub run``), whose time
per step is the sampler's + wrapper's (+ noise's) own cost; ``1 + stub / bare`` is a second, steadier
estimate of the ratio. Runs over the target are profiled (cProfile per component, torch.profiler per op).

The machine this was written on is a shared 2-core box. There, torch's 2 OpenMP threads with libgomp's
default *active* waiting made small-tensor work 10-80x slower whenever other processes held the cores, so
the main configuration sets ``OMP_WAIT_POLICY=PASSIVE`` (still 2 threads). Beside it: the conv net again
with glibc's malloc told not to trim or mmap (the conv's multi-MB activations otherwise cost up to ~4k
minor page faults a forward, differently in the run and in the bare loop), a short mixture run with the
default wait policy, and the mixture on 1 thread. Each configuration runs in its own process; minor page
faults per run are recorded.

    python benchmarks/bench_guidance_overhead.py          # ~3-4 min; writes results/guidance_overhead.{json,md}
    python benchmarks/bench_guidance_overhead.py --quick  # smoke run: few repeats, prints, writes nothing
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import functools
import json
import os
import platform
import pstats
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffguide.guidance import guided
from diffguide.noise import PerSampleNoise, sample_seeds
from diffguide.reference import GaussianMixture
from diffguide.samplers import ddim, ddpm
from diffguide.schedule import ContinuousSchedule

BATCH, STEPS, W, TARGET = 256, 50, 2.0, 1.05
RESULTS = Path(__file__).resolve().parent / "results"
MIXTURE, CONV = "mixture (d=2)", "conv net (1x28x28)"

# name, environment changes (None: unset), threads (None: torch's default), nets, repeats {net: n} full/quick
_STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
_DEFAULT_MALLOC = dict.fromkeys(_STEADY_MALLOC)
CONFIGS: list[dict[str, Any]] = [
    {"name": "2 threads, OMP_WAIT_POLICY=PASSIVE", "env": {"OMP_WAIT_POLICY": "PASSIVE", **_DEFAULT_MALLOC},
     "threads": None, "repeats": {MIXTURE: 15, CONV: 3}, "quick": {MIXTURE: 3, CONV: 2}, "profile": True},
    {"name": "2 threads, OMP_WAIT_POLICY=PASSIVE, glibc malloc without trimming",
     "env": {"OMP_WAIT_POLICY": "PASSIVE", **_STEADY_MALLOC},
     "threads": None, "repeats": {CONV: 3}, "quick": {CONV: 2}, "profile": False},
    {"name": "2 threads, OpenMP default wait policy", "env": {"OMP_WAIT_POLICY": None, **_DEFAULT_MALLOC},
     "threads": None, "repeats": {MIXTURE: 3}, "quick": {MIXTURE: 2}, "profile": False},
    {"name": "1 thread", "env": {"OMP_WAIT_POLICY": None, **_DEFAULT_MALLOC}, "threads": 1,
     "repeats": {MIXTURE: 15}, "quick": {MIXTURE: 3}, "profile": False},
]


class SmallConvNet(nn.Module):
    """``eps(z, lam, c)`` on ``(B, 1, 28, 28)``: a stride-2 conv to 14x14, residual Conv2d + GroupNorm + SiLU
    blocks with the label embedding (null label ``K``) and a linear ``lam`` embedding added, then a conv to
    4 channels and a pixel shuffle back to 28x28."""

    def __init__(self, channels: int = 16, blocks: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = self.null_label = num_classes
        self.embed = nn.Embedding(num_classes + 1, channels)
        self.lam_embed = nn.Linear(1, channels)
        self.inp = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(8, channels), nn.SiLU())
            for _ in range(blocks))
        self.out = nn.Conv2d(channels, 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        emb = self.embed(c) + self.lam_embed(lam[:, None] / 20.0)
        h = self.inp(z) + emb[:, :, None, None]
        for block in self.blocks:
            h = h + block(h)
        return self.shuffle(self.out(h))


class Stub:
    """A zero-cost "network": returns a pre-built ``(2B, ...)`` output, so a run times only the rest."""

    def __init__(self, out: Tensor, num_classes: int) -> None:
        self.out, self.num_classes, self.null_label = out, num_classes, num_classes

    def __call__(self, z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        return self.out


def _stats(xs: list[float]) -> dict[str, float]:
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "q25": q[0], "q75": q[2], "n": len(xs)}


def _timed(run: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class Case:
    """One network: bare forwards and guided sampling runs on fixed inputs."""

    def __init__(self, name: str, net: Callable[..., Tensor], shape: tuple[int, ...], num_classes: int) -> None:
        self.name, self.net, self.shape = name, net, shape
        g = torch.Generator().manual_seed(0)
        self.z = torch.randn((BATCH, *shape), generator=g)
        self.c = torch.arange(BATCH) % num_classes
        self.grid = ContinuousSchedule().grid(STEPS)
        self.seeds = sample_seeds(0, BATCH)
        # Bare forwards get exactly the inputs the wrapper builds, pre-built: cat([z, z]), cat([c, null]), lam.
        self.zz = torch.cat([self.z, self.z])
        self.cc = torch.cat([self.c, torch.full_like(self.c, num_classes)])
        self.lls = [torch.full((2 * BATCH,), lam, dtype=self.z.dtype) for lam in self.grid[:-1].tolist()]
        with torch.no_grad():
            self.stub = Stub(net(self.zz, self.lls[0], self.cc), num_classes)

    @torch.no_grad()
    def bare(self) -> None:
        for ll in self.lls:
            self.net(self.zz, ll, self.cc)

    def run(self, variant: str, net: Callable[..., Tensor] | None = None) -> Callable[[], object]:
        """The timed sampling run of ``variant`` (setup, e.g. building generators, happens here, untimed)."""
        net = self.net if net is None else net
        if variant == "ddim":
            return lambda: ddim(guided(net, self.c, W), self.z, self.grid)
        if variant == "ddpm":
            return lambda: ddpm(guided(net, self.c, W), self.z, self.grid)
        noise = PerSampleNoise(self.seeds, self.shape)
        return lambda: ddpm(guided(net, self.c, W), self.z, self.grid, noise=noise)


VARIANTS = ("ddim", "ddpm", "ddpm+per-sample-noise")


def measure(case: Case, repeats: int) -> dict[str, Any]:
    setups: dict[str, Callable[[], Callable[[], object]]] = {"bare": lambda: case.bare}
    for v in VARIANTS:
        setups[v] = functools.partial(case.run, v)
        setups[f"stub {v}"] = functools.partial(case.run, v, case.stub)
    with torch.no_grad():  # warm-up (allocator, oneDNN primitives): one forward, each stub run
        case.net(case.zz, case.lls[0], case.cc)
    for name, setup in setups.items():
        if name.startswith("stub") or case.name == MIXTURE:
            setup()()
    times: dict[str, list[float]] = {k: [] for k in setups}
    faults: dict[str, list[int]] = {k: [] for k in setups}  # minor page faults a run: allocator churn
    names = list(setups)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            run, f0 = setups[name](), _minor_faults()
            times[name].append(_timed(run))
            faults[name].append(_minor_faults() - f0)
    bare = times["bare"]
    out: dict[str, Any] = {"repeats": repeats, "bare_ms": _stats([t * 1e3 for t in bare]),
                           "bare_page_faults": statistics.median(faults["bare"]), "variants": {}}
    for v in VARIANTS:
        t, stub = times[v], times[f"stub {v}"]
        ratio = statistics.median(t) / statistics.median(bare)
        stub_ratio = 1 + statistics.median(stub) / statistics.median(bare)
        out["variants"][v] = {
            "run_ms": _stats([x * 1e3 for x in t]),
            "ratio": ratio,
            "paired_ratio": _stats([a / b for a, b in zip(t, bare, strict=True)]),
            "stub_run_ms": _stats([x * 1e3 for x in stub]),
            "stub_us_per_step": statistics.median(stub) / STEPS * 1e6,
            "ratio_from_stub": stub_ratio,
            "page_faults": statistics.median(faults[v]),
            "meets_target": ratio <= TARGET and stub_ratio <= TARGET,
        }
    return out


def _draw(noise: Callable[[], Tensor]) -> list[Tensor]:
    return [noise() for _ in range(STEPS)]


def noise_costs(case: Case, repeats: int) -> dict[str, float]:
    """Per-sample noise on its own: building 256 generators, and 50 draws of (256, *shape); vs randn_like."""
    build, draws, batch = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        noise = PerSampleNoise(case.seeds, case.shape)
        build.append(time.perf_counter() - t0)
        draws.append(_timed(functools.partial(_draw, noise)))
        batch.append(_timed(lambda: [torch.randn_like(case.z) for _ in range(STEPS)]))
    return {"per_sample_build_ms": statistics.median(build) * 1e3,
            "per_sample_50_draws_ms": statistics.median(draws) * 1e3,
            "randn_like_50_draws_ms": statistics.median(batch) * 1e3}


# Components of a run as cProfile sees them: (file suffix, function name), cumulative time.
_COMPONENTS = {
    "network forward": [("reference/gmm.py", "forward"), ("bench_guidance_overhead.py", "forward")],
    "GuidedEps.__call__ (incl. forward)": [("guidance/guided.py", "__call__")],
    "call_eps (incl. GuidedEps)": [("samplers/base.py", "call_eps")],
    "denoise": [("samplers/base.py", "denoise")],
    "PerSampleNoise.__call__": [("noise.py", "__call__")],
    "guided() construction": [("guidance/guided.py", "guided")],
    "prepare (grid checks)": [("samplers/base.py", "prepare")],
}


def profile(case: Case, variant: str) -> dict[str, Any]:
    """cProfile of one real run (components; mixture only, a conv run is all forward), and torch.profiler of
    one stub run (the ops that are not the network's)."""
    out: dict[str, Any] = {}
    if case.name == MIXTURE:
        sampler = variant.split("+")[0]
        run = case.run(variant)
        prof = cProfile.Profile()
        prof.enable()
        run()
        prof.disable()
        st = pstats.Stats(prof).stats  # type: ignore[attr-defined]

        def cum(file: str, func: str) -> float:
            return sum(v[3] for (f, _, fn), v in st.items()
                       if f.replace(os.sep, "/").endswith(file) and fn == func)

        out["cprofile_total_ms"] = cum(f"samplers/{sampler}.py", sampler) * 1e3
        out["cprofile_cumulative_ms"] = {k: sum(cum(f, fn) for f, fn in v) * 1e3 for k, v in _COMPONENTS.items()}
    run = case.run(variant, case.stub)
    run()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as tp:
        run()
    ops = sorted(tp.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    out["stub_ops_per_step"] = [
        {"op": e.key, "calls_per_step": e.count / STEPS, "self_us_per_step": e.self_cpu_time_total / STEPS}
        for e in ops[:14]]
    out["stub_ops_total_us_per_step"] = sum(e.self_cpu_time_total for e in ops) / STEPS
    out["stub_op_calls_per_step"] = sum(e.count for e in ops) / STEPS
    return out


def worker(cfg: dict[str, Any], quick: bool) -> dict[str, Any]:
    if cfg["threads"] is not None:
        torch.set_num_threads(cfg["threads"])
    repeats = cfg["quick" if quick else "repeats"]
    gmm = GaussianMixture.example_2d()
    torch.manual_seed(0)
    conv = SmallConvNet().eval()
    nets = {MIXTURE: (gmm, (2,), gmm.num_classes), CONV: (conv, (1, 28, 28), conv.num_classes)}
    res: dict[str, Any] = {"threads": torch.get_num_threads(),
                           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset: libgomp default)"),
                           "loadavg_before": [round(x, 2) for x in os.getloadavg()], "cases": {}}
    t0 = time.perf_counter()
    for name, n in repeats.items():
        net, shape, K = nets[name]
        case = Case(name, net, shape, K)
        r = measure(case, n)
        r["noise"] = noise_costs(case, 5)
        if cfg["profile"] and not all(v["meets_target"] for v in r["variants"].values()):
            r["profiles"] = {v: profile(case, v) for v, m in r["variants"].items() if not m["meets_target"]}
        res["cases"][name] = r
        print(f"[{cfg['name']}] {name}: bare {r['bare_ms']['median']:.1f} ms; " + ", ".join(
            f"{k} {v['ratio']:.3f} (stub {v['ratio_from_stub']:.3f})" for k, v in r["variants"].items()),
            file=sys.stderr, flush=True)
    res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    return res


def _cpu_info() -> dict[str, Any]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    model = re.search(r"^Model name:\s*(.+)$", out, re.M)
    flag_line = re.search(r"^Flags:\s*(.+)$", out, re.M)
    flags = set(flag_line.group(1).split()) if flag_line else set()
    return {"model_name": model.group(1).strip() if model else platform.processor(),
            "flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")},
            "logical_cpus": os.cpu_count()}


def markdown(res: dict[str, Any]) -> str:
    h = res["host"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in h["cpu"]["flags"].items())
    lines = [
        "# Guidance wrapper overhead", "",
        f"Ratio = time of a guided CFG sampling run (w = {W:g}, batch {BATCH}, {STEPS} steps, one forward on "
        f"{2 * BATCH} rows a step) / time of the {STEPS} bare forwards it performs on pre-built inputs; target "
        f"<= {TARGET}. Medians over interleaved repeats; *paired* is the median [IQR] of per-repeat ratios. "
        "*Stub* is the same run with the network replaced by a stub returning a pre-built output: its time "
        "per step is the sampler's + wrapper's (+ noise's) own cost, and `1 + stub / bare` a steadier "
        "estimate of the ratio. On a loaded machine the direct ratio of a multi-second conv run moves by tens "
        "of percent between runs (other processes, and glibc returning and re-faulting the activations' "
        "memory: see the page-fault column); read the stub column for the conv net.", "",
        f"- command: `{res['command']}`",
        f"- date: {res['date']}; wall time {res['wall_s']} s",
        f"- CPU: {h['cpu']['model_name']} ({h['cpu']['logical_cpus']} logical CPUs); {flags}",
        f"- torch {h['torch']} (default intra-op threads: {h['default_threads']}), Python {h['python']}",
        "- shared machine: other processes used the CPU during the runs (load averages below).", "",
    ]
    for cname, c in res["configs"].items():
        lines += [f"## {cname}", "",
                  f"threads {c['threads']}, OMP_WAIT_POLICY {c['OMP_WAIT_POLICY']}; load average "
                  f"{c['loadavg_before']} -> {c['loadavg_after']}; {c['wall_s']} s", "",
                  "| network | variant | repeats | bare (ms) | run (ms) | ratio | paired [IQR] | stub (us/step) "
                  "| 1 + stub/bare | <= 1.05 | page faults bare / run |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|:-:|---:|"]
        for net, r in c["cases"].items():
            for v, m in r["variants"].items():
                p = m["paired_ratio"]
                lines.append(
                    f"| {net} | {v} | {r['repeats']} | {r['bare_ms']['median']:.1f} | {m['run_ms']['median']:.1f} "
                    f"| {m['ratio']:.3f} | {p['median']:.3f} [{p['q25']:.3f}, {p['q75']:.3f}] "
                    f"| {m['stub_us_per_step']:.0f} | {m['ratio_from_stub']:.3f} "
                    f"| {'yes' if m['meets_target'] else 'no'} "
                    f"| {r['bare_page_faults']:.0f} / {m['page_faults']:.0f} |")
        lines += ["", "| network | build 256 generators (ms) | 50 per-sample draws (ms) | 50 `randn_like` (ms) |",
                  "|---|---:|---:|---:|"]
        for net, r in c["cases"].items():
            n = r["noise"]
            lines.append(f"| {net} | {n['per_sample_build_ms']:.2f} | {n['per_sample_50_draws_ms']:.1f} "
                         f"| {n['randn_like_50_draws_ms']:.2f} |")
        for net, r in c["cases"].items():
            for v, p in r.get("profiles", {}).items():
                ops = "; ".join(f"`{o['op']}` x{o['calls_per_step']:.3g} {o['self_us_per_step']:.0f}"
                                for o in p["stub_ops_per_step"][:8])
                lines += ["", f"Profile, {net} / {v}:"]
                if "cprofile_total_ms" in p:
                    comp = "; ".join(f"{k} {x:.1f}" for k, x in p["cprofile_cumulative_ms"].items() if x > 0)
                    lines.append(f"- cProfile of one run, total {p['cprofile_total_ms']:.1f} ms (cumulative ms, "
                                 f"inflated by the profiler): {comp}.")
                lines.append(f"- torch.profiler of one stub run: {p['stub_op_calls_per_step']:.0f} ops a step, "
                             f"{p['stub_ops_total_us_per_step']:.0f} us a step of op self time; top (calls a step, "
                             f"us a step): {ops}.")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repeats; print the table, write nothing")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # index into CONFIGS
    args = ap.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(CONFIGS[args.worker], args.quick)))
        return

    t0 = time.perf_counter()
    res: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": {"cpu": _cpu_info(), "torch": torch.__version__, "default_threads": torch.get_num_threads(),
                 "python": platform.python_version()},
        "config": {"batch": BATCH, "steps": STEPS, "w": W, "target": TARGET, "rows_per_forward": 2 * BATCH,
                   "conv_params": sum(p.numel() for p in SmallConvNet().parameters())},
        "configs": {},
    }
    for i, cfg in enumerate(CONFIGS):
        env = dict(os.environ)
        for k, v in cfg["env"].items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(i)] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
        res["configs"][cfg["name"]] = json.loads(proc.stdout)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    md = markdown(res)
    print(md)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "guidance_overhead.json").write_text(json.dumps(res, indent=2) + "\n")
        (args.out / "guidance_overhead.md").write_text(md)
        print(f"wrote {args.out / 'guidance_overhead.json'} and .md ({res['wall_s']} s)")


if __name__ == "__main__":
    main()
