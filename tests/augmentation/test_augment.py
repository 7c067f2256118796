"""Augmentation harness keeps its split and the generator only ever sees the K-shot images;
the `evaluate` command writes its metrics for a folder of generated PNGs."""

import json
from dataclasses import replace
import shutil

import pytest
import torch
from click.testing import CliRunner

from dalle2_md.augmentation import harness as augment

from dalle2_md.training import fit as core
from dalle2_md.defaults import SamplingConfig
from dalle2_md.training.presets import GeneratorBudget
from dalle2_md.augmentation.harness import augmentation_gain, kshot_indices
from dalle2_md.data.dataset import load_splits
from dalle2_md.cli.main import cli
from dalle2_md.evaluation.recogniser import accuracy
from dalle2_md.evaluation.recogniser import RecogniserTrainConfig, train_recogniser
from dalle2_md.augmentation.recipe import AugmentRecipe, draw_synthetic, train_augmented
from dalle2_md.data.synthesize import synthesize_dataset
from dalle2_md.utils import UserError

SIZE = 16
USERS = 3
PER_USER = 30  # 9 test images under the default split, enough to tell a floor above chance
TINY = GeneratorBudget(
    clip_train_steps=2, decoder_train_steps=2, prior_train_steps=2, batch_size=8, decoder_batch_size=4, warmup_steps=0,
    clip=dict(dim_latent=8, dim_image=16, dim_text=8, encoder_widths=(8,), token_grid=2, text_heads=1,
              text_dim_head=8, ssl_dim=8, ssl_hidden=16),
    decoder=dict(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, attn_heads=1, attn_dim_head=8, timesteps=20,
                 sample_timesteps=2, num_image_tokens=1),
    prior=dict(depth=1, heads=1, dim_head=8, timesteps=20, sample_timesteps=2),
    sampling=SamplingConfig(decoder_steps=2, prior_steps=2))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("augment") / "data"
    synthesize_dataset(root, num_users=USERS, images_per_user=PER_USER, image_size=SIZE, seed=0, progress=False)
    return root


