"""Writing a simulated data set to disk: one PNG per recording in any of the three layouts
(Kaggle `ID_1/`, `user_01/`, flat with metadata), the ground-truth kinematics beside them and a
contact sheet; the physics is `simulator`."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from dalle2_md.data.display import colourise, tile_grid
from dalle2_md.data.simulator import (RadarConfig, SimProfile, UserGait, get_profile, make_users,
                                      simulate_spectrogram)
from dalle2_md.utils import UserError

# folder layouts the simulator (and curate) write: "kaggle" is hierarchical with ID_<n+1>
# folders; the layouts a data root is read in are labels.DATA_LAYOUTS
WRITE_LAYOUTS = ("hierarchical", "kaggle", "flat")


def sample_rng(seed: int, user_id: int, index: int) -> np.random.Generator:
    """Per-sample generator keyed on (seed, user, index), so a sample never depends on the
    order in which samples are made."""
    return np.random.default_rng([seed, user_id, index])


def layout_relpath(layout: str, user_number: int, index: int, *, folder: str | None = None) -> str:
    """Relative path of image `index` (0-based) of the user numbered `user_number` in a layout:
    `user_<n>/image_001.png`, `ID_<n>/image_001.png` or `images/user<n>_001.png`; `folder`
    replaces the user folder's name in the two folder layouts (to keep a data set's own names).
    Shared by the simulator and the curated generated sets (`curate`)."""
    if layout not in WRITE_LAYOUTS:
        raise UserError(f"unknown layout {layout!r}: use one of {', '.join(WRITE_LAYOUTS)}")
    if layout == "flat":
        return f"images/user{user_number}_{index + 1:03d}.png"
    folder = folder or (f"user_{user_number}" if layout == "hierarchical" else f"ID_{user_number}")
    return f"{folder}/image_{index + 1:03d}.png"


def _relative_path(layout: str, user_id: int, index: int) -> str:
    # simulated users are numbered from 0; Kaggle folders count from ID_1
    return layout_relpath(layout, user_id + 1 if layout == "kaggle" else user_id, index)


CONTACT_PAD = 4
# zlib level 1: 4x faster to encode than Pillow's default 6, files ~15 % larger
PNG_COMPRESS_LEVEL = 1
CONTACT_LABEL_WIDTH = 56


def contact_sheet(rows: list[list[np.ndarray]], labels: list[str], *, tile: int) -> Image.Image:
    """Grid of RGB tiles (display.tile_grid), one row per user with its label on the left.

    Height is len(rows) * (tile + CONTACT_PAD) + CONTACT_PAD pixels."""
    from PIL import ImageDraw

    def fit(rgb: np.ndarray) -> np.ndarray:
        im = Image.fromarray(rgb)
        return rgb if im.size == (tile, tile) else np.asarray(im.resize((tile, tile), Image.NEAREST))

    cols = max(1, max(len(r) for r in rows))
    blank = np.full((tile, tile, 3), 255, dtype=np.uint8)  # short rows end in white
    tiles = np.stack([fit(rgb) for row in rows for rgb in list(row) + [blank] * (cols - len(row))])
    grid = tile_grid(tiles, nrow=cols, padding=CONTACT_PAD)
    sheet = Image.new("RGB", (CONTACT_LABEL_WIDTH + grid.shape[1], grid.shape[0]), (255, 255, 255))
    # the grid's left margin lies in the label column, so the tiles start at CONTACT_LABEL_WIDTH
    sheet.paste(Image.fromarray(grid), (CONTACT_LABEL_WIDTH - CONTACT_PAD, 0))
    draw = ImageDraw.Draw(sheet)
    for r, label in enumerate(labels):
        draw.text((4, CONTACT_PAD + r * (tile + CONTACT_PAD) + tile // 2 - 5), label, fill=(0, 0, 0))
    return sheet


def synthesize_dataset(
    out_dir,
    *,
    num_users: int | None = None,
    images_per_user: int | None = None,
    image_size: int | None = None,
    layout: str | None = None,
    seed: int = 0,
    progress: bool = True,
    radar: RadarConfig = RadarConfig(),
    contact_columns: int = 6,
    profile: str = "default",
) -> dict:
    """Write a synthetic per-user micro-Doppler data set as jet PNGs.

    Args:
        out_dir: folder to write into (created).
        num_users: number of simulated walkers (default: the profile's, 8 or 31).
        images_per_user: spectrograms per walker (default: the profile's, 20 or 100).
        image_size: side of the square images in pixels (default: the profile's, 64).
        layout: "hierarchical" (user_0/image_001.png), "kaggle" (ID_1/image_001.png) or
            "flat" (images/user0_001.png + metadata.json) (default: the profile's).
        seed: the same seed gives byte-identical files.
        progress: show a tqdm progress bar.
        radar: radar and processing settings.
        contact_columns: samples per user on contact_sheet.png.
        profile: simulator profile, a key of `PROFILES` ("default" or "gait31").

    Returns:
        Summary dict: out_dir, layout, num_images, image_size, ground_truth and contact_sheet
        paths, seconds taken.
    """
    from tqdm import tqdm

    prof = get_profile(profile)
    num_users, images_per_user, image_size, layout = _dataset_settings(prof, num_users, images_per_user, image_size, layout)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    users = make_users(num_users, seed, spread=prof.user_spread)
    start = time.perf_counter()

    records, sheet_rows = [], [[] for _ in users]
    jobs = [(u, i) for u in users for i in range(images_per_user)]
    for user, i in tqdm(jobs, desc="synth", unit="img", disable=not progress):
        rgb, record = _write_sample(out, layout, user, i, seed=seed, image_size=image_size, radar=radar, profile=prof)
        records.append(record)
        if i < contact_columns:
            sheet_rows[user.user_id].append(rgb)

    if layout == "flat":
        metadata = [{"filename": Path(r["path"]).name, "user_id": r["label"]} for r in records]
        (out / "metadata.json").write_text(json.dumps(metadata, indent=2))
    _write_ground_truth(out, records, seed=seed, profile=prof, layout=layout, image_size=image_size, radar=radar,
                        users=users)
    sheet = contact_sheet(sheet_rows, [prof.sheet_label.format(id=u.user_id, n=u.user_id + 1) for u in users], tile=max(image_size, 64))
    sheet.save(out / "contact_sheet.png", format="PNG")
    return {
        "out_dir": str(out),
        "layout": layout,
        "profile": prof.name,
        "num_users": num_users,
        "num_images": len(records),
        "image_size": image_size,
        "ground_truth": str(out / "ground_truth.json"),
        "contact_sheet": str(out / "contact_sheet.png"),
        "metadata": str(out / "metadata.json") if layout == "flat" else None,
        "seconds": time.perf_counter() - start,
    }


def _dataset_settings(prof: SimProfile, num_users, images_per_user, image_size, layout) -> tuple[int, int, int, str]:
    """The data set's size and layout: the given values, else the profile's; checked."""
    num_users = prof.num_users if num_users is None else num_users
    images_per_user = prof.images_per_user if images_per_user is None else images_per_user
    image_size = prof.image_size if image_size is None else image_size
    layout = prof.layout if layout is None else layout
    if layout not in WRITE_LAYOUTS:
        raise UserError(f"unknown layout {layout!r}: use one of {', '.join(WRITE_LAYOUTS)}")
    if images_per_user < 1:
        raise UserError(f"images_per_user must be at least 1, got {images_per_user}")
    return num_users, images_per_user, image_size, layout


def _write_sample(out: Path, layout: str, user: UserGait, index: int, *, seed: int, image_size: int,
                  radar: RadarConfig, profile: SimProfile) -> tuple[np.ndarray, dict]:
    """Simulate and write image `index` of `user` as a jet PNG; returns its RGB (H, W, 3) uint8
    and its ground-truth record (relative path, label and `simulate_spectrogram`'s truth)."""

    rng = sample_rng(seed, user.user_id, index)
    img, truth = simulate_spectrogram(user, rng, image_size=image_size, radar=radar, variation=profile.variation)
    rgb = colourise(img[None], "jet")[0]  # (H, W) in [0, 1] -> (H, W, 3) uint8
    rel = _relative_path(layout, user.user_id, index)
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return rgb, {"path": rel, "label": user.user_id, **truth}


def _write_ground_truth(out: Path, records: list[dict], *, seed: int, profile: SimProfile, layout: str, image_size: int,
                        radar: RadarConfig, users: list[UserGait]) -> None:
    """ground_truth.json: the settings, every user's gait and every sample's truth."""
    variation = {} if profile.variation is None else {
        "profile": profile.name, "variation": asdict(profile.variation), "user_spread": profile.user_spread}
    gt = {
        "seed": seed,
        **variation,
        "layout": layout,
        "image_size": image_size,
        "radar": asdict(radar),
        "users": [asdict(u) for u in users],
        "samples": records,
    }
    (out / "ground_truth.json").write_text(json.dumps(gt, indent=1))
