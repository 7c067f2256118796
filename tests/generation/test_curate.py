"""Curated synthetic sets: the filters keep and drop the right samples, are fitted on the train
split only, the draw-until-N loop resumes to the same set after a kill, the layouts it writes
read back with the right labels, and the CLI's curated path and its bad inputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dalle2_md.generation.curate as curate
import dalle2_md.generation.filters as filters
import dalle2_md.evaluation.recogniser as recogniser_module
from dalle2_md.cli.main import cli
from dalle2_md.cli.options import join_variadic
from dalle2_md.defaults import SamplingConfig
from dalle2_md.data.labels import LabelMap
from dalle2_md.data.dataset import MicroDopplerDataset
from dalle2_md.sampling import keyed_generators, randn
from dalle2_md.utils import UserError

H = 64


def walker(torso: int, freq: float) -> torch.Tensor:
    """A (1, H, W) model-space spectrogram: a torso line `torso` rows above zero Doppler and a
    limb envelope 1..7 rows above it swinging at `freq` cycles per column."""
    img = np.zeros((H, H))
    zero = H // 2
    for c in range(H):
        top = torso + 4 + 3 * np.sin(2 * np.pi * freq * c)
        img[int(round(zero - top)) : zero - 1, c] = 0.7
        img[zero - torso, c] = 1.0
    return torch.from_numpy(img).float()[None] * 2 - 1


def real_set():
    images = torch.stack([walker(8, 1 / 8), walker(9, 1 / 6), walker(14, 1 / 8), walker(15, 1 / 6)])
    return images, torch.tensor([0, 0, 1, 1])


def test_kinematic_filter_keeps_samples_inside_the_users_real_range_and_margin_widens_it():
    images, ids = real_set()
    ranges = filters.kinematic_ranges(images, ids, num_users=2)
    tight = filters.KinematicFilter(ranges, margin=0.0)
    samples = torch.stack([walker(8, 1 / 7), walker(14, 1 / 7), walker(8, 1 / 20), walker(10, 1 / 7)])
    scores, passed = tight(samples, 0)
    # inside / torso of user 1 / cadence too slow / torso one row above user 0's range
    assert passed.tolist() == [True, False, False, False]
    assert scores["torso"] == pytest.approx([8, 14, 8, 10], abs=0.01)
    assert tight(samples, 1)[1].tolist() == [False, True, False, False]  # the 14-row walker is user 1's
    # the margin's unit is the spread over all users (torso 8..15 rows): 0.2 of it (1.4 rows) takes
    # in the 10-row torso, not user 1's 14 rows
    assert ranges.spread[0] == pytest.approx(7, abs=0.01)
    assert filters.KinematicFilter(ranges, margin=0.2)(samples, 0)[1].tolist() == [True, False, False, True]


class MeanLogits(torch.nn.Module):
    """A stand-in recogniser: user 0's logit is 8 x the mean pixel, user 1's is 0."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([8 * m, torch.zeros_like(m)], dim=1)


def test_recogniser_filter_keeps_samples_confident_for_their_own_user():
    images = torch.stack([torch.full((1, 8, 8), v) for v in (-0.5, -0.05, 0.05, 0.5)])
    confidence_user0 = torch.sigmoid(8 * torch.tensor([-0.5, -0.05, 0.05, 0.5]))
    scores, passed = filters.RecogniserFilter(MeanLogits(), min_confidence=0.6)(images, 0)
    assert scores["confidence"] == pytest.approx(confidence_user0.tolist(), abs=1e-6)
    assert passed.tolist() == (confidence_user0 >= 0.6).tolist() == [False, False, False, True]
    _, passed1 = filters.RecogniserFilter(MeanLogits(), min_confidence=0.6)(images, 1)
    assert passed1.tolist() == [True, False, False, False]
    both = filters.combine_filters([filters.RecogniserFilter(MeanLogits(), 0.6), lambda x, u: ({"odd": [1, 0, 1, 0]}, np.array([1, 0, 1, 0], bool))])
    scores, passed = both(images, 0)
    assert passed.tolist() == [False, False, False, False] and "odd" in scores and "confidence" in scores


