"""The README's train -> generate flow at the data's own size: a 128 px simulated data set, the
base decoder at 64 px with `--upsample_to 128` (the upsampler trains on 64 px crops), the prior,
then `generate` writes 128 px images (the upsampler beside the decoder is found by itself);
`--upsampler_path none` keeps the decoder's size, `--output_size` resizes; variations and curated
sets are written at 128 px; and `train-upsampler` trains one for an existing decoder, into its
run folder."""

import json
import shutil

import pytest
from click.testing import CliRunner
from PIL import Image
from test_seed_commands import DECODER, GENERATE, NUM_USERS, PRIOR, TINY_DECODER, TINY_PRIOR, ok, run

from dalle2_md.cli.main import cli
from dalle2_md.cli.options import join_variadic

DATA = {"/path/to/your/data": "data", "--num_users 31": f"--num_users {NUM_USERS}"}
TINY_UPSAMPLER = ("--upsampler_dim 8 --upsampler_dim_mults 1 2 --upsampler_timesteps 50 "
                  "--upsampler_sample_timesteps 2")
# the shape, 64 -> 128 px on 64 px crops, with the tiny models of the seed-command tests
BASE, SIZE = 64, 128
BASE_DECODER = TINY_DECODER.replace("--image_size 16", f"--image_size {BASE}")
BASE_PRIOR = TINY_PRIOR.replace("--image_size 16", f"--image_size {BASE}")
CLIP = "--clip_path ./outputs/decoder/decoder_v1/clip_final.pt"
RUN = "outputs/decoder/decoder_v1"


def invoke(*args):
    result = CliRunner().invoke(cli, join_variadic([str(a) for a in args]))
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result


def sizes(folder, pattern="user_*_*.png"):
    found = set()
    for png in sorted(folder.glob(pattern)):
        with Image.open(png) as im:
            found.add(im.size)
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The README flow with --upsample_to 128 on a 128 px simulated set; (folder, generate's result)."""
    cwd = tmp_path_factory.mktemp("cascade")
    invoke("synth", "--num_users", NUM_USERS, "--images_per_user", 5, "--image_size", SIZE, "--out", cwd / "data",
           "--no_progress")
    ok(run(DECODER, cwd, f"{BASE_DECODER} --upsample_to {SIZE} {TINY_UPSAMPLER}", **DATA))
    ok(run(PRIOR, cwd, f"{BASE_PRIOR} {CLIP}", **DATA))
    return cwd, ok(run(GENERATE, cwd, "--sample_steps 2 --prior_steps 2"))


def test_decoder_run_writes_the_upsampler_beside_the_decoder(site):
    from dalle2_md.models.upsampler import MicroDopplerUpsampler

    cwd, _ = site
    upsampler = MicroDopplerUpsampler.load(cwd / RUN / "upsampler_final.pt")
    assert (upsampler.config.lowres_size, upsampler.config.output_size, upsampler.config.crop) == (BASE, SIZE, BASE)
    assert upsampler.meta["image_size"] == SIZE
    assert (cwd / RUN / "upsampler" / "checkpoints" / "latest.json").is_file()
    assert list((cwd / RUN / "upsampler" / "samples").glob("step_*.png"))


def test_generate_writes_the_datas_size_with_a_grid(site):
    cwd, generated = site
    out = cwd / "generated_images"
    assert "upsampler_final.pt (beside the decoder" in generated.stdout + generated.stderr
    assert len(list(out.glob("user_*_*.png"))) == 5 * 4 and sizes(out) == {(SIZE, SIZE)}
    assert (out / "grid.png").is_file()


def test_without_the_upsampler_or_at_another_size(site):
    cwd, _ = site
    parts = ("--decoder_path", cwd / RUN / "decoder_final.pt", "--prior_path",
             cwd / "outputs/prior/prior_v1/prior_final.pt", "--user_ids", "0", "1", "--num_samples_per_user", 1,
             "--sample_steps", 2, "--prior_steps", 2, "--no-progress")
    invoke("generate", *parts, "--upsampler_path", "none", "--output_dir", cwd / "base")
    assert sizes(cwd / "base") == {(BASE, BASE)}
    invoke("generate", *parts, "--output_size", 24, "--output_dir", cwd / "resized")
    assert sizes(cwd / "resized") == {(24, 24)}
    # curated: judged at the decoder's 64 px (a margin wide enough to keep all), written at 128 px
    invoke("generate", *parts, "--layout", "kaggle", "--filter", "kinematic", "--kinematic_margin", 1000,
           "--data_root", cwd / "data", "--output_dir", cwd / "curated")
    assert len(list((cwd / "curated").glob("*/*.png"))) == 2 and sizes(cwd / "curated", "*/*.png") == {(SIZE, SIZE)}


def test_variations_write_the_datas_size(site):
    cwd, _ = site
    image = sorted((cwd / "data" / "user_0").glob("*.png"))[0]
    invoke("variations", "--image", image, "--n", 2, "--resize", "--decoder_path", cwd / RUN / "decoder_final.pt",
           "--clip_path", cwd / RUN / "clip_final.pt", "--sample_steps", 2, "--output_dir", cwd / "variations")
    assert sizes(cwd / "variations", "*_variation_*.png") == {(SIZE, SIZE)}
    with Image.open(cwd / "variations" / f"{image.stem}_grid.png") as grid:
        assert grid.size[0] >= 3 * SIZE


def test_train_upsampler_for_an_existing_decoder_writes_into_its_run_folder(site, tmp_path):
    from dalle2_md.models.upsampler import MicroDopplerUpsampler

    cwd, _ = site
    shutil.copy(cwd / RUN / "decoder_final.pt", tmp_path / "decoder_final.pt")
    invoke("train-upsampler", "--data_root", cwd / "data", "--decoder_path", tmp_path / "decoder_final.pt",
           "--max_steps", 2, *TINY_UPSAMPLER.split(), "--crop_size", 32, "--no-progress")
    upsampler = MicroDopplerUpsampler.load(tmp_path / "upsampler_final.pt")  # 64 px from the decoder, 128 from the data
    assert (upsampler.config.lowres_size, upsampler.config.output_size, upsampler.config.crop) == (BASE, SIZE, 32)
    # resumable through the training loop's checkpoints
    invoke("train-upsampler", "--data_root", cwd / "data", "--decoder_path", tmp_path / "decoder_final.pt",
           "--max_steps", 3, *TINY_UPSAMPLER.split(), "--crop_size", 32, "--resume", "latest", "--no-progress")
    assert json.loads((tmp_path / "upsampler" / "checkpoints" / "latest.json").read_text())["step"] == 3
    result = CliRunner().invoke(cli, join_variadic([str(a) for a in (
        "train-upsampler", "--data_root", cwd / "data", "--lowres_size", 16, "--upsample_to", 16,
        "--output_dir", tmp_path, "--max_steps", 1, "--no-progress")]))
    assert result.exit_code == 2 and "larger than the low-res size" in result.output
