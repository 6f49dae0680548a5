"""``diffguide`` command line: train | train-classifier | distill | export | sample | sweep | evaluate |
reference-stats | demo | demo-gmm."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

__all__ = ["main", "cli", "parse_floats", "parse_labels"]

# The demo's quick sweep: the sampler and steps that measured best at about 10 evaluations
# (benchmarks/results/solvers/).
DEMO_SWEEP = ("unipc", 10)


def parse_floats(text: str, name: str) -> list[float]:
    """``"0,0.5,2"`` -> ``[0.0, 0.5, 2.0]``."""
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers", param_hint=name) from None
    if not values:
        raise click.BadParameter("give at least one value", param_hint=name)
    return values


def parse_labels(text: str, num_classes: int) -> list[int]:
    """``"0-9"``, ``"3"`` or ``"0,2,5"`` -> class labels, each checked against ``[0, num_classes)``."""
    labels: list[int] = []
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            labels += list(range(int(a), int(b) + 1)) if b else [int(a)]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected labels like '0-9', '3' or '0,2,5'",
                                 param_hint="--labels") from None
    bad = [c for c in labels if not 0 <= c < num_classes]
    if bad or not labels:
        raise click.BadParameter(f"label {bad[0] if bad else text!r} is out of range: the model has classes "
                                 f"0..{num_classes - 1}", param_hint="--labels")
    return labels


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="diffguide")
def cli() -> None:
    """Guided diffusion: classifier-free and classifier guidance, samplers, evaluation."""


# ----------------------------------------------------------------------------------------- training
def _train_options(fn: Any) -> Any:
    opts = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False),
                     help="TOML file of TrainConfig fields."),
        click.option("--out", help="Run directory (checkpoints, log.jsonl)."),
        click.option("--data", help="'mnist', 'mnist:test', an image folder (a sub-folder per class) or a .npz."),
        click.option("--image-size", type=int), click.option("--channels", type=int),
        click.option("--hflip/--no-hflip", default=None, help="Random horizontal flips (off for digits)."),
        click.option("--preset", help="Network size: tiny | small | base."),
        click.option("--schedule", help="continuous (CFG paper) | linear | cosine, or the path of a diffusers "
                                        "scheduler config (or its folder): train for that model's schedule."),
        click.option("--batch-size", type=int, help="Per process and micro-batch; the global batch is batch size "
                                                    "x processes x --accumulate."),
        click.option("--accumulate", type=int, help="Gradient accumulation: micro-batches per step (1)."),
        click.option("--steps", type=int),
        click.option("--time-budget", help="Wall-clock budget instead of/besides --steps, e.g. 30m, 1h, 90s."),
        click.option("--lr", type=float), click.option("--warmup", type=int),
        click.option("--lr-decay", type=click.Choice(["cosine", "linear", "constant"])),
        click.option("--weight-decay", type=float), click.option("--grad-clip", type=float),
        click.option("--ema-decay", type=float),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"])),
        click.option("--device", help="auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)."),
        click.option("--compile/--no-compile", "compile", default=None,
                     help="torch.compile the network for training (GPUs; it gave nothing on CPU)."),
        click.option("--backend", type=click.Choice(["auto", "gloo", "nccl"]),
                     help="torch.distributed backend under torchrun (auto: nccl on GPUs, gloo on CPU)."),
        click.option("--seed", type=int), click.option("--log-every", type=int),
        click.option("--ckpt-every", type=int), click.option("--keep", type=int),
        click.option("--resume", is_flag=True, help="Continue from the run directory's latest checkpoint."),
        click.option("--export", "export_to", type=click.Path(dir_okay=False),
                     help="After training, write the EMA weights to this .safetensors file."),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _run_training(task: str, config_file: str | None, resume: bool, export_to: str | None, no_progress: bool,
                  **options: Any) -> None:
    from .models import export_model, write_model_card
    from .training.config import load_config
    from .training.trainer import train

    defaults = {"out": f"runs/{task}"} if options.get("out") is None and config_file is None else {}
    cfg = load_config(config_file, task=task, **{**defaults, **options})
    t0 = time.time()
    run_dir = train(cfg, resume=resume, progress=not no_progress)
    from .training.distributed import process_rank, shutdown

    shutdown()  # under torchrun: the process group ends with the training; rank 0 alone exports
    if export_to and process_rank() == 0:
        command, wall = " ".join(["diffguide", *sys.argv[1:]]), time.time() - t0
        out = export_model(run_dir, export_to, card={"command": command, "wall_time_s": round(wall, 1)})
        card = write_model_card(run_dir, out, command=command, wall_time_s=wall)
        click.echo(f"exported EMA weights to {out}; model card {card}")


@cli.command()
@_train_options
@click.option("--p-uncond", type=float, help="Probability of dropping the label to the null label (0.1).")
def train(**kw: Any) -> None:
    """Train a class-conditional diffusion model jointly with its unconditional self (CFG paper, Alg. 1)."""
    _run_training("diffusion", **kw)


@cli.command("train-classifier")
@_train_options
@click.option("--p-clean", type=float, help="Fraction of the batch shown without noise (0).")
def train_classifier(**kw: Any) -> None:
    """Train a noise-aware classifier p(c | z_lam) for classifier guidance."""
    _run_training("classifier", **kw)


@cli.command()
@_train_options
@click.option("--teacher", help="The CFG-trained model to distil ('mnist': the shipped one; or an export, "
                                "checkpoint or run dir); with --progressive a stage-one student ('mnist-student').")
@click.option("--w-range", "w_range", help="The guidance weights the student learns, w_min,w_max (the CFG paper's w; "
                                           "default 0,4 as Meng et al.).")
@click.option("--weighting", "distill_weighting", type=click.Choice(["snr", "truncated-snr"]),
              help="omega(lam) of the x0-space loss: snr (= eps MSE, default) or truncated-snr (max(SNR, 1)).")
@click.option("--progressive", is_flag=True,
              help="Stage two: from a stage-one student (--teacher), halve its DDIM steps round by round "
                   "(Salimans & Ho 2022); --steps is each round's.")
@click.option("--from-steps", type=int, help="Progressive: the teacher's DDIM steps (e.g. 32).")
@click.option("--to-steps", type=int, help="Progressive: the last student's DDIM steps (e.g. 4).")
def distill(teacher: str | None, w_range: str | None, progressive: bool, from_steps: int | None,
            to_steps: int | None, **kw: Any) -> None:
    """Guidance distillation (Meng et al. 2023). Stage one: a w-conditioned student of a CFG model that
    samples with one forward per step. Stage two (--progressive): students of that student for ever fewer
    DDIM steps, each round's kept as OUT/student-M.safetensors."""
    from .api import ASSETS, BUILTIN

    if teacher in BUILTIN:  # 'mnist' (the CFG model), 'mnist-student' (its stage-one student), ...
        teacher = str(ASSETS / BUILTIN[teacher][0])
    if w_range is not None:
        ws = parse_floats(w_range, "--w-range")
        if len(ws) != 2:
            raise click.BadParameter(f"expected w_min,w_max, got {w_range!r}", param_hint="--w-range")
        kw["w_min"], kw["w_max"] = ws
    from .training.config import load_config

    if not progressive and kw.get("config_file"):  # a config file of the progressive task says so itself
        progressive = load_config(kw["config_file"], teacher=teacher).task == "progressive"
    if not progressive:
        if from_steps is not None or to_steps is not None:
            raise click.UsageError("--from-steps and --to-steps are options of --progressive")
        _run_training("distill", teacher=teacher, **kw)
        return
    from .training.distributed import process_rank, shutdown
    from .training.progressive import distill_progressive

    config_file, resume, export_to, no_progress = (kw.pop(k) for k in ("config_file", "resume", "export_to",
                                                                      "no_progress"))
    defaults = {"out": "runs/progressive"} if kw.get("out") is None and config_file is None else {}
    cfg = load_config(config_file, task="progressive", teacher=teacher, from_steps=from_steps, to_steps=to_steps,
                      **{**defaults, **kw})
    made = distill_progressive(cfg, resume=resume, progress=not no_progress,
                               command=" ".join(["diffguide", *sys.argv[1:]]), say=click.echo)
    shutdown()
    if export_to and process_rank() == 0:  # the last student (and its card) under the asked name too
        from .fileio import atomic_write_bytes

        out = Path(export_to)
        out.parent.mkdir(parents=True, exist_ok=True)
        for src in (made[-1], made[-1].with_suffix(".json")):
            atomic_write_bytes(out.with_suffix(src.suffix), src.read_bytes())
        click.echo(f"the {cfg.to_steps}-step student: {out}")