# ------------------------------------------------------------------------------------------
# the loop, with a stand-in generator


LABELS = LabelMap(names=("ID_1", "ID_2", "ID_3"), ids=(1, 2, 3))


def fake_generator(calls=None, fail_after=None):
    """Images keyed on (seed, user, index) like the chain's; passes about half the mean filter."""

    def draw(user, indices, seed):
        if calls is not None:
            calls.append((user, list(indices)))
        if fail_after is not None and calls is not None and len(calls) > fail_after:
            raise KeyboardInterrupt
        gens = keyed_generators(seed, 9, [(LABELS.name_of(user), i) for i in indices])
        noise = randn((len(indices), 1, 16, 16), gens, "cpu")
        return torch.tanh(noise + 0.3 * noise.mean(dim=(2, 3), keepdim=True) * 8)

    return draw


def mean_filter(images, user):
    means = images.mean(dim=(1, 2, 3)).numpy()
    return {"mean": means.tolist()}, means > 0


def run(out, generator, **kw):
    args = dict(label_map=LABELS, user_indices=[0, 1, 2], num_samples_per_user=5, seed=3, filter_fn=mean_filter,
                filter_info={"kind": "test"}, batch_size=4, progress=False, log=lambda m: None)
    return curate.curate_dataset(generator, out, **{**args, **kw})


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_killed_and_rerun_gives_the_same_set_and_manifest_as_an_uninterrupted_run(tmp_path, monkeypatch):
    whole_calls = []
    whole = run(tmp_path / "whole", fake_generator(whole_calls))
    assert all(u["kept"] == 5 for u in whole.users.values())
    expected = snapshot(tmp_path / "whole")
    manifest = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    kept = [r for r in manifest["samples"] if r["status"] == "kept"]
    assert len(kept) == 15 and {r["user"] for r in kept} == {"ID_1", "ID_2", "ID_3"}
    assert all(r["scores"]["mean"] > 0 for r in kept)
    assert any(r["status"] == "dropped" for r in manifest["samples"])
    assert set(kept[0]) >= {"file", "user", "sample_index", "seed", "guidance", "eta", "scores", "status"}

    # killed by the generator in the middle of the second user
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", fake_generator(calls, fail_after=4))
    done_before = len(calls) - 1
    # and a kill between writing a block's PNGs and journaling it, with half a line cut short
    calls2 = []
    original = curate._append_line

    def dies_on_third(path, entry):
        if len(calls2) == 3:
            raise KeyboardInterrupt
        calls2.append(entry)
        original(path, entry)

    monkeypatch.setattr(curate, "_append_line", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed2", fake_generator())
    monkeypatch.setattr(curate, "_append_line", original)
    with open(tmp_path / "killed2" / curate.JOURNAL, "ab") as f:
        f.write(b'{"user": "ID_2", "samp')

    resumed_calls = []
    run(tmp_path / "killed", fake_generator(resumed_calls))
    run(tmp_path / "killed2", fake_generator())
    for folder in ("killed", "killed2"):
        got = snapshot(tmp_path / folder)
        assert got.keys() == expected.keys()
        assert all(got[k] == expected[k] for k in expected), folder
    # finished blocks were not drawn again: the re-run starts at the block the kill interrupted
    assert resumed_calls[0] == calls[done_before] == whole_calls[done_before]
    assert len(resumed_calls) == len(whole_calls) - done_before


def test_a_user_below_the_acceptance_needed_stops_at_the_cap_with_a_message(tmp_path):
    messages = []

    def rejects_user_1(images, user):
        return {}, np.full(len(images), user != 1)

    result = run(tmp_path / "out", fake_generator(), filter_fn=rejects_user_1, max_draws_per_user=7, log=messages.append)
    assert result.users["ID_2"] == {"kept": 0, "drawn": 7, "acceptance": 0.0, "complete": False}
    assert result.users["ID_1"]["complete"] and result.users["ID_3"]["complete"]
    assert len(messages) == 1 and "ID_2" in messages[0] and "0 of 5 after 7 draws" in messages[0]
    assert "--max_draws_per_user" in messages[0]


def test_changed_settings_or_a_foreign_folder_are_refused(tmp_path):
    run(tmp_path / "out", fake_generator())
    with pytest.raises(UserError, match="seed"):
        run(tmp_path / "out", fake_generator(), seed=4)
    run(tmp_path / "out", fake_generator(), seed=4, overwrite=True)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["settings"]["seed"] == 4
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        run(tmp_path / "foreign", fake_generator())


@pytest.mark.parametrize("layout", ["kaggle", "hierarchical", "flat"])
def test_written_layouts_read_back_with_the_original_labels(tmp_path, layout):
    out = tmp_path / layout
    run(out, fake_generator(), layout=layout, filter_fn=None, num_samples_per_user=3)
    ds = MicroDopplerDataset(out, image_size=16)
    names = {"kaggle": ("ID_1", "ID_2", "ID_3"), "hierarchical": ("user_1", "user_2", "user_3"), "flat": ("1", "2", "3")}
    assert ds.label_map.names == names[layout] and ds.label_map.ids == (1, 2, 3)
    assert ds.counts() == [3, 3, 3]
    # the image of ID_2's sample 1 is what the generator drew for it (jet round trip: 8 bits)
    i = [k for k, f in enumerate(ds.files) if ds.user_indices[k] == 1][1]
    drawn = fake_generator()(1, [1], 3)[0]
    assert (ds[i][0] - drawn).abs().max() < 0.02


# ------------------------------------------------------------------------------------------
# the chain's noise and the CLI


def tiny_chain(label_map: dict):
    from dalle2_md.models.embedding import ClipConfig, MicroDopplerClip
    from dalle2_md.models.decoder import DecoderConfig, MicroDopplerDecoder
    from dalle2_md.models.chain import MicroDopplerDALLE2
    from dalle2_md.models.prior import PriorConfig, UserConditionedDiffusionPrior

    torch.manual_seed(0)
    clip = MicroDopplerClip(ClipConfig(num_users=3, image_size=16, dim_latent=16, dim_text=16, dim_image=32,
                                       encoder_widths=(8, 16), token_grid=2, text_dim_head=8, ssl_dim=16, ssl_hidden=16))
    prior = UserConditionedDiffusionPrior(PriorConfig(num_users=3, dim=16, depth=1, heads=2, dim_head=8, timesteps=100,
                                                      sample_timesteps=3, cond_drop_prob=0.2))
    decoder = MicroDopplerDecoder(config=DecoderConfig(image_size=16, channels=1, image_embed_dim=16, dim=8, dim_mults=(1, 2),
                                                       timesteps=100, sample_timesteps=3, attn_heads=2, attn_dim_head=8,
                                                       num_resnet_blocks=1))
    prior.meta = {"clip_fingerprint": clip.fingerprint}
    decoder.meta = {"clip_fingerprint": clip.fingerprint, "colormap": "jet"}
    return MicroDopplerDALLE2(prior=prior, decoder=decoder, clip=clip, label_map=label_map, colormap="jet").eval()


def test_chain_samples_depend_only_on_seed_user_and_index():
    model = tiny_chain(LABELS.to_dict())
    for settings in (SamplingConfig(), SamplingConfig(eta=1.0, sampler="ddim")):
        draw = curate.chain_sampler(model, settings)
        block = draw(1, [0, 1, 2, 3], 5)
        assert block.shape == (4, 1, 16, 16) and block.min() >= -1 and block.max() <= 1
        torch.testing.assert_close(draw(1, [2, 3], 5), block[2:], atol=1e-5, rtol=0)
        assert not torch.allclose(draw(1, [2, 3], 6), block[2:])


def tiny_chain_on_simulated_data(root) -> dict:
    """3 simulated users x 10 images at 16 px under `root/data` and an untrained tiny chain
    knowing their labels at `root/chain.pt`."""
    from dalle2_md.data.synthesize import synthesize_dataset

    synthesize_dataset(root / "data", num_users=3, images_per_user=10, image_size=16, layout="kaggle", progress=False)
    lm = MicroDopplerDataset(root / "data", image_size=16).label_map
    path = tiny_chain(lm.to_dict()).save(root / "chain.pt")
    return {"root": root, "data": root / "data", "model": path}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_chain_on_simulated_data(tmp_path_factory.mktemp("curate"))


def invoke(*args):
    return CliRunner().invoke(cli, join_variadic([str(a) for a in args]))


def test_the_filters_are_fitted_on_the_train_split_and_never_see_test_images(bundle, monkeypatch):
    seen = []
    real_train, real_read = recogniser_module.train_recogniser, filters.read_kinematics_batch

    def spy_train(images, *a, **kw):
        seen.append(("recogniser", images.clone()))
        return real_train(images, *a, **kw)

    def spy_read(scalars, *a, **kw):
        seen.append(("kinematics", torch.as_tensor(np.asarray(scalars)).float()))
        return real_read(scalars, *a, **kw)

    monkeypatch.setattr(recogniser_module, "train_recogniser", spy_train)
    monkeypatch.setattr(filters, "read_kinematics_batch", spy_read)
    out = bundle["root"] / "spy"
    split = bundle["root"] / "split.json"
    sets = {s: MicroDopplerDataset(bundle["data"], image_size=16, split=s, split_file=split) for s in ("train", "test")}
    result = invoke("generate", "--model_path", bundle["model"], "--filter", "both", "--data_root", bundle["data"],
                    "--split_file", split, "--num_samples_per_user", 1, "--max_draws_per_user", 2, "--recogniser_steps", 3,
                    "--output_dir", out)
    assert result.exit_code in (0, 1), result.output
    train, test = sets["train"].images, sets["test"].images
    recogniser_inputs = [x for kind, x in seen if kind == "recogniser"]
    assert len(recogniser_inputs) == 1 and torch.equal(recogniser_inputs[0], train)
    kin_inputs = [x for kind, x in seen if kind == "kinematics"]
    torch.testing.assert_close(kin_inputs[0], (train[:, 0].double() + 1) / 2, atol=1e-6, rtol=0, check_dtype=False)
    for x in [x.reshape(len(x), -1) for _, x in seen]:
        for t in test:
            for form in (t.reshape(-1), ((t[0].double() + 1) / 2).float().reshape(-1)):
                assert not (x.float() - form).abs().amax(dim=1).lt(1e-6).any()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["filter"]["num_train_images"] == len(train)


def test_cli_curated_set_in_the_kaggle_layout_then_continues(bundle):
    out = bundle["root"] / "plain"
    args = ["generate", "--model_path", bundle["model"], "--layout", "kaggle", "--num_samples_per_user", 2,
            "--user_ids", "ID_1", "ID_3", "--output_dir", out, "--batch_size", 3]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "kept 4 of 4" in result.output
    ds = MicroDopplerDataset(out, image_size=16)
    assert ds.label_map.names == ("ID_1", "ID_3") and ds.counts() == [2, 2]
    before = snapshot(out)
    assert invoke(*args).exit_code == 0 and snapshot(out) == before  # nothing left to do, nothing changed


@pytest.mark.parametrize("extra, message", [
    (["--filter", "recogniser"], "--filter recogniser needs --data_root"),
    (["--layout", "flat", "--user_ids", "ID_9"], "unknown user 'ID_9'"),
    (["--layout", "flat", "--interpolate"], "leave out --interpolate"),
    (["--layout", "flat", "--max_draws_per_user", "1"], "below --num_samples_per_user"),
    (["--filter", "both", "--min_confidence", "2"], "--min_confidence must lie in [0, 1]"),
])
def test_cli_bad_curation_inputs_are_one_clear_error(bundle, extra, message):
    data = ["--data_root", bundle["data"]] if "both" in extra else []
    result = invoke("generate", "--model_path", bundle["model"], "--num_samples_per_user", 2, "--output_dir",
                    bundle["root"] / "bad", *extra, *data)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
