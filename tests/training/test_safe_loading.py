"""Nothing dalle2-md loads can run code.

A pickle whose unpickling would create a marker file (through os.system) is planted at every
path the project reads a model or checkpoint from: each command must refuse it with one clear
error naming the file, and the marker must not appear. Caches are rebuilt instead of trusted,
JSON files are only ever parsed as JSON, and a scan of the package source checks that every
`torch.load` passes `weights_only=True` and that no other unpickler is used."""

import ast
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dalle2_md.cli.main import cli
from dalle2_md.cli.options import join_variadic

PACKAGE = Path(__file__).resolve().parents[2] / "dalle2_md"
TINY_CLIP = ["--clip_dim", "16", "--clip_widths", "8,16", "--clip_dim_image", "32"]
TINY_DECODER = ["--dim", "16", "--dim_mults", "1,2", "--attn_heads", "2", "--attn_dim_head", "8",
                "--num_resnet_blocks", "1", "--timesteps", "50", "--sample_timesteps", "4", *TINY_CLIP]
TINY_PRIOR = ["--depth", "1", "--heads", "2", "--dim_head", "8", "--timesteps", "50", "--sample_timesteps", "4"]
QUICK = ["--image_size", "16", "--max_steps", "1", "--batch_size", "4", "--no-progress"]


