"""Batched generation: identical to one-at-a-time, PNGs streamed as batches finish, sampler and
eta flags, GPU fast paths falling back on a CPU with one line each."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dalle2_md.cli.main import cli
from dalle2_md.cli.options import join_variadic
from dalle2_md.generation.fastpath import FastPaths, apply_fast_paths
from dalle2_md.generation.samples import write_samples

from test_model import make_model

@pytest.fixture(scope="module")
def model():
    from dalle2_md.data.labels import LabelMap

    return make_model(label_map=LabelMap.from_folder_names(["ID_1", "ID_2", "ID_7"]).to_dict())


def pngs(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("ID_*.png"))}


def test_batched_generation_equals_one_user_and_one_image_at_a_time(model, tmp_path):
    batched = write_samples(model, tmp_path / "b", user_labels=["ID_1", "ID_7"], num_samples_per_user=3, batch_size=4, seed=2)
    assert len(batched["images"]) == 6 and batched["images_per_s"] > 0
    for user in ("ID_1", "ID_7"):
        write_samples(model, tmp_path / "one", user_labels=[user], num_samples_per_user=3, batch_size=1, seed=2)
    a, b = pngs(tmp_path / "b"), pngs(tmp_path / "one")
    assert sorted(a) == sorted(b) == [f"{u}_{j:03d}.png" for u in ("ID_1", "ID_7") for j in range(3)]
    for name in a:  # 8-bit PNGs: at most one level apart from float rounding in a different batch
        assert np.abs(a[name].astype(int) - b[name].astype(int)).max() <= 1, name
    assert not np.array_equal(a["ID_1_000.png"], a["ID_7_000.png"])


def test_pngs_are_written_as_batches_finish(model, tmp_path, monkeypatch):
    calls = []
    real_sample = type(model).sample

    def fail_on_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real_sample(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "sample", fail_on_second_batch)
    with pytest.raises(RuntimeError, match="killed"):
        write_samples(model, tmp_path, user_labels=["ID_2"], num_samples_per_user=5, batch_size=2)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["ID_2_000.png", "ID_2_001.png"]


def test_fast_paths_fall_back_on_cpu_with_one_line_each(model, tmp_path):
    lines = []
    context = apply_fast_paths(model, "cpu", FastPaths(bf16=True, channels_last=True, compile=True), say=lines.append)
    assert lines == [f"{name}: CUDA only, falling back to the plain fp32 path on cpu"
                     for name in ("bf16", "channels_last", "compile")]
    with context:
        x = model.sample([0], seed=1, colorize=False)
    assert x.dtype == torch.float32
    assert apply_fast_paths(model, "cpu", FastPaths(), say=lines.append) is not None and len(lines) == 3


def test_cli_sampler_eta_and_fast_flags(model, tmp_path):
    bundle = model.save(tmp_path / "chain.pt")

    def run(*args):
        return CliRunner().invoke(cli, join_variadic(["generate", "--model_path", str(bundle), "--device", "cpu",
                                                      "--user_ids", "ID_2", "--num_samples_per_user", "2",
                                                      "--no-progress", *map(str, args)]))

    ok = run("--output_dir", tmp_path / "ddim", "--sampler", "ddim", "--eta", 1, "--bf16", "--compile")
    assert ok.exit_code == 0, ok.output
    assert "bf16: CUDA only" in ok.output and "compile: CUDA only" in ok.output and "images/s" in ok.output
    dpm = run("--output_dir", tmp_path / "dpm", "--sampler", "dpmpp_2m")
    assert dpm.exit_code == 0, dpm.output
    assert not np.array_equal(pngs(tmp_path / "ddim")["ID_2_000.png"], pngs(tmp_path / "dpm")["ID_2_000.png"])
    bad = run("--output_dir", tmp_path / "bad", "--sampler", "dpmpp_2m", "--eta", 1)
    assert bad.exit_code == 2 and "--eta 1.0 needs --sampler ddim" in bad.output and "Traceback" not in bad.output


def test_cli_guidance_interval(model, tmp_path, monkeypatch):
    """--guidance_interval reaches the sampler: some steps guided, the others not; a bad value is
    one clear error."""
    import dalle2_md.models.decoder as decoder_module

    bundle = model.save(tmp_path / "chain.pt")
    scales, real = [], decoder_module.guided_unet_forward
    monkeypatch.setattr(decoder_module, "guided_unet_forward",
                        lambda unet, x, t, e, cond_scale: scales.append(cond_scale) or real(unet, x, t, e, cond_scale))

    def run(*args):
        return CliRunner().invoke(cli, ["generate", "--model_path", str(bundle), "--device", "cpu", "--user_ids", "ID_2",
                                        "--num_samples_per_user", "1", "--no-progress", "--cond_scale", "3",
                                        "--sample_steps", "5", "--output_dir", str(tmp_path / "out"), *args])

    ok = run()
    assert ok.exit_code == 0, ok.output
    assert scales == [3.0] * 5  # the stored interval of this model: everywhere
    scales.clear()
    ok = run("--guidance_interval", "0.2,0.7")
    assert ok.exit_code == 0, ok.output
    assert 3.0 in scales and 1.0 in scales and len(scales) == 5
    bad = run("--guidance_interval", "0.9,0.1")
    assert bad.exit_code == 2 and "--guidance_interval 0.9,0.1" in bad.output and "Traceback" not in bad.output


def test_default_batch_shrinks_with_the_image_size_to_bound_memory():
    from dalle2_md.generation.samples import default_batch_size

    assert [default_batch_size(s) for s in (32, 64, 128, 256, 512, 4096)] == [64, 64, 64, 32, 16, 8]
