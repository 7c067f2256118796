"""Tests for the embedding stage (dalle2_md/clip.py): shapes, learning on toy per-user data,
no collapse of a user's embeddings, bundles and the embedding cache."""

import numpy as np
import pytest
import torch

from dalle2_md.models import embedding as clip_mod
from dalle2_md.models.bundle import save_bundle
from dalle2_md.models.embedding import ClipConfig, MicroDopplerClip, cached_image_embeds, compute_image_embeds, dataset_key_for, user_tokens
from dalle2_md.training.fit import train_clip
from dalle2_md.evaluation.stages import within_user_spread
from dalle2_md.utils import BundleError, UserError

USERS = 4
SIZE = 20  # not a power of 2 on purpose

# Floor for the within-user spread of image embeddings (`within_user_spread`): the mean L2
# distance of a user's unit-norm embeddings to that user's centroid. Near 0 means every image of
# a user maps to one point: the embedding then only says *who*, and the prior and decoder get no
# per-sample variation to learn. Measured on this file's toy data (4 users, 20 px, 120 steps):
# 0.53-0.58 with the default "instance" SSL and 0.03 with no SSL (seeds 0-3), 0.05 with x-clip's
# SimSiam (seed 0), all at 98-100 % user accuracy. 0.2 sits well clear of both sides.
MIN_WITHIN_USER_SPREAD = 0.2


def tiny_config(**kw):
    base = dict(
        num_users=USERS, image_size=SIZE, channels=1, dim_latent=16, dim_image=32, dim_text=16,
        encoder_widths=(8, 16, 32), token_grid=2, text_heads=2, text_dim_head=8,
        ssl_dim=16, ssl_hidden=32,
    )
    base.update(kw)
    return ClipConfig(**base)