class RunsCode:
    """Unpickling this calls os.system: the classic malicious model file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path, kind: str = "decoder", legacy: bool = False) -> Path:
    """A file that looks like a dalle2-md bundle / checkpoint but carries a code-running object."""
    payload = {"format": "dalle2-md", "format_version": 1, "kind": kind, "stage": kind, "config": {},
               "state_dict": {"w": torch.zeros(2)}, "meta": RunsCode(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path



def invoke(*args):
    return CliRunner().invoke(cli, join_variadic([str(a) for a in args]))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from dalle2_md.data.synthesize import synthesize_dataset

    root = tmp_path_factory.mktemp("safe")
    synthesize_dataset(root / "data", num_users=3, images_per_user=4, image_size=16, layout="kaggle", progress=False)
    result = invoke("train-decoder", "--data_root", root / "data", "--output_dir", root / "runs", "--experiment_name",
                    "dec", *TINY_DECODER, *QUICK)
    assert result.exit_code == 0, result.output
    run = root / "runs" / "dec"
    result = invoke("train-prior", "--data_root", root / "data", "--output_dir", root / "runs", "--experiment_name",
                    "pri", "--clip_path", run / "clip_final.pt", *TINY_PRIOR, *QUICK)
    assert result.exit_code == 0, result.output
    return {"root": root, "data": root / "data", "clip": run / "clip_final.pt", "decoder": run / "decoder_final.pt",
            "prior": root / "runs" / "pri" / "prior_final.pt"}


def test_the_planted_file_really_runs_code_when_unpickled_unsafely(tmp_path):
    # the control: without weights_only the same file creates its marker
    marker = tmp_path / "pwned"
    path = plant(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def _generate(b, **swap):
    paths = {"decoder_path": b["decoder"], "prior_path": b["prior"], **swap}
    return ["generate", *[w for k, v in paths.items() for w in (f"--{k}", v)], "--num_samples_per_user", 1,
            "--sample_steps", 2, "--prior_steps", 2]


def _train(entry, b, *extra):
    sizes = {"train-decoder": TINY_DECODER, "train-prior": [*TINY_PRIOR, "--clip_path", b["clip"]],
             "train-clip": TINY_CLIP}[entry]
    return [entry, "--data_root", b["data"], *sizes, *QUICK, *extra]


# name: (argv(base, evil_path), kind written into the planted file, where it is planted relative to the run)
PLANTED = {
    "generate_decoder_path": (lambda b, e: _generate(b, decoder_path=e), "decoder"),
    "generate_prior_path": (lambda b, e: _generate(b, prior_path=e), "prior"),
    "generate_clip_path": (lambda b, e: _generate(b, clip_path=e), "clip"),
    "generate_chained_model_path": (lambda b, e: ["generate", "--model_path", e], "dalle2"),
    "interpolate_decoder_path": (lambda b, e: ["interpolate", "--decoder_path", e, "--prior_path", b["prior"],
                                               "--interp_user_1", "1", "--interp_user_2", "2"], "decoder"),
    "train_prior_clip_path": (lambda b, e: _train("train-prior", b, "--clip_path", e), "clip"),
    "train_decoder_clip_path": (lambda b, e: _train("train-decoder", b, "--clip_path", e), "clip"),
    "train_decoder_vqgan_path": (lambda b, e: _train("train-decoder", b, "--clip_path", b["clip"], "--use_vqgan",
                                                     "--vqgan_path", e), "vqgan"),
    "train_decoder_resume_path": (lambda b, e: _train("train-decoder", b, "--resume", e), "checkpoint"),
    "train_prior_resume_path": (lambda b, e: _train("train-prior", b, "--resume", e), "checkpoint"),
    "train_clip_resume_path": (lambda b, e: _train("train-clip", b, "--resume", e), "checkpoint"),
}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip_format", "legacy_format"])
@pytest.mark.parametrize("case", sorted(PLANTED))
def test_planted_pickle_is_refused_everywhere(base, tmp_path, case, legacy):
    argv, kind = PLANTED[case]
    marker = tmp_path / "pwned"
    evil = plant(tmp_path / "evil.pt", marker, kind=kind, legacy=legacy)
    result = invoke(*argv(base, evil), "--output_dir", tmp_path / "out")
    assert result.exit_code == 2, f"{result.exception!r}\n{result.output[-2000:]}"
    assert "Traceback" not in result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(f"Error: {evil}: refused to load") and "could run code" in error
    assert not marker.exists()
    assert not list(tmp_path.rglob("*_final.pt"))  # a refused run leaves nothing looking finished


@pytest.mark.parametrize("stage", ["clip", "prior"])
def test_planted_latest_checkpoint_is_refused_on_resume_latest(base, tmp_path, stage):
    marker = tmp_path / "pwned"
    run = tmp_path / "out" / "run"
    plant(run / stage / "checkpoints" / "step_000009.pt", marker, kind="checkpoint")
    (run / stage / "checkpoints" / "latest.json").write_text(json.dumps({"file": "step_000009.pt", "step": 9}))
    entry = "train-clip" if stage == "clip" else "train-prior"
    result = invoke(*_train(entry, base, "--resume", "latest"), "--output_dir", tmp_path / "out",
                    "--experiment_name", "run")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "step_000009.pt: refused to load" in result.output
    assert not marker.exists()
    assert not (run / f"{stage}_final.pt").exists()


def test_planted_caches_are_rebuilt_not_trusted(base, tmp_path):
    out = tmp_path / "out"
    args = _train("train-prior", base, "--output_dir", out, "--experiment_name", "run", "--cache_dir", tmp_path / "c")
    assert invoke(*args).exit_code == 0
    decoded = list((tmp_path / "c").glob("decoded-*.pt"))
    embeds = list((tmp_path / "c").glob("image_embeds-*.safetensors"))
    assert decoded and embeds
    marker = tmp_path / "pwned"
    for cache in decoded + embeds:
        plant(cache, marker)
    result = invoke(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    for cache in decoded:  # rewritten by a safe save: loads with weights_only=True again
        torch.load(cache, weights_only=True)


def test_json_side_files_are_parsed_as_json_only(base, tmp_path):
    out = tmp_path / "out"
    args = _train("train-prior", base, "--output_dir", out, "--experiment_name", "run")
    assert invoke(*args).exit_code == 0
    marker = tmp_path / "pwned"
    (out / "run" / "split.json").write_bytes(pickle.dumps(RunsCode(marker)))
    result = invoke(*args, "--overwrite")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "split.json is not readable JSON" in result.output and "delete it" in result.output
    assert not marker.exists()


# ------------------------------------------------------------------------------------------
# the source itself

UNSAFE_CALLS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads", "joblib.load",
                "marshal.load", "marshal.loads", "shelve.open", "cloudpickle.load", "cloudpickle.loads",
                "torch.jit.load", "yaml.load", "yaml.unsafe_load"}


def _dotted(node) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return "?"


def _calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, _dotted(node.func)


def test_every_torch_load_in_the_package_is_weights_only():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 10
    loads, problems = 0, []
    for path in sources:
        for call, name in _calls(path):
            where = f"{path.name}:{call.lineno}"
            keywords = {k.arg: k.value for k in call.keywords}
            if name == "torch.load" or name.endswith(".torch.load"):
                loads += 1
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            elif name in UNSAFE_CALLS:
                problems.append(f"{where}: {name} can run code from the file it reads")
            elif name in ("np.load", "numpy.load"):
                flag = keywords.get("allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where}: np.load with allow_pickle")
    assert loads >= 2  # bundle.py and the decode cache in data.py
    assert not problems, problems
    # `load` imported bare from torch would dodge the scan above
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in ("torch", "pickle", "dill", "joblib"):
                assert not {a.name for a in node.names} & {"load", "loads", "Unpickler"}, f"{path.name}: {node.module}"
