"""Guidance sweeps: sample a model at several guidance settings with the *same* per-sample seeds,
score every setting (FID, IS, precision/recall, class accuracy) and tabulate and plot the trade-off
(CFG paper, Table 1 and Fig. 2; Dhariwal & Nichol, Table 4).

Layout of a sweep directory ``out``::

    results.jsonl                one JSON row per finished setting, appended as each one finishes
    results.csv, results.json    the finished rows of this configuration, written at the end
    results.md                   the same rows as a Markdown table (best FID, IS, accuracy in bold)
    sweep.png                    FID / IS / precision & recall vs guidance strength, FID-vs-IS frontier
    report.html                  the table, the plot and every grid in one self-contained page
    grids/<tag>.png              first 10 samples per class, one row per class
    samples/<tag>.npz            all samples of a setting (``images`` uint8 NHWC, ``labels``)
    samples/<tag>/chunk-XXXX.npz the same samples in chunks, written as they are made

A sweep is resumable: a setting whose row (same tag, ``n`` and sampling configuration, same
evaluator and reference) is already in ``results.jsonl`` is skipped; a setting cut short restarts
from its last finished chunk (each chunk records the configuration it was made with). One folder
holds one *sampling* configuration (model, sampler, steps, seed, ...): chunks of another are never
overwritten, the sweep stops and says what differs. ``n``, the evaluator and the reference may
change (rows are kept per configuration; ``samples/<tag>.npz`` holds the latest ``n``). Delete
``samples/<tag>/`` once a sweep is done to save disk.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from ..api import Pipeline, check_combination
from ..fileio import atomic_write_bytes, atomic_write_text
from ..guidance.spec import GuidanceSpec, num_text
from ..images import from_uint8, load_samples, save_grid, to_uint8
from ..metrics import FeatureNet, ReferenceStats, extract, mnist_reference_stats, sample_metrics, weights_hash
from ..nets.protocol import GuidedNetwork
from ..sampling import SamplingConfig
from ..training.distributed import Runtime
from ..validate import positive_int

__all__ = ["Setting", "run_sweep", "evaluate_samples", "default_evaluator", "grid_settings", "read_rows",
           "markdown_table"]

RESULTS = "results.jsonl"
# Bumped whenever sample_metrics changes what it computes, so older rows are scored again (from the
# kept chunks, without sampling). 2: precision/recall on seeded random subsets, not the first rows.
METRICS_VERSION = 3
# Columns first in results.csv (others follow alphabetically).
COLUMNS = ["tag", "method", "w", "cg_scale", "unconditional", "n", "fid", "is_mean", "is_std", "precision",
           "recall", "accuracy", "nfe", "sample_seconds", "metrics_seconds", "sampler", "steps", "seed"]


@dataclass(frozen=True)
class Setting:
    """One guidance setting. ``w``: the CFG paper's weight (0 = the conditional model; for CFG++ its
    lambda is ``1 + w``); ``cg_scale``: classifier-guidance scale ``s`` (0 = off); ``unconditional``:
    sample the null label (then ``w`` must be 0 and only classifier guidance steers); ``guidance``:
    the method (plain CFG by default)."""

    w: float
    cg_scale: float = 0.0
    unconditional: bool = False
    guidance: GuidanceSpec = GuidanceSpec()

    def __post_init__(self) -> None:
        w, s = float(self.w) + 0.0, float(self.cg_scale) + 0.0  # + 0.0 turns -0.0 into 0.0
        if not math.isfinite(w) or w < -1:
            raise ValueError(f"w must be a finite number >= -1, got {self.w!r}")
        if not math.isfinite(s) or s < 0:
            raise ValueError(f"cg_scale must be a finite number >= 0, got {self.cg_scale!r}")
        if self.unconditional and w != 0:
            raise ValueError(f"an unconditional setting takes no CFG weight, got w={self.w!r}")
        if not isinstance(self.guidance, GuidanceSpec):
            raise TypeError(f"guidance must be a GuidanceSpec, got {type(self.guidance).__name__}")
        self.guidance.make_rule().check(w)
        object.__setattr__(self, "w", w)
        object.__setattr__(self, "cg_scale", s)
        object.__setattr__(self, "unconditional", bool(self.unconditional))

    def asdict(self) -> dict[str, Any]:
        """JSON fields; ``guidance`` (only the fields that differ from plain CFG) only when not plain."""
        d: dict[str, Any] = {"w": self.w, "cg_scale": self.cg_scale, "unconditional": self.unconditional}
        if not self.guidance.is_plain:
            d["guidance"] = self.guidance.asdict()
        return d

    @property
    def tag(self) -> str:
        """Stable file-name-safe name: ``w0.5``, ``w0_cg3``, ``uncond``, ``uncond_cg3``, ``apg-b-0.5-r15-e0_w2``."""
        base = "uncond" if self.unconditional else f"w{num_text(self.w)}"
        base += f"_cg{num_text(self.cg_scale)}" if self.cg_scale else ""
        return base if self.guidance.is_plain else f"{self.guidance.tag}_{base}"

    @property
    def method(self) -> str:
        """``cfg``, ``cg``, ``cfg+cg``, ``uncond`` or ``uncond+cg``; another method's tag (``apg-...``)."""
        if not self.guidance.is_plain:
            return self.guidance.tag + ("+cg" if self.cg_scale else "")
        if self.unconditional:
            return "uncond+cg" if self.cg_scale else "uncond"
        if self.cg_scale:
            return "cfg+cg" if self.w else "cg"
        return "cfg"


