"""Tests for the evaluation (`recogniser`, `metrics`, `report`; `evaluate` re-exports them): the
recogniser (training, determinism, bundle, cache), identity accuracy, domain FID, diversity,
memorisation, kinematic fidelity, reading generated folders and the files `evaluate_samples` writes. Data: a tiny simulated set (4 users, 32 px)."""

from __future__ import annotations

import json
from dataclasses import replace
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from dalle2_md.models.bundle import load_bundle, state_fingerprint
from dalle2_md.data.colormap import scalar_to_rgb
from dalle2_md.data.scanning import DataWarning
from dalle2_md.data.dataset import MicroDopplerDataset
from dalle2_md.evaluation.recogniser import accuracy
from dalle2_md.evaluation.metrics import background_levels, diversity, domain_fid, kinematic_fidelity, memorisation, to_scalar_images
from dalle2_md.evaluation.recogniser import (
    Recogniser,
    RecogniserConfig,
    RecogniserTrainConfig,
    cached_recogniser,
    extract_features,
    predict,
    train_recogniser,
)
from dalle2_md.evaluation.report import evaluate_samples, load_generated_folder
from dalle2_md.data.simulator import make_users, simulate_spectrogram
from dalle2_md.data.synthesize import sample_rng, synthesize_dataset
from dalle2_md.utils import DataError, UserError

NUM_USERS, PER_USER, SIZE, SEED = 4, 20, 32, 0
TINY = RecogniserConfig(num_users=NUM_USERS, channels=1, image_size=SIZE, widths=(8, 16, 32), feature_dim=16)



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthesize_dataset(root, num_users=NUM_USERS, images_per_user=PER_USER, image_size=SIZE, seed=SEED, progress=False)
    # no val split: 12 train + 8 test images per user, so FID (needs > 16 images) fits both sets
    kw = dict(image_size=SIZE, split_fractions=(0.6, 0.0, 0.4))
    with warnings.catch_warnings():  # e.g. a contact sheet beside the user folders
        warnings.simplefilter("ignore", DataWarning)
        train = MicroDopplerDataset(root, split="train", **kw)
        test = MicroDopplerDataset(root, split="test", **kw)
    return {"root": root, "train": train.tensors(), "test": test.tensors(), "label_map": train.label_map}


@pytest.fixture(scope="module")
def recogniser(data):
    return train_recogniser(*data["train"], config=TINY, train=RecogniserTrainConfig(steps=100, seed=0))


