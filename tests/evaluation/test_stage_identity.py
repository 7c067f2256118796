"""Stage-by-stage identity: centroid accuracy on constructed embeddings, the decoder's
training-time embedding noise, the decoder stage on a decoder that follows its embedding, the
prior stage against a hand computation, and the `evaluate` command's stage fields."""

import math

import pytest
import torch
from test_curate import tiny_chain_on_simulated_data

from dalle2_md.models.decoder import DecoderConfig, MicroDopplerDecoder
from dalle2_md.evaluation.stages import nearest_centroid_accuracy, user_centroids


def test_nearest_centroid_accuracy_counts_own_user_hits():
    axes = torch.eye(3)
    embeds = torch.cat([axes + 0.1 * torch.randn(3, 3, generator=torch.Generator().manual_seed(i)) for i in range(4)])
    users = torch.arange(3).repeat(4)
    centroids = user_centroids(embeds, users, 3)
    assert nearest_centroid_accuracy(embeds, users, centroids) == 1.0
    # relabelled so that every embedding is scored against another user's centroid
    assert nearest_centroid_accuracy(embeds, (users + 1) % 3, centroids) == 0.0


def test_within_user_spread_tells_a_collapsed_prior_from_a_spread_one():
    from dalle2_md.evaluation.stages import within_user_spread

    g = torch.Generator().manual_seed(0)
    users = torch.arange(3).repeat_interleave(20)
    centres = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1)
    real = centres[users] + 0.3 * torch.randn(60, 16, generator=g)
    collapsed = centres[users] + 1e-3 * torch.randn(60, 16, generator=g)  # the user's mean every time
    assert within_user_spread(collapsed, users) < 0.01 * within_user_spread(real, users)
    # a set is as spread as itself, and shuffling which user a row belongs to only widens it
    assert within_user_spread(real, users) == pytest.approx(within_user_spread(real.flip(0), users.flip(0)))
    assert within_user_spread(real, users[torch.randperm(60, generator=g)]) > within_user_spread(real, users)
    # a user with one embedding has no spread and is left out; with none of 2+ there is no spread at all
    lone = torch.cat([real, centres[:1] + 5.0]), torch.cat([users, torch.tensor([3])])
    assert within_user_spread(*lone) == pytest.approx(within_user_spread(real, users))
    assert math.isnan(within_user_spread(centres, torch.arange(3)))


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


# -- the stages of a model, and the evaluate command ---------------------------------------------


def test_decoder_that_follows_its_embedding_scores_above_chance(two_users):
    from dalle2_md.models.decoder import MicroDopplerDecoder
    from dalle2_md.evaluation.recogniser import accuracy
    from dalle2_md.evaluation.recogniser import RecogniserConfig, RecogniserTrainConfig, train_recogniser
    from dalle2_md.evaluation.stages import decoder_accuracy

    trained, x, y, centres = (two_users[k] for k in ("model", "x", "y", "centres"))
    judge = train_recogniser(x, y, config=RecogniserConfig(num_users=2, image_size=16, widths=(8, 16), feature_dim=8),
                             train=RecogniserTrainConfig(steps=30, batch_size=16, augment=False, mixup_alpha=0.0))
    assert accuracy(judge, x, y)[0] == 1.0  # the judge itself tells the two bands apart
    users = torch.arange(2).repeat(8)
    embeds = centres[users] + 0.05 * torch.randn(16, centres.shape[1], generator=torch.Generator().manual_seed(5))
    followed = decoder_accuracy(trained, judge, embeds, users, seed=3)
    # the same network untrained ignores the embedding: its images all land in one class or another
    torch.manual_seed(0)
    untrained = decoder_accuracy(MicroDopplerDecoder(config=trained.config).eval(), judge, embeds, users, seed=3)
    assert followed >= 0.8 and followed > untrained + 0.25, (followed, untrained)


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    return tiny_chain_on_simulated_data(tmp_path_factory.mktemp("stages"))


