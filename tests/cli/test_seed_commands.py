"""The seed README's commands, run as written through the top-level scripts (subprocesses), with
only size flags appended (tiny images, models and step counts) and its placeholder paths
replaced by real ones. The data set is a simulated 6-user one laid out like the README's
`data_root/user_0/...`, so `--user_ids 0 1 2 3 4` and `--interp_user_2 5` exist."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # end-to-end runs of whole commands or scripts

REPO = Path(__file__).resolve().parents[2]

# appended to the README's training commands so that they finish in seconds
TINY_DECODER = ("--image_size 16 --max_steps 2 --dim 16 --dim_mults 1 2 --attn_heads 2 --attn_dim_head 8 "
                "--num_resnet_blocks 1 --timesteps 50 --sample_timesteps 4 --clip_dim 16 --clip_widths 8 16 "
                "--clip_dim_image 32 --no-progress")
TINY_PRIOR = "--image_size 16 --max_steps 2 --depth 1 --heads 2 --dim_head 8 --timesteps 50 --sample_timesteps 4 --no-progress"

# the README's commands, verbatim
DECODER = """python train_micro_doppler_decoder.py \\
    --data_root /path/to/your/data \\
    --num_users 31 \\
    --batch_size 16 \\
    --epochs 100 \\
    --output_dir ./outputs/decoder \\
    --experiment_name decoder_v1"""
PRIOR = """python train_micro_doppler_prior.py \\
    --data_root /path/to/your/data \\
    --num_users 31 \\
    --batch_size 32 \\
    --epochs 100 \\
    --output_dir ./outputs/prior \\
    --experiment_name prior_v1"""
GENERATE = """python generate_micro_doppler.py \\
    --decoder_path ./outputs/decoder/decoder_v1/decoder_final.pt \\
    --prior_path ./outputs/prior/prior_v1/prior_final.pt \\
    --user_ids 0 1 2 3 4 \\
    --num_samples_per_user 4 \\
    --output_dir ./generated_images"""
BASIC = """python generate_micro_doppler.py \\
    --decoder_path path/to/decoder.pt \\
    --prior_path path/to/prior.pt \\
    --user_ids 0 1 2 \\
    --num_samples_per_user 4"""
INTERPOLATE = """python generate_micro_doppler.py \\
    --decoder_path path/to/decoder.pt \\
    --prior_path path/to/prior.pt \\
    --interpolate \\
    --interp_user_1 0 \\
    --interp_user_2 5 \\
    --interp_steps 8"""
TEST_DUMMY = "python test_micro_doppler.py --create_dummy --num_users 5"
TEST_DUMMY_SMALL = "python test_micro_doppler.py --create_dummy --num_users 3"
TEST_OWN = "python test_micro_doppler.py --data_root /path/to/your/data --num_users 31"

NUM_USERS = 6


def run(command: str, cwd: Path, extra: str = "", **replace):
    """Run a README command in `cwd`: its script from the repository, its placeholders replaced."""
    for old, new in replace.items():
        command = command.replace(old, str(new))
    words = shlex.split(command.replace("\\\n", " ")) + shlex.split(extra)
    assert words[0] == "python"
    words = [sys.executable, str(REPO / words[1]), *words[2:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A working folder with the simulated data in `data/` (hierarchical user_0..user_5)."""
    from dalle2_md.data.synthesize import synthesize_dataset

    cwd = tmp_path_factory.mktemp("seed")
    synthesize_dataset(cwd / "data", num_users=NUM_USERS, images_per_user=5, image_size=16, progress=False)
    return cwd


@pytest.fixture(scope="module")
def decoder_run(site):
    return ok(run(DECODER, site, TINY_DECODER, **{"/path/to/your/data": "data", "--num_users 31": f"--num_users {NUM_USERS}"}))