def fresh_samples(per_user: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """New walks of the same simulated users (sample indices never written to disk)."""
    images, ids = [], []
    for user in make_users(NUM_USERS, SEED):
        for i in range(100, 100 + per_user):
            img, _ = simulate_spectrogram(user, sample_rng(SEED, user.user_id, i), image_size=SIZE)
            images.append(np.round(img * 255) / 255 * 2 - 1)  # the 8-bit steps a PNG round trip gives
            ids.append(user.user_id)
    return torch.tensor(np.stack(images), dtype=torch.float32)[:, None], torch.tensor(ids)


# -- recogniser --------------------------------------------------------------------------------


def test_recogniser_tells_users_apart(data, recogniser):
    overall, per_user = accuracy(recogniser, *data["test"])
    # chance is 0.25; measured 1.0 on these 32 held-out images
    assert overall >= 0.8
    assert set(per_user) == set(range(NUM_USERS))
    fresh_acc, _ = accuracy(recogniser, *fresh_samples())
    assert fresh_acc >= 0.8


def test_accuracy_is_consistent(data, recogniser):
    images, ids = data["test"]
    overall, per_user = accuracy(recogniser, images, ids)
    manual = (predict(recogniser, images) == ids).float().mean().item()
    assert overall == pytest.approx(manual)
    counts = torch.bincount(ids, minlength=NUM_USERS).tolist()
    weighted = sum(per_user[u] * counts[u] for u in per_user) / len(ids)
    assert overall == pytest.approx(weighted)
    # batch size must not matter (GroupNorm: no batch statistics)
    assert accuracy(recogniser, images, ids, batch_size=3) == (overall, per_user)
    assert torch.allclose(extract_features(recogniser, images, batch_size=5), extract_features(recogniser, images), atol=1e-5)


def test_wrong_image_shape_is_a_user_error(data, recogniser):
    images, ids = data["test"]
    with pytest.raises(UserError, match="trained on"):
        accuracy(recogniser, images[:, :, :16, :16], ids)


def test_training_is_deterministic_and_bundle_round_trips(data, tmp_path):
    images, ids = data["train"]
    short = RecogniserTrainConfig(steps=4, seed=3)
    a = train_recogniser(images, ids, config=TINY, train=short)
    b = train_recogniser(images, ids, config=TINY, train=short)
    c = train_recogniser(images, ids, config=TINY, train=RecogniserTrainConfig(steps=4, seed=4))
    assert state_fingerprint(a.state_dict()) == state_fingerprint(b.state_dict())
    assert state_fingerprint(a.state_dict()) != state_fingerprint(c.state_dict())

    path = a.save(tmp_path / "rec.pt", label_map=data["label_map"].to_dict())
    assert load_bundle(path, kind="recogniser")["kind"] == "recogniser"
    loaded = Recogniser.load(path)
    assert loaded.config == TINY
    assert loaded.label_map == data["label_map"].to_dict()
    assert torch.allclose(loaded.features(images[:5]), a.features(images[:5]))


def test_cached_recogniser_reuses_only_a_matching_model(data, tmp_path):
    images, ids = data["train"]
    path = tmp_path / "rec.pt"
    short = RecogniserTrainConfig(steps=3)
    first = cached_recogniser(path, images, ids, config=TINY, train=short)
    assert first.meta["from_cache"] is False and path.is_file()
    again = cached_recogniser(path, images, ids, config=TINY, train=short)
    assert again.meta["from_cache"] is True
    assert state_fingerprint(again.state_dict()) == state_fingerprint(first.state_dict())
    # other settings or other training images: retrained
    other = cached_recogniser(path, images, ids, config=TINY, train=RecogniserTrainConfig(steps=3, seed=1))
    assert other.meta["from_cache"] is False
    changed = cached_recogniser(path, images[1:], ids[1:], config=TINY, train=RecogniserTrainConfig(steps=3, seed=1))
    assert changed.meta["from_cache"] is False
    # a damaged cache file is replaced, not fatal
    path.write_bytes(b"not a bundle")
    assert cached_recogniser(path, images, ids, config=TINY, train=short).meta["from_cache"] is False


# -- FID, diversity, memorisation --------------------------------------------------------------


def test_fid_is_zero_on_itself_and_grows_with_noise(data, recogniser):
    images = torch.cat([data["train"][0], data["test"][0]])
    assert domain_fid(recogniser, images, images) < 1e-6
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=g)
    fids = [domain_fid(recogniser, images, (images + s * noise).clamp(-1, 1)) for s in (0.05, 0.1, 0.2, 0.4)]
    assert fids[0] > 0
    assert all(b > a for a, b in zip(fids, fids[1:])), fids


def test_size_matched_fid_floor_draws_the_generated_sets_users_and_counts(data, recogniser, monkeypatch):
    """The size-matched floor compares real test with real train images drawn per user as many
    as the generated set has; at the train split's own counts it is the all-train floor."""
    from dalle2_md.evaluation import report

    train, test = data["train"], data["test"]
    full = report._matched_fid_floor(recogniser, train, test, (train[0], train[1]), [])
    assert full == pytest.approx(domain_fid(recogniser, train[0], test[0]), rel=1e-4, abs=1e-6)
    drawn = []
    monkeypatch.setattr(report, "_fid_or_note", lambda rec, a, b, notes, what: drawn.append(a) or 1.0)
    gen_ids = torch.tensor([0] * 5 + [2] * 3)
    assert report._matched_fid_floor(recogniser, train, test, (torch.zeros(8, 1, 4, 4), gen_ids), [], draws=2) == 1.0
    for images in drawn:  # each draw: 5 of user 0's train images, 3 of user 2's, none of the others
        rows = [next(i for i in range(len(train[0])) if torch.equal(train[0][i], x)) for x in images]
        assert sorted(train[1][rows].tolist()) == [0] * 5 + [2] * 3
    assert len(drawn) == 2 and not torch.equal(drawn[0], drawn[1])