def test_prior_stage_is_nearest_train_centroid_of_the_prior_samples(chain_run):
    from dalle2_md.data.dataset import load_splits
    from dalle2_md.models.chain import MicroDopplerDALLE2
    from dalle2_md.evaluation.recogniser import RecogniserTrainConfig, train_recogniser
    from dalle2_md.evaluation.stages import stage_identity_accuracies

    model = MicroDopplerDALLE2.load(chain_run["model"])
    sets = load_splits(chain_run["data"], image_size=16, split_file=chain_run["root"] / "split.json")
    train, test = sets["train"].tensors(), sets["test"].tensors()
    judge = train_recogniser(*train, num_users=3, train=RecogniserTrainConfig(steps=2, batch_size=8))
    stages = stage_identity_accuracies(model, judge, train, test, guidance_scales=(1.0,), num_samples_per_user=4, seed=7)
    # by hand: cosine similarity of each prior sample to each user's mean unit train embedding
    with torch.no_grad():
        train_embeds = torch.nn.functional.normalize(model.clip.embed_image(train[0]), dim=-1)
        samples = model.prior.sample([0, 1, 2], 4, cond_scale=1.0, seed=7)
    means = torch.stack([train_embeds[train[1] == u].mean(0) for u in range(3)])
    sims = torch.nn.functional.cosine_similarity(samples[:, None, :], means[None, :, :], dim=-1)  # (12, 3)
    by_hand = (sims.argmax(1) == torch.arange(3).repeat_interleave(4)).float().mean().item()
    assert stages["prior"][1.0] == pytest.approx(by_hand)
    spread = lambda e, u: torch.stack([(e[u == k] - e[u == k].mean(0)).norm(dim=1).mean() for k in range(3)]).mean()
    sample_users = torch.arange(3).repeat_interleave(4)
    by_hand_spread = spread(torch.nn.functional.normalize(samples, dim=-1), sample_users) / spread(train_embeds, train[1])
    assert stages["prior_spread"][1.0] == pytest.approx(by_hand_spread.item(), rel=1e-4)
    assert stages["chance"] == pytest.approx(1 / 3) and set(stages["decoder"]) == {1.0}


def test_evaluate_command_reports_the_stages_per_guidance_scale(chain_run):
    import json

    from click.testing import CliRunner

    from dalle2_md.cli.main import cli

    out = chain_run["root"] / "eval"
    result = CliRunner().invoke(cli, [
        "evaluate", "--data_root", str(chain_run["data"]), "--model_path", str(chain_run["model"]), "--output_dir", str(out),
        "--num_samples_per_user", "2", "--sample_steps", "1", "--prior_steps", "1", "--recogniser_steps", "3",
        "--stage_guidance", "1,3"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    stages = metrics["stages"]
    assert set(stages["prior"]) == set(stages["decoder"]) == {"1.0", "3.0"}
    values = [stages["embedding"], *stages["prior"].values(), *stages["decoder"].values()]
    assert all(0.0 <= v <= 1.0 for v in values), stages
    # as many real test embeddings are decoded as there are A_gen samples (2 per user), or all
    assert stages["num_decoded"] == min(6, metrics["counts"]["real_test"])
    report = (out / "report.md").read_text()
    assert "| prior accuracy, guidance 3 " in report and "| decoder accuracy on true test embeddings, guidance 3 " in report
    assert "decoder on true embeddings g1" in result.output

    bad = CliRunner().invoke(cli, ["evaluate", "--data_root", str(chain_run["data"]), "--model_path", str(chain_run["model"]),
                                   "--stage_guidance", "1,x"])
    assert bad.exit_code == 2 and "--stage_guidance" in bad.output


def test_evaluate_command_on_parts_uses_the_embedding_model_beside_the_decoder(chain_run, tmp_path):
    import json

    from click.testing import CliRunner

    from dalle2_md.cli.main import cli
    from dalle2_md.models.chain import MicroDopplerDALLE2

    model = MicroDopplerDALLE2.load(chain_run["model"])
    model.prior.save(tmp_path / "prior_final.pt", label_map=model.label_map, meta=model.prior.meta)
    model.decoder.save(tmp_path / "decoder_final.pt", meta=model.decoder.meta)

    def stages_of(out):
        result = CliRunner().invoke(cli, [
            "evaluate", "--data_root", str(chain_run["data"]), "--decoder_path", str(tmp_path / "decoder_final.pt"),
            "--prior_path", str(tmp_path / "prior_final.pt"), "--output_dir", str(out), "--num_samples_per_user", "1",
            "--sample_steps", "1", "--prior_steps", "1", "--recogniser_steps", "2", "--stage_guidance", "1"])
        assert result.exit_code == 0, result.output
        return json.loads((out / "metrics.json").read_text())

    alone = stages_of(tmp_path / "alone")
    assert "embedding" not in alone["stages"] and any("--clip_path" in n for n in alone["notes"])
    model.clip.save(tmp_path / "clip_final.pt")
    beside = stages_of(tmp_path / "beside")
    assert set(beside["stages"]["decoder"]) == {"1.0"} and 0.0 <= beside["stages"]["prior"]["1.0"] <= 1.0
