"""Same seed, same result, on CPU, through the command line: the same per-user split, the same
training losses (TensorBoard scalars, every step) and weights, and byte-identical generated
PNGs. A different seed must change each of them, so these tests can fail."""

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dalle2_md.cli.main import cli
from dalle2_md.cli.options import join_variadic

TINY_CLIP = ["--clip_dim", "16", "--clip_widths", "8,16", "--clip_dim_image", "32"]
TINY_DECODER = ["--dim", "16", "--dim_mults", "1,2", "--attn_heads", "2", "--attn_dim_head", "8",
                "--num_resnet_blocks", "1", "--timesteps", "50", "--sample_timesteps", "4", *TINY_CLIP]
TINY_PRIOR = ["--depth", "1", "--heads", "2", "--dim_head", "8", "--timesteps", "50", "--sample_timesteps", "4"]
QUICK = ["--image_size", "16", "--max_steps", "3", "--batch_size", "4", "--log_every", "1", "--no-progress"]



def invoke(*args):
    result = CliRunner().invoke(cli, join_variadic([str(a) for a in args]))
    assert result.exit_code == 0, f"{result.exception!r}\n{result.output[-3000:]}"
    return result


def losses(stage_dir: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((stage_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    acc = EventAccumulator(str(files[0]), size_guidance={"scalars": 0})
    acc.Reload()
    return [(s.step, s.value) for s in acc.Scalars("loss")]


def weights(path: Path) -> dict:
    from dalle2_md.models.bundle import load_bundle

    return load_bundle(path)["state_dict"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Decoder runs (embedding model + decoder) and prior runs: twice with seed 0, once with seed 1."""
    from dalle2_md.data.synthesize import synthesize_dataset

    root = tmp_path_factory.mktemp("det")
    synthesize_dataset(root / "data", num_users=3, images_per_user=6, image_size=16, layout="kaggle", progress=False)
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        # every run gets its own cache, so the second run recomputes instead of reading the first's
        common = ["--data_root", root / "data", "--output_dir", root / "runs", "--seed", seed, "--split_seed", seed,
                  "--cache_dir", root / f"cache_{name}", *QUICK]
        invoke("train-decoder", *common, "--experiment_name", f"dec_{name}", *TINY_DECODER)
        invoke("train-prior", *common, "--experiment_name", f"pri_{name}", *TINY_PRIOR,
               "--clip_path", root / "runs" / f"dec_{name}" / "clip_final.pt")
        out[name] = {"dec": root / "runs" / f"dec_{name}", "pri": root / "runs" / f"pri_{name}"}
    out["root"] = root
    return out


def test_same_seed_same_split(runs):
    a, b, c = (runs[k]["dec"] / "split.json" for k in "abc")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert (runs["a"]["pri"] / "split.json").read_bytes() == a.read_bytes()


@pytest.mark.parametrize("stage", ["clip", "decoder", "prior"])
def test_same_seed_same_losses_and_weights(runs, stage):
    folder = "pri" if stage == "prior" else "dec"
    a, b, c = (runs[k][folder] / stage for k in "abc")
    la, lb, lc = losses(a), losses(b), losses(c)
    assert [s for s, _ in la] == [1, 2, 3]
    assert la == lb  # bit for bit, every step
    assert la != lc
    wa, wb, wc = (weights(runs[k][folder] / f"{stage}_final.pt") for k in "abc")
    assert same_weights(wa, wb) and not same_weights(wa, wc)


def test_same_seed_same_samples(runs):
    root, run = runs["root"], runs["a"]
    args = ["generate", "--decoder_path", run["dec"] / "decoder_final.pt", "--prior_path",
            run["pri"] / "prior_final.pt", "--num_samples_per_user", 2, "--sample_steps", 3, "--prior_steps", 3,
            "--save_npy", "--device", "cpu"]
    for name, seed in (("one", 0), ("two", 0), ("other", 5)):
        invoke(*args, "--seed", seed, "--output_dir", root / "gen" / name)

    def files(name):
        folder = root / "gen" / name
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}

    one, two, other = files("one"), files("two"), files("other")
    assert len(one) == 3 * 2 * 2 + 1  # a PNG and an .npy per sample, and the grid
    assert one == two
    assert one.keys() == other.keys() and one["ID_1_000.png"] != other["ID_1_000.png"]
