"""Workflows and the training / generation subcommands: resume, TensorBoard, file naming, user
errors, overwrite protection, mismatched parts, the chained bundle and the quick demo.

Everything runs on a 3-user x 6-image, 16 px simulated set with tiny models and 2-4 steps."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dalle2_md.cli.main import cli
from dalle2_md.cli.options import join_variadic
from dalle2_md.training.loop import TrainConfig
from dalle2_md.utils import UserError
from dalle2_md.training.options import DataOptions, load_train_data
from dalle2_md.training.stages import check_can_write, sub_schedule, train_clip_stage, train_prior_stage

TINY_CLIP = ["--clip_dim", "16", "--clip_widths", "8", "16", "--clip_dim_image", "32"]
TINY_DECODER = ["--dim", "16", "--dim_mults", "1", "2", "--attn_heads", "2", "--attn_dim_head", "8",
                "--num_resnet_blocks", "1", "--timesteps", "50", "--sample_timesteps", "4", *TINY_CLIP]
TINY_PRIOR = ["--depth", "1", "--heads", "2", "--dim_head", "8", "--timesteps", "50", "--sample_timesteps", "4"]
QUIET = ["--image_size", "16", "--no-progress"]
PRIOR_SIZES = dict(depth=1, heads=2, dim_head=8, timesteps=50, sample_timesteps=4)
CLIP_SIZES = dict(dim_latent=16, dim_text=16, dim_image=32, encoder_widths=(8, 16))



def invoke(*args, ok=True):
    result = CliRunner().invoke(cli, join_variadic([str(a) for a in args]))
    if ok and result.exit_code != 0:
        raise AssertionError(f"exit {result.exit_code}: {result.output}\n{result.exception!r}")
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from dalle2_md.data.synthesize import synthesize_dataset

    root = tmp_path_factory.mktemp("wf")
    synthesize_dataset(root / "data", num_users=3, images_per_user=6, image_size=16, layout="kaggle", progress=False)
    return root


@pytest.fixture(scope="module")
def trained(work):
    """A decoder run (embedding model + decoder) and a prior run on its embedding model."""
    data = work / "data"
    invoke("train-decoder", "--data_root", data, "--output_dir", work / "out", "--experiment_name", "dec",
           "--max_steps", 2, *TINY_DECODER, *QUIET)
    clip = work / "out" / "dec" / "clip_final.pt"
    invoke("train-prior", "--data_root", data, "--output_dir", work / "out", "--experiment_name", "pri",
           "--max_steps", 2, "--clip_path", clip, *TINY_PRIOR, *QUIET)
    return {"clip": clip, "decoder": work / "out" / "dec" / "decoder_final.pt",
            "prior": work / "out" / "pri" / "prior_final.pt"}


def test_every_option_has_help_and_shows_default():
    # the group's context turns show_default on for every subcommand; an option may only
    # switch it off by setting show_default=False itself
    assert cli.context_settings.get("show_default") is True
    for name, command in cli.commands.items():
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                assert param.help, f"{name} --{param.name} has no help"
                assert param.show_default is not False, f"{name} --{param.name} hides its default"
        result = invoke(name, "--help")
        assert "[default:" in result.output


def test_variadic_flags_are_joined_and_comma_lists_parse():
    argv = ["generate", "--user_ids", "0", "1", "ID_3", "--num_samples_per_user", "2", "--dim-mults", "1", "2"]
    assert join_variadic(argv) == ["generate", "--user_ids", "0,1,ID_3", "--num_samples_per_user", "2",
                                   "--dim-mults", "1,2"]
    from dalle2_md.cli.options import int_tuple, str_list

    assert int_tuple(None, None, "1,2,4,8") == (1, 2, 4, 8)
    assert str_list(None, None, "0,ID_5") == ["0", "ID_5"]


def test_sub_schedule_follows_max_steps_unless_told_otherwise():
    run = TrainConfig(epochs=100)
    assert sub_schedule(run, max_steps=None, epochs=20).epochs == 20
    assert sub_schedule(run, max_steps=7, epochs=20).max_steps == 7
    short = TrainConfig(max_steps=3)
    assert sub_schedule(short, max_steps=None, epochs=20).max_steps == 3


def test_decoder_run_layout_and_bundle_meta(trained, work):
    from dalle2_md.models.bundle import load_bundle

    run = work / "out" / "dec"
    for stage in ("clip", "decoder"):
        assert (run / stage / "checkpoints" / "latest.json").is_file()
        assert list((run / stage / "tensorboard").glob("events.out.tfevents.*"))
    assert list((run / "decoder" / "samples").glob("step_*.png"))
    assert json.loads((run / "label_map.json").read_text())["names"] == ["ID_1", "ID_2", "ID_3"]
    assert set(json.loads((run / "split.json").read_text())) >= {"train", "val", "test"}
    clip = load_bundle(trained["clip"], kind="clip")
    decoder = load_bundle(trained["decoder"], kind="decoder")
    prior = load_bundle(trained["prior"], kind="prior")
    assert decoder["meta"]["clip_fingerprint"] == clip["meta"]["fingerprint"] == prior["meta"]["clip_fingerprint"]
    assert decoder["meta"]["colormap"] == "jet" and decoder["meta"]["image_size"] == 16
    assert prior["label_map"]["names"] == ["ID_1", "ID_2", "ID_3"]


def _event_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(Path(folder).glob("events.out.tfevents.*"))
    assert files, f"no event file in {folder}"
    acc = EventAccumulator(str(files[0]), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc.Tags()


def test_tensorboard_has_scalars_and_sample_grids(trained, work):
    tags = _event_tags(work / "out" / "pri" / "prior" / "tensorboard")
    assert {"loss", "lr", "grad_norm", "samples_per_s"} <= set(tags["scalars"])
    tags = _event_tags(work / "out" / "dec" / "decoder" / "tensorboard")
    assert "loss" in tags["scalars"] and "samples" in tags["images"]


def test_resume_continues_the_step_count_and_reproduces_the_loss(trained, work):
    from dalle2_md.models.embedding import MicroDopplerClip

    data = DataOptions(data_root=str(work / "data"), image_size=16, cache_dir=str(work / "cache"))
    clip = MicroDopplerClip.load(trained["clip"])
    runs = {}
    for name in ("whole", "split"):
        run = work / "resume" / name
        ds = load_train_data(data, run)
        if name == "whole":
            runs[name] = train_prior_stage(run, ds, clip, TrainConfig(max_steps=4, batch_size=4, checkpoint_every=1),
                                           sizes=PRIOR_SIZES, cache_dir=work / "cache", progress=False)
        else:
            first = train_prior_stage(run, ds, clip, TrainConfig(max_steps=2, batch_size=4, checkpoint_every=1),
                                      sizes=PRIOR_SIZES, cache_dir=work / "cache", progress=False)
            runs[name] = train_prior_stage(run, ds, clip, TrainConfig(max_steps=4, batch_size=4, checkpoint_every=1),
                                           sizes=PRIOR_SIZES, cache_dir=work / "cache", resume="latest", progress=False)
    whole, second = runs["whole"].train, runs["split"].train
    assert first.train.step == 2 and second.start_step == 2 and second.step == 4
    assert np.allclose(first.train.losses + second.losses, whole.losses, rtol=1e-5, atol=1e-6)
    a, b = runs["whole"].model.state_dict(), runs["split"].model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resumed_decoder_run_reuses_its_embedding_model(trained, work):
    run = work / "out" / "dec"
    before = (run / "clip_final.pt").stat().st_mtime_ns
    invoke("train-decoder", "--data_root", work / "data", "--output_dir", work / "out", "--experiment_name", "dec",
           "--max_steps", 3, "--resume", "latest", *TINY_DECODER, *QUIET)
    assert (run / "clip_final.pt").stat().st_mtime_ns == before
    assert json.loads((run / "decoder" / "checkpoints" / "latest.json").read_text())["step"] == 3


def test_finished_bundles_are_not_overwritten_without_flag(trained, work):
    prior = trained["prior"]
    before = prior.stat().st_mtime_ns
    args = ["train-prior", "--data_root", work / "data", "--output_dir", work / "out", "--experiment_name", "pri",
            "--max_steps", 1, "--clip_path", trained["clip"], *TINY_PRIOR, *QUIET]
    result = invoke(*args, ok=False)
    assert result.exit_code == 2 and "--overwrite" in result.output and "prior_final.pt" in result.output
    assert prior.stat().st_mtime_ns == before
    with pytest.raises(UserError):
        check_can_write(prior, overwrite=False, resume=None)


def test_prior_without_clip_path_names_the_flag_and_file(trained, work):
    result = invoke("train-prior", "--data_root", work / "data", "--output_dir", work / "out", "--experiment_name",
                    "lonely", "--max_steps", 1, *QUIET, ok=False)
    assert result.exit_code == 2
    assert "--clip_path" in result.output and "clip_final.pt" in result.output
    assert "Traceback" not in result.output


def test_prior_dim_other_than_the_embedding_size_is_projected(trained, work):
    invoke("train-prior", "--data_root", work / "data", "--output_dir", work / "out", "--experiment_name", "wide",
           "--max_steps", 1, "--clip_path", trained["clip"], "--dim", 32, *TINY_PRIOR, *QUIET)
    from dalle2_md.models.prior import UserConditionedDiffusionPrior

    prior = UserConditionedDiffusionPrior.load(work / "out" / "wide" / "prior_final.pt")
    assert (prior.config.dim, prior.image_embed_dim) == (32, 16)  # a 32-wide transformer over 16-d embeddings
    assert prior.sample([0], seed=0).shape == (1, 16)


def test_generate_names_files_by_label_and_saves_npy(trained, work):
    out = work / "gen"
    invoke("generate", "--decoder_path", trained["decoder"], "--prior_path", trained["prior"], "--clip_path",
           trained["clip"], "--user_ids", "ID_2", "3", "--num_samples_per_user", 2, "--sample_steps", 3,
           "--prior_steps", 3, "--save_npy", "--output_dir", out, "--device", "cpu")
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["ID_2_000.png", "ID_2_001.png", "ID_3_000.png", "ID_3_001.png", "grid.png"]
    array = np.load(out / "ID_3_001.npy")
    assert array.shape == (16, 16) and 0 <= array.min() and array.max() <= 1
    assert np.asarray(Image.open(out / "ID_2_000.png")).shape == (16, 16, 3)
    grid = Image.open(out / "grid.png")
    tile = 16 * 6  # 16 px samples enlarged 6x to reach GRID_MIN_TILE = 96
    assert grid.size == (2 + 2 * (tile + 2), 2 + 2 * (tile + 2))  # 2 samples per row, one row per user, 2 px padding
    top_left = np.asarray(grid)[2 : 2 + tile, 2 : 2 + tile]
    assert (top_left[::6, ::6] == np.asarray(Image.open(out / "ID_2_000.png"))).all()


def test_a_user_conditioned_decoder_trains_generates_and_interpolates_from_the_cli(trained, work):
    from dalle2_md.models.decoder import MicroDopplerDecoder

    invoke("train-decoder", "--data_root", work / "data", "--output_dir", work / "out", "--experiment_name", "dec_user",
           "--max_steps", 2, "--clip_path", trained["clip"], "--user_conditioning", *TINY_DECODER, *QUIET)
    # the default; --no_user_conditioning gives the embedding-only decoder
    invoke("train-decoder", "--data_root", work / "data", "--output_dir", work / "out", "--experiment_name", "dec_plain",
           "--max_steps", 1, "--clip_path", trained["clip"], "--no_user_conditioning", *TINY_DECODER, *QUIET)
    assert not MicroDopplerDecoder.load(work / "out" / "dec_plain" / "decoder_final.pt").config.user_conditioning
    path = work / "out" / "dec_user" / "decoder_final.pt"
    config = MicroDopplerDecoder.load(path).config
    assert config.user_conditioning and config.num_users == 3
    out = work / "gen_user"
    invoke("generate", "--decoder_path", path, "--prior_path", trained["prior"], "--clip_path", trained["clip"],
           "--user_ids", "ID_1", "ID_3", "--num_samples_per_user", 2, "--sample_steps", 3, "--prior_steps", 3,
           "--interpolate", "--interp_user_1", "ID_1", "--interp_user_2", "ID_3", "--interp_steps", 3,
           "--output_dir", out, "--device", "cpu")
    assert sorted(p.name for p in out.glob("ID_*.png")) == ["ID_1_000.png", "ID_1_001.png", "ID_3_000.png", "ID_3_001.png"]
    assert list(out.glob("interpolation_*.png"))


def test_unknown_user_lists_the_valid_labels(trained, work):
    result = invoke("generate", "--decoder_path", trained["decoder"], "--prior_path", trained["prior"],
                    "--user_ids", "9", "--output_dir", work / "gen_bad", ok=False)
    assert result.exit_code == 2 and "ID_1, ID_2, ID_3" in result.output


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_interpolate_writes_strip_and_frames(trained, work):
    out = work / "interp"
    parts = ["--decoder_path", trained["decoder"], "--prior_path", trained["prior"], "--sample_steps", 3,
             "--prior_steps", 3, "--seed", 5]
    invoke("interpolate", *parts, "--interp_user_1", "ID_1", "--interp_user_2", "3", "--interp_steps", 3,
           "--output_dir", out)
    frames = sorted((out / "interpolation_ID_1_ID_3").glob("frame_*.png"))
    assert [f.name for f in frames] == ["frame_000.png", "frame_001.png", "frame_002.png"]
    # the end frames are the two users' plain samples (same seed: same embeddings, same noise)
    invoke("generate", *parts, "--user_ids", "ID_1", "ID_3", "--num_samples_per_user", 1, "--output_dir", out / "plain")
    first, middle, last = (_pixels(f) for f in frames)
    assert np.array_equal(first, _pixels(out / "plain" / "ID_1_000.png"))
    assert np.array_equal(last, _pixels(out / "plain" / "ID_3_000.png"))
    assert not np.array_equal(first, last) and not np.array_equal(middle, first)
    # the strip shows the frames left to right, each enlarged 6x (16 px to the 96 px minimum tile)
    strip, tile = _pixels(out / "interpolation_ID_1_ID_3.png"), 16 * 6
    assert strip.shape[:2] == (2 + tile + 2, 2 + 3 * (tile + 2))
    for i, frame in enumerate((first, middle, last)):
        left = 2 + i * (tile + 2)
        assert np.array_equal(strip[2:2 + tile:6, left:left + tile:6], frame)


def test_chained_bundle_generates_what_its_parts_do(trained, work):
    from dalle2_md.models.chain import MicroDopplerDALLE2

    path = MicroDopplerDALLE2.from_parts(prior_path=trained["prior"], decoder_path=trained["decoder"],
                                         clip_path=trained["clip"]).save(work / "chain.pt")
    sampling = ["--user_ids", "1", "3", "--num_samples_per_user", 2, "--sample_steps", 2, "--prior_steps", 2,
                "--seed", 3]
    invoke("generate", "--model_path", path, *sampling, "--output_dir", work / "gen_chain")
    invoke("generate", "--decoder_path", trained["decoder"], "--prior_path", trained["prior"], "--clip_path",
           trained["clip"], *sampling, "--output_dir", work / "gen_parts")
    names = sorted(p.name for p in (work / "gen_chain").glob("*.png"))
    assert names == ["ID_1_000.png", "ID_1_001.png", "ID_3_000.png", "ID_3_001.png", "grid.png"]
    assert names == sorted(p.name for p in (work / "gen_parts").glob("*.png"))
    for name in names:
        assert (work / "gen_chain" / name).read_bytes() == (work / "gen_parts" / name).read_bytes(), name
    assert MicroDopplerDALLE2.load(path).clip is not None  # the embedding model travels in the bundle


def test_mismatched_prior_and_decoder_are_refused(trained, work):
    data, out = work / "data", work / "out"
    invoke("train-clip", "--data_root", data, "--output_dir", out, "--experiment_name", "clip2", "--seed", 1,
           "--max_steps", 1, *TINY_CLIP, *QUIET)
    invoke("train-prior", "--data_root", data, "--output_dir", out, "--experiment_name", "clip2", "--max_steps", 1,
           *TINY_PRIOR, *QUIET)  # no --clip_path: this run folder's own clip_final.pt is used
    result = invoke("generate", "--decoder_path", trained["decoder"], "--prior_path", out / "clip2" / "prior_final.pt",
                    "--output_dir", work / "gen_mix", ok=False)
    assert result.exit_code == 2 and "different embedding models" in result.output
    assert not (work / "gen_mix").exists()


def test_latent_decoder_trains_vqgan_first(trained, work):
    run = work / "out" / "latent"
    invoke("train-decoder", "--data_root", work / "data", "--output_dir", work / "out", "--experiment_name", "latent",
           "--max_steps", 2, "--clip_path", trained["clip"], "--use_vqgan", "--vqgan_dim", 8, "--vqgan_layers", 1,
           "--vqgan_codebook_size", 16, *TINY_DECODER, "--dim-mults", "1,2", *QUIET)
    from dalle2_md.models.decoder import MicroDopplerDecoder

    assert (run / "vqgan_final.pt").is_file() and not (run / "clip_final.pt").exists()
    decoder = MicroDopplerDecoder.load(run / "decoder_final.pt")
    assert decoder.config.use_vqgan and decoder.diffused_shape[1:] == (8, 8)


def test_flat_structure_is_required_when_asked(tmp_path, work):
    from dalle2_md.data.synthesize import synthesize_dataset

    result = invoke("train-clip", "--data-root", work / "data", "--output-dir", tmp_path, "--flat-structure",
                    "--max_steps", 1, *QUIET, ok=False)
    assert result.exit_code == 2 and "metadata.json" in result.output
    synthesize_dataset(tmp_path / "flat", num_users=2, images_per_user=3, image_size=16, layout="flat", progress=False)
    train = load_train_data(DataOptions(data_root=str(tmp_path / "flat"), image_size=16, flat_structure=True),
                            tmp_path / "run")
    done = train_clip_stage(tmp_path / "run", train, TrainConfig(max_steps=1, batch_size=4), sizes=CLIP_SIZES,
                            progress=False)
    assert done.final.is_file() and train.layout == "flat"


@pytest.mark.slow
def test_quick_demo_writes_report(tmp_path):
    result = invoke("demo", "--quick", "--output_dir", tmp_path / "demo", "--no-progress")
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "## Timings" in report and "peak" in report.lower()
    for picture in ("samples/grid.png", "samples/interpolation_user_0_user_2.png"):
        assert picture in report and (tmp_path / "demo" / picture).is_file()
    assert "peak RSS" in result.output
    assert "(A_real)" in report and "(A_gen)" in report


def test_quick_demo_over_a_vqgan_latent(tmp_path):
    from dalle2_md.models.decoder import MicroDopplerDecoder

    invoke("demo", "--quick", "--image_size", 32, "--vqgan_steps", 3, "--output_dir", tmp_path / "demo", "--no-progress")
    run = tmp_path / "demo" / "run"
    decoder = MicroDopplerDecoder.load(run / "decoder_final.pt")
    assert decoder.config.use_vqgan and decoder.config.vqgan.latent_size == 8 and (run / "vqgan_final.pt").is_file()
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "| vqgan |" in report and "latent of a VQGAN trained 3 steps" in report


class _ReplayGenerator:
    """Stands in for a trained model in `demo_metrics`: its "samples" of user u are unseen
    simulator draws of user (u + shift) mod N, so A_gen must be high at shift 0 and low
    otherwise if it judges whose images they are; `lift` raises every pixel towards white by that
    fraction (a washed-out background)."""

    def __init__(self, images: torch.Tensor, user_ids: torch.Tensor, shift: int, lift: float = 0.0):
        self.images, self.user_ids, self.shift, self.lift = images, user_ids, shift, lift

    def sample(self, users, *, num_samples_per_user, colorize, **_):
        assert not colorize  # the recogniser judges the model's own channels
        shown = [(u + self.shift) % int(self.user_ids.max() + 1) for u in users]
        picks = [self.images[self.user_ids == u][:num_samples_per_user] for u in shown]
        assert all(len(p) == num_samples_per_user for p in picks)
        images01 = (torch.cat(picks) + 1) / 2  # the model's [0, 1]
        return images01 + self.lift * (1 - images01)


def test_demo_metrics_judge_real_and_generated_images(trained, tmp_path):
    """The demo's identity accuracy: the recogniser recognises real test images well above chance
    (A_real), and A_gen scores generated images against the user they were asked for."""
    from dalle2_md.data.dataset import MicroDopplerDataset
    from dalle2_md.models.chain import MicroDopplerDALLE2
    from dalle2_md.data.synthesize import synthesize_dataset
    from dalle2_md.training.options import DataOptions, load_train_data
    from dalle2_md.cli.demo_run import DemoConfig, demo_metrics

    # the module's 3 users (same simulator seed) with 30 images each, so the test split has 9
    # images; and 6 further draws per user that no recogniser sees
    seen, unseen = 30, 6
    synthesize_dataset(tmp_path / "all", num_users=3, images_per_user=seen + unseen, image_size=16, layout="kaggle",
                       progress=False)
    for user_dir in (tmp_path / "all").glob("ID_*"):
        for png in sorted(user_dir.glob("*.png"))[:seen]:
            (tmp_path / "data" / user_dir.name).mkdir(parents=True, exist_ok=True)
            png.rename(tmp_path / "data" / user_dir.name / png.name)
    data = DataOptions(data_root=str(tmp_path / "data"), image_size=16)
    ds = load_train_data(data, tmp_path / "run")
    fresh = MicroDopplerDataset(tmp_path / "all", image_size=16, label_map=ds.label_map)
    # 60 recogniser steps, measured over demo seeds 0-3: A_real >= 0.89, A_gen of the replayed
    # draws 1.0 at shift 0 and 0.0 at shift 1 (30 steps, the quick demo's: A_real 0.78 at seed 1)
    config = replace(DemoConfig.quick(), recogniser_steps=60)
    assert config.eval_samples_per_user <= unseen
    num_users = len(ds.label_map)

    model = MicroDopplerDALLE2.from_parts(prior_path=trained["prior"], decoder_path=trained["decoder"])
    metrics = demo_metrics(model, ds, data, tmp_path / "run", config, seed=0)
    assert metrics["generated_images"] == num_users * config.eval_samples_per_user
    assert metrics["chance"] == 1 / num_users and metrics["test_images"] == 9
    assert metrics["a_real"] >= 2 * metrics["chance"]
    # the 2-step model's samples are noise: A_gen is only a fraction of its samples judged right
    correct = metrics["a_gen"] * metrics["generated_images"]
    assert correct == pytest.approx(round(correct), abs=1e-4)

    replay = {shift: demo_metrics(_ReplayGenerator(*fresh.tensors(), shift), ds, data, tmp_path / "run", config,
                                  seed=0) for shift in (0, 1)}
    assert replay[0]["a_gen"] >= 2 * metrics["chance"]  # unseen draws of the right users are recognised
    assert replay[1]["a_gen"] < metrics["chance"]  # the same draws, asked for as the next user, are not
    # background defects: unseen real draws mostly inside the train images' 1-99 % range, as the
    # real test images are; the same draws washed out all outside it
    assert replay[0]["background_defects"] <= 0.25 and metrics["real_background_defects"] <= 0.25
    washed = demo_metrics(_ReplayGenerator(*fresh.tensors(), 0, lift=0.4), ds, data, tmp_path / "run", config, seed=0)
    assert washed["background_defects"] == 1.0


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _check_lines(result) -> dict:
    """{check name: its PASS/FAIL line} of a `check` run, and "summary": its last line."""
    lines = result.output.splitlines()
    named = {line.split(":", 1)[0][6:]: line for line in lines if line.startswith(("PASS  ", "FAIL  "))}
    return {**named, "summary": next(line for line in reversed(lines) if "checks passed" in line)}


def test_check_names_a_truncated_image(tmp_path):
    """The self-check reads the data as training does and, like every command, names what it skipped."""
    from dalle2_md.data.synthesize import synthesize_dataset

    synthesize_dataset(tmp_path / "data", num_users=3, images_per_user=6, image_size=16, progress=False)
    victim = sorted((tmp_path / "data" / "user_1").glob("*.png"))[0]
    _truncate(victim)
    result = invoke("check", "--data_root", tmp_path / "data", "--num_users", 3, "--image_size", 16, "--steps", 1,
                    "--work_dir", tmp_path / "work")
    lines = _check_lines(result)
    assert lines["data layout and images per user"].startswith("PASS")
    every = lines["every file, every split"]
    assert every.startswith("PASS") and "17 of 18 files decoded" in every
    assert f"skipped 1 unreadable file(s), as training skips them: user_1/{victim.name}" in every and "truncated" in every
    assert lines["summary"] == (f"{len(lines) - 1}/{len(lines) - 1} checks passed; 1 unreadable file(s) skipped, "
                                f"as training skips them: user_1/{victim.name}")


def test_check_names_an_unreadable_image_outside_the_training_split(tmp_path):
    """A file the training split never reads (val/test) is decoded by the check too and named with a
    count: a named skip, as training skips it, that fails no check."""
    from dalle2_md.data.scanning import scan_data_root
    from dalle2_md.data.synthesize import synthesize_dataset
    from dalle2_md.data.splits import resolve_split

    data = tmp_path / "data"
    synthesize_dataset(data, num_users=3, images_per_user=8, image_size=16, progress=False)
    index = scan_data_root(data)
    held_out = resolve_split(index, None, 0)["test"]  # the check's split: seed 0, as --split_seed's default
    rel = sorted(r for r in held_out if r.startswith("user_2/"))[0]
    _truncate(data / rel)
    result = invoke("check", "--data_root", data, "--num_users", 3, "--image_size", 16, "--steps", 1,
                    "--work_dir", tmp_path / "work")
    split = json.loads((tmp_path / "work" / "run" / "split.json").read_text())
    assert rel not in split["train"] and rel in split["test"]  # outside what training reads
    lines = _check_lines(result)
    assert "skipped" not in lines["data layout and images per user"]  # the train split read cleanly
    every = lines["every file, every split"]
    assert every.startswith("PASS") and "23 of 24 files decoded" in every
    assert f"skipped 1 unreadable file(s), as training skips them: {rel} (unreadable or truncated" in every
    assert all(line.startswith("PASS") for name, line in lines.items() if name != "summary")
    assert lines["summary"].endswith(f"checks passed; 1 unreadable file(s) skipped, as training skips them: {rel}")


def test_stage_functions_and_two_stage_core_train_the_same_models(work, tmp_path):
    """One pipeline: the training commands' stage functions and `train_two_stage` (demo,
    augmentation harness) give identical weights from the same data, budget and seed."""
    from dalle2_md.training.presets import QUICK_BUDGET
    from dalle2_md.training.fit import train_two_stage
    from dalle2_md.training.stages import train_decoder_stage

    budget = replace(QUICK_BUDGET, clip_train_steps=2, decoder_train_steps=2, prior_train_steps=2, batch_size=8, decoder_batch_size=8,
                     clip=CLIP_SIZES, prior=PRIOR_SIZES)
    ds = load_train_data(DataOptions(data_root=str(work / "data"), image_size=16), tmp_path / "run")
    images, user_indices = ds.tensors()
    core = train_two_stage(images, user_indices, num_users=len(ds.label_map), budget=budget, seed=3,
                           work_dir=tmp_path / "core")
    kw = dict(overwrite=True, progress=False)
    schedule = lambda steps, batch: budget.schedule(steps, batch, 3)
    clip = train_clip_stage(tmp_path / "run", ds, schedule(2, 8), sizes=budget.clip, **kw).model
    decoder = train_decoder_stage(tmp_path / "run", ds, clip, schedule(2, 8), sizes=budget.decoder,
                                  cache_dir=tmp_path / "cache", **kw).model
    prior = train_prior_stage(tmp_path / "run", ds, clip, schedule(2, 8), sizes=budget.prior,
                              cache_dir=tmp_path / "cache", **kw).model
    for name, staged in (("clip", clip), ("decoder", decoder), ("prior", prior)):
        trained = getattr(core, name).state_dict()
        assert staged.state_dict().keys() == trained.keys()
        for key, value in staged.state_dict().items():
            assert torch.equal(value, trained[key]), f"{name}.{key} differs"
    assert core.decoder.meta["clip_fingerprint"] == clip.fingerprint



def test_say_prints_once_on_the_first_process(monkeypatch, capsys):
    """The one message channel: a flushed stdout line on rank 0, nothing on the other ranks of
    an `accelerate launch` run."""
    from dalle2_md.utils import say

    for key in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(key, raising=False)
    say("one line")
    monkeypatch.setenv("RANK", "1")
    say("from the second process")
    monkeypatch.setenv("RANK", "0")
    say("from the first process")
    captured = capsys.readouterr()
    assert captured.out == "one line\nfrom the first process\n" and captured.err == ""
