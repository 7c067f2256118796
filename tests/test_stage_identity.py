"""Stage-by-stage identity: centroid accuracy on constructed embeddings, and the decoder's
training-time embedding noise."""

import torch

from dalle2_md.decoder import DecoderConfig, MicroDopplerDecoder
from dalle2_md.stage_identity import nearest_centroid_accuracy, user_centroids


def test_nearest_centroid_accuracy_counts_own_user_hits():
    axes = torch.eye(3)
    embeds = torch.cat([axes + 0.1 * torch.randn(3, 3, generator=torch.Generator().manual_seed(i)) for i in range(4)])
    users = torch.arange(3).repeat(4)
    centroids = user_centroids(embeds, users, 3)
    assert nearest_centroid_accuracy(embeds, users, centroids) == 1.0
    # relabelled so that every embedding is scored against another user's centroid
    assert nearest_centroid_accuracy(embeds, (users + 1) % 3, centroids) == 0.0


def test_embedding_noise_only_in_training_and_keeps_the_norm():
    config = DecoderConfig(image_size=8, channels=1, image_embed_dim=16, dim=8, dim_mults=(1, 2),
                           num_resnet_blocks=1, attn_heads=1, attn_dim_head=8, timesteps=10, sample_timesteps=2,
                           embed_noise_std=0.3)
    decoder = MicroDopplerDecoder(config=config)
    embeds = torch.nn.functional.normalize(torch.randn(64, 16), dim=-1) * 2.0
    decoder.train()
    noised = decoder._noised_embeds(embeds)
    assert torch.allclose(noised.norm(dim=-1), embeds.norm(dim=-1), atol=1e-5)
    cos = torch.nn.functional.cosine_similarity(noised, embeds, dim=-1)
    # about std = 0.3 of the length added: the angle moves, but stays well within the hemisphere
    assert 0.85 < cos.mean().item() < 0.995
    decoder.eval()
    assert torch.equal(decoder._noised_embeds(embeds), embeds)