@pytest.fixture(scope="module")
def prior_run(site, decoder_run):
    clip = "./outputs/decoder/decoder_v1/clip_final.pt"
    return ok(run(PRIOR, site, f"{TINY_PRIOR} --clip_path {clip}",
                  **{"/path/to/your/data": "data", "--num_users 31": f"--num_users {NUM_USERS}"}))


def test_scripts_accept_every_seed_flag():
    flags = {
        "train_micro_doppler_decoder.py": "--data_root --num_users --batch_size --epochs --output_dir --experiment_name "
                                          "--dim --dim_mults --timesteps --use_vqgan --lr --flat_structure",
        "train_micro_doppler_prior.py": "--data_root --num_users --batch_size --epochs --output_dir --experiment_name "
                                        "--dim --depth --heads --cond_drop_prob --lr --clip_path --flat_structure",
        "generate_micro_doppler.py": "--decoder_path --prior_path --user_ids --num_samples_per_user --output_dir "
                                     "--interpolate --interp_user_1 --interp_user_2 --interp_steps",
        "test_micro_doppler.py": "--create_dummy --num_users --data_root",
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {script: subprocess.Popen([sys.executable, str(REPO / script), "--help"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env) for script in flags}
    for script, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert f"Usage: {script}" in out and "[default:" in out
        missing = [f for f in flags[script].split() if f not in out]
        assert not missing, f"{script} --help lacks {missing}"


def test_decoder_command_writes_the_readme_files(site, decoder_run):
    from dalle2_md.models.bundle import load_bundle

    run_dir = site / "outputs" / "decoder" / "decoder_v1"
    for name in ("decoder_final.pt", "clip_final.pt", "label_map.json", "split.json"):
        assert (run_dir / name).is_file(), name
    for stage in ("clip", "decoder"):
        assert (run_dir / stage / "checkpoints" / "latest.json").is_file()
        assert list((run_dir / stage / "tensorboard").glob("events.out.tfevents.*"))
    # the decoder is conditioned on the embedding model written beside it, which knows the README's users
    clip, decoder = load_bundle(run_dir / "clip_final.pt", kind="clip"), load_bundle(run_dir / "decoder_final.pt", kind="decoder")
    assert decoder["meta"]["clip_fingerprint"] == clip["meta"]["fingerprint"]
    names = [f"user_{u}" for u in range(NUM_USERS)]
    assert clip["label_map"]["names"] == json.loads((run_dir / "label_map.json").read_text())["names"] == names
    assert decoder["meta"]["image_size"] == 16 and decoder["meta"]["layout"] == "hierarchical"
    # a new decoder's formulation: v on a zero-terminal-SNR schedule with min-SNR weights
    formulation = {k: decoder["config"][k] for k in ("prediction", "zero_terminal_snr", "loss_weighting")}
    assert formulation == {"prediction": "v", "zero_terminal_snr": True, "loss_weighting": "min_snr"}
    split = json.loads((run_dir / "split.json").read_text())
    parts = [set(split[name]) for name in ("train", "val", "test")]
    assert sum(map(len, parts)) == len(set().union(*parts)) == NUM_USERS * 5  # disjoint, every image once


def test_prior_command_without_clip_path_says_which_flag_and_file(site, decoder_run):
    result = run(PRIOR, site, TINY_PRIOR, **{"/path/to/your/data": "data", "--num_users 31": f"--num_users {NUM_USERS}"})
    assert result.returncode == 2
    assert "--clip_path outputs/decoder/decoder_v1/clip_final.pt" in result.stderr
    assert "train_micro_doppler_decoder.py" in result.stderr and "Traceback" not in result.stderr


def test_prior_command_with_clip_path_writes_prior_final(site, prior_run):
    import torch

    from dalle2_md.models.embedding import MicroDopplerClip
    from dalle2_md.models.prior import UserConditionedDiffusionPrior

    prior = UserConditionedDiffusionPrior.load(site / "outputs" / "prior" / "prior_v1" / "prior_final.pt")
    clip = MicroDopplerClip.load(site / "outputs" / "decoder" / "decoder_v1" / "clip_final.pt")
    # the prior belongs to the --clip_path model and knows the README's users by their labels
    assert prior.meta["clip_fingerprint"] == clip.fingerprint
    assert prior.label_map["names"] == [f"user_{u}" for u in range(NUM_USERS)]
    # it samples embeddings of that model's size for every user, reproducibly for a seed
    # (2 training steps: whether they land near their user's embeddings is test_prior's business)
    users = list(range(NUM_USERS))
    embeds = prior.sample(users, 2, seed=0, timesteps=3)
    assert embeds.shape == (2 * NUM_USERS, clip.config.dim_latent) and torch.isfinite(embeds).all()
    assert torch.equal(embeds, prior.sample(users, 2, seed=0, timesteps=3))
    assert not torch.equal(embeds, prior.sample(users, 2, seed=1, timesteps=3))


def test_generate_command_writes_one_png_per_sample_and_a_grid(site, prior_run):
    ok(run(GENERATE, site, "--sample_steps 3 --prior_steps 3"))
    out = site / "generated_images"
    for user in range(5):
        for j in range(4):
            assert (out / f"user_{user}_{j:03d}.png").is_file()
    grid = np.asarray(Image.open(out / "grid.png"))
    tile = 16 * 6  # 16 px samples enlarged 6x to the grid's 96 px minimum tile
    assert grid.shape[:2] == (2 + 5 * (tile + 2), 2 + 4 * (tile + 2))  # 4 samples per row, one row per user
    # row u, column j shows user u's sample j
    for user, j in ((0, 0), (4, 3)):
        top, left = 2 + user * (tile + 2), 2 + j * (tile + 2)
        assert np.array_equal(grid[top:top + tile:6, left:left + tile:6],
                              np.asarray(Image.open(out / f"user_{user}_{j:03d}.png")))


def test_basic_generation_and_interpolation_commands(site, prior_run):
    paths = {"path/to/decoder.pt": "outputs/decoder/decoder_v1/decoder_final.pt",
             "path/to/prior.pt": "outputs/prior/prior_v1/prior_final.pt"}
    ok(run(BASIC, site / "outputs", "--sample_steps 2 --prior_steps 2",
           **{k: f"../{v}" for k, v in paths.items()}))
    assert len(list((site / "outputs" / "generated_images").glob("user_*_*.png"))) == 12
    ok(run(INTERPOLATE, site, "--sample_steps 2 --prior_steps 2 --output_dir interp", **paths))
    assert (site / "interp" / "interpolation_user_0_user_5.png").is_file()
    frames = sorted((site / "interp" / "interpolation_user_0_user_5").glob("frame_*.png"))
    assert len(frames) == 8
    # same seed and steps: the strip starts at user 0's first sample of the basic command
    first, last = (np.asarray(Image.open(f)) for f in (frames[0], frames[-1]))
    assert np.array_equal(first, np.asarray(Image.open(site / "outputs" / "generated_images" / "user_0_000.png")))
    assert not np.array_equal(first, last)


@pytest.mark.parametrize("command", [TEST_DUMMY, TEST_DUMMY_SMALL])
def test_smoke_test_script_on_simulated_data(tmp_path, command):
    result = ok(run(command, tmp_path))
    lines = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(lines) >= 9 and all(line.startswith("PASS") for line in lines)
    assert "simulated data set" in result.stdout and "sample from prior + decoder" in result.stdout


def test_smoke_test_script_on_own_data(site):
    result = ok(run(TEST_OWN, site, "--image_size 16", **{"/path/to/your/data": "data",
                                                          "--num_users 31": f"--num_users {NUM_USERS}"}))
    assert "PASS  data layout and images per user: layout hierarchical" in result.stdout
    assert f"{NUM_USERS} users" in result.stdout
    wrong = run(TEST_OWN, site, "--image_size 16", **{"/path/to/your/data": "data"})
    assert wrong.returncode == 1
    assert "FAIL  data layout and images per user" in wrong.stdout and "num_users=31" in wrong.stdout
