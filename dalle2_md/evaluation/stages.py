"""Identity stage by stage: where along user -> prior -> embedding -> decoder -> image a user's
signature is kept or lost.

Owns the three stage accuracies that `dalle2-md evaluate` reports beside A_gen:

- embedding: real test images embedded by the embedding model, classified by the nearest user
  centroid of the real *train* embeddings (cosine);
- prior: the prior's samples for each user, classified the same way (per prior guidance scale),
  and their spread: the within-user spread of the samples over that of the real train
  embeddings. Accuracy alone cannot tell a prior that has learnt each user's spread of walks from
  one that returns the user's mean embedding every time (both score 1.0); the spread can;
- decoder: the *true* embeddings of real test images decoded to images and classified by the
  recogniser (per decoder guidance scale). This isolates the decoder: if it fails here, the
  prior cannot be blamed.

The accuracies are fractions in [0, 1]; chance is 1 / num_users. `stage_identity_accuracies` returns
them together.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from dalle2_md.utils import UserError


def user_centroids(embeds: torch.Tensor, user_indices: torch.Tensor, num_users: int) -> torch.Tensor:
    """(num_users, D) unit-norm mean embedding per user; a user without embeddings gets zeros."""
    embeds = F.normalize(embeds.float(), dim=-1)
    sums = torch.zeros(num_users, embeds.shape[1]).index_add_(0, user_indices.long(), embeds)
    return F.normalize(sums, dim=-1)


def nearest_centroid_accuracy(embeds: torch.Tensor, user_indices: torch.Tensor, centroids: torch.Tensor) -> float:
    """Fraction of embeddings whose most similar centroid (cosine) is their own user's."""
    if len(embeds) == 0:
        raise UserError("nearest-centroid accuracy needs at least one embedding")
    predicted = (F.normalize(embeds.float(), dim=-1) @ centroids.T).argmax(-1)
    return (predicted == user_indices.long()).float().mean().item()


def within_user_spread(embeds: torch.Tensor, user_indices: torch.Tensor) -> float:
    """Mean over users with 2+ rows of the mean distance of their unit-norm embeddings to their
    own mean (NaN when no user has 2: one embedding has no spread)."""
    embeds, user_indices = F.normalize(embeds.float(), dim=-1), user_indices.long()
    spreads = [(e - e.mean(0)).norm(dim=-1).mean() for u in torch.unique(user_indices)
               if len(e := embeds[user_indices == u]) > 1]
    return torch.stack(spreads).mean().item() if spreads else float("nan")