def test_fid_refuses_too_few_samples(data, recogniser):
    images = data["test"][0]
    with pytest.raises(UserError, match="at least 17"):
        domain_fid(recogniser, images, images[:10])


def test_diversity_measures_within_user_spread():
    feats = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 1.0], [9.0, 9.0]])
    ids = torch.tensor([0, 0, 1, 1, 2])
    out = diversity(feats, ids)
    assert out["per_user"] == {0: pytest.approx(5.0), 1: pytest.approx(0.0)}  # user 2 has 1 sample
    assert out["mean"] == pytest.approx(2.5)


def test_memorisation_flags_copies_not_fresh_samples(data, recogniser):
    train, test = data["train"][0], data["test"][0]
    fresh, _ = fresh_samples()
    copies = memorisation(train[:24], train, test)
    assert copies["copy_fraction"] == 1.0
    assert copies["gen_nn_median"] == 0.0 and copies["nn_ratio"] == 0.0
    new = memorisation(fresh, train, test)
    assert new["copy_fraction"] <= 0.25  # measured 0.09 (quantile 0.05)
    assert 0.7 < new["nn_ratio"] < 1.4  # measured 1.03
    f_train, f_test = extract_features(recogniser, train), extract_features(recogniser, test)
    assert memorisation(f_train[:24], f_train, f_test)["copy_fraction"] == 1.0
    assert memorisation(extract_features(recogniser, fresh), f_train, f_test)["copy_fraction"] <= 0.25


# -- kinematics --------------------------------------------------------------------------------


def test_kinematic_errors_small_between_real_halves_and_large_when_shifted(data):
    images = torch.cat([data["train"][0], data["test"][0]])
    ids = torch.cat([data["train"][1], data["test"][1]])
    scalars = to_scalar_images(images)
    assert scalars.shape == (len(images), SIZE, SIZE) and 0 <= scalars.min() and scalars.max() <= 1
    half = np.arange(len(ids)) % 2 == 0
    same = kinematic_fidelity(scalars[half], ids[half], scalars[~half], ids[~half])
    assert set(same["per_user"]) == set(range(NUM_USERS))
    # measured: torso 0.017, max envelope 0.040, cadence 0.047
    for k, limit in {"torso": 0.08, "max_envelope": 0.12, "cadence": 0.15}.items():
        assert same["mean_rel_error"][k] < limit, (k, same["mean_rel_error"])
    # moving every generated spectrogram up 2 rows (faster walkers) must show as torso error
    faster = np.roll(scalars[~half], -2, axis=1)
    moved = kinematic_fidelity(scalars[half], ids[half], faster, ids[~half])
    assert moved["mean_rel_error"]["torso"] > 0.3  # measured 0.68
    assert moved["mean_rel_error"]["max_envelope"] > 2 * same["mean_rel_error"]["max_envelope"]


def test_rgb_inputs_are_inverted_through_the_colormap(data):
    images = data["test"][0][:4]
    rgb = scalar_to_rgb(((images[:, 0] + 1) / 2).numpy(), "jet")  # (N, H, W, 3) uint8
    back = to_scalar_images(rgb, "jet")
    assert np.abs(back - to_scalar_images(images)).max() < 2.5 / 255


# -- generated folders and the whole evaluation ------------------------------------------------


def test_load_generated_folder(data, tmp_path):
    images, ids = data["test"]
    lm = data["label_map"]
    for k, (img, uid) in enumerate(zip(images[:6], ids[:6])):
        rgb = scalar_to_rgb(((img[0] + 1) / 2).numpy(), "jet")
        name = f"{lm.file_stem(int(uid))}_{k:03d}.png" if k % 2 else f"{lm.ids[int(uid)]}_{k:03d}.png"
        Image.fromarray(rgb).save(tmp_path / name)
    loaded, got_ids, files = load_generated_folder(tmp_path, lm, SIZE, "jet")
    order = np.argsort([int(f.stem.rsplit("_", 1)[1]) for f in files])
    assert torch.equal(got_ids[order], ids[:6])
    assert (loaded[order] - images[:6]).abs().max() < 4 / 255
    (tmp_path / "stranger_001.png").write_bytes((tmp_path / files[0].name).read_bytes())
    with pytest.raises(DataError, match="stranger_001.png"):
        load_generated_folder(tmp_path, lm, SIZE, "jet")
    with pytest.raises(DataError, match="does not exist"):
        load_generated_folder(tmp_path / "missing", lm, SIZE, "jet")


