"""Data commands: `synth` (simulate a data set) and `inspect-data` (what a data set holds and
what of it cannot be read)."""

from __future__ import annotations

import click

from dalle2_md.cli.options import SPLIT_SEED, opt, progress_option
from dalle2_md.training.options import DEFAULT_COLORMAP, DEFAULT_IMAGE_SIZE
from dalle2_md.utils import UserError, say


@click.command("inspect-data")
@click.argument("data_root_arg", metavar="[DATA_ROOT]", required=False, type=click.Path(path_type=str))
@opt("data_root", type=click.Path(path_type=str), default=None, help="The data set (or give it as DATA_ROOT).")
@opt("image_size", type=int, default=DEFAULT_IMAGE_SIZE, help="Side of the square images the data is decoded to.")
@opt("colormap", default=DEFAULT_COLORMAP, help="Colormap to invert into one channel, or 'none' to keep RGB.")
@opt("num_users", type=int, default=None, help="Expected number of users (checked).")
@opt("split_file", type=click.Path(path_type=str), default=None, help="Show this split's sizes (created if missing).")
@opt("split_seed", type=int, default=SPLIT_SEED, help="Seed for a new split.")
def inspect_data(data_root_arg, data_root, image_size, colormap, num_users, split_file, split_seed):
    """Decode a data set and print its layout, users, images per user, labels and skipped files.

    DATA_ROOT (or --data_root) holds one folder per user (user_0/, ID_1/, ...) or images/ +
    metadata.json.
    """
    import warnings

    from dalle2_md.data.dataset import MicroDopplerDataset
    from dalle2_md.data.splits import resolve_split

    if (data_root is None) == (data_root_arg is None):
        raise UserError("give the data set once: inspect-data DATA_ROOT, or inspect-data --data_root DATA_ROOT.")
    data_root = data_root or data_root_arg
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = MicroDopplerDataset(data_root, image_size=image_size, colormap=colormap, num_users=num_users)
        split = resolve_split(ds.index, split_file, split_seed) if split_file is not None else None
    say(f"data root: {ds.root}")
    say(f"layout:    {ds.layout}")
    say(f"images:    {len(ds)} decoded to {ds.channels}x{ds.image_size}x{ds.image_size} (colormap: {ds.colormap or 'none'})")
    if ds.residual is not None:
        say(f"colormap residual: {ds.residual:.2f}/255 (mean over colour images; ~0 for true {ds.colormap} images)")
    say(f"users:     {len(ds.label_map)}")
    if split is not None:
        say(f"split:     {split_file} (seed {split.get('seed')}, fractions {split.get('fractions')})")
    _print_users(ds, split)
    say(f"skipped:   {len(ds.skipped)}")
    for path, why in ds.skipped:
        say(f"  {path}: {why}")
    for msg in (str(w.message) for w in caught):
        if not msg.startswith("skipped "):
            say(f"warning: {msg}")


def _print_users(ds, split) -> None:
    """One line per user: index, label, images (and train/val/test with a split), file stem."""
    lm, counts = ds.label_map, ds.counts()
    in_split = {}
    if split is not None:
        rel_index = {ds.index.relpath(f): int(u) for f, u in zip(ds.files, ds.user_indices)}
        for k in ("train", "val", "test"):
            in_split[k] = [0] * len(lm)
            for rel in split[k]:
                if rel in rel_index:
                    in_split[k][rel_index[rel]] += 1
    say("index  label  images" + ("  train/val/test" if split is not None else "") + "  file stem")
    for i, name in enumerate(lm.names):
        extra = f"  {in_split['train'][i]}/{in_split['val'][i]}/{in_split['test'][i]}" if split is not None else ""
        say(f"{i:>5}  {name:<6} {counts[i]:>6}{extra}  {lm.file_stem(i)}")


@click.command("synth")
@opt("profile", type=click.Choice(["default", "gait31"]), default="default",
     help="default: 8 easy users (8 x 20, hierarchical); gait31: 31 users ID_1..ID_31 (31 x 100, kaggle) "
          "with recording-to-recording variation (speed, aspect, towards/away, range SNR, clutter, carried arm).")
@opt("num_users", type=int, default=None, help="Number of simulated walkers [default: 8, gait31: 31].")
@opt("images_per_user", type=int, default=None, help="Spectrograms per walker [default: 20, gait31: 100].")
@opt("image_size", type=int, default=64, help="Side of the square images in pixels.")
@opt("layout", type=click.Choice(["hierarchical", "kaggle", "flat"]), default=None,
     help="user_0/..., ID_1/..., or images/ + metadata.json [default: hierarchical, gait31: kaggle].")
@opt("out", type=click.Path(path_type=str), default="./data/synthetic", help="Folder to write into.")
@opt("seed", type=int, default=0, help="Same seed, byte-identical data set.")
@progress_option("Show a progress bar.")
def synth(profile, num_users, images_per_user, image_size, layout, out, seed, progress):
    """Simulate per-user gait micro-Doppler spectrograms (jet PNGs) with their ground truth."""
    from dalle2_md.data.synthesize import synthesize_dataset

    s = synthesize_dataset(out, num_users=num_users, images_per_user=images_per_user, image_size=image_size,
                           layout=layout, seed=seed, progress=progress, profile=profile)
    say(f"wrote {s['num_images']} images ({s['num_users']} users, {image_size}px, {s['layout']}, profile {profile}) "
        f"to {s['out_dir']} in {s['seconds']:.1f}s")
    if s["metadata"]:
        say(f"metadata:      {s['metadata']}")
    say(f"ground truth:  {s['ground_truth']}")
    say(f"contact sheet: {s['contact_sheet']}")


COMMANDS = (synth, inspect_data)
