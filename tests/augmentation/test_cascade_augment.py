"""The harness with a base-size generator (augmentation/cascade.py): the generator trains on the
K real images shrunk to its base size, the upsampler on the same K at the data's size and nothing
else, and the recognisers see samples enlarged to the data's size."""

import pytest
import torch
from test_augment import TINY

from dalle2_md.augmentation import harness
from dalle2_md.augmentation.cascade import Enlargement, enlarge_samples
from dalle2_md.augmentation.harness import augmentation_gain
from dalle2_md.augmentation.recipe import AugmentRecipe
from dalle2_md.data.simulator import get_profile
from dalle2_md.evaluation.protocol import simulate, split
from dalle2_md.evaluation.recogniser import RecogniserTrainConfig
from dalle2_md.models.upsampler import UpsamplerConfig, enlarge, shrink
from dalle2_md.training import fit
from dalle2_md.training.loop import TrainConfig
from dalle2_md.utils import UserError

TINY_UPSAMPLER = UpsamplerConfig(lowres_size=8, output_size=16, dim=8, dim_mults=(1, 2), attn_heads=1, attn_dim_head=8,
                                 timesteps=50, sample_timesteps=2, crop_size=8)
CASCADE = Enlargement(base_size=8, upsampler=TINY_UPSAMPLER,
                      upsampler_train=TrainConfig(max_steps=3, batch_size=4, warmup_steps=0, log_every=1))
RECOGNISER = dict(recogniser_train=RecogniserTrainConfig(steps=3, batch_size=4),
                  recogniser_shape=dict(widths=(4, 8), feature_dim=8))


@pytest.fixture(scope="module")
def data():
    images, ids = simulate(3, 10, 16, 0, get_profile("gait31"))
    parts = split(ids, 10, 3, 0)
    return (images[parts["train"]], ids[parts["train"]]), (images[parts["test"]], ids[parts["test"]])


def _rows(images):
    return {x.contiguous().numpy().tobytes() for x in images.float()}


def test_generator_sees_the_shrunk_kshot_images_and_the_upsampler_the_full_size_ones(data, tmp_path, monkeypatch):
    train, test = data
    generator_images, upsampler_images, recogniser_sizes = [], [], []
    real_generator, real_upsampler = harness.train_generator, fit.fit_upsampler

    def spy_generator(images, user_indices, **kw):
        generator_images.append(images.clone())
        return real_generator(images, user_indices, **kw)

    def spy_upsampler(images, config, schedule, run_dir, **kw):
        upsampler_images.append(images.clone())
        return real_upsampler(images, config, schedule, run_dir, **kw)

    from dalle2_md.evaluation import recogniser as rec_module
    real_train_recogniser = rec_module.train_recogniser

    def spy_recogniser(images, user_indices, *a, synthetic=None, **kw):
        recogniser_sizes.append((images.shape[-1], None if synthetic is None else synthetic[0].shape[-1]))
        return real_train_recogniser(images, user_indices, *a, synthetic=synthetic, **kw)

    monkeypatch.setattr(harness, "train_generator", spy_generator)
    monkeypatch.setattr(fit, "fit_upsampler", spy_upsampler)
    monkeypatch.setattr(rec_module, "train_recogniser", spy_recogniser)
    result = augmentation_gain(train, test, num_users=3, work_dir=tmp_path, k=2, seeds=(0,), budget=TINY,
                               recipes=[AugmentRecipe(source="sdedit", m_per_k=1.0)], enlargement=CASCADE, **RECOGNISER)
    row = result["per_seed"][0]
    picked = train[0][row["kshot_indices"]]
    assert len(generator_images) == 1 and generator_images[0].shape[-1] == 8
    assert _rows(generator_images[0]) == _rows(shrink(picked, 8))  # the K real images, shrunk, and nothing else
    assert len(upsampler_images) == 1 and _rows(upsampler_images[0]) == _rows(picked)  # the K at full size
    assert recogniser_sizes and all(size == 16 and synth in (None, 16) for size, synth in recogniser_sizes)
    assert result["enlargement"]["base_size"] == 8 and row["recipes"]["default"]["num_generated"] == 6


def test_bicubic_enlargement_trains_no_upsampler(data, tmp_path, monkeypatch):
    train, test = data
    monkeypatch.setattr(fit, "fit_upsampler", lambda *a, **kw: pytest.fail("an upsampler was trained"))
    result = augmentation_gain(train, test, num_users=3, work_dir=tmp_path, k=2, seeds=(0,), budget=TINY,
                               recipes=[AugmentRecipe(source="sdedit", m_per_k=1.0)],
                               enlargement=Enlargement(base_size=8), **RECOGNISER)
    assert result["enlargement"] == {"base_size": 8, "upsampler": None, "upsampler_train": None}


def test_enlargement_refuses_sizes_that_do_not_chain(data, tmp_path):
    train, test = data
    for bad, message in ((Enlargement(base_size=16), "base size 16 must be below"),
                         (Enlargement(base_size=4, upsampler=TINY_UPSAMPLER), "8 -> 16 px, but the harness needs")):
        with pytest.raises(UserError, match=message):
            augmentation_gain(train, test, num_users=3, work_dir=tmp_path, k=2, seeds=(0,), budget=TINY,
                              enlargement=bad, **RECOGNISER)


def test_enlarge_samples_by_bicubic_and_through_a_keyed_upsampler():
    from dalle2_md.models.upsampler import MicroDopplerUpsampler

    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert torch.equal(enlarge_samples(x, 16, None, seed=0), enlarge(x, 16))
    ups = MicroDopplerUpsampler(config=TINY_UPSAMPLER).eval()
    a = enlarge_samples(x, 16, ups, seed=1)
    assert a.shape == (3, 1, 16, 16) and -1 <= a.min() and a.max() <= 1
    assert torch.equal(a, enlarge_samples(x, 16, ups, seed=1)) and not torch.equal(a, enlarge_samples(x, 16, ups, seed=2))


def test_augment_eval_cli_trains_the_generator_at_its_base_size(tmp_path):
    import json

    from click.testing import CliRunner

    from dalle2_md.cli.main import cli
    from dalle2_md.data.synthesize import synthesize_dataset

    root = tmp_path / "data"
    synthesize_dataset(root, num_users=3, images_per_user=10, image_size=16, seed=0, progress=False)
    out = tmp_path / "aug"
    result = CliRunner().invoke(cli, [
        "augment-eval", "--data_root", str(root), "--image_size", "16", "--base_size", "8", "--k", "2", "--m", "1",
        "--seeds", "0", "--clip_train_steps", "2", "--decoder_train_steps", "1", "--prior_train_steps", "2",
        "--sample_steps", "1", "--recogniser_steps", "2", "--upsampler_train_steps", "2", "--upsampler_dim", "8",
        "--upsampler_dim_mults", "1,2", "--upsampler_sample_timesteps", "2", "--output_dir", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "augment.json").read_text())
    upsampler = saved["enlargement"]["upsampler"]
    assert saved["enlargement"]["base_size"] == 8 and (upsampler["lowres_size"], upsampler["output_size"]) == (8, 16)
    assert (out / "runs" / "seed_0" / "upsampler" / "upsampler").is_dir()
    bad = CliRunner().invoke(cli, ["augment-eval", "--data_root", str(root), "--image_size", "16", "--base_size", "16",
                                   "--output_dir", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "--base_size 16 must be below" in bad.output and "Traceback" not in bad.output