def toy_spectrograms(n_per_user, seed, size=SIZE):
    """1-channel images: a wavy horizontal line whose height and wobble rate are the user's,
    with per-image phase, wobble amplitude, offset, gain and noise (within-user variation)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.arange(size)[:, None], np.arange(size)[None, :]
    images, users = [], []
    for u in range(USERS):
        freq, centre = 1 + u, size * (0.2 + 0.2 * u)
        for _ in range(n_per_user):
            line = centre + rng.uniform(0.5, 3) * np.sin(2 * np.pi * freq * cols / size + rng.uniform(0, 2 * np.pi))
            line = line + rng.normal(0, 0.8)
            img = np.exp(-0.5 * ((rows - line) / 1.2) ** 2) * rng.uniform(0.6, 1.0)
            images.append(img + rng.normal(0, 0.1, img.shape))
            users.append(u)
    images = torch.tensor(np.stack(images)[:, None], dtype=torch.float32) * 2 - 1
    return images, torch.tensor(users)



@pytest.fixture(scope="module")
def toy():
    return toy_spectrograms(40, seed=0), toy_spectrograms(24, seed=1)


@pytest.fixture(scope="module")
def trained(toy):
    (x, y), _ = toy
    return train_clip(x, y, tiny_config(), steps=120, batch_size=32, lr=3e-3, seed=0, progress=False)


@pytest.mark.parametrize("channels,size,ssl_type", [(1, 16, "instance"), (3, 16, "instance"), (1, 20, "simsiam")])
def test_shapes(channels, size, ssl_type):
    torch.manual_seed(0)
    cfg = tiny_config(channels=channels, image_size=size, ssl_type=ssl_type)
    model = MicroDopplerClip(cfg)
    x, y = torch.randn(6, channels, size, size), torch.tensor([0, 1, 2, 3, 0, 1])
    loss = model(x, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.clip.visual_transformer.stem[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        embed, enc = model.encode_image(x)
        users = model.embed_users(torch.arange(USERS))
        # other sizes are resized to the model's image_size, so they embed to the same shape
        other = model.embed_image(torch.randn(2, channels, 2 * size + 3, 2 * size + 3))
    assert embed.shape == (6, 16) and enc.shape == (6, 4, 32)
    assert users.shape == (USERS, 16) and other.shape == (2, 16)
    torch.testing.assert_close(embed.norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(users.norm(dim=-1), torch.ones(USERS))
    with pytest.raises(UserError, match="channel"):
        model.embed_image(torch.randn(2, 4 - channels, size, size))
    with pytest.raises(UserError, match="user indices"):
        model.train()(x, torch.tensor([0, 1, 2, 3, 4, 0]))


def test_user_tokens_skip_padding():
    assert user_tokens(torch.tensor([0, 2]), seq_len=3).tolist() == [[1, 0, 0], [3, 0, 0]]


def test_learns_users_without_collapse(toy, trained):
    (x, y), (xt, yt) = toy
    train_embeds = compute_image_embeds(trained, x)
    test_embeds = compute_image_embeds(trained, xt)
    # held-out images classify to their own user: by nearest training centroid ...
    centroids = torch.stack([train_embeds[y == u].mean(0) for u in range(USERS)])
    acc_centroid = (torch.cdist(test_embeds, centroids).argmin(-1) == yt).float().mean().item()
    # ... and by highest similarity to the user tokens (what the prior is conditioned on)
    with torch.no_grad():
        tokens = trained.embed_users(torch.arange(USERS))
    acc_token = ((test_embeds @ tokens.t()).argmax(-1) == yt).float().mean().item()
    assert acc_centroid >= 0.9, acc_centroid  # chance is 0.25
    assert acc_token >= 0.9, acc_token
    # a user's images keep distinct embeddings, on training and held-out images
    assert within_user_spread(train_embeds, y) >= MIN_WITHIN_USER_SPREAD
    assert within_user_spread(test_embeds, yt) >= MIN_WITHIN_USER_SPREAD


def test_without_ssl_embeddings_shrink_towards_one_point_per_user(toy, trained):
    """The floor is meaningful: the same run without SSL lands below it."""
    (x, y), _ = toy
    plain = train_clip(x, y, tiny_config(use_visual_ssl=False), steps=120, batch_size=32, lr=3e-3, seed=0,
                       progress=False)
    plain_spread = within_user_spread(compute_image_embeds(plain, x), y)
    assert plain_spread < MIN_WITHIN_USER_SPREAD <= within_user_spread(compute_image_embeds(trained, x), y)


def test_within_user_spread_is_zero_for_collapsed_embeddings():
    e = torch.nn.functional.normalize(torch.randn(USERS, 8), dim=-1).repeat(5, 1)
    assert within_user_spread(e, torch.arange(USERS).repeat(5)) < 1e-6


def test_save_load_roundtrip(tmp_path, toy, trained):
    (x, _), _ = toy
    path = trained.save(tmp_path / "clip.pt", label_map={"alice": 0, "bob": 1}, meta={"steps": 120})
    loaded = MicroDopplerClip.load(path)
    assert loaded.config == trained.config
    assert loaded.fingerprint == trained.fingerprint
    assert loaded.label_map == {"alice": 0, "bob": 1} and loaded.meta["steps"] == 120
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed_image(x[:8]), trained.eval().embed_image(x[:8]), rtol=0, atol=0)
        torch.testing.assert_close(loaded.embed_users(torch.arange(USERS)), trained.embed_users(torch.arange(USERS)))

    other = tmp_path / "prior.pt"
    save_bundle(other, kind="prior", config={}, state_dict={})
    with pytest.raises(BundleError, match="prior"):
        MicroDopplerClip.load(other)


def test_text_encodings_are_zero_at_padding():
    torch.manual_seed(0)
    model = MicroDopplerClip(tiny_config(text_seq_len=3)).eval()
    with torch.no_grad():
        embed, encodings = model.encode_text(user_tokens(torch.tensor([0, 3]), seq_len=3))
    assert embed.shape == (2, 16) and encodings.shape == (2, 3, 16)
    assert encodings[:, 0].abs().sum(-1).min() > 0  # the user token is encoded ...
    assert encodings[:, 1:].abs().max() == 0  # ... the padding after it is zeroed


def test_embedding_cache(tmp_path, monkeypatch, toy, trained):
    (x, _), _ = toy
    calls = []
    real = clip_mod.compute_image_embeds

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(clip_mod, "compute_image_embeds", counting)
    first = cached_image_embeds(trained, x, cache_dir=tmp_path, dataset_key="setA")
    assert len(calls) == 1 and first.shape == (len(x), 16)
    second = cached_image_embeds(trained, x, cache_dir=tmp_path, dataset_key="setA")
    assert len(calls) == 1  # read back, not recomputed
    torch.testing.assert_close(second, first, rtol=0, atol=0)

    cached_image_embeds(trained, x, cache_dir=tmp_path, dataset_key="setB")
    assert len(calls) == 2  # another data set

    changed = MicroDopplerClip(trained.config)
    changed.load_state_dict(trained.state_dict())
    with torch.no_grad():
        changed.clip.to_visual_latent.weight.mul_(1.01)
    assert changed.fingerprint != trained.fingerprint
    cached_image_embeds(changed, x, cache_dir=tmp_path, dataset_key="setA")
    assert len(calls) == 3  # another model


def test_dataset_key(tmp_path):
    files = []
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"x" * 10)
        files.append(tmp_path / name)
    key = dataset_key_for(files, 64, "jet")
    assert key == dataset_key_for([str(f) for f in files], 64, "jet")
    assert len({key, dataset_key_for(files, 32, "jet"), dataset_key_for(files, 64, None),
                dataset_key_for(files[::-1], 64, "jet")}) == 4
    (tmp_path / "a.png").write_bytes(b"x" * 11)
    assert dataset_key_for(files, 64, "jet") != key