def test_kshot_indices_are_k_per_user_and_seeded():
    ids = torch.tensor([0] * 7 + [1] * 5 + [2] * 9)
    a, b, c = kshot_indices(ids, 4, 0), kshot_indices(ids, 4, 0), kshot_indices(ids, 4, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(set(a.tolist())) == 12
    assert torch.bincount(ids[a]).tolist() == [4, 4, 4]
    with pytest.raises(UserError, match="fewer than K=6"):
        kshot_indices(ids, 6, 0)


def _rows(images: torch.Tensor) -> set[bytes]:
    return {x.contiguous().numpy().tobytes() for x in images.float()}


def test_generator_sees_only_the_kshot_images(data_root, tmp_path, monkeypatch):
    sets = load_splits(data_root, image_size=SIZE, split_file=tmp_path / "split.json")
    train, test = sets["train"], sets["test"]
    train_files = [train.index.relpath(f) for f in train.files]
    test_files = [test.index.relpath(f) for f in test.files]
    train_images, _ = train.tensors()
    calls, loop_datasets = [], []
    real_train_generator, real_loop = augment.train_generator, core.train

    def spy_generator(images, user_indices, **kw):
        calls.append((images.clone(), user_indices.clone()))
        return real_train_generator(images, user_indices, **kw)

    def spy_loop(model, dataset, config, **kw):
        loop_datasets.append(dataset.tensors)
        return real_loop(model, dataset, config, **kw)

    monkeypatch.setattr(augment, "train_generator", spy_generator)
    monkeypatch.setattr(core, "train", spy_loop)
    k = 8
    result = augmentation_gain(train.tensors(), test.tensors(), num_users=USERS, work_dir=tmp_path / "runs", k=k, m=2,
                               seeds=(0, 1), budget=TINY, recogniser_train=RecogniserTrainConfig(steps=60, batch_size=8),
                               train_files=train_files, test_files=test_files,
                               recipes=[AugmentRecipe(source="prior", filter="none")])
    assert len(calls) == 2 and len(result["per_seed"]) == 2
    assert len(loop_datasets) == 6  # embedding model, decoder, prior per seed
    for (images, ids), row in zip(calls, result["per_seed"]):
        kshot = row["kshot_files"]
        assert len(kshot) == len(set(kshot)) == k * USERS
        assert set(kshot) <= set(train_files) and not set(kshot) & set(test_files)
        # the generator got exactly the K-shot images, and nothing else
        picked = [train_files.index(f) for f in kshot]
        assert _rows(images) == _rows(train_images[picked])
        assert torch.bincount(ids, minlength=USERS).tolist() == [k] * USERS
    assert calls[0][0].shape == calls[1][0].shape and result["per_seed"][0]["kshot_files"] != result["per_seed"][1]["kshot_files"]
    # every image tensor the training loop saw lies in that seed's K-shot set
    for i, tensors in enumerate(loop_datasets):
        allowed = _rows(calls[i // 3][0])
        for t in tensors:
            if t.ndim == 4:
                assert _rows(t) <= allowed
    for key in ("acc_real", "acc_aug", "gain_points"):
        assert set(result[key]) == {"mean", "std", "values"} and len(result[key]["values"]) == 2
    # the real-only arm recognises the 9 test images well above chance: K = 8 and 60 steps gave
    # 0.78 and 0.89 at seeds 0 and 1, and at least 0.78 over seeds 0-7 (measured)
    assert all(r["acc_real"] >= 2 / USERS for r in result["per_seed"])
    row = result["per_seed"][0]
    assert row["num_generated"] == 2 * USERS
    assert row["gain_points"] == pytest.approx(100 * (row["acc_aug"] - row["acc_real"]))


def test_harness_refuses_a_split_that_shares_files(data_root):
    images, ids = torch.zeros(6, 1, SIZE, SIZE), torch.tensor([0, 0, 1, 1, 2, 2])
    files = [f"user_{i}.png" for i in range(6)]
    with pytest.raises(UserError, match="share 1 file"):
        augmentation_gain((images, ids), (images[:1], ids[:1]), num_users=USERS, work_dir="unused", k=1,
                          train_files=files, test_files=files[:1])


def _named_like_samples(source, folder, first: int, rename=lambda label: label):
    """Copy each user's images from index `first` on into `folder` as <label>_<nnn>.png, the
    generate command's names (`rename` changes whose images they claim to be)."""
    folder.mkdir()
    for user_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        for n, png in enumerate(sorted(user_dir.glob("*.png"))[first:]):
            shutil.copy(png, folder / f"{rename(user_dir.name)}_{n:03d}.png")
    return folder


def test_evaluate_cli_on_a_generated_folder(data_root, tmp_path):
    # "generated" images: 4 further simulator draws of each of the same users (same seed), unseen
    more = tmp_path / "more"
    synthesize_dataset(more, num_users=USERS, images_per_user=PER_USER + 4, image_size=SIZE, seed=0, progress=False)
    gen_dir = _named_like_samples(more, tmp_path / "generated", PER_USER)
    out = tmp_path / "eval"
    args = ["evaluate", "--data_root", str(data_root), "--output_dir", str(out), "--recogniser_steps", "40"]
    result = CliRunner().invoke(cli, [*args, "--generated_dir", str(gen_dir)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"counts", "identity", "fid", "diversity", "memorisation", "kinematics", "notes"} <= set(metrics)
    assert metrics["counts"]["generated"] == 4 * USERS and metrics["counts"]["users"] == USERS
    identity = metrics["identity"]
    assert {"A_real", "A_gen", "A_gen_over_A_real", "per_user_gen"} <= set(identity)
    assert sorted(identity["per_user_gen"]) == [str(u) for u in range(USERS)]
    # 40 steps, measured on data seeds 0-2: A_real >= 0.89, A_gen of the unseen draws >= 0.83
    assert identity["A_real"] >= 2 / USERS and identity["A_gen"] >= 2 / USERS
    assert {"torso", "max_envelope", "cadence"} == set(metrics["kinematics"]["gen"]["mean_rel_error"])
    # CAS trains on all 4 images per user of the folder (fewer than real train has) and says so; KID subsets
    # hold half of the 9 real test images
    assert metrics["cas"]["num_train_images"] == 4 * USERS and len(metrics["cas"]["short_users"]) == USERS
    assert metrics["kid"]["gen_vs_test"]["subset_size"] == 4 and 0 <= metrics["background"]["gen"]["rate"] <= 1
    assert "CAS " in result.output and "background defects" in result.output
    for name in ("report.md", "samples_grid.png", "accuracy_per_user.png", "kinematics.png", "recogniser.pt"):
        assert (out / name).is_file()
    # the same draws, named as the next user's samples, are judged wrong (the recogniser is reused)
    users = sorted(p.name for p in data_root.iterdir() if p.is_dir())
    gen_dir = _named_like_samples(more, tmp_path / "mislabelled", PER_USER,
                                  rename=lambda label: users[(users.index(label) + 1) % USERS])
    result = CliRunner().invoke(cli, [*args, "--generated_dir", str(gen_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["identity"]["A_gen"] < 1 / USERS


def test_evaluate_cli_needs_exactly_one_source(data_root, tmp_path):
    result = CliRunner().invoke(cli, ["evaluate", "--data_root", str(data_root), "--generated_dir", str(tmp_path),
                                      "--model_path", str(tmp_path / "m.pt")])
    assert result.exit_code == 2
    assert "exactly one of" in result.output


def test_augment_eval_cli_writes_its_result(data_root, tmp_path):
    out = tmp_path / "aug"
    result = CliRunner().invoke(cli, [
        "augment-eval", "--data_root", str(data_root), "--image_size", str(SIZE), "--k", "2", "--m", "1",
        "--seeds", "0,1", "--clip_train_steps", "2", "--decoder_train_steps", "1", "--prior_train_steps", "2", "--sample_steps", "1",
        "--recogniser_steps", "2", "--cas", "--output_dir", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "augment.json").read_text())
    assert saved["k"] == 2 and saved["seeds"] == [0, 1] and len(saved["per_seed"]) == 2
    assert all(len(r["kshot_files"]) == 2 * USERS for r in saved["per_seed"])
    report = (out / "augment.md").read_text()
    assert "gain (points)" in report and "(CAS)" in report
    assert len(saved["recipes"]["cli"]["cas"]["values"]) == 2 and 0 <= saved["recipes"]["cli"]["cas"]["mean"] <= 1
    # the K-shot decoder is trained as train-decoder trains one: v on a zero-terminal-SNR schedule, min-SNR weights
    decoder = saved["budget"]["decoder"]
    assert (decoder["prediction"], decoder["zero_terminal_snr"], decoder["loss_weighting"]) == ("v", True, "min_snr")
    # the real-only baseline is the best validated one by default: the strong defaults plus Doppler flips
    assert saved["recogniser_train"]["doppler_flip"] == 0.5 and saved["recogniser_train"]["steps"] == 2


def test_augment_eval_prediction_eps_trains_the_earlier_eps_p2_kshot_decoder(data_root, tmp_path, monkeypatch):
    from dalle2_md.augmentation import harness

    seen = {}

    def stop(*args, budget, **kwargs):
        seen["decoder"] = budget.decoder
        raise UserError("stopped after the budget")

    monkeypatch.setattr(harness, "augmentation_gain", stop)
    result = CliRunner().invoke(cli, ["augment-eval", "--data_root", str(data_root), "--image_size", str(SIZE),
                                      "--prediction", "eps", "--output_dir", str(tmp_path / "aug")])
    assert "stopped after the budget" in result.output
    assert (seen["decoder"]["prediction"], seen["decoder"]["zero_terminal_snr"], seen["decoder"]["loss_weighting"]) == \
        ("eps", False, "p2")


def test_evaluate_cli_samples_a_baseline_bundle(data_root, tmp_path):
    from dalle2_md.models.single_stage import SingleStageBaseline
    from dalle2_md.models.decoder import DecoderConfig

    config = DecoderConfig(image_size=SIZE, channels=1, image_embed_dim=8, **TINY.decoder)
    path = SingleStageBaseline(num_users=USERS, config=config).save(tmp_path / "baseline.pt")
    out = tmp_path / "eval"
    result = CliRunner().invoke(cli, ["evaluate", "--data_root", str(data_root), "--model_path", str(path),
                                      "--output_dir", str(out), "--num_samples_per_user", "2", "--sample_steps", "1",
                                      "--recogniser_steps", "5"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["generated"] == 2 * USERS
    assert sorted(metrics["identity"]["per_user_gen"]) == [str(u) for u in range(USERS)]
    # CAS draws beyond --num_samples_per_user: as many per user as real train has
    train_counts = torch.bincount(load_splits(data_root, image_size=SIZE)["train"].tensors()[1]).tolist()
    assert metrics["cas"]["per_user_train"] == {str(u): n for u, n in enumerate(train_counts)}
    assert metrics["cas"]["short_users"] == []


def test_evaluate_judges_the_first_samples_of_the_draw_cas_trains_on():
    """Keyed noise: sample j of a user is the same image in a draw of 2 and of 5."""
    from dalle2_md.cli.evaluate import _draw_for_evaluation
    from dalle2_md.generation.samples import sample_tensors
    from dalle2_md.models.decoder import DecoderConfig
    from dalle2_md.models.single_stage import SingleStageBaseline

    model = SingleStageBaseline(num_users=USERS, config=DecoderConfig(image_size=SIZE, channels=1, image_embed_dim=8, **TINY.decoder))
    sampling = SamplingConfig(decoder_steps=1)
    judged, for_cas = _draw_for_evaluation(model, 2, torch.tensor([0] * 5 + [1] * 1 + [2] * 3), USERS, seed=3, sampling=sampling)
    alone = sample_tensors(model, list(range(USERS)), 2, seed=3, sampling=sampling)
    assert torch.equal(judged[1], alone[1]) and torch.allclose(judged[0], alone[0], atol=1e-5)
    assert torch.bincount(for_cas[1]).tolist() == [5, 2, 3]
    assert torch.allclose(for_cas[0][:2], alone[0][:2], atol=1e-5)


def test_real_only_arm_is_a_plain_recogniser_run_and_filters_see_only_kshot(data_root, tmp_path, monkeypatch):
    import dalle2_md.evaluation.recogniser as recogniser_module

    sets = load_splits(data_root, image_size=SIZE, split_file=tmp_path / "split.json")
    train, test = sets["train"].tensors(), sets["test"].tensors()
    rec_cfg = RecogniserTrainConfig(steps=15, batch_size=8)
    # the harness and the recipes import train_recogniser when called, so they call this spy
    seen, original = [], recogniser_module.train_recogniser

    def spy(images, user_indices, **kw):
        seen.append(torch.cat([images] + ([kw["synthetic"][0]] if kw.get("synthetic") is not None else [])))
        return original(images, user_indices, **kw)

    monkeypatch.setattr(recogniser_module, "train_recogniser", spy)
    recipes = [AugmentRecipe(name="filtered", source="prior", filter="recogniser", min_confidence=0.0),
               AugmentRecipe(name="pre", source="prior", filter="none", mixing="pretrain")]
    result = augmentation_gain(train, test, num_users=USERS, work_dir=tmp_path / "runs", k=3, seeds=(0,), budget=TINY,
                               recipes=recipes, recogniser_train=rec_cfg)
    row = result["per_seed"][0]
    # the harness's real-only arm is exactly a plain recogniser run on the same K-shot images
    shot = kshot_indices(train[1], 3, 0)
    plain = original(train[0][shot], train[1][shot], num_users=USERS, train=rec_cfg)
    assert row["acc_real"] == pytest.approx(accuracy(plain, *test)[0])
    # no recogniser (the filter included: it is the real-only arm) ever trained on a test image
    test_rows = _rows(test[0])
    assert seen and all(not (_rows(images) & test_rows) for images in seen)
    assert set(result["recipes"]) == {"filtered", "pre"}
    # min_confidence 0 keeps every candidate up to M per user
    assert row["recipes"]["filtered"]["num_generated"] == AugmentRecipe().num_per_user(3) * USERS


class _ByBrightness(torch.nn.Module):
    """A stand-in recogniser: user 0 for dark images, user 1 for bright ones."""

    def forward(self, x):
        level = x.mean(dim=(1, 2, 3))
        return torch.stack([-8 * level, 8 * level], dim=1)


def test_recogniser_filter_keeps_confident_samples_first_by_index(monkeypatch):
    from dalle2_md.generation import samples as samples_module

    def fake_sample_tensors(model, user_indices, count, *, seed, sampling):
        # per user: alternating bright and dark candidates
        levels = torch.tensor([0.9 if i % 2 == 0 else -0.9 for i in range(count)])
        images = torch.cat([levels[:, None, None, None].expand(count, 1, 4, 4) for _ in user_indices])
        return images, torch.tensor([u for u in user_indices for _ in range(count)])

    monkeypatch.setattr(samples_module, "sample_tensors", fake_sample_tensors)
    shot = (torch.zeros(4, 1, 4, 4), torch.tensor([0, 0, 1, 1]))
    recipe = AugmentRecipe(source="prior", filter="recogniser", m_per_k=1.0, oversample=2.0, min_confidence=0.9)
    drawn = draw_synthetic(None, recipe, TINY, shot, seed=0, filter_recogniser=_ByBrightness())
    # user 1 wants bright images: candidates 0 and 2 of 4 pass, both kept; user 0 wants dark ones: 1 and 3
    assert drawn["num_drawn"] == 8 and drawn["acceptance"] == {0: 0.5, 1: 0.5}
    kept = drawn["images"].mean(dim=(1, 2, 3))
    assert drawn["user_indices"].tolist() == [0, 0, 1, 1]
    assert (kept[:2] < 0).all() and (kept[2:] > 0).all()
    with pytest.raises(UserError, match="needs a recogniser"):
        draw_synthetic(None, recipe, TINY, shot, seed=0)


def test_mixing_rules_train_different_recognisers():
    g = torch.Generator().manual_seed(0)
    real = (torch.randn(12, 1, 16, 16, generator=g), torch.arange(3).repeat(4))
    synthetic = (torch.randn(12, 1, 16, 16, generator=g), torch.arange(3).repeat(4))
    cfg = RecogniserTrainConfig(steps=5, batch_size=6)
    weights = {}
    for mixing in ("separate", "concat", "pretrain"):
        model = train_augmented(AugmentRecipe(mixing=mixing), real, synthetic, num_users=3, train_config=cfg)
        weights[mixing] = torch.cat([p.flatten() for p in model.parameters()])
    separate = train_recogniser(*real, num_users=3, synthetic=synthetic,
                                train=RecogniserTrainConfig(steps=5, batch_size=6, synthetic_weight=0.5))
    assert torch.equal(weights["separate"], torch.cat([p.flatten() for p in separate.parameters()]))
    assert not torch.equal(weights["separate"], weights["concat"])
    assert not torch.equal(weights["separate"], weights["pretrain"])


def test_generator_cache_reuses_only_an_identical_training(tmp_path, monkeypatch):
    """A cached generator is reused by a call with the same tensors, seed and training budget
    (same samples, nothing trained), and retrained when any of those differ."""
    from dalle2_md.augmentation.harness import cached_generator
    from dalle2_md.generation.samples import sample_tensors

    g = torch.Generator().manual_seed(0)
    images, ids = torch.rand(12, 1, SIZE, SIZE, generator=g) * 2 - 1, torch.arange(3).repeat_interleave(4)
    trained, real_train = [], augment.train_generator

    def spy(*a, **kw):
        trained.append(kw["seed"])
        return real_train(*a, **kw)

    monkeypatch.setattr(augment, "train_generator", spy)
    common = dict(cache_dir=tmp_path / "cache", kind="two_stage", num_users=3, run_dir=tmp_path / "run")
    first = cached_generator(images, ids, budget=TINY, seed=0, **common)
    again = cached_generator(images, ids, budget=TINY, seed=0, **common)
    assert trained == [0] and again.seconds == {}
    assert torch.equal(sample_tensors(first.model, [0, 2], 2, sampling=TINY.sampling)[0], sample_tensors(again.model, [0, 2], 2, sampling=TINY.sampling)[0])
    # a sampling-only change reuses it; a training change, another seed or other images do not
    cached_generator(images, ids, budget=replace(TINY, sampling=replace(TINY.sampling, cond_scale=2.0)), seed=0, **common)
    cached_generator(images, ids, budget=replace(TINY, decoder_train_steps=3), seed=0, **common)
    cached_generator(images, ids, budget=TINY, seed=1, **common)
    cached_generator(images.flip(0), ids, budget=TINY, seed=0, **common)
    assert trained == [0, 0, 1, 0]
    generators = [f for f in (tmp_path / "cache").glob("*.pt") if "image_model_" not in f.name]
    assert len(generators) == 4


def test_generator_cache_trains_only_the_prior_when_only_its_budget_changed(tmp_path, monkeypatch):
    """A prior-only budget change reuses the cached embedding model and decoder and trains just
    the prior; the result is the generator a full training with that budget gives."""
    from dalle2_md.augmentation.harness import cached_generator
    from dalle2_md.generation.samples import sample_tensors

    g = torch.Generator().manual_seed(0)
    images, ids = torch.rand(12, 1, SIZE, SIZE, generator=g) * 2 - 1, torch.arange(3).repeat_interleave(4)
    common = dict(kind="two_stage", num_users=3, run_dir=tmp_path / "run")
    cached_generator(images, ids, budget=TINY, seed=0, cache_dir=tmp_path / "cache", **common)
    longer_prior = replace(TINY, prior_train_steps=TINY.prior_train_steps + 3)
    full = cached_generator(images, ids, budget=longer_prior, seed=0, cache_dir=None, **common)
    monkeypatch.setattr(augment, "train_generator", lambda *a, **k: pytest.fail("the image model was retrained"))
    reused = cached_generator(images, ids, budget=longer_prior, seed=0, cache_dir=tmp_path / "cache", **common)
    assert set(reused.seconds) == {"prior"} and reused.steps == {"prior": longer_prior.prior_train_steps}
    for part in ("clip", "decoder", "prior"):
        a, b = getattr(full.model, part).state_dict(), getattr(reused.model, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert torch.equal(sample_tensors(full.model, [0, 2], 2, sampling=TINY.sampling)[0],
                      sample_tensors(reused.model, [0, 2], 2, sampling=TINY.sampling)[0])
    # the new generator is cached under its own name; a decoder change still retrains everything
    again = cached_generator(images, ids, budget=longer_prior, seed=0, cache_dir=tmp_path / "cache", **common)
    assert again.seconds == {}
    with pytest.raises(pytest.fail.Exception, match="retrained"):
        cached_generator(images, ids, budget=replace(longer_prior, decoder_train_steps=3), seed=0,
                         cache_dir=tmp_path / "cache", **common)


def _chain_recording_its_guidance_interval():
    """A chain whose `sample` records the decoder's guidance interval at each draw, behind the real
    `MicroDopplerDALLE2.sample_users`: (model, its decoder, the recorded intervals)."""
    from types import SimpleNamespace

    from dalle2_md.models.chain import MicroDopplerDALLE2
    from dalle2_md.models.decoder import DecoderConfig, MicroDopplerDecoder

    decoder = MicroDopplerDecoder(config=DecoderConfig(image_size=16, image_embed_dim=8, dim=8, dim_mults=(1, 2),
                                                       attn_heads=1, attn_dim_head=8, num_resnet_blocks=1))
    seen = []

    def fake_sample(users, *, num_samples_per_user, **kwargs):
        seen.append(decoder.config.guidance_interval)
        return torch.zeros(num_samples_per_user * len(users), 1, 4, 4)

    model = SimpleNamespace(decoder=decoder, sample=fake_sample)
    model.sample_users = lambda *a, **k: MicroDopplerDALLE2.sample_users(model, *a, **k)
    return model, decoder, seen


def test_recipe_guidance_interval_applies_to_its_draw_only(monkeypatch):
    """A recipe's guidance interval is the decoder's while that recipe draws, and the decoder's
    own is back afterwards; recipes that differ only in it do not share candidates."""
    from dalle2_md.augmentation.recipe import draw_candidates, sampling_key

    model, decoder, seen = _chain_recording_its_guidance_interval()
    shot = (torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]))
    narrow = AugmentRecipe(source="prior", guidance_interval=(0.15, 0.7))
    draw_candidates(model, narrow, TINY, shot, 2, seed=0)
    draw_candidates(model, AugmentRecipe(source="prior"), TINY, shot, 2, seed=0)
    assert seen == [(0.15, 0.7)] * 2 + [(0.0, 1.0)] * 2 and decoder.config.guidance_interval == (0.0, 1.0)
    assert sampling_key(narrow) != sampling_key(AugmentRecipe(source="prior"))


def test_default_source_falls_back_to_the_prior_for_the_baseline():
    from dalle2_md.augmentation.harness import _resolved_recipes
    from dalle2_md.augmentation.recipe import default_source

    assert default_source("two_stage") == AugmentRecipe().source == "sdedit"
    assert default_source("baseline") == "prior"
    assert _resolved_recipes((), m=None, k=5, generator="baseline")[0].source == "prior"


def test_latent_generator_under_a_time_budget(tmp_path):
    """`vqgan_steps` puts a VQGAN under the decoder; `decoder_seconds` is shared by the VQGAN and
    the decoder, which stops when it runs out (the step count is then only a cap)."""
    from dalle2_md.augmentation.harness import generator_cache_path, train_generator

    g = torch.Generator().manual_seed(0)
    images, ids = torch.rand(12, 1, 16, 16, generator=g) * 2 - 1, torch.arange(12) % USERS
    budget = replace(TINY, vqgan_train_steps=2, decoder_train_steps=10_000, decoder_seconds=1e-6,
                     vqgan=dict(dim=8, num_resnet_blocks=1, resnet_groups=4, codebook_size=16, codebook_dim=4, layers=1,
                                layer_mults=(1,)))
    gen = train_generator(images, ids, num_users=USERS, kind="two_stage", budget=budget, seed=0, run_dir=tmp_path)
    assert gen.model.decoder.config.use_vqgan and gen.model.decoder.config.vqgan.latent_size == 8
    assert gen.steps == {"clip": 2, "vqgan": 2, "decoder": 1, "prior": 2} and "vqgan" in gen.seconds
    # pixel generators keep the cache names they were saved under; latent ones get their own
    path = lambda b: generator_cache_path(tmp_path, images, ids, kind="two_stage", budget=b, seed=0)
    assert path(TINY) == path(replace(TINY, vqgan=budget.vqgan)) != path(budget)


def test_latent_baseline_trains_over_its_own_vqgan_and_round_trips(tmp_path):
    """A latent budget gives the single-stage baseline the two-stage decoder's latent path: a
    VQGAN trained the same way, a fitted latent scale, full-size samples, and a bundle that
    rebuilds the same sampler from the path alone."""
    from dalle2_md.augmentation.harness import cached_generator
    from dalle2_md.generation.samples import sample_tensors
    from dalle2_md.models.single_stage import SingleStageBaseline

    g = torch.Generator().manual_seed(0)
    images, ids = torch.rand(12, 1, 16, 16, generator=g) * 2 - 1, torch.arange(12) % USERS
    budget = replace(TINY, vqgan_train_steps=2, vqgan=dict(dim=8, num_resnet_blocks=1, resnet_groups=4, codebook_size=16,
                                                     codebook_dim=4, layers=1, layer_mults=(1,), quantize=False))
    gen = cached_generator(images, ids, cache_dir=tmp_path / "cache", num_users=USERS, kind="baseline", budget=budget,
                           seed=0, run_dir=tmp_path / "run")
    model = gen.model
    assert isinstance(model, SingleStageBaseline) and model.config.use_vqgan
    assert set(gen.seconds) == {"vqgan", "decoder"}
    assert model.decoder.diffused_shape == (8, 8, 8) and model.decoder.latent_scale.item() != 1.0
    a, a_ids = sample_tensors(model, [0, 2], 2, seed=3, sampling=budget.sampling)
    assert a.shape == (4, 1, 16, 16) and a_ids.tolist() == [0, 0, 2, 2] and a.min() >= -1 and a.max() <= 1
    # the second call finds the bundle: same weights, VQGAN and latent scale included
    again = cached_generator(images, ids, cache_dir=tmp_path / "cache", num_users=USERS, kind="baseline", budget=budget,
                             seed=0, run_dir=tmp_path / "run2")
    assert again.seconds == {} and again.model.decoder.latent_scale.item() == model.decoder.latent_scale.item()
    assert torch.allclose(sample_tensors(again.model, [0, 2], 2, seed=3, sampling=budget.sampling)[0], a, atol=1e-5)


def test_decoder_lr_sets_the_decoders_step_and_names_its_own_cache_entry(tmp_path):
    from dalle2_md.augmentation.harness import generator_cache_path

    assert TINY.decoder_schedule(0).lr == TINY.lr
    slow = replace(TINY, decoder_lr=3e-4)
    assert slow.decoder_schedule(0).lr == 3e-4 and slow.schedule(5, 4, 0).lr == TINY.lr  # other stages keep lr
    images, ids = torch.zeros(4, 1, 16, 16), torch.tensor([0, 1, 0, 1])
    path = lambda b: generator_cache_path(tmp_path, images, ids, kind="two_stage", budget=b, seed=0)
    assert path(slow) != path(TINY) == path(replace(TINY, decoder_lr=None))


def test_decoder_lr_schedule_decays_only_the_decoders_and_names_its_own_cache_entry(tmp_path):
    from dalle2_md.augmentation.harness import generator_cache_path

    cosine = replace(TINY, decoder_lr_schedule="cosine")
    assert cosine.decoder_schedule(0).lr_schedule == "cosine" and cosine.schedule(5, 4, 0).lr_schedule == "constant"
    assert TINY.decoder_schedule(0).lr_schedule == "constant"
    images, ids = torch.zeros(4, 1, 16, 16), torch.tensor([0, 1, 0, 1])
    path = lambda b: generator_cache_path(tmp_path, images, ids, kind="two_stage", budget=b, seed=0)
    # "constant" is what every cached generator trained with, so it keeps their names
    assert path(cosine) != path(TINY) == path(replace(TINY, decoder_lr_schedule="constant"))


def test_sampling_guidance_interval_is_the_decoders_while_the_chain_draws():
    """`SamplingConfig.guidance_interval` reaches the decoder for the draw only; None leaves the
    decoder's own (guidance at every step)."""
    from dalle2_md.defaults import SamplingConfig
    from dalle2_md.generation.samples import sample_tensors

    model, decoder, seen = _chain_recording_its_guidance_interval()
    images, ids = sample_tensors(model, [0, 2], 3, sampling=SamplingConfig(guidance_interval=(0.15, 0.7)))
    sample_tensors(model, [1], 1, sampling=TINY.sampling)
    assert seen == [(0.15, 0.7), (0.15, 0.7), (0.0, 1.0)] and decoder.config.guidance_interval == (0.0, 1.0)
    assert images.shape[0] == 6 and ids.tolist() == [0, 0, 0, 2, 2, 2]


def test_baseline_cache_name_ignores_the_stages_it_does_not_have(tmp_path):
    """The single-stage baseline trains no embedding model and no prior: their budget fields do
    not rename it (a protocol whose prior trains longer finds its cached baseline), while its
    decoder's fields still do."""
    from dalle2_md.augmentation.harness import generator_cache_path

    images, ids = torch.zeros(4, 1, 16, 16), torch.tensor([0, 1, 0, 1])
    path = lambda b, kind="baseline": generator_cache_path(tmp_path, images, ids, kind=kind, budget=b, seed=0)
    other_stages = replace(TINY, prior_train_steps=TINY.prior_train_steps + 7, clip_train_steps=TINY.clip_train_steps + 3)
    assert path(other_stages) == path(TINY)
    assert path(other_stages, "two_stage") != path(TINY, "two_stage")
    assert path(replace(TINY, decoder_train_steps=TINY.decoder_train_steps + 1)) != path(TINY)
