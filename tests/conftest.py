"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # Every model in the suite is tiny: a second intra-op thread only adds contention, and on a
    # busy 2-core machine two threads per process measured 8-20x slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def two_users():
    """Two users: a bright band near the top vs near the bottom (with noise); embeddings are two
    fixed vectors plus small noise. A tiny pixel decoder trained briefly with plain Adam follows
    its embedding (test_decoder::test_learns_two_users). Session-wide: trained once."""
    from dalle2_md.models.decoder import DecoderConfig, MicroDopplerDecoder

    g = torch.Generator().manual_seed(0)

    def user_images(n, user):
        im = torch.full((n, 1, 16, 16), -0.8)
        im[:, :, (slice(2, 5) if user == 0 else slice(11, 14)), :] = 0.8
        return (im + 0.15 * torch.randn(im.shape, generator=g)).clamp(-1, 1)

    x = torch.cat([user_images(32, 0), user_images(32, 1)])
    y = torch.tensor([0] * 32 + [1] * 32)
    embed_dim = 16
    centres = torch.randn(2, embed_dim, generator=g)
    e = centres[y] + 0.05 * torch.randn(64, embed_dim, generator=g)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = MicroDopplerDecoder(config=DecoderConfig(
        image_size=16, channels=1, image_embed_dim=embed_dim, dim=16, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8,
        num_resnet_blocks=1, timesteps=100, sample_timesteps=10))
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(100):
            idx = torch.randint(0, 64, (16,))
            loss = m(x[idx], e[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return dict(model=m.eval(), x=x, y=y, centres=centres, generator=g)


def fit_decoder_on_ramps(model, embed_dim: int, *, steps: int, normalize: bool = False) -> torch.Tensor:
    """A few decoder steps on 8 smooth 16 px ramps with random embeddings: an untrained U-Net
    predicts huge noise, so every pixel clamps to 0 or 1 whatever the embedding; this brings its
    x_0 estimates into range. Draws from the global RNG; returns the ramps (eval mode after)."""
    decoder = model.decoder.train()
    rows = torch.linspace(-1, 1, 16).view(1, 1, 16, 1).expand(8, 1, 16, 16)
    images = rows * torch.rand(8, 1, 1, 1)
    embeds = torch.randn(8, embed_dim)
    if normalize:
        embeds = torch.nn.functional.normalize(embeds, dim=-1)
    # a user-conditioned decoder gets a user per ramp too
    users = (torch.arange(8) % decoder.config.num_users,) if decoder.config.user_conditioning else ()
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = decoder(images, embeds, *users)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return images
