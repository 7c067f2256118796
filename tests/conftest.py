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
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = decoder(images, embeds)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return images
