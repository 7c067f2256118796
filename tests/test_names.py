"""Issue 11 names: `user_labels` (original, as on disk) vs `user_indices` (0..N-1). The names
before the rename still work for one release, give the same result and warn; the seed's
`--user_ids` flag takes original labels and says so."""

import warnings

import pytest
import torch
from click.testing import CliRunner

from dalle2_md import generation
from dalle2_md.cli import USER_LABELS_HELP, cli, join_variadic
from dalle2_md.labels import LabelMap
from dalle2_md.utils import UserError, deprecated_alias, renamed_keywords

from test_model import make_model

FAST = dict(prior_steps=2, decoder_steps=2)


@pytest.fixture(scope="module")
def model():
    return make_model(label_map=LabelMap.from_folder_names(["ID_1", "ID_2", "ID_7"]).to_dict())


def test_renamed_keyword_and_alias_shims():
    @renamed_keywords(old="new")
    def f(*, new):
        return new

    with pytest.warns(DeprecationWarning, match=r"f\(old=\.\.\.\) is deprecated; use new="):
        assert f(old=3) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(new=4) == 4  # the new name is silent
    with pytest.raises(TypeError, match="both old= .* and new="):
        f(old=1, new=2)
    g = deprecated_alias(f, "g")
    with pytest.warns(DeprecationWarning, match="g is deprecated; use .*f"):
        assert g(new=5) == 5


def test_old_user_ids_keyword_gives_the_same_samples_and_warns(model):
    new = model.sample(user_indices=[2, 0], seed=3, **FAST)
    with pytest.warns(DeprecationWarning, match=r"sample\(user_ids=\.\.\.\) is deprecated; use user_indices="):
        old = model.sample(user_ids=[2, 0], seed=3, **FAST)
    assert torch.equal(new, old)
    with pytest.warns(DeprecationWarning):
        embeds = model.sample_image_embeds(user_ids=[1], seed=3, prior_steps=2)
    assert torch.equal(embeds, model.sample_image_embeds([1], seed=3, prior_steps=2))
    with pytest.warns(DeprecationWarning):
        assert model.labels_of(user_ids=[2]) == ["ID_7"]
    with pytest.warns(DeprecationWarning):
        prior_old = model.prior.sample(user_ids=[1], seed=0, timesteps=2)
    assert torch.equal(prior_old, model.prior.sample([1], seed=0, timesteps=2))


def test_old_interpolate_name_gives_the_same_frames_and_warns(model):
    frames = model.interpolation_frames(0, 2, steps=3, seed=1, **FAST)
    with pytest.warns(DeprecationWarning, match="MicroDopplerDALLE2.interpolate is deprecated"):
        positional = model.interpolate(0, 2, steps=3, seed=1, **FAST)
    with pytest.warns(DeprecationWarning) as caught:
        keywords = model.interpolate(user_a=0, user_b=2, steps=3, seed=1, **FAST)
    assert any("(user_a=...) is deprecated; use user_index_a=" in str(w.message) for w in caught)
    assert torch.equal(frames, positional) and torch.equal(frames, keywords)


def test_old_generation_names_write_the_same_files_and_warn(model, tmp_path):
    settings = dict(num_samples_per_user=1, seed=2, sample_steps=2, prior_steps=2)
    new = generation.write_samples(model, tmp_path / "new", user_labels=["ID_7"], **settings)
    with pytest.warns(DeprecationWarning, match="generation.generate is deprecated; use write_samples"):
        old = generation.generate(model, tmp_path / "old", user_labels=["ID_7"], **settings)
    with pytest.warns(DeprecationWarning, match=r"users=\.\.\.\) is deprecated; use user_labels="):
        generation.write_samples(model, tmp_path / "kw", users=["ID_7"], **settings)
    assert [p.name for p in new["images"]] == [p.name for p in old["images"]] == ["ID_7_000.png"]
    assert (tmp_path / "new" / "ID_7_000.png").read_bytes() == (tmp_path / "kw" / "ID_7_000.png").read_bytes()
    with pytest.warns(DeprecationWarning) as caught:
        strip = generation.interpolate_users(model, tmp_path / "i", user_a="ID_1", user_b="7", steps=2,
                                             sample_steps=2, prior_steps=2)
    assert any("interpolate_users is deprecated; use write_interpolation" in str(w.message) for w in caught)
    assert strip["strip"].name == "interpolation_ID_1_ID_7.png" and len(strip["frames"]) == 2


def test_old_stage_identity_name_warns_and_forwards():
    from dalle2_md.stage_identity import stage_identity

    with pytest.warns(DeprecationWarning, match="use stage_identity_accuracies"):
        with pytest.raises(UserError, match="needs the embedding model"):
            stage_identity(object(), None, (None, None), (None, None))


def test_old_dataset_attribute_warns(tmp_path):
    from dalle2_md.dataset import MicroDopplerDataset
    from dalle2_md.synth import synthesize_dataset

    synthesize_dataset(tmp_path, num_users=2, images_per_user=2, image_size=16, progress=False)
    ds = MicroDopplerDataset(tmp_path, image_size=16)
    with pytest.warns(DeprecationWarning, match="use user_indices"):
        assert torch.equal(ds.user_ids, ds.user_indices)
    with pytest.warns(DeprecationWarning, match="holds user indices, not labels"):
        assert ds.labels == ds.user_indices.tolist()
    assert ds.user_indices.tolist() == [0, 0, 1, 1]