@cli.command()
@click.argument("checkpoint", type=click.Path(exists=True))
@click.argument("out", type=click.Path(dir_okay=False))
def export(checkpoint: str, out: str) -> None:
    """Write a checkpoint's (or run directory's latest) EMA weights as one .safetensors file."""
    from .models import export_model

    click.echo(str(export_model(checkpoint, out)))


# ----------------------------------------------------------------------------------------- guidance
def _guidance_options(fn: Any) -> Any:
    opts = [
        click.option("--guidance", "method", type=click.Choice(["cfg", "rescale", "interval", "apg", "cfgpp",
                                                                 "cfg-zero"]), default="cfg", show_default=True,
                     help="cfg: plain CFG; rescale: CFG + rescale (--phi, default 0.7; Lin et al. 2023); interval: "
                          "CFG only inside --interval (default: the paper's sigma 0.28..1.61); apg: adaptive "
                          "projected guidance (--apg-*; Sadat et al. 2025); cfgpp: CFG++, give its lambda in [0, 1] "
                          "as --scale (Chung et al. 2025); cfg-zero: CFG-Zero* (--zero-init; Fan et al. 2025)."),
        click.option("--phi", type=float, help="Guidance rescale phi in [0, 1] (0 = off), with any --guidance."),
        click.option("--interval", "interval_text",
                     help="Guide only for lam in LO,HI (log-SNR), with any --guidance; one forward outside."),
        click.option("--interval-sigma", "interval_sigma_text",
                     help="The guidance interval as EDM sigma = exp(-lam/2) bounds LO,HI."),
        click.option("--w-schedule", type=click.Choice(["constant", "linear", "cosine"]), default="constant",
                     show_default=True, help="Strength schedule g(lam) * w: linear 2 alpha^2, cosine "
                                             "1 + cos(pi sigma^2) (mean 1; after Wang et al. 2024)."),
        click.option("--threshold", type=float,
                     help="Dynamic thresholding of x0 at this percentile in (0, 1), e.g. 0.995 (Imagen)."),
        click.option("--apg-beta", type=float, default=-0.5, show_default=True,
                     help="APG momentum beta, |beta| < 1 (the paper: negative)."),
        click.option("--apg-r", type=float, default=15.0, show_default=True,
                     help="APG norm threshold r > 0 on x0_c - x0_u ('inf' = none)."),
        click.option("--apg-eta", type=float, default=0.0, show_default=True,
                     help="APG weight of the parallel component (0 = dropped, 1 with r=inf, beta=0 = CFG)."),
        click.option("--apg-clip", type=float, default=1.0, show_default=True,
                     help="APG: data range the denoised predictions are clamped to for the update ('inf' = none)."),
        click.option("--zero-init", type=int, default=1, show_default=True,
                     help="CFG-Zero*: first steps held (no forward, z unchanged; the eps-model analogue)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _pair(text: str, name: str) -> tuple[float, float]:
    values = parse_floats(text, name)
    if len(values) != 2:
        raise click.BadParameter(f"{text!r}: expected two numbers LO,HI", param_hint=name)
    return values[0], values[1]


def guidance_spec(method: str, phi: float | None, interval_text: str | None, interval_sigma_text: str | None,
                  w_schedule: str, threshold: float | None, apg_beta: float, apg_r: float, apg_eta: float,
                  apg_clip: float, zero_init: int) -> Any:
    """The :class:`~diffguide.guidance.GuidanceSpec` of the guidance options."""
    from .guidance import GuidanceSpec, Interval

    if interval_text and interval_sigma_text:
        raise click.BadParameter("give --interval or --interval-sigma, not both", param_hint="--interval")
    params: dict[str, Any] = {"w_schedule": w_schedule, "threshold": threshold, "beta": apg_beta, "r": apg_r,
                              "eta": apg_eta, "clip": apg_clip, "zero_init": zero_init}
    if phi is not None:
        params["phi"] = phi
    if interval_text:
        params["interval"] = _pair(interval_text, "--interval")
    elif interval_sigma_text:
        iv = Interval.from_sigma(*_pair(interval_sigma_text, "--interval-sigma"))
        params["interval"] = (iv.lo, iv.hi)
    return GuidanceSpec.method(method, **params)


def strengths(w_text: str | None, scale_text: str | None, default: str, method: str = "cfg") -> list[float]:
    """The CFG paper's ``w`` values from ``--w`` or ``--scale`` (``s = 1 + w``; not both)."""
    if method == "cfgpp" and w_text is None and scale_text is None:
        raise click.BadParameter("--guidance cfgpp needs its lambdas in [0, 1] as --scale, e.g. --scale 0.2,0.6",
                                 param_hint="--scale")
    if w_text is not None and scale_text is not None:
        raise click.BadParameter("give --w or --scale, not both (scale = 1 + w)", param_hint="--scale")
    if scale_text is not None:
        from .guidance import w_from_scale

        return [float(w_from_scale(s)) for s in parse_floats(scale_text, "--scale")]
    return parse_floats(default if w_text is None else w_text, "--w")


def _sampling_options(fn: Any) -> Any:
    """The sampling options of ``sample`` and ``sweep``: one set, with one set of defaults
    (:class:`~diffguide.sampling.SamplingConfig`'s)."""
    from .precision import PRECISIONS
    from .samplers import SAMPLERS
    from .sampling import SamplingConfig
    from .schedule import GRIDS

    d = SamplingConfig()
    opts = [
        click.option("--sampler", type=click.Choice(list(SAMPLERS)), default=str(d.sampler), show_default=True,
                     help="ddpm: ancestral (CFG paper Alg. 2); ddim (eta = 0: the ODE, first order); dpmpp-2m: "
                          "DPM-Solver++(2M), second order; unipc: UniPC-bh2 predictor-corrector, third order; "
                          "heun: EDM Heun, second order, 2 steps - 1 evaluations; euler: EDM Euler (= DDIM)."),
        click.option("--steps", type=int, default=d.steps, show_default=True,
                     help="Grid steps (model evaluations; heun: 2 steps - 1)."),
        click.option("--grid", type=click.Choice(["auto", *GRIDS]), default=d.grid, show_default=True,
                     help="schedule: the training schedule's spacing; lam: uniform in log-SNR; karras: EDM's, --rho; "
                          "auto: the sampler's measured best (karras for heun, else schedule)."),
        click.option("--rho", type=float, default=d.rho, show_default=True, help="Karras grid exponent rho > 0."),
        click.option("--eta", type=float, help="DDIM noise (0 = deterministic; ddim only).  [default: 0]"),
        click.option("--v", "--ddpm-v", "v", type=float,
                     help="DDPM variance interpolation (CFG paper Alg. 2; ddpm only).  [default: 0]"),
        click.option("--order", type=int, help="UniPC order 1..3 (unipc only).  [default: 2]"),
        click.option("--skip-corrector", type=int,
                     help="UniPC: no corrector for the first N steps, advised at large w (unipc only).  [default: 0]"),
        click.option("--lower-order-final", is_flag=True, default=None,
                     help="First order also on the last step between finite lam (dpmpp-2m, unipc)."),
        click.option("--precision", type=click.Choice(list(PRECISIONS)), default=d.precision, show_default=True,
                     help="Network forwards in fp32 or bf16 autocast; auto: bf16 where native (CUDA, AMX/avx512_bf16 "
                          "CPUs). Only fp32 samples are bit-identical across machines."),
        click.option("--cg-form", type=click.Choice(["auto", "score", "mean"]), default=d.cg_form, show_default=True,
                     help="Classifier guidance: score: eps - s sigma grad (any sampler); mean: DDPM mean shift; "
                          "auto: mean on ddpm."),
        click.option("--seed", type=int, default=d.seed, show_default=True,
                     help="Sample i uses the noise stream seeded by (seed, i)."),
        click.option("--batch-size", type=int, default=d.batch_size, show_default=True,
                     help="Samples per sampling run (and per saved sweep chunk); does not change fp32 samples."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


_SAMPLING_KEYS = ("sampler", "steps", "grid", "rho", "eta", "v", "order", "skip_corrector", "lower_order_final",
                  "precision", "cg_form", "seed", "batch_size")


def _pop_sampling(kw: dict[str, Any]) -> Any:
    """The :class:`~diffguide.sampling.SamplingConfig` of the sampling options; an option the sampler
    does not take is refused, not ignored."""
    from .sampling import SamplingConfig, option_owners

    values = {k: kw.pop(k) for k in _SAMPLING_KEYS}
    for k in ("eta", "v", "order", "skip_corrector", "lower_order_final"):
        owners = option_owners(k)
        if values[k] is not None and values["sampler"] not in owners:
            raise click.BadParameter(f"--{k.replace('_', '-')} applies to --sampler {' or '.join(owners)} only, "
                                     f"not {values['sampler']}", param_hint=f"--{k.replace('_', '-')}")
    try:
        return SamplingConfig.make(**values)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _own_steps(sampling: Any, net: Any) -> Any:
    """A progressive student samples by DDIM at its own step count unless --sampler or --steps says otherwise."""
    import dataclasses

    from .api import distilled_sampling

    ctx = click.get_current_context()
    given = any(ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT for k in ("sampler", "steps"))
    return sampling if given else dataclasses.replace(sampling, **distilled_sampling(net))


_GUIDANCE_KEYS = ("method", "phi", "interval_text", "interval_sigma_text", "w_schedule", "threshold", "apg_beta",
                  "apg_r", "apg_eta", "apg_clip", "zero_init")


def _pop_spec(kw: dict[str, Any]) -> Any:
    return guidance_spec(**{k: kw.pop(k) for k in _GUIDANCE_KEYS})


# ----------------------------------------------------------------------------------------- sampling
def sample_grids(pipe: Any, out: Path, *, ws: list[float], cg_scales: list[float], labels: list[int], n: int,
                 guidance: Any = None, sampling: Any = None, unconditional: bool = False,
                 reward: Any = None, runtime: Any = None) -> list[Path]:
    """One PNG grid (rows = classes) and one .npz per (w, cg_scale) setting, with the guidance method
    ``guidance`` (a :class:`~diffguide.guidance.GuidanceSpec`; plain CFG if ``None``) and the
    :class:`~diffguide.sampling.SamplingConfig` ``sampling`` (and ``reward``, a
    :class:`~diffguide.guidance.RewardGuidance`, if given)."""
    import torch

    from .guidance import GuidanceSpec
    from .images import save_grid, save_samples
    from .training.distributed import Runtime

    rt = runtime or Runtime()
    spec = guidance or GuidanceSpec()
    per = max(1, n // len(labels))
    y = torch.tensor(labels).repeat_interleave(per)
    mine = rt.span(len(y))  # under torchrun: this rank's samples, by global index (hence seed)
    written = []
    for w in ws:
        for s in cg_scales:
            t0 = time.time()
            part = pipe.sample(y[mine], w, cg_scale=s, unconditional=unconditional, sampling=sampling,
                               reward=reward, first_index=mine.start, **spec.kwargs()) if mine.stop > mine.start \
                else torch.zeros(0, *pipe.sample_shape)  # more ranks than samples
            parts = rt.gather(part)
            if parts is None:
                continue  # rank 0 writes
            x = torch.cat(parts)
            tag = ("uncond" if unconditional else f"w{w:g}") + (f"_cg{s:g}" if s else "")
            tag += f"_{getattr(reward.reward, '__name__', 'reward')}{reward.scale:g}" if reward is not None else ""
            tag = tag if spec.is_plain else f"{spec.tag}_{tag}"
            written.append(save_grid(x, out / f"{tag}.png", nrow=per))
            save_samples(out / f"{tag}.npz", x, y, w=w, cg_scale=s)
            click.echo(f"{tag}: {len(y)} samples in {time.time() - t0:.1f} s -> {out / (tag + '.png')}")
    return written


@cli.command()
@click.option("--checkpoint", default="mnist", show_default=True,
              help="'mnist' (shipped), 'mnist-student', 'mnist-student-8', 'mnist-student-4' (its distilled "
                   "students), an exported .safetensors, a checkpoint or a run directory.")
@click.option("--classifier", help="Noise-aware classifier for classifier guidance (default: shipped, for mnist).")
@click.option("--guide", "guide_path", help="Autoguidance: guide away from this weaker model ('mnist': the shipped "
                                         "guide; an exported .safetensors, checkpoint or run dir) under the same "
                                         "label, instead of the null label.")
@click.option("--w", "w_text", help="Guidance weights w, the CFG paper's (0 = conditional model).  [default: 0,1,3; "
                                    "0 with --unconditional or an unconditional model]")
@click.option("--scale", "scale_text", help="Guidance scales s = 1 + w (diffusers' guidance_scale), instead of --w.")
@_guidance_options
@click.option("--cg-scale", "cg_text", default="0", show_default=True, help="Classifier-guidance scales s.")
@click.option("--unconditional", is_flag=True, help="Sample the null label (classifier guidance alone steers).")
@click.option("--reward", "reward_spec", help="Reward guidance by a differentiable log-likelihood: 'ink' (more ink), "
                                             "'-ink' (less), or module:function called as f(x, lam, cond) -> (B,).")
@click.option("--reward-scale", default=1.0, show_default=True, type=float, help="Its scale (>= 0).")
@click.option("--reward-on", type=click.Choice(["x0", "z"]), default="x0", show_default=True,
              help="x0: the reward reads the network's clean prediction (gradient through the network); "
                   "z: it reads the noisy latent (a noise-aware reward).")
@click.option("--reward-clip", type=float, help="Largest per-sample gradient norm (default: no clipping).")
@click.option("--labels", help="Class labels, e.g. 0-9, 3 or 0,2,5.  [default: every class of the model]")
@click.option("--n", "--num-samples", "n", default=100, show_default=True,
              help="Samples per setting (split evenly over labels; under torchrun write --num-samples).")
@_sampling_options
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", default="out/samples", show_default=True, type=click.Path(file_okay=False))
def sample(checkpoint: str, classifier: str | None, guide_path: str | None, w_text: str | None,
           scale_text: str | None, cg_text: str, unconditional: bool, reward_spec: str | None, reward_scale: float,
           reward_on: str, reward_clip: float | None, labels: str | None, n: int, device: str, out: str,
           **kw: Any) -> None:
    """Sample a model at several guidance settings: a PNG grid and an .npz per setting."""
    from .api import load
    from .training.distributed import init_runtime, shutdown

    method = kw["method"]
    spec = _pop_spec(kw)
    sampling = _pop_sampling(kw)
    rt = init_runtime(device)  # one process, or this rank of a torchrun job
    pipe = load(checkpoint, classifier=classifier, guide=guide_path, device=rt.device)
    sampling = _own_steps(sampling, pipe.net)
    ws = strengths(w_text, scale_text, "0" if unconditional or not pipe.num_classes else "0,1,3", method)
    cg_scales = parse_floats(cg_text, "--cg-scale")
    if any(cg_scales) and pipe.classifier is None:
        raise click.BadParameter("classifier guidance needs --classifier PATH", param_hint="--cg-scale")
    reward = None
    if reward_spec:
        from .guidance.reward import RewardGuidance, get_reward

        try:
            reward = RewardGuidance(get_reward(reward_spec), scale=reward_scale, on=reward_on,  # type: ignore[arg-type]
                                    clip=reward_clip)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--reward") from None
    # an unconditional network's labels are its classifier's classes (or a single placeholder class)
    classes = pipe.num_classes or int(getattr(pipe.classifier, "num_classes", 0) or 1)
    wanted = labels if labels is not None and classes > 1 else f"0-{classes - 1}"
    sample_grids(pipe, Path(out), ws=ws, cg_scales=cg_scales, labels=parse_labels(wanted, classes), n=n,
                 guidance=spec, sampling=sampling, unconditional=unconditional, reward=reward, runtime=rt)
    shutdown()


@cli.command()
@click.option("--out", default="out/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--steps", default=50, show_default=True, help="DDIM steps of the sample grids.")
@click.option("--sweep-w", "sweep_w", default="0,0.5,1,2,4", show_default=True,
              help="CFG weights of the closing quick sweep ('' to skip it).")
@click.option("--sweep-n", default=1000, show_default=True, help="Samples per weight in the quick sweep.")
@click.option("--sweep-sampler", default=DEMO_SWEEP[0], show_default=True,
              type=click.Choice(["ddpm", "ddim", "dpmpp-2m", "unipc", "heun", "euler"]),
              help="Sampler of the quick sweep (the best measured at ~10 evaluations).")
@click.option("--sweep-steps", default=DEMO_SWEEP[1], show_default=True, help="Steps of the quick sweep.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="fp32", show_default=True,
              help="Network forwards in fp32 or bf16 autocast; auto: bf16 where native.")
def demo(out: str, steps: int, sweep_w: str, sweep_n: int, sweep_sampler: str, sweep_steps: int,
         precision: str) -> None:
    """The main job: sample the shipped MNIST model at w = 0, 1, 3 (10 per class each), then a quick
    guidance sweep (FID, IS, precision/recall, class accuracy vs w; table and plots)."""
    from .api import load
    from .experiments.sweep import grid_settings, run_sweep
    from .sampling import SamplingConfig

    t0 = time.time()
    pipe = load("mnist")
    written = sample_grids(pipe, Path(out), ws=[0.0, 1.0, 3.0], cg_scales=[0.0], labels=list(range(10)), n=100,
                           sampling=SamplingConfig.make(sampler="ddim", steps=steps, precision=precision))
    report: dict[str, Any] = {"grids": [str(p) for p in written]}
    if sweep_w.strip():
        quick = SamplingConfig.make(sampler=sweep_sampler, steps=sweep_steps, precision=precision)
        click.echo(f"quick sweep: w = {sweep_w}, {sweep_n} samples each, {quick.describe()}", err=True)
        rows = run_sweep(pipe, grid_settings(parse_floats(sweep_w, "--sweep-w"), [0.0], False), n=sweep_n,
                         sampling=quick, out=Path(out) / "sweep", progress=True)
        report["sweep"] = {"table": str(Path(out) / "sweep" / "results.csv"),
                           "plot": str(Path(out) / "sweep" / "sweep.png"),
                           "rows": [{k: r[k] for k in ("tag", "fid", "is_mean", "precision", "recall", "accuracy")}
                                    for r in rows]}
    report["seconds"] = round(time.time() - t0, 1)
    click.echo(json.dumps(report, indent=1))


@cli.command("demo-gmm")
@click.option("--out", type=click.Path(), help="The PNG (default out/gmm_demo.png); with --autoguidance a folder "
                                               "(default out/gmm_autoguidance).")
@click.option("--autoguidance", is_flag=True,
              help="Instead: train a main MLP and a smaller, shorter-trained guide on exact draws (~1 min on "
                   "2 cores) and compare no guidance, CFG and autoguidance by exact log-likelihood and mode shares.")
@click.option("--w", "w_text", default="0.5,1,2,4", show_default=True, help="With --autoguidance: the weights w.")
def demo_gmm(out: str | None, autoguidance: bool, w_text: str) -> None:
    """CFG and classifier guidance on an exact 2-D Gaussian mixture: contours and samples for w = 0, 1, 3;
    or, with --autoguidance, autoguidance against CFG on the same mixture (Karras et al. 2024)."""
    if autoguidance:
        from .experiments.autoguidance_toy import autoguidance_toy

        ws = parse_floats(w_text, "--w")
        if any(w < 0 for w in ws):
            raise click.BadParameter(f"weights must be >= 0, got {w_text!r}", param_hint="--w")
        r = autoguidance_toy(out or "out/gmm_autoguidance", ws=ws)
        click.echo(r.md.read_text())
        click.echo(f"{r.png}\n{r.md}\n{r.json}")
        return
    from .experiments.gmm_demo import gmm_demo

    click.echo(str(gmm_demo(out or "out/gmm_demo.png")))


# --------------------------------------------------------------------------------------- evaluation
def metrics_setup(shape: tuple[int, ...], reference: str | None, features: str, evaluator_path: str | None,
                  device: str = "cpu", resize_reference: bool = False) -> tuple[Any, Any]:
    """``(feature net, reference statistics)`` for samples of ``shape`` from the metric options:
    ``--features`` (auto | mnist | inception), ``--reference`` (mnist, a folder, an .npz of images or of
    statistics; default: the MNIST test split for 1x28x28; another shape than the samples' is refused
    unless ``--resize-reference``) and ``--evaluator`` (a classifier trained by ``train-classifier``, read
    at its clean end for class accuracy and IS; or MNIST evaluator weights)."""
    from .experiments.sweep import WithClassifier, feature_net
    from .metrics.reference_stats import load_reference

    mnist = tuple(shape) == (1, 28, 28)
    if evaluator_path and features in ("auto", "mnist") and mnist and _is_evaluator_file(evaluator_path):
        from .metrics import load_evaluator

        net: Any = load_evaluator(evaluator_path, device=device)
    else:
        net = feature_net(features, shape, device)
        if evaluator_path:
            from .models import load_model

            clf = load_model(evaluator_path)
            if _meta(clf).get("kind") != "classifier":
                raise ValueError(f"--evaluator {evaluator_path}: expected a classifier trained by train-classifier")
            net = WithClassifier(net, clf.to(device))
    if reference is None and not mnist:
        raise ValueError(f"samples of shape {'x'.join(map(str, shape))} need --reference (an image folder, an "
                         f".npz of images, or statistics from diffguide reference-stats)")
    return net, load_reference(reference or "mnist:test", net, sample_shape=tuple(shape),
                               image_size=shape[-1] if resize_reference else None)


def _meta(module: Any) -> dict[str, Any]:
    return dict(getattr(module, "meta", {}) or {})


def _is_evaluator_file(path: str) -> bool:
    """Whether ``path`` holds MNIST-evaluator weights (no diffguide model metadata)."""
    from .checkpoint import load_weights

    try:
        _, meta = load_weights(path)
    except (ValueError, FileNotFoundError):
        return False
    return "kind" not in meta


_metric_options = [
    click.option("--reference", help="Reference set: mnist | mnist:test | an image folder | an .npz of images | "
                                     "statistics (.npz with mu, sigma[, features]). Default: the MNIST test split "
                                     "for 1x28x28 samples."),
    click.option("--features", type=click.Choice(["auto", "mnist", "inception"]), default="auto", show_default=True,
                 help="Feature network: the MNIST evaluator for 1x28x28 samples, else Inception-v3 (the inception "
                      "extra; nothing is downloaded)."),
    click.option("--resize-reference", is_flag=True,
                 help="Resize and center-crop the reference images (and convert their channels) to the samples' "
                      "shape; without it a reference of another shape is an error."),
]


def _metrics_opts(fn: Any) -> Any:
    for opt in reversed(_metric_options):
        fn = opt(fn)
    return fn


@cli.command()
@click.option("--checkpoint", default="mnist", show_default=True,
              help="'mnist' (shipped), 'mnist-student', 'mnist-student-8', 'mnist-student-4' (its distilled "
                   "students), an exported .safetensors, a checkpoint or a run directory.")
@click.option("--classifier", help="Noise-aware classifier for classifier guidance (default: shipped, for mnist).")
@click.option("--guide", "guide_path", help="Autoguidance: guide away from this weaker model ('mnist': the shipped "
                                         "guide; an exported .safetensors, checkpoint or run dir) under the same "
                                         "label, instead of the null label.")
@click.option("--w", "w_text", help="Guidance weights w (the CFG paper's); each is run with --guidance and no "
                                    "classifier guidance.  [default: 0,0.1,0.2,0.3,0.5,1,2,3,4]")
@click.option("--scale", "scale_text", help="Guidance scales s = 1 + w instead of --w (CFG++: its lambda).")
@_guidance_options
@click.option("--cg-scale", "cg_text", default="0", show_default=True,
              help="Classifier-guidance scales s; each nonzero s is run on the conditional model at w = 0.")
@click.option("--unconditional", is_flag=True,
              help="Also run the null-label model unguided and at each nonzero --cg-scale.")
@click.option("--n", "--num-samples", "n", default=10_000, show_default=True,
              help="Samples per setting (labels i mod K, balanced; under torchrun write --num-samples).")
@_sampling_options
@click.option("--evaluator", "evaluator_path", type=click.Path(dir_okay=False),
              help="A classifier trained by train-classifier (class accuracy and IS at its clean end), or MNIST "
                   "evaluator weights (default: the shipped evaluator, for MNIST).")
@_metrics_opts
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", default="out/sweep", show_default=True, type=click.Path(file_okay=False))
@click.option("--no-plot", is_flag=True, help="Skip sweep.png.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def sweep(checkpoint: str, classifier: str | None, guide_path: str | None, w_text: str | None,
          scale_text: str | None, cg_text: str, unconditional: bool, n: int, evaluator_path: str | None,
          reference: str | None, features: str, resize_reference: bool, device: str, out: str, no_plot: bool,
          no_progress: bool, **kw: Any) -> None:
    """Sample and score a model over guidance settings: FID, IS, precision/recall, class accuracy.

    Settings: every --w with CFG alone (tag w<w>), then every nonzero --cg-scale s on the
    conditional model at w = 0 (w0_cg<s>); --unconditional adds the null-label model at s = 0
    (uncond) and at every nonzero s (uncond_cg<s>). All settings share per-sample seeds. Writes
    results.jsonl/.csv/.json/.md, sweep.png, grids/ and samples/ under --out; rerunning the same
    command resumes (finished settings are skipped, a cut-short one restarts at its last chunk).
    """
    from .api import load
    from .experiments.sweep import grid_settings, run_sweep

    method = kw["method"]
    spec = _pop_spec(kw)
    sampling = _pop_sampling(kw)
    cg_scales = parse_floats(cg_text, "--cg-scale")
    settings = grid_settings(strengths(w_text, scale_text, "0,0.1,0.2,0.3,0.5,1,2,3,4", method), cg_scales,
                             unconditional, guidance=spec)
    from .training.distributed import init_runtime, shutdown

    rt = init_runtime(device)  # one process, or this rank of a torchrun job (a share of every setting's chunks)
    pipe = load(checkpoint, classifier=classifier, guide=guide_path, device=rt.device)
    sampling = _own_steps(sampling, pipe.net)
    if any(cg_scales) and pipe.classifier is None:
        raise click.BadParameter("classifier guidance needs --classifier PATH", param_hint="--cg-scale")
    for turn in (True, False):  # rank 0 computes (and caches) the reference statistics; the others read them
        if rt.is_main == turn:
            evaluator, ref = metrics_setup(pipe.sample_shape, reference, features, evaluator_path, str(rt.device),
                                           resize_reference)
        rt.barrier()
    rows = run_sweep(pipe, settings, n=n, out=Path(out), sampling=sampling, evaluator=evaluator, reference=ref,
                     progress=not no_progress, plot=not no_plot, runtime=rt)
    shutdown()
    if not rt.is_main:
        return
    width = max(14, *(len(r["tag"]) + 2 for r in rows))
    click.echo(f"{'setting':<{width}}{'FID':>9}{'IS':>14}{'prec':>7}{'recall':>7}{'acc':>7}{'NFE':>6}")
    def num(r: dict[str, Any], key: str, width: int, fmt: str) -> str:
        return f"{r[key]:>{width}{fmt}}" if r.get(key) is not None else f"{'-':>{width}}"

    for r in rows:  # IS and accuracy are missing without class probabilities (Inception features)
        is_ = f"{r['is_mean']:>8.3f}±{r['is_std']:<5.3f}" if r.get("is_mean") is not None else f"{'-':>14}"
        click.echo(f"{r['tag']:<{width}}{num(r, 'fid', 9, '.3f')}{is_}{num(r, 'precision', 7, '.3f')}"
                   f"{num(r, 'recall', 7, '.3f')}{num(r, 'accuracy', 7, '.3f')}{num(r, 'nfe', 6, 'g')}")
    plot = "" if no_plot else f", plot: {Path(out) / 'sweep.png'}"
    click.echo(f"results: {Path(out) / 'results.csv'} (and .md){plot}")


@cli.command()
@click.option("--samples", required=True, type=click.Path(dir_okay=False),
              help=".npz with 'images' uint8 (N, H, W[, C]) and optional 'labels'.")
@click.option("--evaluator", "evaluator_path", type=click.Path(dir_okay=False),
              help="A classifier trained by train-classifier (class accuracy and IS at its clean end), or MNIST "
                   "evaluator weights (default: the shipped evaluator, for MNIST).")
@_metrics_opts
def evaluate(samples: str, evaluator_path: str | None, reference: str | None, features: str,
             resize_reference: bool) -> None:
    """Print the metrics (FID, KID, precision/recall against a reference set; IS and class accuracy with a
    classifier) of samples as JSON."""
    from .experiments.sweep import evaluate_samples
    from .images import load_samples

    x, _ = load_samples(Path(samples))
    net, ref = metrics_setup(tuple(x.shape[1:]), reference, features, evaluator_path,
                             resize_reference=resize_reference)
    click.echo(json.dumps(evaluate_samples(samples, evaluator=net, reference=ref), indent=1))


@cli.command("reference-stats")
@click.argument("reference")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The statistics file (.npz).")
@click.option("--features", type=click.Choice(["mnist", "inception"]), default="inception", show_default=True)
@click.option("--image-size", type=int, help="Resize the reference images to this size first.")
def reference_stats_cmd(reference: str, out: str, features: str, image_size: int | None) -> None:
    """Write a reference set's feature statistics once (mu, sigma and a feature subset) for reuse as
    --reference."""
    from .experiments.sweep import feature_net
    from .metrics.reference_stats import load_reference, save_stats

    shape = (1, 28, 28) if features == "mnist" else (3, image_size or 299, image_size or 299)
    net = feature_net(features, shape)
    stats = load_reference(reference, net, image_size=image_size)
    click.echo(str(save_stats(out, stats)))


def main() -> None:
    """Entry point: user errors (bad values, missing files) end in one clear line, not a traceback."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted: the last checkpoint is intact; continue with --resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