def grid_settings(ws: Iterable[float], cg_scales: Iterable[float] = (0.0,),
                  unconditional: bool = False, guidance: GuidanceSpec | None = None) -> list[Setting]:
    """The CLI's settings: each ``w`` with the guidance method alone (plain CFG by default), then each
    nonzero ``cg_scale`` on the conditional model at ``w = 0``; with ``unconditional``, also the
    null-label model at scale 0 and at each nonzero ``cg_scale`` (Dhariwal & Nichol, Table 4).
    Duplicates are dropped."""
    scales = [float(s) for s in cg_scales]
    spec = guidance or GuidanceSpec()
    out = [Setting(w, guidance=spec) for w in ws] + [Setting(0.0, s, guidance=spec) for s in scales if s]
    if unconditional:
        out += [Setting(0.0, 0.0, True, spec)] + [Setting(0.0, s, True, spec) for s in scales if s]
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------------------------ defaults
def _mnist_shaped(shape: tuple[int, ...]) -> None:
    if tuple(shape) != (1, 28, 28):
        raise ValueError(f"the default evaluator and reference are for 1x28x28 MNIST images, got "
                         f"{'x'.join(map(str, shape))}: pass evaluator= and reference= for other data")


def feature_net(kind: str, shape: tuple[int, ...], device: torch.device | str = "cpu") -> FeatureNet:
    """The feature network ``kind``: ``mnist`` (the shipped domain evaluator), ``inception`` (Inception-v3,
    the ``inception`` extra) or ``auto`` (``mnist`` for 1x28x28 samples, else ``inception``)."""
    if kind == "auto":
        kind = "mnist" if tuple(shape) == (1, 28, 28) else "inception"
    if kind == "mnist":
        _mnist_shaped(shape)
        from ..metrics import load_evaluator

        return load_evaluator(device=device)
    if kind == "inception":
        from ..metrics import InceptionFeatures

        try:
            return InceptionFeatures().to(device)
        except ImportError as e:
            raise ValueError(f"Inception features need the inception extra: pip install 'diffguide[inception]' "
                             f"({e})") from None
    raise ValueError(f"unknown feature network {kind!r}; expected auto, mnist or inception")


class WithClassifier(nn.Module):
    """A feature network's features with a diffguide classifier's class probabilities, read at the
    classifier's clean end (the top of its training schedule's ``lam`` range): class accuracy and IS
    for data of the user's own classes."""

    def __init__(self, features: FeatureNet, classifier: nn.Module) -> None:
        super().__init__()
        from ..schedule import get_schedule, lam_range

        self.base, self.classifier = features, classifier
        self.name = f"{features.name}+classifier-{weights_hash(classifier)}"
        self.lam_clean = lam_range(getattr(classifier, "train_schedule", None) or get_schedule("continuous"))[1]
        self.feature_dim = getattr(features, "feature_dim", None)
        self.eval()

    def features(self, x: Tensor) -> Tensor:
        return self.base.features(x)

    def probs(self, x: Tensor) -> Tensor:
        lam = torch.full((x.shape[0],), self.lam_clean, device=x.device)
        return torch.softmax(self.classifier(x, lam).float(), dim=-1)