def test_user_ids_flag_says_it_takes_original_labels():
    for command in ("generate", "generate-dataset"):
        text = CliRunner().invoke(cli, [command, "--help"], terminal_width=400).output
        line = next(line for line in text.splitlines() if "--user_ids" in line)
        assert "original label" in line and "not the 0..N-1 index" in line, line
    assert "original label" in USER_LABELS_HELP


def test_user_ids_flag_reaches_generation_as_original_labels(model, tmp_path, monkeypatch):
    from dalle2_md import cli as cli_module

    def load_tiny_model(kw):  # stands in for reading --model_path; pops the same options
        for k in ("model_path", "prior_path", "decoder_path", "clip_path", "device", "colormap"):
            kw.pop(k)
        return model

    monkeypatch.setattr(cli_module, "_load_model", load_tiny_model)
    out = tmp_path / "gen"
    argv = ["generate", "--model_path", "unused.pt", "--user_ids", "ID_1", "7", "--num_samples_per_user", "1",
            "--sample_steps", "2", "--prior_steps", "2", "--interpolate", "--interp_user_1", "2",
            "--interp_user_2", "ID_7", "--interp_steps", "2", "--output_dir", str(out), "--no-progress"]
    result = CliRunner().invoke(cli, join_variadic(argv))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("ID_*.png")) == ["ID_1_000.png", "ID_7_000.png"]
    assert (out / "interpolation_ID_2_ID_7.png").is_file()


def test_old_data_display_helpers_still_work_and_warn(tmp_path):
    import numpy as np
    from PIL import Image

    from dalle2_md import data, display

    x = torch.linspace(-1, 1, 2 * 8 * 8).view(2, 1, 8, 8)
    with pytest.warns(DeprecationWarning, match="display.colourise"):
        rgb = data.to_display_rgb(x, "jet")
    assert np.array_equal(rgb, display.colourise((x + 1) / 2, "jet"))
    with pytest.warns(DeprecationWarning, match="display.save_grid"):
        old = data.save_image_grid(x, tmp_path / "old.png", nrow=2)
    new = display.save_grid((x + 1) / 2, tmp_path / "new.png", nrow=2)
    assert np.array_equal(np.asarray(Image.open(old)), np.asarray(Image.open(new)))


def test_old_augment_generate_name_gives_the_same_tensors_and_warns(model):
    from dalle2_md.augment import GeneratorBudget, generate, sample_tensors

    budget = GeneratorBudget(sample_steps=2, prior_sample_steps=2)
    images, indices = sample_tensors(model, [2, 0], 1, seed=4, budget=budget)
    with pytest.warns(DeprecationWarning) as caught:
        old_images, old_indices = generate(model, users=[2, 0], num_samples_per_user=1, seed=4, budget=budget)
    messages = [str(w.message) for w in caught]
    assert any("augment.generate is deprecated; use sample_tensors" in m for m in messages)
    assert any("(users=...) is deprecated; use user_indices=" in m for m in messages)
    assert torch.equal(images, old_images) and indices.tolist() == old_indices.tolist() == [2, 0]


def test_old_generate_dataset_users_keyword_takes_labels_and_warns(model, tmp_path):
    from dalle2_md.curate import SamplingSettings, generate_dataset

    settings = dict(num_samples_per_user=1, sampling=SamplingSettings(sample_steps=2, prior_steps=2), progress=False)
    new = generate_dataset(model, tmp_path / "new", user_labels=["ID_7"], **settings)
    with pytest.warns(DeprecationWarning, match=r"generate_dataset\(users=\.\.\.\) is deprecated; use user_labels="):
        old = generate_dataset(model, tmp_path / "old", users=["ID_7"], **settings)
    assert list(new.users) == list(old.users) == ["ID_7"]
    written = sorted(p.relative_to(tmp_path / "new") for p in (tmp_path / "new").rglob("*.png"))
    assert len(written) == 1
    assert (tmp_path / "new" / written[0]).read_bytes() == (tmp_path / "old" / written[0]).read_bytes()


def test_old_data_index_labels_and_metric_keywords_warn(tmp_path):
    from dalle2_md.metrics import accuracy, diversity
    from dalle2_md.recogniser import Recogniser, RecogniserConfig
    from dalle2_md.scanning import scan_data_root
    from dalle2_md.synth import synthesize_dataset

    synthesize_dataset(tmp_path, num_users=2, images_per_user=2, image_size=16, progress=False)
    index = scan_data_root(tmp_path)
    with pytest.warns(DeprecationWarning, match="DataIndex.labels holds user indices"):
        assert index.labels == index.user_indices == [0, 0, 1, 1]
    torch.manual_seed(0)
    recogniser = Recogniser(config=RecogniserConfig(num_users=2, image_size=16, widths=(4,), feature_dim=4))
    images, indices = torch.rand(4, 1, 16, 16) * 2 - 1, torch.tensor([0, 1, 1, 0])
    with pytest.warns(DeprecationWarning, match=r"accuracy\(user_ids=\.\.\.\) is deprecated; use user_indices="):
        assert accuracy(recogniser, images, user_ids=indices) == accuracy(recogniser, images, indices)
    features = torch.arange(8.0).view(4, 2)
    with pytest.warns(DeprecationWarning, match="use user_indices="):
        assert diversity(features, user_ids=indices) == diversity(features, indices)
