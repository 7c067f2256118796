"""The `dalle2-md` command line: one click group whose subcommands hold every workflow.

Commands stay thin (options -> config -> build -> run); heavy imports happen inside them so
`--help` is instant. A `UserError` anywhere prints one line and exits 2, never a traceback.
"""

from __future__ import annotations

import sys

import click

from .utils import UserError


class Dalle2MDGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)


@click.group(cls=Dalle2MDGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="dalle2-md")
def cli():
    """Generate radar micro-Doppler gait spectrograms for chosen users (DALLE2-style)."""


@cli.command("inspect-data")
@click.argument("data_root", type=click.Path(path_type=str))
@click.option("--image-size", default=64, help="Side of the square images the data is decoded to.")
@click.option("--colormap", default="jet", help="Colormap to invert into one channel, or 'none' to keep RGB.")
@click.option("--num-users", type=int, default=None, help="Expected number of users (checked).")
@click.option("--split-file", type=click.Path(path_type=str), default=None, help="Show this split's sizes (created if missing).")
@click.option("--split-seed", default=0, help="Seed for a new split.")
def inspect_data(data_root, image_size, colormap, num_users, split_file, split_seed):
    """Decode a data set and print its layout, users, images per user, labels and skipped files.

    DATA_ROOT holds one folder per user (user_0/, ID_1/, ...) or images/ + metadata.json.
    """
    import warnings

    from .data import MicroDopplerDataset, resolve_split

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = MicroDopplerDataset(data_root, image_size=image_size, colormap=colormap, num_users=num_users)
        split = None
        if split_file is not None:
            split = resolve_split(ds.index, split_file, split_seed)
    lm = ds.label_map
    click.echo(f"data root: {ds.root}")
    click.echo(f"layout:    {ds.layout}")
    click.echo(f"images:    {len(ds)} decoded to {ds.channels}x{ds.image_size}x{ds.image_size} (colormap: {ds.colormap or 'none'})")
    if ds.residual is not None:
        click.echo(f"colormap residual: {ds.residual:.2f}/255 (mean over colour images; ~0 for true {ds.colormap} images)")
    click.echo(f"users:     {len(lm)}")
    counts = ds.counts()
    in_split = {}
    if split is not None:
        rel_label = {ds.index.relpath(f): int(u) for f, u in zip(ds.files, ds.user_ids)}
        for k in ("train", "val", "test"):
            in_split[k] = [0] * len(lm)
            for rel in split[k]:
                if rel in rel_label:
                    in_split[k][rel_label[rel]] += 1
        click.echo(f"split:     {split_file} (seed {split.get('seed')}, fractions {split.get('fractions')})")
    click.echo("index  label  images" + ("  train/val/test" if split is not None else "") + "  file stem")
    for i, name in enumerate(lm.names):
        extra = f"  {in_split['train'][i]}/{in_split['val'][i]}/{in_split['test'][i]}" if split is not None else ""
        click.echo(f"{i:>5}  {name:<6} {counts[i]:>6}{extra}  {lm.file_stem(i)}")
    click.echo(f"skipped:   {len(ds.skipped)}")
    for path, why in ds.skipped:
        click.echo(f"  {path}: {why}")
    others = [str(w.message) for w in caught if not str(w.message).startswith("skipped ")]
    for msg in others:
        click.echo(f"warning: {msg}")


@cli.command("synth")
@click.option("--num_users", "--num-users", "num_users", default=8, type=int, help="Number of simulated walkers.")
@click.option("--images_per_user", "--images-per-user", "images_per_user", default=20, type=int, help="Spectrograms per walker.")
@click.option("--image_size", "--image-size", "image_size", default=64, type=int, help="Side of the square images in pixels.")
@click.option(
    "--layout",
    type=click.Choice(["hierarchical", "kaggle", "flat"]),
    default="hierarchical",
    help="user_0/..., ID_1/..., or images/ + metadata.json.",
)
@click.option("--out", default="./data/synthetic", type=click.Path(path_type=str), help="Folder to write into.")
@click.option("--seed", default=0, type=int, help="Same seed, byte-identical data set.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def synth(num_users, images_per_user, image_size, layout, out, seed, progress):
    """Simulate per-user gait micro-Doppler spectrograms (jet PNGs) with their ground truth."""
    from .synth import synthesize_dataset

    s = synthesize_dataset(
        out,
        num_users=num_users,
        images_per_user=images_per_user,
        image_size=image_size,
        layout=layout,
        seed=seed,
        progress=progress,
    )
    click.echo(f"wrote {s['num_images']} images ({num_users} users, {image_size}px, {layout}) to {s['out_dir']} in {s['seconds']:.1f}s")
    if s["metadata"]:
        click.echo(f"metadata:      {s['metadata']}")
    click.echo(f"ground truth:  {s['ground_truth']}")
    click.echo(f"contact sheet: {s['contact_sheet']}")


def main():
    cli()


if __name__ == "__main__":
    main()
