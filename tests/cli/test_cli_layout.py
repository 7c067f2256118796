"""The command line's shape: one module per command group, every command on the group whatever
is imported first, --help without torch, one spelling per option (underscores; the hyphen
spelling still parses, unshown), and defaults that agree with the dataclasses they fill."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from dalle2_md.cli.main import cli, run_command
from dalle2_md.cli import main
from dalle2_md.cli.options import int_tuple, join_variadic
from dalle2_md.defaults import SAMPLE_TIMESTEPS

REPO = Path(__file__).resolve().parents[2]
CLI_DIR = REPO / "dalle2_md" / "cli"
COMMANDS = {"synth", "inspect-data", "train-clip", "train-decoder", "train-upsampler", "train-prior", "generate",
            "generate-dataset",
            "variations", "interpolate", "evaluate", "augment-eval", "demo", "check"}


def _python(*args, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def test_every_command_is_on_the_group():
    assert set(cli.commands) == COMMANDS
    assert callable(main) and callable(run_command)


@pytest.mark.parametrize("first", ["dalle2_md.cli.generate", "dalle2_md.cli.check", "dalle2_md.cli.main"])
def test_the_group_sees_every_command_whatever_is_imported_first(first):
    code = f"import {first}\nfrom dalle2_md.cli import cli\nprint(' '.join(sorted(cli.commands)))"
    result = _python("-c", code)
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == COMMANDS


def test_help_imports_no_torch_and_python_m_runs_the_cli():
    timed = _python("-X", "importtime", "-c", "import dalle2_md.cli")
    assert timed.returncode == 0 and not re.search(r"\|\s+torch\b", timed.stderr)
    for module in ("dalle2_md.cli", "dalle2_md.cli.main"):
        result = _python("-m", module, "--help")
        assert result.returncode == 0, result.stderr
        assert all(name in result.stdout for name in COMMANDS)


def test_modules_and_functions_stay_readable():
    """Every cli module <= 600 lines and every function in it <= 80."""
    for path in CLI_DIR.glob("*.py"):
        source = path.read_text()
        assert source.count("\n") <= 600, path.name
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 80, f"{path.name}:{node.name}"


def _help_spellings(command, ctx):
    """The option spellings --help shows for `command`."""
    shown = []
    for param in command.params:
        record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
        if record:
            shown += re.findall(r"--?[\w-]+", record[0].split(" [")[0])
    return shown


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_one_underscore_spelling_per_option(name):
    command = cli.commands[name]
    ctx = click.Context(command, info_name=name)
    shown = [s for s in _help_spellings(command, ctx) if s not in ("-h", "--help")]
    assert shown and not [s for s in shown if "-" in s[2:]], shown
    assert len(shown) == len(set(shown))


@pytest.mark.parametrize("argv, expected", [
    (["train-decoder", "--data-root", "d", "--mixed-precision", "bf16", "--max-grad-norm", "0.5", "--no-progress",
      "--no-user-conditioning", "--dim-mults", "1", "2"],
     dict(data_root="d", mixed_precision="bf16", max_grad_norm=0.5, progress=False, user_conditioning=False,
          dim_mults=(1, 2))),
    (["train-decoder", "--data_root", "d", "--no_progress", "--no_user_conditioning", "--dim_mults", "1", "2"],
     dict(data_root="d", progress=False, user_conditioning=False, dim_mults=(1, 2))),
    (["generate", "--user-ids", "0", "5", "--no-progress"], dict(user_labels=["0", "5"], progress=False)),
    (["augment-eval", "--data-root", "d", "--m-per-k", "2", "--filter", "recogniser", "--no-progress"],
     dict(data_root="d", m_per_k=2.0, filter_="recogniser", progress=False)),
    (["inspect-data", "--data-root", "d", "--image-size", "16", "--split-seed", "3"],
     dict(data_root="d", image_size=16, split_seed=3)),
    (["synth", "--num-users", "3", "--no-progress"], dict(num_users=3, progress=False)),
])
def test_the_hyphen_spellings_still_parse(argv, expected):
    """Documented hyphen spellings (README: --mixed-precision, --max-grad-norm; --no-progress) and
    every other hyphen form keep working, unshown."""
    name, *words = join_variadic(argv)
    ctx = cli.commands[name].make_context(name, words)
    assert {k: ctx.params[k] for k in expected} == expected


def test_errors_name_the_underscore_spelling():
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["evaluate"])
    assert result.exit_code == 2 and "Missing option '--data_root'." in result.output


def test_inspect_data_takes_the_data_root_as_argument_or_option(tmp_path):
    from click.testing import CliRunner

    from dalle2_md.data.synthesize import synthesize_dataset

    synthesize_dataset(tmp_path / "data", num_users=2, images_per_user=3, image_size=16, progress=False)
    runner = CliRunner()
    by_argument = runner.invoke(cli, ["inspect-data", str(tmp_path / "data"), "--image_size", "16"])
    by_option = runner.invoke(cli, ["inspect-data", "--data_root", str(tmp_path / "data"), "--image_size", "16"])
    assert by_argument.exit_code == 0 and by_argument.output == by_option.output
    assert "images:    6 decoded to 1x16x16" in by_option.output
    both = runner.invoke(cli, ["inspect-data", str(tmp_path / "data"), "--data_root", str(tmp_path / "data")])
    assert both.exit_code == 2 and "give the data set once" in both.output


def _default(command: str, option: str):
    param = next(p for p in cli.commands[command].params if p.name == option)
    value = param.default
    return int_tuple(None, param, value) if param.callback is int_tuple else value


def _mirrors():
    """(command, option) -> (dataclass, field) whose default the option's default must equal. The
    torch-bound dataclasses cannot give the defaults at --help time, so the command line states
    them and this table pins them."""
    from dalle2_md.augmentation.recipe import AugmentRecipe
    from dalle2_md.models.decoder import DecoderConfig
    from dalle2_md.models.embedding import ClipConfig
    from dalle2_md.models.prior import PriorConfig
    from dalle2_md.models.upsampler import UpsamplerConfig
    from dalle2_md.training.loop import TrainConfig
    from dalle2_md.training.options import DataOptions
    from dalle2_md.training.presets import GeneratorBudget

    table = {}
    for command in ("train-clip", "train-decoder", "train-upsampler", "train-prior"):
        for field in ("lr", "warmup_steps", "max_grad_norm", "ema_decay", "mixed_precision", "compile",
                      "gradient_accumulation_steps", "seed", "log_every", "keep_last", "num_workers"):
            table[command, field] = (TrainConfig, field)
        table[command, "split_seed"] = (DataOptions, "split_seed")
    for command in ("train-clip", "train-decoder"):
        table.update({(command, "clip_dim"): (ClipConfig, "dim_latent"), (command, "clip_widths"): (ClipConfig, "encoder_widths"),
                      (command, "clip_dim_image"): (ClipConfig, "dim_image")})
    for field in ("dim", "dim_mults", "num_resnet_blocks", "attn_heads", "attn_dim_head", "timesteps", "cond_drop_prob",
                  "backbone", "dit_depth", "dit_patch_size", "min_snr_gamma", "p2_loss_weight_gamma"):
        table["train-decoder", field] = (DecoderConfig, field)
    for field in ("dim", "depth", "heads", "dim_head", "timesteps", "cond_drop_prob"):
        table["train-prior", field] = (PriorConfig, field)
    for command in ("train-decoder", "train-upsampler"):
        for option, field in (("upsampler_dim", "dim"), ("upsampler_dim_mults", "dim_mults"),
                              ("upsampler_num_resnet_blocks", "num_resnet_blocks"),
                              ("upsampler_timesteps", "timesteps"),
                              ("upsampler_sample_timesteps", "sample_timesteps"), ("crop_size", "crop_size"),
                              ("lowres_noise", "lowres_noise"), ("lowres_noise_level", "lowres_noise_level"),
                              ("blur", "blur")):
            table[command, option] = (UpsamplerConfig, field)
    for field in ("clip_train_steps", "decoder_train_steps", "prior_train_steps"):
        table["augment-eval", field] = (GeneratorBudget, field)
    for option, field in (("m_per_k", "m_per_k"), ("strength", "strength"), ("condition", "condition"),
                          ("filter_", "filter"), ("min_confidence", "min_confidence"), ("mixing", "mixing"),
                          ("synthetic_weight", "synthetic_weight"), ("cond_scale", "cond_scale"),
                          ("prior_cond_scale", "prior_cond_scale"), ("eta", "eta")):
        table["augment-eval", option] = (AugmentRecipe, field)
    return table


def test_option_defaults_agree_with_the_dataclasses():
    from dalle2_md.cli.options import field_default

    wrong = {key: (_default(*key), f"{cls.__name__}.{field}={field_default(cls, field)!r}")
             for key, (cls, field) in _mirrors().items() if _default(*key) != field_default(cls, field)}
    assert not wrong, wrong


def test_where_the_command_line_differs_from_the_dataclasses_on_purpose():
    """Kept apart on purpose: --user_conditioning is on for new decoders (DecoderConfig keeps False
    for older bundles), so is v + zero terminal SNR + min-SNR (the formulation flags default to
    None, resolved by `formulation_fields`; DecoderConfig keeps eps + P2), --sample_timesteps is the benchmarked DEFAULTS value, and the command line
    checkpoints and samples every 1000 steps where TrainConfig's 0 means only at the end."""
    from dalle2_md.models.decoder import DecoderConfig

    assert _default("train-decoder", "user_conditioning") is True and DecoderConfig().user_conditioning is False
    named = ("prediction", "zero_terminal_snr", "loss_weighting")
    assert all(_default("train-decoder", f) is None for f in named)
    assert [getattr(DecoderConfig(), f) for f in named] == ["eps", False, "p2"]
    assert _default("train-decoder", "sample_timesteps") == _default("train-prior", "sample_timesteps") == SAMPLE_TIMESTEPS
    assert _default("train-decoder", "checkpoint_every") == _default("train-decoder", "sample_every") == 1000
