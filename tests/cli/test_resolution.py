"""One image size per run, read from the files: the README's decoder -> prior -> generate
commands at 32, 64 and 128 px with no `--image_size` on the prior or generation, `--resume latest` at
128 px, the seed's prior `--dim` (the transformer's width, projected to the embedding size), and
samples in the data's own colour (greyscale data -> greyscale PNGs)."""

import pytest
import torch
from PIL import Image
from test_seed_commands import DECODER, GENERATE, NUM_USERS, PRIOR, ok, run

from dalle2_md.models.prior import PriorConfig, UserConditionedDiffusionPrior

pytestmark = pytest.mark.slow  # end-to-end runs of whole commands or scripts

DATA = {"/path/to/your/data": "data", "--num_users 31": f"--num_users {NUM_USERS}"}
# size flags only; the prior gets no --image_size and no --colormap. Three U-Net stages: the
# middle attention then runs at 32 x 32 for 128 px images, not at 64 x 64 (16x cheaper)
TINY_DECODER = ("--max_steps 2 --dim 8 --dim_mults 1 2 4 --attn_heads 2 --attn_dim_head 8 --num_resnet_blocks 1 "
                "--timesteps 50 --sample_timesteps 3 --clip_dim 16 --clip_widths 8 16 --clip_dim_image 32 "
                "--checkpoint_every 1 --no-progress")
TINY_PRIOR = "--max_steps 2 --depth 1 --heads 2 --dim_head 8 --timesteps 50 --sample_timesteps 3 --no-progress"
CLIP = "--clip_path ./outputs/decoder/decoder_v1/clip_final.pt"


def _site(tmp_path_factory, size, *, greyscale):
    from dalle2_md.data.synthesize import synthesize_dataset

    cwd = tmp_path_factory.mktemp(f"site{size}")
    synthesize_dataset(cwd / "data", num_users=NUM_USERS, images_per_user=5, image_size=size, progress=False)
    if greyscale:  # the same spectrograms stored as 8-bit greyscale, as some recorders write them
        for png in (cwd / "data").glob("user_*/*.png"):
            Image.open(png).convert("L").save(png)
    return cwd


def _readme_chain(cwd, size, prior_extra=""):
    ok(run(DECODER, cwd, f"{TINY_DECODER} --image_size {size}", **DATA))
    prior = ok(run(PRIOR, cwd, f"{TINY_PRIOR} {CLIP} {prior_extra}", **DATA))
    generated = ok(run(GENERATE, cwd))
    return prior, generated


@pytest.fixture(scope="module")
def grey32(tmp_path_factory):
    cwd = _site(tmp_path_factory, 32, greyscale=True)
    # the seed's prior option --dim 128 with a 16-d embedding model: projected, not refused
    return cwd, *_readme_chain(cwd, 32, "--dim 128")


@pytest.fixture(scope="module")
def jet64(tmp_path_factory):
    cwd = _site(tmp_path_factory, 64, greyscale=False)
    return cwd, *_readme_chain(cwd, 64)


@pytest.fixture(scope="module")
def jet128(tmp_path_factory):
    cwd = _site(tmp_path_factory, 128, greyscale=False)
    return cwd, *_readme_chain(cwd, 128)


def test_readme_chain_at_32px_takes_size_from_the_embedding_model_and_keeps_grey(grey32):
    cwd, prior, _ = grey32
    assert "image_size 32" in prior.stdout  # read from clip_final.pt, not the default 64
    pngs = sorted((cwd / "generated_images").glob("user_*_*.png"))
    assert len(pngs) == 5 * 4
    for png in pngs:
        with Image.open(png) as im:
            assert (im.size, im.mode) == ((32, 32), "L")
    config = torch.load(cwd / "outputs/prior/prior_v1/prior_final.pt", weights_only=True)["config"]
    assert (config["dim"], config["embed_dim"]) == (128, 16)


