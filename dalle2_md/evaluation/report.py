"""The written evaluation of one set of generated spectrograms.

Owns `evaluate_samples` (every measure of `metrics.py` on real train, real test and generated
images, with the real floor or reference each is read against -> metrics.json, report.md and the
plots accuracy_per_user.png, kinematics.png, samples_grid.png), the optional stage-by-stage
identity rows (see `stages.py`), and
`load_generated_folder`, which reads generated PNGs named `<label>_<nnn>.png` back from disk.

Images everywhere are model-space tensors (N, C, H, W) in [-1, 1] with user class indices (N,).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from dalle2_md.data.display import colourise, tile_grid
from dalle2_md.evaluation.metrics import (
    KINEMATIC_FIELDS,
    background_defects,
    background_range,
    classification_accuracy_score,
    diversity,
    domain_fid,
    kernel_distance,
    kid_subset_size,
    kinematic_fidelity,
    memorisation,
    to_scalar_images,
)
from dalle2_md.evaluation.recogniser import Recogniser, RecogniserTrainConfig, _check_labelled, accuracy, extract_features
from dalle2_md.utils import DataError, UserError, atomic_write, checked_fields, plain_json

BACKGROUND_QUANTILES = (0.01, 0.99)  # the real train images' range of background levels
KID_SUBSETS = 100


# --------------------------------------------------------------------------------------------
# generated samples on disk

# <label>_<nnn>.<ext>: ID_5_003.png, user_5_003.png, 5_003.png
GENERATED_NAME_RE = re.compile(r"^(?P<label>.+?)_(?P<num>\d+)$")


def load_generated_folder(folder: str | Path, label_map, image_size: int, colormap: str | None = "jet") -> tuple[torch.Tensor, torch.Tensor, list[Path]]:
    """Read generated PNGs named `<label>_<nnn>.png` (ID_5_003.png, user_5_003.png).

    Args:
        folder: folder of generated images (searched recursively).
        label_map: the model's `LabelMap` (or its dict); labels are matched by name or number.
        image_size: side the images are resized to (the recogniser's).
        colormap: colormap to invert colour images through ("none": keep RGB).
    Returns:
        (images (N, C, H, W) in [-1, 1], user indices (N,), file paths).
    """
    from dalle2_md.data.colormap import check_colormap_residual
    from dalle2_md.data.dataset import _decode, _normalise_colormap
    from dalle2_md.data.labels import LabelMap
    from dalle2_md.data.scanning import IMAGE_EXTENSIONS

    if isinstance(label_map, dict):
        label_map = LabelMap.from_dict(label_map)
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"generated-samples folder {folder} does not exist; pass the folder the sample command wrote")
    colormap = _normalise_colormap(colormap)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder} holds no images; expected generated PNGs named <user>_<nnn>.png (e.g. ID_5_003.png)")
    images, labels, bad, residuals = [], [], [], []
    for path in files:
        m = GENERATED_NAME_RE.match(path.stem)
        try:
            if m is None:
                raise DataError("name is not <user>_<nnn>")
            label = label_map.index_of(m["label"])
        except DataError:
            bad.append(path.name)
            continue
        try:
            arr, residual = _decode(path, int(image_size), colormap)
        except Exception as e:  # one unreadable file is reported with the others, below
            bad.append(f"{path.name} (unreadable: {type(e).__name__})")
            continue
        if residual is not None:
            residuals.append(residual)
        images.append(torch.from_numpy(np.ascontiguousarray(arr)).float() * 2.0 - 1.0)
        labels.append(label)
    if bad:
        shown = ", ".join(bad[:8]) + (f", ... ({len(bad) - 8} more)" if len(bad) > 8 else "")
        raise DataError(
            f"{folder}: {len(bad)} file(s) are not readable generated samples of a known user: {shown}. "
            f"Name them <user>_<nnn>.png with a user of the model ({', '.join(label_map.names[:6])}...), or remove them"
        )
    if residuals:
        check_colormap_residual(float(np.mean(residuals)), f"{folder} (generated samples)", colormap)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), files


# --------------------------------------------------------------------------------------------
# the whole evaluation


def _label_names(label_map, num: int) -> list[str]:
    if label_map is None:
        return [str(i) for i in range(num)]
    if isinstance(label_map, dict):
        return list(label_map["names"])
    return list(label_map.names)


def _plot_accuracy(path: Path, names: list[str], users: list[int], real: dict, gen: dict, a_real: float, a_gen: float, chance: float) -> None:
    from matplotlib.figure import Figure

    x = np.arange(len(users))
    fig = Figure(figsize=(max(6.0, 0.35 * len(users) + 2), 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(x - 0.2, [real.get(u, np.nan) for u in users], 0.4, label=f"real test (A_real={a_real:.2f})", color="tab:blue")
    ax.bar(x + 0.2, [gen.get(u, np.nan) for u in users], 0.4, label=f"generated (A_gen={a_gen:.2f})", color="tab:orange")
    ax.axhline(chance, color="grey", ls=":", lw=1, label=f"chance ({chance:.2f})")
    ax.set_xticks(x, [names[u] for u in users], rotation=90 if len(users) > 12 else 0)
    ax.set_ylim(0, 1.3)  # headroom so the legend never covers a bar at 1.0
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("identity accuracy")
    ax.set_title("Recogniser accuracy per user")
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    fig.savefig(path, dpi=110)


def _plot_kinematics(path: Path, kin: dict, names: list[str]) -> None:
    from matplotlib.figure import Figure

    labels = {"torso": "torso velocity (rows)", "max_envelope": "max envelope (rows)", "cadence": "cadence (steps / column)"}
    vals = kin["values"]
    fig = Figure(figsize=(11, 6.4), layout="constrained")
    axes = fig.subplots(2, 3)
    for j, k in enumerate(KINEMATIC_FIELDS):
        r, g = np.asarray(vals["real"][k], float), np.asarray(vals["gen"][k], float)
        both = np.concatenate([r, g])
        both = both[np.isfinite(both)]
        bins = np.histogram_bin_edges(both, bins=20) if len(both) else 10
        ax = axes[0, j]
        ax.hist(r[np.isfinite(r)], bins=bins, alpha=0.55, density=True, label="real", color="tab:blue")
        ax.hist(g[np.isfinite(g)], bins=bins, alpha=0.55, density=True, label="generated", color="tab:orange")
        ax.set_xlabel(labels[k])
        ax.set_title(f"{k}: mean rel. error {kin['mean_rel_error'][k]:.3f}", fontsize=9)
        ax.legend(fontsize=8)
        ax = axes[1, j]
        users = sorted(kin["per_user"])
        rm = [kin["per_user"][u][k]["real"] for u in users]
        gm = [kin["per_user"][u][k]["gen"] for u in users]
        ax.scatter(rm, gm, s=18, color="tab:purple")
        for u, a, b in zip(users, rm, gm):
            if len(users) <= 16:
                ax.annotate(names[u], (a, b), fontsize=6, xytext=(2, 2), textcoords="offset points")
        lo = np.nanmin(rm + gm) if users else 0.0
        hi = np.nanmax(rm + gm) if users else 1.0
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
        ax.set_xlabel(f"real per-user mean {k}")
        ax.set_ylabel(f"generated per-user mean {k}")
    fig.suptitle("Kinematics read back from the spectrograms: real vs generated")
    fig.savefig(path, dpi=110)


def _tile_spacing(h: int) -> tuple[int, int]:
    """White pixels between tiles, and between the real and the generated half."""
    pad = max(1, h // 16)
    return pad, 3 * pad


def _side_by_side_canvas(real, gen, users: list[int], per_user: int, colormap: str | None) -> np.ndarray:
    """uint8 RGB picture: one row per user, up to `per_user` real images on the left and as many
    generated ones on the right (images in [-1, 1])."""
    (ri, ru), (gi, gu) = real, gen
    h, w = ri.shape[-2:]
    pad, gap = _tile_spacing(h)
    canvas = np.full((len(users) * (h + pad), 2 * per_user * (w + pad) + gap, 3), 255, dtype=np.uint8)
    for r, u in enumerate(users):
        for side, (imgs, ids) in enumerate(((ri, ru), (gi, gu))):
            sel = imgs[ids == u][:per_user]
            if len(sel) == 0:
                continue
            # the grid's outer border is dropped: rows sit `pad` apart, the halves `gap` apart
            strip = tile_grid(colourise((sel + 1) / 2, colormap), nrow=per_user, padding=pad)[pad:-pad, pad:]
            x0 = side * (per_user * (w + pad) + gap)
            canvas[r * (h + pad) : r * (h + pad) + h, x0 : x0 + strip.shape[1]] = strip
    return canvas


def _plot_grid(path: Path, real, gen, names: list[str], users: list[int], per_user: int, colormap: str | None) -> None:
    from matplotlib.figure import Figure

    canvas = _side_by_side_canvas(real, gen, users, per_user, colormap)
    h, w = real[0].shape[-2:]
    pad, gap = _tile_spacing(h)
    width = canvas.shape[1]
    scale = 1.2 / max(h, 1)
    fig = Figure(figsize=(max(4.0, width * scale * 1.0 + 1.2), max(2.0, len(users) * (h + pad) * scale + 0.8)), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(canvas, interpolation="nearest")
    ax.set_yticks([r * (h + pad) + h / 2 for r in range(len(users))], [names[u] for u in users], fontsize=7)
    ax.set_xticks([per_user * (w + pad) / 2, per_user * (w + pad) + gap + per_user * (w + pad) / 2], ["real (train)", "generated"])
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    fig.savefig(path, dpi=110)


def _fid_or_note(recogniser, a, b, notes: list[str], what: str) -> float | None:
    try:
        return domain_fid(recogniser, a, b)
    except UserError as e:
        notes.append(f"{what}: not computed ({e})")
        return None


def _matched_train_rows(train_ids: torch.Tensor, gen_ids: torch.Tensor, seed: int) -> torch.Tensor:
    """Rows of a seeded draw of real train images, per user as many as the generated set has (at
    most all of the user's): real data at the generated set's size and user balance."""
    counts = torch.bincount(gen_ids.long().cpu(), minlength=int(train_ids.max()) + 1)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for u, n in enumerate(counts.tolist()):
        own = torch.nonzero(train_ids.cpu() == u).flatten()
        rows.append(own[torch.randperm(len(own), generator=g)[:n]])
    return torch.cat(rows)


def _matched_fid_floor(recogniser, tr, te, gen, notes: list[str], draws: int = 3) -> float | None:
    """FID of real train images vs real test as many per user as the generated set has (at most
    all of a user's), mean over `draws` seeded draws: what real data scores at the generated set's
    size and user balance. FID falls as a set grows, so a floor on every train image (usually
    several times the generated set) is out of reach of real data drawn at that size."""
    values = []
    for seed in range(draws):
        rows = _matched_train_rows(tr[1], gen[1], seed)
        value = _fid_or_note(recogniser, tr[0][rows], te[0], notes,
                             "FID size-matched real train vs real test")
        if value is None:
            return None
        values.append(value)
    return sum(values) / len(values)


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _fmt_kid(k: dict | None) -> str:
    return "n/a" if k is None else f"{k['mean']:.4g} ± {k['std']:.2g}"


def _cas_row(m: dict) -> list[str]:
    cas = m.get("cas")
    if cas is None:
        return []
    if "CAS" not in cas:
        return [f"| CAS (recogniser trained on generated only, real test) | n/a | {cas.get('note', 'not computed')} |"]
    return [f"| CAS (recogniser trained on {cas['num_train_images']} generated only, real test) | {_fmt(cas['CAS'])} | "
            f"A_real {_fmt(m['identity']['A_real'])}; CAS / A_real {_fmt(cas['CAS_over_A_real'])} (chance {_fmt(m['identity']['chance'])}) |"]


def _kid_row(kid: dict) -> list[str]:
    ratio = _fmt(kid["ratio"]) if kid["ratio"] is not None else "n/a (floor <= 0)"
    return [f"| domain KID gen vs real test (subsets of {kid.get('subset_size', 'n/a')}) | {_fmt_kid(kid['gen_vs_test'])} | "
            f"size-matched floor (real train vs test) {_fmt_kid(kid['train_vs_test_matched'])}; KID / floor {ratio} |"]


def _background_row(bg: dict) -> list[str]:
    lo, hi = (f"{100 * q:g}" for q in bg["quantiles"])
    return [f"| background defects gen (level outside real train's {lo}-{hi} % range) | {_fmt(bg['gen']['rate'])} | "
            f"real test {_fmt(bg['real_test']['rate'])}, real train {_fmt(bg['real_train']['rate'])} "
            f"(gen too light {_fmt(bg['gen']['too_light'])}, too dark {_fmt(bg['gen']['too_dark'])}) |"]


def _stage_rows(stages: dict | None, a_real: float) -> list[str]:
    """Summary-table rows of the stage-by-stage identity (none without it)."""
    if stages is None or "embedding" not in stages:
        return []
    chance = _fmt(stages["chance"])
    rows = [f"| embedding accuracy (real test, nearest user centroid) | {_fmt(stages['embedding'])} | chance {chance} |"]
    rows += [f"| prior accuracy, guidance {float(g):g} (nearest user centroid) | {_fmt(acc)} | chance {chance} |"
             for g, acc in stages["prior"].items()]
    rows += [f"| prior spread / real spread, guidance {float(g):g} (within-user, embedding space) | {_fmt(r)} | "
             f"1.0 = as varied as the real train embeddings |" for g, r in stages.get("prior_spread", {}).items()]
    rows += [f"| decoder accuracy on true test embeddings, guidance {float(g):g} | {_fmt(acc)} | "
             f"A_real {_fmt(a_real)} ({stages['num_decoded']} decoded) |" for g, acc in stages["decoder"].items()]
    return rows


def _write_report(path: Path, m: dict, names: list[str]) -> None:
    id_ = m["identity"]
    fid = m["fid"]
    lines = [
        "# dalle2-md evaluation",
        "",
        f"Real train {m['counts']['real_train']} images, real test {m['counts']['real_test']}, "
        f"generated {m['counts']['generated']}; {m['counts']['users']} users.",
        "",
        "## Summary",
        "",
        "| measure | value | reference |",
        "|---|---|---|",
        f"| identity accuracy A_gen | {_fmt(id_['A_gen'])} | A_real {_fmt(id_['A_real'])} (chance {_fmt(id_['chance'])}) |",
        f"| A_gen / A_real | {_fmt(id_['A_gen_over_A_real'])} | 1.0 = as recognisable as real |",
        *_cas_row(m),
        *_stage_rows(m.get("stages"), id_["A_real"]),
        f"| domain FID gen vs real test | {_fmt(fid['gen_vs_test'])} | floor (real train vs test) {_fmt(fid['train_vs_test'])}; "
        f"size-matched {_fmt(fid.get('train_vs_test_matched'))} |",
        *_kid_row(m["kid"]),
        f"| diversity (features) gen | {_fmt(m['diversity']['features']['gen_mean'])} | real test {_fmt(m['diversity']['features']['real_mean'])} |",
        f"| diversity (pixels) gen | {_fmt(m['diversity']['pixels']['gen_mean'])} | real test {_fmt(m['diversity']['pixels']['real_mean'])} |",
        f"| likely copies (pixels) | {_fmt(m['memorisation']['pixels']['copy_fraction'])} | ~{m['memorisation']['pixels']['quantile']} for fresh data |",
        f"| likely copies (features) | {_fmt(m['memorisation']['features']['copy_fraction'])} | ~{m['memorisation']['features']['quantile']} for fresh data |",
        f"| NN-distance ratio (pixels) | {_fmt(m['memorisation']['pixels']['nn_ratio'])} | ~1 for fresh data, << 1 = copying |",
        *_background_row(m["background"]),
    ]
    for k in KINEMATIC_FIELDS:
        lines.append(
            f"| kinematic rel. error, {k} | {_fmt(m['kinematics']['gen']['mean_rel_error'][k])} | "
            f"real test vs train {_fmt(m['kinematics']['floor']['mean_rel_error'][k])} |"
        )
    lines += ["", "## Per user", "", "| user | A_real | A_gen | diversity gen / real | torso err | envelope err | cadence err |", "|---|---|---|---|---|---|---|"]
    div = m["diversity"]["features"]
    for u in m["users"]:
        k = m["kinematics"]["gen"]["per_user"].get(u)
        dg, dr = div["gen_per_user"].get(u), div["real_per_user"].get(u)
        ratio = dg / dr if dg is not None and dr else None
        errs = [_fmt(k[q]["rel_error"]) if k else "n/a" for q in KINEMATIC_FIELDS]
        lines.append(f"| {names[u]} | {_fmt(id_['per_user_real'].get(u))} | {_fmt(id_['per_user_gen'].get(u))} | {_fmt(ratio)} | " + " | ".join(errs) + " |")
    lines += [
        "",
        "## How to read this",
        "",
        "- Identity accuracy uses a recogniser trained on real train images only; generated images are labelled "
        "with the user they were conditioned on.",
        "- Stage by stage (when a model was given): the prior's samples and the real test images' embeddings are "
        "classified by the nearest real-train user centroid in embedding space; the decoder is given the true "
        "embeddings of real test images and its images are judged by the recogniser, so a low value there is the "
        "decoder's, not the prior's.",
        "- CAS: a second recogniser, same shape and settings as the first, trained on generated images only (per user "
        "at most as many as real train has) and tested on real test; it keeps its final weights, no real image is seen.",
        "- FID and KID are computed on recogniser features; compare them with their floors (two real sets), not with "
        "Inception values. KID (unbiased, cubic kernel) is mean ± std over subsets and can dip below 0 for equal sets.",
        "- A background defect is an image whose background level (mean of its darker half) lies outside the real "
        "train images' 1-99 % range; real images score about 0.02.",
        f"- A generated image counts as a likely copy when its nearest training image is closer than the "
        f"{m['memorisation']['pixels']['quantile']:.0%} quantile of real-test-to-train nearest distances.",
        "- Kinematics are read in pixel units (torso line, 95th-percentile upper envelope, step rate of the envelope) "
        "and compared per user with the real training images; the floor compares real test with real train.",
        "",
        "Plots: `accuracy_per_user.png`, `kinematics.png`, `samples_grid.png`.",
    ]
    if m["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in m["notes"]]
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def evaluate_samples(
    real_train: tuple[torch.Tensor, torch.Tensor],
    real_test: tuple[torch.Tensor, torch.Tensor],
    generated: tuple[torch.Tensor, torch.Tensor],
    *,
    recogniser: Recogniser,
    out_dir: str | Path,
    label_map=None,
    colormap: str | None = "jet",
    quantile: float = 0.05,
    grid_per_user: int = 4,
    grid_max_users: int = 16,
    axes: dict | None = None,
    stages: dict | None = None,
    cas: bool = True,
    cas_generated: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """Judge generated images against real ones and write metrics.json, report.md and plots.

    Args:
        real_train: (images (N, C, H, W) in [-1, 1], user indices) the generator was trained on.
        real_test: (images, user indices) held out from every model.
        generated: (images, user indices each was conditioned on).
        recogniser: recogniser trained on `real_train` (see `cached_recogniser`).
        out_dir: folder for metrics.json, report.md, accuracy_per_user.png, kinematics.png,
            samples_grid.png (created).
        label_map: `LabelMap` or its dict, for user names in the report (default: indices).
        colormap: how 1-channel images are coloured in the grid and RGB inverted for kinematics.
        quantile: memorisation calibration quantile (see `memorisation`).
        grid_per_user: real and generated images shown per user in the grid.
        grid_max_users: users shown in the grid (the first ones).
        axes: optional physical image axes for `read_kinematics`.
        stages: optional result of `stages.stage_identity_accuracies` (the model's embedding,
            prior and decoder accuracies per guidance scale), written under "stages" and into
            the report's summary beside A_gen; {"note": why} when it could not be computed.
        cas: train the CAS recogniser (`classification_accuracy_score`, with the recogniser's own
            shape and training settings) on generated images, per user as many as real train has.
        cas_generated: (images, user indices) CAS draws from (default `generated`), for a caller
            that drew more samples than the other measures use.
    Returns:
        The metrics dict written to metrics.json (user keys are class indices).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tr, te, gen = _checked_sets(recogniser, real_train, real_test, generated)
    num_users = recogniser.config.num_users
    names = _label_names(label_map, num_users)
    notes: list[str] = []

    identity = _identity_metrics(recogniser, te, gen)
    users = sorted(set(identity["per_user_real"]) | set(identity["per_user_gen"]))
    features = _feature_metrics(recogniser, tr, te, gen, quantile, notes)
    kinematics, kin_gen = _kinematic_metrics(tr, te, gen, colormap, axes)
    if kin_gen["missing_users"]:
        notes.append(f"kinematics: users present in only one of real train / generated: {[names[u] for u in kin_gen['missing_users']]}")
    metrics = {
        "counts": {"real_train": len(tr[0]), "real_test": len(te[0]), "generated": len(gen[0]), "users": num_users},
        "users": users,
        "user_names": {u: names[u] for u in users},
        "identity": identity,
        **({"cas": _cas_metrics(recogniser, tr, te, cas_generated or gen, identity["A_real"], notes)} if cas else {}),
        **features,
        "background": _background_metrics(tr, te, gen),
        "kinematics": kinematics,
        "recogniser": {"config": asdict(recogniser.config), "train_key": recogniser.meta.get("train_key")},
        "notes": notes,
    }
    if stages is not None:
        metrics["stages"] = stages
        if "note" in stages:
            notes.append(f"stage-by-stage identity: {stages['note']}")

    _write_files(out, metrics, names, kin_gen, (tr, gen, users[:grid_max_users], grid_per_user, colormap))
    return metrics


def _write_files(out: Path, metrics: dict, names: list[str], kin_gen: dict, grid: tuple) -> None:
    """The plots, report.md and metrics.json of `evaluate_samples`; `grid` is `_plot_grid`'s
    (real, generated, users, per_user, colormap)."""
    identity = metrics["identity"]
    _plot_accuracy(out / "accuracy_per_user.png", names, metrics["users"], identity["per_user_real"],
                   identity["per_user_gen"], identity["A_real"], identity["A_gen"], identity["chance"])
    _plot_kinematics(out / "kinematics.png", kin_gen, names)
    real, gen, users, per_user, colormap = grid
    _plot_grid(out / "samples_grid.png", real, gen, names, users, per_user, colormap)
    _write_report(out / "report.md", metrics, names)
    with atomic_write(out / "metrics.json", "w") as f:
        json.dump(plain_json(metrics), f, indent=1)


def _checked_sets(recogniser: Recogniser, real_train, real_test, generated):
    """(real train, real test, generated) as float images and long ids, each of the shape the
    recogniser was trained on."""
    sets = []
    for pair, what in ((real_train, "real train"), (real_test, "real test"), (generated, "generated")):
        images, user_indices = _check_labelled(*pair, what)
        recogniser.check_images(images, f"{what} images")
        sets.append((images, user_indices))
    return sets


def _identity_metrics(recogniser: Recogniser, te, gen) -> dict:
    """A_real on real test, A_gen on the generated images (each per user too), and chance."""
    a_real, per_real = accuracy(recogniser, *te)
    a_gen, per_gen = accuracy(recogniser, *gen)
    return {
        "A_real": a_real,
        "A_gen": a_gen,
        "A_gen_over_A_real": a_gen / a_real if a_real > 0 else float("nan"),
        "chance": 1.0 / recogniser.config.num_users,
        "per_user_real": per_real,
        "per_user_gen": per_gen,
    }


def _feature_metrics(recogniser: Recogniser, tr, te, gen, quantile: float, notes: list[str]) -> dict:
    """{"fid", "diversity", "memorisation"}: in recogniser-feature space, and in pixels where it
    means something; a FID that cannot be computed is None with a line in `notes`."""
    f_tr, f_te, f_gen = (extract_features(recogniser, x[0]) for x in (tr, te, gen))
    fid_gen = _fid_or_note(recogniser, te[0], gen[0], notes, "FID gen vs real test")
    fid_floor = _fid_or_note(recogniser, tr[0], te[0], notes, "FID real train vs real test")
    fid_matched = _matched_fid_floor(recogniser, tr, te, gen, notes)

    div_f_gen, div_f_real = diversity(f_gen, gen[1]), diversity(f_te, te[1])
    div_p_gen, div_p_real = diversity(gen[0].flatten(1), gen[1]), diversity(te[0].flatten(1), te[1])
    mem_f = memorisation(f_gen, f_tr, f_te, quantile=quantile)
    mem_p = memorisation(gen[0], tr[0], te[0], quantile=quantile)
    return {
        "fid": {"gen_vs_test": fid_gen, "train_vs_test": fid_floor, "train_vs_test_matched": fid_matched,
                "feature_dim": recogniser.num_features},
        "kid": _kid_metrics(f_tr, f_te, f_gen, tr[1], gen[1], notes),
        "diversity": {
            "features": {"gen_mean": div_f_gen["mean"], "real_mean": div_f_real["mean"], "gen_per_user": div_f_gen["per_user"], "real_per_user": div_f_real["per_user"]},
            "pixels": {"gen_mean": div_p_gen["mean"], "real_mean": div_p_real["mean"], "gen_per_user": div_p_gen["per_user"], "real_per_user": div_p_real["per_user"]},
        },
        "memorisation": {
            "features": {k: v for k, v in mem_f.items() if k != "gen_nn_distances"},
            "pixels": {k: v for k, v in mem_p.items() if k != "gen_nn_distances"},
        },
    }


def _kinematic_metrics(tr, te, gen, colormap: str | None, axes: dict | None) -> tuple[dict, dict]:
    """(metrics, the generated set's whole `kinematic_fidelity` with per-image values for the
    plot): fidelity of generated vs real train, and its floor (real test vs real train)."""
    s_tr, s_te, s_gen = (to_scalar_images(x[0], colormap) for x in (tr, te, gen))
    kin_gen = kinematic_fidelity(s_tr, tr[1], s_gen, gen[1], axes=axes)
    kin_floor = kinematic_fidelity(s_tr, tr[1], s_te, te[1], axes=axes)
    return {
        "reference": "real_train",
        "gen": {k: kin_gen[k] for k in ("per_user", "mean_rel_error", "missing_users")},
        "floor": {k: kin_floor[k] for k in ("per_user", "mean_rel_error", "missing_users")},
    }, kin_gen


def _kid_metrics(f_tr, f_te, f_gen, train_ids, gen_ids, notes: list[str]) -> dict:
    """KID of generated vs real test features, and its size-matched floor: real train features drawn
    like `_matched_fid_floor`'s vs real test, over subsets of the same size and seed; their ratio
    only when the floor is > 0 (an unbiased KID of two real sets can be 0 or below)."""
    rows = _matched_train_rows(train_ids, gen_ids, seed=0)
    n = min(len(f_te), len(f_gen), len(rows))
    if n < 2:
        notes.append(f"KID: not computed (needs at least 2 images in each set, the smallest has {n})")
        return {"gen_vs_test": None, "train_vs_test_matched": None, "ratio": None}
    size = kid_subset_size(n)
    gen_vs_test = kernel_distance(f_te, f_gen, num_subsets=KID_SUBSETS, subset_size=size, seed=0)
    floor = kernel_distance(f_te, f_tr[rows], num_subsets=KID_SUBSETS, subset_size=size, seed=0)
    ratio = gen_vs_test["mean"] / floor["mean"] if floor["mean"] > 0 else None
    if ratio is None:
        notes.append(f"KID / floor: not computed, the size-matched real floor is {floor['mean']:.3g} <= 0 "
                     "(real train and real test are indistinguishable at this size); compare the raw values")
    return {"gen_vs_test": gen_vs_test, "train_vs_test_matched": floor, "ratio": ratio, "subset_size": size,
            "num_subsets": KID_SUBSETS}


def _reference_training(recogniser: Recogniser) -> RecogniserTrainConfig | None:
    """The training settings the recogniser was trained with (stored in its meta), if known."""
    stored = recogniser.meta.get("train")
    try:
        return RecogniserTrainConfig(**checked_fields(RecogniserTrainConfig, stored, what="the recogniser's training settings"))
    except UserError:
        return None


def _cas_metrics(recogniser: Recogniser, tr, te, cas_generated, a_real: float, notes: list[str]) -> dict:
    """`classification_accuracy_score` with the reference recogniser's shape and settings, per user
    as many generated images as real train has, and CAS / A_real; {"note"} when it cannot run."""
    train = _reference_training(recogniser)
    if train is None:
        notes.append("CAS: not computed (the recogniser does not record its training settings; retrain it)")
        return {"note": "not computed: the recogniser's training settings are unknown"}
    images, ids = _check_labelled(*cas_generated, "CAS generated")
    recogniser.check_images(images, "CAS generated images")
    num_users = recogniser.config.num_users
    wanted = torch.bincount(tr[1].cpu(), minlength=num_users).tolist()
    result = classification_accuracy_score((images, ids), te, num_users=num_users, config=recogniser.config,
                                           train_config=train, per_user_counts=wanted)
    result["CAS_over_A_real"] = result["CAS"] / a_real if a_real > 0 else None
    result["wanted_per_user"] = {u: c for u, c in enumerate(wanted) if c}
    if result["short_users"]:
        notes.append(f"CAS: fewer generated than real train images for {len(result['short_users'])} user(s); trained "
                     f"on all {result['num_train_images']} generated (real train has {sum(wanted)})")
    return result


def _background_metrics(tr, te, gen) -> dict:
    """Background-defect rates of generated, real test and real train images against the real
    train images' `BACKGROUND_QUANTILES` range of background levels."""
    low, high = background_range(tr[0], BACKGROUND_QUANTILES)
    return {"reference": "real_train", "quantiles": list(BACKGROUND_QUANTILES), "low": low, "high": high,
            **{what: background_defects(x[0], (low, high)) for what, x in (("gen", gen), ("real_test", te), ("real_train", tr))}}