def default_evaluator(evaluator: FeatureNet | None, reference: ReferenceStats | None, shape: tuple[int, ...],
                      device: torch.device | str = "cpu") -> tuple[FeatureNet, ReferenceStats]:
    """Fill in the shipped MNIST evaluator and the (cached) MNIST test-split reference statistics
    under it, checking that ``shape`` ``(C, H, W)`` is MNIST's when either is left out."""
    if evaluator is None or reference is None:
        _mnist_shaped(shape)
    if evaluator is None:
        evaluator = feature_net("mnist", shape, device)
    if reference is None:
        reference = mnist_reference_stats("test", evaluator)
    return evaluator, reference


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _evaluator_id(evaluator: FeatureNet) -> str:
    try:
        return f"{evaluator.name}:{weights_hash(evaluator)}"
    except TypeError:
        return str(evaluator.name)


# ------------------------------------------------------------------------------------- files
def _save_npz(path: Path, images: np.ndarray, labels: np.ndarray, meta: dict[str, Any]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, labels=labels.astype(np.int64), meta=np.asarray(json.dumps(meta)))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def _load_chunk(path: Path, key: dict[str, Any], labels: np.ndarray) -> tuple[np.ndarray, float, float | None] | None:
    """``(images uint8 NHWC, seconds, network evaluations per sample or None)`` of the chunk at ``path``
    if it was made with ``key`` for ``labels``; None if it is missing or unreadable (make it again). A
    readable chunk of another configuration is never overwritten: that raises, naming what differs."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            same_labels = np.array_equal(f["labels"], labels)
            images = f["images"]
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # missing or damaged: make it again
    theirs = meta.get("key") if isinstance(meta, dict) else None
    theirs = theirs if isinstance(theirs, dict) else {}
    if theirs != key or not same_labels:
        diff = [k for k in sorted(set(key) | set(theirs)) if theirs.get(k) != key.get(k)]
        what = ", ".join(f"{k}: {theirs.get(k)!r} there, {key.get(k)!r} now" for k in diff) or "labels"
        raise ValueError(f"{path} holds samples of another sweep configuration ({what}); sweep into another "
                         f"--out, or delete {path.parent} to replace them")
    if images.dtype != np.uint8 or len(images) != len(labels):
        return None
    nfe = meta.get("evaluations")
    return images, float(meta.get("seconds", 0.0)), None if nfe is None else float(nfe)


def _outputs(net: FeatureNet, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``net``'s features and class probabilities (``None`` if it has none) of uint8 NHWC ``images``."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    try:
        probs: np.ndarray | None = extract(net, x, output="probs")
    except NotImplementedError:
        probs = None
    return extract(net, x), probs


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a ``results.jsonl`` (a torn last line from an interrupted write is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{i}: skipping an unreadable row", stacklevel=2)
    return rows


def _append_row(path: Path, row: dict[str, Any]) -> None:
    text = json.dumps(row) + "\n"
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                text = "\n" + text  # after a torn line
    with path.open("a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _order(row: dict[str, Any]) -> tuple[Any, ...]:
    # plain CFG by w, then CG (conditional) by (w, s), then unconditional by s; then other methods, each by w
    method = json.dumps(row.get("guidance") or {}, sort_keys=True)
    return (method != "{}", method, bool(row["unconditional"]), bool(row["cg_scale"]), row["w"], row["cg_scale"])


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of a sweep as a Markdown table, one line per setting in the given order; the best
    FID (lowest), IS and class accuracy (highest) are in bold. Missing metrics show as '-'."""
    if not rows:
        raise ValueError("no rows to tabulate")
    best = {}
    for key, pick in (("fid", min), ("is_mean", max), ("accuracy", max)):
        vals = [r[key] for r in rows if r.get(key) is not None]
        best[key] = pick(vals) if vals else None

    def cell(r: dict[str, Any], key: str, fmt: str) -> str:
        v = r.get(key)
        if v is None:
            return "-"
        text = format(v, fmt)
        if key == "is_mean" and r.get("is_std") is not None:
            text += f" ± {r['is_std']:.2f}"
        return f"**{text}**" if key in best and v == best[key] else text

    lines = ["| setting | method | w | s | n | class accuracy | FID | IS | precision | recall | NFE | sampling s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["tag"], r["method"], f"{r['w']:g}", f"{r['cg_scale']:g}", str(r.get("n", "-")),
                 cell(r, "accuracy", ".3f"), cell(r, "fid", ".2f"), cell(r, "is_mean", ".2f"),
                 cell(r, "precision", ".3f"), cell(r, "recall", ".3f"), cell(r, "nfe", "g"),
                 cell(r, "sample_seconds", ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_tables(out: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(out / "results.json", json.dumps(rows, indent=1) + "\n")
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    cols += sorted({k for r in rows for k in r} - set(cols))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "results.md", markdown_table(rows))


def _grid(images: np.ndarray, labels: np.ndarray, path: Path, per_class: int = 10) -> Path:
    """First ``per_class`` samples of each class present, one row per class (equal row lengths)."""
    idx = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    per = min(len(i) for i in idx)
    sel = np.concatenate([i[:per] for i in idx])
    x = from_uint8(torch.from_numpy(images[sel]).permute(0, 3, 1, 2))
    return save_grid(x, path, nrow=per)


# ------------------------------------------------------------------------------------- sweep
def run_sweep(pipe: Pipeline, settings: Sequence[Setting], *, n: int, out: str | os.PathLike[str],
              sampling: SamplingConfig | None = None, chunk_size: int | None = None,
              evaluator: FeatureNet | None = None, reference: ReferenceStats | None = None,
              labels: Sequence[int] | Tensor | None = None, progress: bool = True, plot: bool = True,
              runtime: Runtime | None = None, **options: Any) -> list[dict[str, Any]]:
    """Sample ``n`` images per setting and score them; returns one row per setting, in order.

    Every setting uses the same labels and the same per-sample noise (sample ``i`` is seeded by
    ``(seed, i)``), so settings differ only by guidance. ``labels`` default to ``i mod K``
    (balanced); a shorter sequence is repeated to length ``n``. Samples are made ``chunk_size``
    (default: the config's ``batch_size``) at a time and each chunk is saved, so an interrupted sweep
    resumes where it stopped (see the module docstring for the files and the resume rule).

    How to sample is ``sampling`` (a :class:`~diffguide.sampling.SamplingConfig`), with any field or
    sampler option given as a keyword overriding it (``sampler="ddim", steps=25``), as in
    :func:`~diffguide.api.sample_images`. ``evaluator`` (a :class:`~diffguide.metrics.FeatureNet` in
    eval mode) and ``reference`` default to the shipped MNIST evaluator and the MNIST test split's
    statistics under it. A row holds ``fid``, ``is_mean``, ``is_std``, ``precision``, ``recall``,
    ``accuracy`` (evaluator's argmax vs the requested labels), ``nfe`` (network evaluations per
    sample) and the configuration. At the end ``results.csv``/``results.json`` hold every finished row
    of this configuration in ``out`` (also settings from earlier runs), and ``sweep.png`` plots them.

    Sharded (``runtime``, one rank of a torchrun job; every rank calls this with the same arguments):
    rank ``r`` makes the chunks ``j`` with ``j mod world = r``, and rank 0 scores each setting once all
    its chunks are on disk and writes every table. The chunks are the ones a single process makes (the
    same global sample indices, hence seeds), so the samples are bit-identical and the metrics equal.
    """
    rt = runtime or Runtime()
    cfg = SamplingConfig.make(sampling, **options)
    if isinstance(n, bool) or not isinstance(n, int) or n < 4:
        raise ValueError(f"n must be an integer >= 4 (precision/recall use 3 nearest neighbours), got {n!r}")
    chunk = positive_int(cfg.batch_size if chunk_size is None else chunk_size, "chunk_size")
    settings = list(dict.fromkeys(settings))
    if not settings:
        raise ValueError("give at least one setting")
    for s in settings:
        if not isinstance(s, Setting):
            raise TypeError(f"settings must be Setting instances, got {type(s).__name__}")
        if s.cg_scale and pipe.classifier is None:
            raise ValueError(f"setting {s.tag} uses classifier guidance but the pipeline has no classifier")
        check_combination(s.guidance.make_rule(), cfg, bool(s.cg_scale))
    K = pipe.num_classes
    if labels is None:
        y = torch.arange(n) % K
    else:
        y = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if y.numel() == 0:
            raise ValueError("labels must not be empty")
        y = y[torch.arange(n) % y.numel()]
    if (y < 0).any() or (y >= K).any():
        raise ValueError(f"labels must lie in [0, {K - 1}] for this {K}-class model")
    y_np = y.numpy()
    evaluator, reference = default_evaluator(evaluator, reference, pipe.sample_shape, pipe.device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    # What the samples depend on (chunk files are reused only if it matches) ...
    made_by: dict[str, Any] = {
        **cfg.key(pipe.device), "model": weights_hash(pipe.net),
        "classifier": weights_hash(pipe.classifier) if pipe.classifier is not None else None,
    }
    if pipe.guide is not None:  # autoguidance: every setting is guided by this network
        made_by["guide"] = weights_hash(pipe.guide)
    if cfg.grid_kind != "schedule":  # the grid's range comes from the model's schedule: record the grid itself
        made_by["lams"] = [round(x, 9) for x in cfg.lams(cast(GuidedNetwork, pipe.net).train_schedule).tolist()]
    # ... and what a result row depends on besides the setting.
    config = {"n": n, **made_by, "labels": _digest(y_np), "evaluator": _evaluator_id(evaluator),
              "reference": _digest(reference.mu, reference.sigma, reference.features), "metrics": METRICS_VERSION}

    def matches(row: dict[str, Any]) -> bool:
        return all(row.get(k) == v for k, v in config.items())

    results = out / RESULTS
    done = {r["tag"]: r for r in read_rows(results) if matches(r)}
    starts = list(range(0, n, chunk))
    bar = None
    if progress and rt.is_main:
        from tqdm import tqdm

        bar = tqdm(total=len(settings) * len(starts), unit="chunk", dynamic_ncols=True)
    rows = []
    try:
        for s in settings:
            if bar is not None:
                bar.set_description(s.tag)
            if s.tag in done:
                rows.append(done[s.tag])
                if bar is not None:
                    bar.update(len(starts))
                continue
            key = {**made_by, "setting": s.asdict()}
            parts, seconds, evaluations = [], 0.0, []
            for j, i in enumerate(starts):
                path = out / "samples" / s.tag / f"chunk-{j:04d}.npz"
                yc = y_np[i:i + chunk]
                got = _load_chunk(path, {**key, "first_index": i}, yc) if j % rt.world == rt.rank else None
                if got is None and j % rt.world == rt.rank:
                    t0 = time.perf_counter()
                    count: dict[str, int] = {}
                    x = pipe.sample(y[i:i + chunk], s.w, cg_scale=s.cg_scale, unconditional=s.unconditional,
                                    sampling=cfg, first_index=i, counter=count, **s.guidance.kwargs())
                    # uint8 NHWC: the metrics always see the stored images, resumed or not
                    imgs = to_uint8(x)
                    nfe = count["evaluations"] / len(yc)
                    got = (imgs, time.perf_counter() - t0, nfe)
                    _save_npz(path, imgs, yc, {"key": {**key, "first_index": i}, "seconds": got[1],
                                               "evaluations": nfe})
                if got is not None:
                    parts.append(got[0])
                    seconds += got[1]
                    evaluations.append(got[2])
                if bar is not None:
                    bar.update(1)
            feats: np.ndarray | None = None
            probs: np.ndarray | None = None
            if rt.distributed:  # each rank extracts its chunks' features; rank 0 gathers them (not the images)
                mine = [j for j in range(len(starts)) if j % rt.world == rt.rank]
                local = _outputs(evaluator, np.concatenate(parts)) if parts else (None, None)
                shares = rt.gather((mine, *local))  # every rank saved its chunks before this collective
                if shares is None:
                    continue
                by_chunk: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
                for js, f, pr in shares:
                    sizes = [len(y_np[starts[j]:starts[j] + chunk]) for j in js]
                    cut = np.cumsum([0, *sizes])
                    for j, a, b in zip(js, cut[:-1], cut[1:], strict=True):
                        by_chunk[j] = (f[a:b], None if pr is None else pr[a:b])
                feats = np.concatenate([by_chunk[j][0] for j in range(len(starts))])
                got_probs = [q for j in range(len(starts)) if (q := by_chunk[j][1]) is not None]
                probs = np.concatenate(got_probs) if len(got_probs) == len(starts) else None
                parts, seconds, evaluations = [], 0.0, []
                for j, i in enumerate(starts):  # the other ranks' chunks, as they wrote them
                    path = out / "samples" / s.tag / f"chunk-{j:04d}.npz"
                    got = _load_chunk(path, {**key, "first_index": i}, y_np[i:i + chunk])
                    if got is None:
                        raise RuntimeError(f"chunk {path} is missing after every rank finished {s.tag}")
                    parts.append(got[0])
                    seconds += got[1]
                    evaluations.append(got[2])
            images = np.concatenate(parts)
            samples_path = out / "samples" / f"{s.tag}.npz"
            _save_npz(samples_path, images, y_np, {"setting": s.asdict(), **config})
            grid_path = _grid(images, y_np, out / "grids" / f"{s.tag}.png")
            t0 = time.perf_counter()
            metrics = sample_metrics(evaluator, torch.from_numpy(images).permute(0, 3, 1, 2), reference, y,
                                     features=feats, probs=probs)
            nfe_mean = None if None in evaluations else round(float(np.mean(evaluations)), 3)  # type: ignore[arg-type]
            row = {"tag": s.tag, "method": s.method, **s.asdict(), **metrics, "nfe": nfe_mean,
                   "sample_seconds": round(seconds, 3), "metrics_seconds": round(time.perf_counter() - t0, 3),
                   "grid": str(grid_path.relative_to(out)), "samples": str(samples_path.relative_to(out)),
                   **config, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
            _append_row(results, row)
            done[s.tag] = row
            rows.append(row)
    finally:
        if bar is not None:
            bar.close()

    if not rt.is_main:
        return rows  # rank 0 scores and writes
    # Every finished row of this configuration (last one per tag wins), CFG then CG, by strength.
    table = sorted({r["tag"]: r for r in read_rows(results) if matches(r)}.values(), key=_order)
    _write_tables(out, table)
    if plot:
        from .plots import plot_sweep

        plot_sweep(table, out / "sweep.png", title=f"{cfg.name}, {cfg.steps} steps, n = {n}, {evaluator.name}")
    from .report import write_report

    write_report(out, table, title=f"Sweep: {cfg.describe()}, n = {n}, {evaluator.name}", plot=plot)
    return rows


def evaluate_samples(npz_path: str | os.PathLike[str], *, evaluator: FeatureNet | None = None,
                     reference: ReferenceStats | None = None) -> dict[str, Any]:
    """Metrics of samples made elsewhere: an ``.npz`` with ``images`` uint8 ``(N, H, W[, C])`` and
    optional ``labels`` (then ``accuracy`` is included). Defaults as in :func:`run_sweep`."""
    x, labels = load_samples(Path(npz_path))
    if len(x) < 4:
        raise ValueError(f"{npz_path}: need at least 4 samples for precision/recall, got {len(x)}")
    if labels is not None and labels.shape != (len(x),):
        raise ValueError(f"{npz_path}: 'labels' has shape {tuple(labels.shape)}, expected ({len(x)},)")
    evaluator, reference = default_evaluator(evaluator, reference, tuple(x.shape[1:]))
    return {"samples": str(npz_path), "n": len(x), **sample_metrics(evaluator, x, reference, labels),
            "evaluator": _evaluator_id(evaluator)}
