"""The latent path's autoencoder: the downsampling factor option, and its quality report (PSNR,
SSIM of reconstructions) measured at training time and stored in its bundle."""

import pytest
import torch
from click.testing import CliRunner

from dalle2_md.cli.main import cli
from dalle2_md.cli.options import join_variadic
from dalle2_md.models.vqgan import VQGanConfig, build_vqgan, reconstruction_quality
from dalle2_md.training.presets import cpu_vqgan_sizes
from dalle2_md.training.fit import train_vqgan

TINY = ("--max_steps 2 --dim 8 --dim_mults 1 2 --attn_heads 2 --attn_dim_head 8 --num_resnet_blocks 1 "
        "--timesteps 50 --sample_timesteps 3 --clip_dim 16 --clip_widths 8 16 --clip_dim_image 32 "
        "--vqgan_dim 8 --vqgan_codebook_size 16 --image_size 32 --no-progress").split()


def invoke(*args):
    return CliRunner().invoke(cli, join_variadic([str(a) for a in args]))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from dalle2_md.data.synthesize import synthesize_dataset

    root = tmp_path_factory.mktemp("vq") / "data"
    synthesize_dataset(root, num_users=3, images_per_user=5, image_size=32, progress=False)
    return root


@pytest.mark.parametrize("factor", [4, 8])
def test_vqgan_factor_sets_the_latent_size_and_the_bundle_reports_quality(data, tmp_path, factor):
    from dalle2_md.models.bundle import load_bundle
    from dalle2_md.models.decoder import MicroDopplerDecoder

    result = invoke("train-decoder", "--data_root", data, "--output_dir", tmp_path, "--experiment_name", "latent",
                    "--use_vqgan", "--vqgan_factor", factor, *TINY)
    assert result.exit_code == 0, result.output
    run = tmp_path / "latent"
    decoder = MicroDopplerDecoder.load(run / "decoder_final.pt")
    assert decoder.diffused_shape == (8, 32 // factor, 32 // factor)  # --vqgan_dim channels, 32 / f pixels
    quality = load_bundle(run / "vqgan_final.pt", kind="vqgan")["meta"]["quality"]
    assert quality["images"] > 0 and 0 < quality["psnr"] < 60 and -1 <= quality["ssim"] <= 1
    assert f"f={factor}" in result.output and "PSNR" in result.output


def test_vqgan_factor_that_is_not_a_power_of_two_is_one_clear_error(data, tmp_path):
    result = invoke("train-decoder", "--data_root", data, "--output_dir", tmp_path, "--use_vqgan", "--vqgan_factor", 6,
                    *TINY)
    assert result.exit_code == 2 and "--vqgan_factor 6" in result.output and "power of 2" in result.output
    assert not list(tmp_path.rglob("*_final.pt"))


def test_quality_report_rises_as_the_vqgan_learns():
    torch.manual_seed(0)
    # smooth random images: learnable in a few dozen steps, unlike white noise
    images = torch.nn.functional.interpolate(torch.rand(32, 1, 4, 4), size=16, mode="bilinear") * 2 - 1
    config = VQGanConfig(image_size=16, channels=1, **cpu_vqgan_sizes(4, dim=8, codebook_size=32, codebook_dim=8))
    before = reconstruction_quality(build_vqgan(config), images)
    vqgan, _ = train_vqgan(images, config, steps=60, batch_size=8, lr=3e-3, seed=0)
    after = reconstruction_quality(vqgan, images)
    assert after["psnr"] > before["psnr"] + 3 and after["ssim"] > before["ssim"] + 0.1


def test_codebook_heads_quantise_each_latent_pixel_with_several_codes_and_round_trip(tmp_path):
    from dalle2_md.models.vqgan import load_vqgan, reconstruct, save_vqgan

    config = VQGanConfig(image_size=16, channels=1, **cpu_vqgan_sizes(4, dim=8, codebook_size=32, codebook_dim=4,
                                                                      codebook_heads=2, use_cosine_sim=False,
                                                                      quantize=True))
    torch.manual_seed(0)
    images = torch.rand(4, 1, 16, 16) * 2 - 1
    vqgan = build_vqgan(config).eval()
    _, indices, _ = vqgan.decode(vqgan.encode(images), return_indices_and_loss=True)
    assert indices.shape == (4, 4, 4, 2)  # one code per head at each 4 x 4 latent pixel
    assert not vqgan.vq.use_cosine_sim  # Euclidean lookup: the length of each slice is kept

    path = save_vqgan(tmp_path / "vqgan.pt", vqgan, config)
    loaded, loaded_config = load_vqgan(path)
    assert loaded_config == config
    assert torch.equal(reconstruct(loaded, images), reconstruct(vqgan, images))


def test_unquantised_vqgan_decodes_the_continuous_latent_and_quantised_one_snaps_it_to_codes():
    from dalle2_md.models.compat import VQGanAutoencoder

    torch.manual_seed(0)
    images = torch.rand(4, 1, 16, 16) * 2 - 1
    config = VQGanConfig(image_size=16, channels=1, **cpu_vqgan_sizes(4, dim=8, codebook_size=4, codebook_dim=8))
    assert not config.quantize  # the CPU default
    vqgan = build_vqgan(config).eval()
    assert isinstance(vqgan, VQGanAutoencoder)
    latents = vqgan.encode(images)
    continuous = vqgan.decode(latents)
    assert torch.equal(continuous, vqgan.enc_dec.decode(latents))
    _, indices, commit = vqgan.decode(latents, return_indices_and_loss=True)
    assert indices is None and float(commit) == 0.0
    vqgan.quantize = True  # the same weights through a 4-code codebook: at most 4 distinct latent vectors
    _, indices, _ = vqgan.decode(latents, return_indices_and_loss=True)
    assert indices.unique().numel() <= 4 and not torch.allclose(vqgan.decode(latents), continuous)


def test_vqgan_configs_written_before_these_options_load_as_one_quantised_cosine_head():
    new_fields = ("codebook_heads", "use_cosine_sim", "quantize")
    old = {k: v for k, v in VQGanConfig(image_size=16).to_dict().items() if k not in new_fields}
    config = VQGanConfig.from_dict(old)
    assert config.codebook_heads == 1 and config.use_cosine_sim and config.quantize
    with pytest.raises(Exception, match="codebook_heads"):
        VQGanConfig(image_size=16, codebook_heads=0)
