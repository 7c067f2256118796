"""Processes that share a cache folder (quality.py --workers): the lock file that keeps two of
them from making the same file, the VQGAN both generators of a latent budget reuse, and the
augmentation repetitions kept per seed."""

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import pytest
import torch

from dalle2_md.augmentation import harness as augment
from dalle2_md.augmentation.harness import augmentation_gain
from dalle2_md.training.fit import fit_budget_vqgan, latent_decoder_config
from dalle2_md.models.decoder import DecoderConfig
from dalle2_md.augmentation.recipe import AugmentRecipe
from dalle2_md.evaluation.recogniser import RecogniserTrainConfig
from dalle2_md.utils import claimed

from test_augment import TINY

TINY_VQGAN = dict(dim=8, num_resnet_blocks=1, resnet_groups=4, codebook_size=16, codebook_dim=4, layers=1,
                  layer_mults=(1,), quantize=False)
LATENT = replace(TINY, vqgan_train_steps=3, vqgan=TINY_VQGAN)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claimed_lets_one_holder_in_and_takes_over_a_dead_ones_lock(tmp_path):
    target = tmp_path / "thing.pt"
    lock = tmp_path / "thing.pt.lock"
    with claimed(target) as mine:
        assert mine and lock.read_text().split()[0] == str(os.getpid())
        with claimed(target, wait=False) as other:
            assert other is False  # held by a live process (this one): the caller is told to skip
    assert not lock.exists()
    lock.write_text(f"{_dead_pid()}\n")  # left by a process that died mid-training
    with claimed(target, wait=False) as mine:
        assert mine is True
    assert not lock.exists()


def test_claimed_waits_for_another_process_to_finish_the_file(tmp_path):
    target, started = tmp_path / "thing.txt", tmp_path / "started"
    holder = textwrap.dedent(f"""
        import pathlib, time
        from dalle2_md.utils import claimed
        with claimed({str(target)!r}):
            pathlib.Path({str(started)!r}).touch()
            time.sleep(1.5)
            pathlib.Path({str(target)!r}).write_text("made by the other process")
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder])
    try:
        deadline = time.time() + 60
        while not started.exists():
            assert time.time() < deadline and proc.poll() is None, "the holder process did not start"
            time.sleep(0.05)
        waits = []
        with claimed(target, poll_seconds=0.05, on_wait=waits.append) as mine:
            assert mine
            # the lock was let go only once the file was written: the waiter finds it, makes nothing
            assert target.read_text() == "made by the other process"
        assert len(waits) == 1 and "thing.txt" in waits[0]
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == 0


def test_the_vqgan_cache_returns_the_weights_a_fresh_training_gives(tmp_path):
    images = torch.rand(12, 1, 16, 16) * 2 - 1
    dec_config = latent_decoder_config(DecoderConfig(image_size=16, channels=1, image_embed_dim=8), LATENT)
    fresh, _ = fit_budget_vqgan(images, dec_config, LATENT, 0, tmp_path / "a")
    trained, result = fit_budget_vqgan(images, dec_config, LATENT, 0, tmp_path / "b", cache_dir=tmp_path / "cache")
    assert result.step == 3 and len(list((tmp_path / "cache").glob("vqgan_*.pt"))) == 1
    found, record = fit_budget_vqgan(images, dec_config, LATENT, 0, tmp_path / "c", cache_dir=tmp_path / "cache")
    assert record.seconds == 0 and record.step == 3 and len(record.losses) == 1
    # training is seeded, so sharing one VQGAN between two generators changes none of their weights
    for a, b, c in zip(fresh.state_dict().values(), trained.state_dict().values(), found.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(b, c)
    # another seed or other images: another file
    fit_budget_vqgan(images, dec_config, LATENT, 1, tmp_path / "d", cache_dir=tmp_path / "cache")
    fit_budget_vqgan(images[:8], dec_config, LATENT, 0, tmp_path / "e", cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("vqgan_*.pt"))) == 3


def _tensors(seed=0, users=3, per_user=12, size=16):
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(users).repeat_interleave(per_user)
    # a user-specific bright row so the tiny recognisers have something to learn
    images = torch.rand(len(ids), 1, size, size, generator=g) * 0.2 - 1
    images[torch.arange(len(ids)), 0, 2 + 4 * ids] = 1.0
    return images, ids


def test_augmentation_repetitions_are_kept_per_seed_and_found_again(tmp_path, monkeypatch):
    train, test = _tensors(0), _tensors(1, per_user=4)
    kw = dict(num_users=3, work_dir=tmp_path / "runs", k=3, m=2, budget=TINY,
              recogniser_train=RecogniserTrainConfig(steps=10, batch_size=8),
              recipes=[AugmentRecipe(source="prior", filter="none")], seed_results=tmp_path / "kept")
    first = augmentation_gain(train, test, seeds=(0, 1), **kw)
    kept = sorted(p.name for p in (tmp_path / "kept").glob("seed*.json"))
    assert [name.split("_")[0] for name in kept] == ["seed0", "seed1"]

    def must_not_run(*a, **k):
        raise AssertionError("a kept repetition was run again")

    monkeypatch.setattr(augment, "_one_seed", must_not_run)
    again = augmentation_gain(train, test, seeds=(0, 1), **kw)
    assert json.dumps(again["per_seed"], sort_keys=True) == json.dumps(first["per_seed"], sort_keys=True)
    assert all(isinstance(u, int) for u in again["per_seed"][0]["per_user_real"])
    # other settings are another repetition: not taken from the kept one
    with pytest.raises(AssertionError, match="run again"):
        augmentation_gain(train, test, seeds=(0,), **{**kw, "k": 2})
    # a helper process skips a seed another live process is running, instead of waiting for it
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / f"{kept[0]}.lock").write_text(f"{os.getpid()}\n")
    assert augmentation_gain(train, test, seeds=(0,), **{**kw, "seed_results": busy}, skip_busy_seeds=True) is None