@torch.no_grad()
def prior_draw(prior, *, num_samples_per_user: int = 16, cond_scale: float = 1.0, steps: int | None = None,
               seed: int = 0, sampler: str | None = None, eta: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples, user index of each) for every user the prior knows, user-major."""
    user_indices = list(range(prior.config.num_users))
    samples = prior.sample(user_indices, num_samples_per_user, cond_scale=cond_scale, timesteps=steps, seed=seed,
                           sampler=sampler, eta=eta)
    return samples.cpu(), torch.arange(len(user_indices)).repeat_interleave(num_samples_per_user)


def prior_accuracy(prior, centroids: torch.Tensor, **draw) -> float:
    """Nearest-centroid accuracy of the prior's samples for every user it knows (`draw`: as
    for `prior_draw`)."""
    return nearest_centroid_accuracy(*prior_draw(prior, **draw), centroids)


@torch.no_grad()
def decoder_accuracy(decoder, recogniser, image_embeds: torch.Tensor, user_indices: torch.Tensor, *,
                     cond_scale: float = 1.0, steps: int | None = None, seed: int = 0, batch_size: int = 64,
                     sampler: str | None = None, eta: float | None = None) -> float:
    """Recogniser accuracy on images decoded from given (true) embeddings."""
    from dalle2_md.models.chain import decoder_users
    from dalle2_md.evaluation.recogniser import predict

    correct = 0
    for start in range(0, len(image_embeds), batch_size):
        embeds = image_embeds[start : start + batch_size]
        users = decoder_users(decoder, user_indices[start : start + batch_size], embeds.device)
        images = decoder.sample(embeds, user_indices=users, cond_scale=cond_scale, timesteps=steps, seed=seed + start,
                                sampler=sampler, eta=eta) * 2.0 - 1.0
        correct += (predict(recogniser, images.cpu()) == user_indices[start : start + batch_size]).sum().item()
    return correct / max(1, len(image_embeds))


def stage_identity_accuracies(
    model,
    recogniser,
    real_train: tuple[torch.Tensor, torch.Tensor],
    real_test: tuple[torch.Tensor, torch.Tensor],
    *,
    guidance_scales: Sequence[float] = (1.0, 2.0, 3.0),
    num_samples_per_user: int = 16,
    max_decoded: int = 256,
    decoder_steps: int | None = None,
    prior_steps: int | None = None,
    seed: int = 0,
    sampler: str | None = None,
    eta: float | None = None,
) -> dict:
    """Embedding, prior and decoder identity accuracies of a chained model.

    Args:
        model: a `MicroDopplerDALLE2` whose `clip` is set (the embedding model both stages use).
        recogniser: trained on `real_train`; judges decoded images.
        real_train, real_test: (images in [-1, 1], user indices).
        guidance_scales: prior and decoder guidance scales to measure (each stage separately).
        num_samples_per_user: prior samples per user and scale.
        max_decoded: at most this many real test embeddings are decoded per scale (evenly spread).
        decoder_steps, prior_steps: sampling steps (default: each stage's own).
        seed: sampling seed.
        sampler, eta: sampler of both stages and DDIM eta (default: each stage's own).
    Returns:
        {"embedding": acc, "prior": {scale: acc}, "prior_spread": {scale: samples' within-user
        spread / the real train embeddings'}, "decoder": {scale: acc}, "chance": 1/U}.
    """
    from dalle2_md.models.embedding import compute_image_embeds

    if getattr(model, "clip", None) is None:
        raise UserError("stage-by-stage identity needs the embedding model: load the chain with its clip "
                        "(a 'dalle2' bundle, or from_parts(..., clip_path=...)).")
    num_users = model.num_users
    train_embeds = compute_image_embeds(model.clip, real_train[0])
    test_embeds = compute_image_embeds(model.clip, real_test[0])
    centroids = user_centroids(train_embeds, real_train[1], num_users)
    real_spread = max(within_user_spread(train_embeds, real_train[1]), 1e-12)
    pick = torch.linspace(0, len(test_embeds) - 1, min(max_decoded, len(test_embeds))).round().long().unique()
    can_guide_prior = model.prior.can_classifier_guidance
    can_guide_decoder = model.decoder.config.cond_drop_prob > 0
    result = {
        "embedding": nearest_centroid_accuracy(test_embeds, real_test[1], centroids),
        "prior": {},
        "prior_spread": {},
        "decoder": {},
        "chance": 1.0 / num_users,
        "num_decoded": len(pick),
    }
    for scale in guidance_scales:
        if scale == 1.0 or can_guide_prior:
            samples, sampled_for = prior_draw(model.prior, num_samples_per_user=num_samples_per_user, cond_scale=scale,
                                              steps=prior_steps, seed=seed, sampler=sampler, eta=eta)
            result["prior"][float(scale)] = nearest_centroid_accuracy(samples, sampled_for, centroids)
            result["prior_spread"][float(scale)] = within_user_spread(samples, sampled_for) / real_spread
        if scale == 1.0 or can_guide_decoder:
            result["decoder"][float(scale)] = decoder_accuracy(
                model.decoder, recogniser, test_embeds[pick].to(model.device), real_test[1][pick],
                cond_scale=scale, steps=decoder_steps, seed=seed, sampler=sampler, eta=eta)
    return result


