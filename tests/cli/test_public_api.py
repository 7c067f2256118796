"""The package's public names: importable from `dalle2_md`, loaded only when first used."""

import json
import os
import subprocess
import sys

import pytest

import dalle2_md

PUBLIC = ["MicroDopplerDALLE2", "UserConditionedDiffusionPrior", "UserConditionedPriorNetwork",
          "MicroDopplerDecoder", "MicroDopplerClip"]


def _heavy_modules_after(code: str) -> dict:
    # a fresh interpreter: this test process has long imported torch
    probe = code + "\nimport json, sys\nprint(json.dumps({m: m in sys.modules for m in ('torch', 'dalle2_pytorch', 'x_clip')}))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_public_classes_import_from_the_package():
    from dalle2_md import (MicroDopplerClip, MicroDopplerDALLE2, MicroDopplerDecoder, UserConditionedDiffusionPrior,
                           UserConditionedPriorNetwork)
    from dalle2_md.models.chain import MicroDopplerDALLE2 as chain

    assert MicroDopplerDALLE2 is chain
    assert issubclass(UserConditionedDiffusionPrior, dalle2_md.models.prior.DiffusionPrior)
    assert {c.__module__ for c in (MicroDopplerClip, MicroDopplerDecoder, UserConditionedPriorNetwork)} == {
        "dalle2_md.models.embedding", "dalle2_md.models.decoder", "dalle2_md.models.prior"}
    assert set(PUBLIC) <= set(dalle2_md.__all__) and set(PUBLIC) <= set(dir(dalle2_md))


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="NoSuchThing"):
        dalle2_md.NoSuchThing


def test_importing_the_package_and_cli_help_load_no_torch():
    assert not any(_heavy_modules_after("import dalle2_md").values())
    help_run = "from dalle2_md.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    assert not any(_heavy_modules_after(help_run).values())
    # and the lazy names do load them when asked for
    assert _heavy_modules_after("from dalle2_md import MicroDopplerDALLE2")["dalle2_pytorch"]