def test_evaluate_samples_writes_metrics_report_and_plots(data, recogniser, tmp_path):
    generated = fresh_samples()
    out = tmp_path / "eval"
    m = evaluate_samples(data["train"], data["test"], generated, recogniser=recogniser, out_dir=out, label_map=data["label_map"])
    for name in ("metrics.json", "report.md", "accuracy_per_user.png", "kinematics.png", "samples_grid.png"):
        assert (out / name).is_file(), name
    for png in ("accuracy_per_user.png", "kinematics.png", "samples_grid.png"):
        with Image.open(out / png) as im:
            assert im.size[0] > 200 and im.size[1] > 150
    saved = json.loads((out / "metrics.json").read_text())
    assert {"identity", "fid", "diversity", "memorisation", "kinematics", "counts", "notes"} <= set(saved)
    assert {"A_real", "A_gen", "A_gen_over_A_real", "per_user_real", "per_user_gen"} <= set(saved["identity"])
    assert set(saved["identity"]["per_user_gen"]) == {str(u) for u in range(NUM_USERS)}
    assert {"torso", "max_envelope", "cadence"} == set(saved["kinematics"]["gen"]["mean_rel_error"])
    # A_real in the report is the recogniser's plain accuracy on real test
    assert m["identity"]["A_real"] == accuracy(recogniser, *data["test"])[0]
    assert m["identity"]["A_gen"] == accuracy(recogniser, *generated)[0]
    assert saved["fid"]["gen_vs_test"] is not None and saved["fid"]["train_vs_test"] is not None
    assert saved["fid"]["train_vs_test_matched"] > 0
    assert saved["memorisation"]["pixels"]["copy_fraction"] < 0.5
    report = (out / "report.md").read_text()
    assert "A_gen" in report and "user_3" in report and "floor" in report


def test_evaluate_samples_records_fid_it_cannot_compute(data, recogniser, tmp_path):
    gen_images, gen_ids = fresh_samples(per_user=2)  # 8 images: too few for 16-dim FID
    m = evaluate_samples(data["train"], data["test"], (gen_images, gen_ids), recogniser=recogniser, out_dir=tmp_path)
    assert m["fid"]["gen_vs_test"] is None and m["fid"]["train_vs_test"] is not None
    assert any("FID" in n for n in m["notes"])
    assert "## Notes" in (tmp_path / "report.md").read_text()


# -- augmentations and the synthetic arm -------------------------------------------------------


def test_masks_keep_shape_and_fill_a_band_with_the_image_mean():
    from dalle2_md.evaluation.recogniser import _augment

    x = torch.rand(6, 1, 16, 16) * 2 - 1
    off = RecogniserTrainConfig(max_shift=0.0, noise_std=0.0, time_masks=0, freq_masks=0)
    for cfg, axis in ((replace(off, time_masks=1, time_mask_width=0.5), 3), (replace(off, freq_masks=1, freq_mask_width=0.5), 2)):
        y = _augment(x, cfg, torch.Generator().manual_seed(0))
        assert y.shape == x.shape and not torch.equal(y, x)
        fill = x.mean(dim=(2, 3), keepdim=True)
        # a masked column (time) or row (Doppler) holds only the image's mean
        band = ((y - fill).abs() < 1e-6).all(dim=5 - axis)  # (N, 1, W) or (N, 1, H)
        assert band.any(-1).sum() >= 3 and band.sum(-1).max() <= 8
        changed = (y != x).any(dim=5 - axis)
        assert torch.equal(changed, band)
    same = _augment(x, off, torch.Generator().manual_seed(0))
    assert torch.equal(same, x)