def test_colormap_flag_recolours_grey_samples(grey32):
    cwd = grey32[0]
    ok(run(GENERATE, cwd, "--colormap jet --output_dir ./jet_images"))
    with Image.open(cwd / "jet_images" / "user_0_000.png") as im:
        rgb = torch.tensor(list(im.convert("RGB").getdata()), dtype=torch.float)
    assert im.mode == "RGB" and (rgb[:, 0] - rgb[:, 2]).abs().max() > 50  # coloured, not grey


@pytest.mark.parametrize("site, size", [("jet64", 64), ("jet128", 128)])
def test_readme_chain_keeps_jet_and_the_full_size(site, size, request):
    cwd, prior, _ = request.getfixturevalue(site)
    assert f"image_size {size}" in prior.stdout  # read from clip_final.pt: the prior has no --image_size
    pngs = sorted((cwd / "generated_images").glob("user_*_*.png"))
    assert len(pngs) == 5 * 4
    for png in pngs:
        with Image.open(png) as im:
            assert (im.size, im.mode) == ((size, size), "RGB")


def test_prior_keeps_the_seeds_default_width(jet128):
    cwd = jet128[0]
    config = torch.load(cwd / "outputs/prior/prior_v1/prior_final.pt", weights_only=True)["config"]
    assert (config["dim"], config["embed_dim"]) == (512, 16)  # the seed's default width


def test_decoder_resume_latest_at_128px(jet128):
    # the README's decoder command again with --resume latest (and a longer run); no --image_size:
    # the run folder's embedding model says 128, and it is reused, not refused
    cwd = jet128[0]
    resumed = ok(run(DECODER, cwd, f"{TINY_DECODER.replace('--max_steps 2', '--max_steps 3')} --resume latest", **DATA))
    assert "image_size 128" in resumed.stdout and "reusing" in resumed.stdout and "step 3" in resumed.stdout


def test_decoder_resume_under_another_formulation_is_one_clear_error(jet128):
    # the run trained with the default formulation (v, zero terminal SNR, min-SNR); asking for eps on
    # resume would load its weights and silently train them towards another target
    cwd = jet128[0]
    result = run(DECODER, cwd, f"{TINY_DECODER.replace('--max_steps 2', '--max_steps 4')} --resume latest "
                 "--prediction eps", **DATA)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--prediction v --zero_terminal_snr --loss_weighting min_snr" in result.stderr
    assert "start a new run" in result.stderr


def test_colormap_that_cannot_work_is_one_clear_error(jet128):
    cwd = jet128[0]
    result = run(PRIOR, cwd, f"{TINY_PRIOR} {CLIP} --colormap none --experiment_name rgb", **DATA)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--colormap jet" in result.stderr and "clip_final.pt" in result.stderr


def test_prior_width_other_than_the_embedding_size_trains_and_samples():
    torch.manual_seed(0)
    prior = UserConditionedDiffusionPrior(PriorConfig(num_users=3, dim=24, embed_dim=8, depth=1, heads=2, dim_head=8,
                                                      timesteps=50, sample_timesteps=3))
    embeds = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    loss = prior(embeds, torch.tensor([0, 1, 2, 0, 1, 2]))
    loss.backward()
    assert torch.isfinite(loss) and prior.net.project_in.weight.grad.abs().sum() > 0
    assert prior.sample([0, 2], num_samples_per_user=2, seed=0).shape == (4, 8)


def test_prior_bundles_without_embed_dim_still_load(tmp_path):
    # a bundle written before the projection existed: no embed_dim in its config, no extra weights
    prior = UserConditionedDiffusionPrior(PriorConfig(num_users=2, dim=8, depth=1, heads=2, dim_head=4, timesteps=20,
                                                      sample_timesteps=2))
    assert not any(k.startswith("net.project") for k in prior.state_dict())
    path = prior.save(tmp_path / "old.pt")
    payload = torch.load(path, weights_only=True)
    del payload["config"]["embed_dim"]
    torch.save(payload, path)
    loaded = UserConditionedDiffusionPrior.load(path)
    assert loaded.config.embed_dim is None and loaded.image_embed_dim == 8
    assert torch.equal(loaded.sample([1], seed=3), prior.sample([1], seed=3))