def _train_as_before(images, ids, cfg):
    """The real-only training loop as it was before masks, mixup and the synthetic arm."""
    import math

    import torch.nn.functional as F

    from dalle2_md.evaluation.recogniser import _augment

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Recogniser(config=TINY)
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)  # as the loop's
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    losses = []
    for _ in range(cfg.steps):
        model.train()
        idx = torch.randint(0, len(images), (min(cfg.batch_size, len(images)),), generator=g)
        loss = F.cross_entropy(model(_augment(images[idx], cfg, g)), ids[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return model, losses


def test_real_only_training_is_unchanged_by_the_synthetic_option(data):
    from dalle2_md.evaluation.recogniser import LEGACY_RECOGNISER_TRAIN

    images, ids = data["train"]
    # the settings that existed before (shift + noise): the new options, off, draw nothing
    cfg = replace(LEGACY_RECOGNISER_TRAIN, steps=5, batch_size=8, seed=2)
    new = train_recogniser(images, ids, config=TINY, train=cfg, synthetic=None)
    old, losses = _train_as_before(images, ids, cfg)
    assert state_fingerprint(new.state_dict()) == state_fingerprint(old.state_dict())
    assert new.meta["final_loss"] == losses[-1] and new.meta["num_synthetic_images"] == 0


def plain_recogniser_loop(images, ids, config, cfg, synthetic=None):
    """The recogniser's updates without the shared loop: AdamW, cosine decay to 10 %, raw weights,
    over the same batch stream; returns (model, its objective, the stream)."""
    import math

    from dalle2_md.evaluation.recogniser import _BatchStream, _initial_recogniser, _Objective

    model = _initial_recogniser(config, cfg.seed, None)
    objective, stream = _Objective(model, cfg.synthetic_weight), _BatchStream((images, ids), synthetic, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)  # as the loop's
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / max(1, cfg.steps))))
    for _ in range(cfg.steps):
        objective(**next(stream)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
    return model.eval(), objective, stream


def test_recogniser_trains_through_the_shared_loop_exactly_as_a_plain_loop(data, monkeypatch):
    """`training.train` (accelerate, EMA, grad-norm logging) adds nothing to the recogniser's
    updates: weights equal a plain AdamW + cosine-to-10 % loop over the same batch stream."""
    from dalle2_md.training import loop as training

    images, ids = data["train"]
    fake = (images.flip(-1)[:10], ids[:10])
    cfg = RecogniserTrainConfig(steps=6, batch_size=8, seed=5, synthetic_weight=0.5, synthetic_batch_size=4)
    stages = []
    real_train = training.train
    monkeypatch.setattr(training, "train", lambda *a, **k: stages.append(k["stage"]) or real_train(*a, **k))
    shared = train_recogniser(images, ids, config=TINY, train=cfg, synthetic=fake)
    assert stages and set(stages) == {"recogniser"}  # in memory, train() calls itself with a temporary run folder

    model, objective, stream = plain_recogniser_loop(images, ids, TINY, cfg, synthetic=fake)
    assert state_fingerprint(shared.state_dict()) == state_fingerprint(model.state_dict())
    assert shared.meta["final_loss"] == objective.real_loss.item()
    assert shared.meta["real_batches_sha"] == stream.real_batches.hexdigest()[:16]


def test_synthetic_arm_sees_the_same_real_batches(data):
    images, ids = data["train"]
    fake = (images.flip(-1)[:10], ids[:10])  # any labelled images of the right shape
    cfg = RecogniserTrainConfig(steps=5, batch_size=8, seed=1, time_masks=1, time_mask_width=0.2, freq_masks=1,
                                freq_mask_width=0.1, mixup_alpha=0.4, synthetic_batch_size=4)
    real = train_recogniser(images, ids, config=TINY, train=cfg)
    mixed = train_recogniser(images, ids, config=TINY, train=cfg, synthetic=fake)
    assert mixed.meta["real_batches_sha"] == real.meta["real_batches_sha"]
    assert mixed.meta["num_synthetic_images"] == 10
    assert state_fingerprint(mixed.state_dict()) != state_fingerprint(real.state_dict())
    # with zero weight the synthetic batch changes nothing: the real part is drawn identically
    ignored = train_recogniser(images, ids, config=TINY, train=replace(cfg, synthetic_weight=0.0), synthetic=fake)
    assert state_fingerprint(ignored.state_dict()) == state_fingerprint(
        train_recogniser(images, ids, config=TINY, train=replace(cfg, synthetic_weight=0.0)).state_dict())
    with pytest.raises(UserError, match="synthetic"):
        train_recogniser(images, ids, config=TINY, train=cfg, synthetic=(images[:4, :, :16, :16], ids[:4]))


def test_cache_key_covers_synthetic_data_and_new_settings(data, tmp_path):
    images, ids = data["train"]
    path, short = tmp_path / "rec.pt", RecogniserTrainConfig(steps=2, batch_size=4)
    assert cached_recogniser(path, images, ids, config=TINY, train=short).meta["from_cache"] is False
    assert cached_recogniser(path, images, ids, config=TINY, train=short).meta["from_cache"] is True
    syn = (images[:6], ids[:6])
    assert cached_recogniser(path, images, ids, config=TINY, train=short, synthetic=syn).meta["from_cache"] is False
    assert cached_recogniser(path, images, ids, config=TINY, train=short, synthetic=syn).meta["from_cache"] is True
    masked = replace(short, freq_masks=1, freq_mask_width=0.1)
    assert cached_recogniser(path, images, ids, config=TINY, train=masked, synthetic=syn).meta["from_cache"] is False


def test_time_pooled_recogniser_trains_and_round_trips(data, tmp_path):
    images, ids = data["train"]
    pooled = replace(TINY, time_pool=4)
    model = train_recogniser(images, ids, config=pooled, train=RecogniserTrainConfig(steps=2, batch_size=4))
    assert set(model.state_dict()) == set(Recogniser(config=TINY).state_dict())  # no new weights
    loaded = Recogniser.load(model.save(tmp_path / "rec.pt"))
    assert loaded.config.time_pool == 4
    assert torch.allclose(loaded.features(images[:3]), model.features(images[:3]))
    # the same weights without the pooling see other inputs
    unpooled = Recogniser(config=TINY)
    unpooled.load_state_dict(model.state_dict())
    assert not torch.allclose(unpooled.eval().features(images[:3]), model.features(images[:3]))


def test_precision_recall_tells_copies_and_collapse_from_a_fresh_draw():
    from dalle2_md.evaluation.metrics import precision_recall

    g = torch.Generator().manual_seed(0)
    users = torch.arange(2).repeat_interleave(40)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    real = centres[users] + torch.randn(80, 2, generator=g)
    fresh = centres[users] + torch.randn(80, 2, generator=g)  # another draw of the same distribution
    collapsed = centres[users] + 0.01 * torch.randn(80, 2, generator=g)  # each user's mean, every time
    off = centres[users] + torch.tensor([0.0, 8.0]) + torch.randn(80, 2, generator=g)  # beside the real data
    pr = {name: precision_recall(real, users, x, users) for name, x in
          (("fresh", fresh), ("collapsed", collapsed), ("off", off), ("self", real))}
    assert pr["self"]["precision"] == pr["self"]["recall"] == 1.0
    assert pr["fresh"]["precision"] > 0.8 and pr["fresh"]["recall"] > 0.8
    assert pr["collapsed"]["precision"] > 0.9 and pr["collapsed"]["recall"] < 0.2
    assert pr["off"]["precision"] < 0.1 and pr["off"]["recall"] < 0.1
    assert set(pr["fresh"]["per_user"]) == {0, 1}


def test_background_levels_read_the_darker_half_of_each_image():
    """A dark image with a bright torso line reads as dark; a uniformly light one as light."""
    dark = torch.full((1, 1, 8, 8), -0.8)  # 0.1 in [0, 1]
    dark[:, :, 3:5] = 1.0  # a quarter of the pixels: the torso line, not the background
    light = torch.full((1, 1, 8, 8), 0.2)  # 0.6 in [0, 1]
    levels = background_levels(torch.cat([dark, light]))
    assert torch.allclose(levels, torch.tensor([0.1, 0.6]), atol=1e-6)
