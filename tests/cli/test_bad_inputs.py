"""The bad-input matrix: every way a data set, a model file or a flag can be wrong, fed to every
command that reads it (train-decoder, train-prior, train-clip, generate, interpolate,
inspect-data, and the seed's scripts as subprocesses).

Each bad input must end in one `Error:` line that names the problem and the file and says what to
do, with exit status 2 and no traceback, and must leave no `*_final.pt` (or generated image)
behind; or, where skipping is right (one unreadable image among many), the file is skipped,
counted and named, and training goes on. Everything runs on 3 users x 4 images of 16 px with
1-step tiny models."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dalle2_md.cli.main import cli
from dalle2_md.cli.options import join_variadic

REPO = Path(__file__).resolve().parents[2]
TINY_CLIP = ["--clip_dim", "16", "--clip_widths", "8,16", "--clip_dim_image", "32"]
TINY_DECODER = ["--dim", "16", "--dim_mults", "1,2", "--attn_heads", "2", "--attn_dim_head", "8",
                "--num_resnet_blocks", "1", "--timesteps", "50", "--sample_timesteps", "4", *TINY_CLIP]
TINY_PRIOR = ["--depth", "1", "--heads", "2", "--dim_head", "8", "--timesteps", "50", "--sample_timesteps", "4"]
QUICK = ["--image_size", "16", "--max_steps", "1", "--batch_size", "4", "--no-progress"]
SAMPLE = ["--sample_steps", "2", "--prior_steps", "2", "--num_samples_per_user", "1", "--device", "cpu"]

TRAIN_ENTRIES = ("train-decoder", "train-prior", "train-clip", "inspect-data")



def invoke(*args):
    return CliRunner().invoke(cli, join_variadic([str(a) for a in args]))


def assert_refused(result, *fragments, run_dir=None):
    """One clear `Error:` line, exit 2, no traceback, nothing left looking finished."""
    out = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}, {result.exception!r}\n{out[-2000:]}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and out.rstrip().endswith(errors[0]), out[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    if run_dir is not None and Path(run_dir).exists():
        assert not list(Path(run_dir).rglob("*_final.pt")), "a failed run left a finished-looking bundle"
    return errors[0]


def assert_ok(result):
    assert result.exit_code == 0, f"exit {result.exit_code}, {result.exception!r}\n{result.output[-3000:]}"
    assert "Traceback" not in result.output
    return result.output


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Good hierarchical and flat data sets, and a trained embedding model, decoder and prior."""
    from dalle2_md.data.synthesize import synthesize_dataset

    root = tmp_path_factory.mktemp("bad")
    synthesize_dataset(root / "good", num_users=3, images_per_user=4, image_size=16, layout="kaggle", progress=False)
    synthesize_dataset(root / "flat", num_users=3, images_per_user=4, image_size=16, layout="flat", progress=False)
    assert_ok(invoke("train-decoder", "--data_root", root / "good", "--output_dir", root / "runs",
                     "--experiment_name", "dec", "--checkpoint_every", 1, *TINY_DECODER, *QUICK))
    run = root / "runs" / "dec"
    assert_ok(invoke("train-prior", "--data_root", root / "good", "--output_dir", root / "runs", "--experiment_name",
                     "pri", "--clip_path", run / "clip_final.pt", "--checkpoint_every", 1, *TINY_PRIOR, *QUICK))
    damaged = root / "damaged"
    damaged.mkdir()
    blob = (run / "decoder_final.pt").read_bytes()
    (damaged / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    ckpt = (run / "decoder" / "checkpoints" / "step_000001.pt").read_bytes()
    (damaged / "truncated_step.pt").write_bytes(ckpt[: len(ckpt) // 3])
    (damaged / "empty.pt").write_bytes(b"")
    (damaged / "notes.pt").write_text("these are my notes, not a model")
    return {
        "root": root, "good": root / "good", "flat": root / "flat", "clip": run / "clip_final.pt",
        "decoder": run / "decoder_final.pt", "prior": root / "runs" / "pri" / "prior_final.pt",
        "clip_ckpt": run / "clip" / "checkpoints" / "step_000001.pt",
        "decoder_ckpt": run / "decoder" / "checkpoints" / "step_000001.pt",
        "prior_ckpt": root / "runs" / "pri" / "prior" / "checkpoints" / "step_000001.pt",
        **{name: damaged / f"{name}.pt" for name in ("truncated", "truncated_step", "empty", "notes")},
    }


# ------------------------------------------------------------------------------------------
# data sets that must be refused


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _metadata(base, tmp, edit):
    root = _copy(base["flat"], tmp / "flat")
    entries = json.loads((root / "metadata.json").read_text())
    text = edit(entries, root)
    (root / "metadata.json").write_text(text if isinstance(text, str) else json.dumps(text))
    return root


def _escape(entries, root):
    # the escaping file exists, so only the path check can stop it
    shutil.copy(root / "images" / entries[0]["filename"], root.parent / "x.png")
    return [{**entries[0], "filename": "../x.png"}] + entries[1:]


def _absolute(entries, root):
    outside = root.parent / "elsewhere.png"
    shutil.copy(root / "images" / entries[0]["filename"], outside)
    return [{**entries[0], "filename": str(outside)}] + entries[1:]


def _empty_user(base, tmp):
    root = _copy(base["good"], tmp / "data")
    (root / "ID_9").mkdir()
    return root


REFUSED_DATA = {
    # name: (build(base, tmp) -> data root, extra flags, fragments the one error line must hold)
    "missing_data_root": (lambda b, t: t / "no_such_folder", [], ["no_such_folder", "does not exist"]),
    "empty_data_root": (lambda b, t: (t / "empty").mkdir() or t / "empty", [], ["empty", "no user folders", "user_0"]),
    "empty_user_folder": (_empty_user, [], ["ID_9", "holds no images", "remove the folder"]),
    "num_users_disagrees": (lambda b, t: b["good"], ["--num_users", "5"], ["num_users=5", "3 users", "--num-users 3"]),
    "metadata_not_json": (lambda b, t: _metadata(b, t, lambda e, r: '[{"filename": "user0_001.png",'),
                          [], ["metadata.json", "not valid JSON"]),
    "metadata_not_a_list": (lambda b, t: _metadata(b, t, lambda e, r: {"images": e}), [], ["metadata.json", "JSON list"]),
    "metadata_empty_list": (lambda b, t: _metadata(b, t, lambda e, r: []), [], ["metadata.json", "lists no images"]),
    "metadata_entry_lacks_field": (lambda b, t: _metadata(b, t, lambda e, r: [{"filename": e[0]["filename"]}] + e[1:]),
                                   [], ["metadata.json, entry 0", "lacks 'filename' or 'user_id'"]),
    "metadata_string_user_id": (lambda b, t: _metadata(b, t, lambda e, r: [{**e[0], "user_id": "0"}] + e[1:]),
                                [], ["metadata.json, entry 0", "must be a JSON integer", "without quotes"]),
    "metadata_missing_file": (lambda b, t: _metadata(b, t, lambda e, r: [{**e[0], "filename": "gone.png"}] + e[1:]),
                              [], ["metadata.json", "gone.png", "do not exist"]),
    "metadata_escapes_root": (lambda b, t: _metadata(b, t, _escape), [], ["../x.png", "outside the data root"]),
    "metadata_absolute_path": (lambda b, t: _metadata(b, t, _absolute), [], ["elsewhere.png", "outside the data root"]),
}


def _data_command(entry, base, root, run_dir, extra):
    if entry == "inspect-data":
        flags = [w.replace("_", "-") if w.startswith("--") else w for w in extra]
        return invoke("inspect-data", root, "--image-size", 16, *flags)
    sizes = {"train-decoder": TINY_DECODER, "train-prior": [*TINY_PRIOR, "--clip_path", base["clip"]],
             "train-clip": TINY_CLIP}[entry]
    return invoke(entry, "--data_root", root, "--output_dir", run_dir.parent, "--experiment_name", run_dir.name,
                  *sizes, *QUICK, *extra)


@pytest.mark.parametrize("entry", TRAIN_ENTRIES)
@pytest.mark.parametrize("case", sorted(REFUSED_DATA))
def test_bad_data_is_refused(base, tmp_path, case, entry):
    build, extra, fragments = REFUSED_DATA[case]
    root = build(base, tmp_path)
    before = _tree_hash(root) if root.exists() else None
    run_dir = tmp_path / "out" / "run"
    assert_refused(_data_command(entry, base, root, run_dir, extra), *fragments, run_dir=run_dir)
    if before is not None:
        assert _tree_hash(root) == before  # a refused data set is never touched


def _tree_hash(root):
    import hashlib

    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------
# data sets that must be accepted (with named, counted skips where a file is unreadable)


def _damage_one(kind):
    def build(base, tmp):
        root = _copy(base["good"], tmp / "data")
        # user ID_1 keeps 2 files: users with < 3 images train on all of them, so the damaged
        # file is in the training split and the training run itself must skip it
        files = sorted((root / "ID_1").glob("*.png"))
        for extra in files[2:]:
            extra.unlink()
        victim = files[1]
        if kind == "truncated":
            raw = victim.read_bytes()
            victim.write_bytes(raw[: len(raw) // 2])
        elif kind == "zero_byte":
            victim.write_bytes(b"")
        else:
            victim.write_text("not an image, despite the name")
        return root, victim

    return build


def _modes(base, tmp):
    root = _copy(base["good"], tmp / "data")
    files = sorted(root.rglob("*.png"))
    rgb = [Image.open(f).convert("RGB") for f in files[:4]]
    rgb[0].convert("RGBA").save(files[0])
    rgb[1].quantize(colors=64).save(files[1])  # palette ("P")
    grey16 = (np.asarray(rgb[2].convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(grey16).save(files[2])  # 16-bit greyscale
    rgb[3].convert("L").save(files[3])
    assert [Image.open(f).mode for f in files[:4]] in (["RGBA", "P", "I;16", "L"], ["RGBA", "P", "I", "L"])
    return root, None


def _mixed_sizes(base, tmp):
    root = _copy(base["good"], tmp / "data")
    files = sorted(root.rglob("*.png"))
    Image.open(files[0]).convert("RGB").resize((40, 24), Image.Resampling.NEAREST).save(files[0])
    Image.open(files[5]).convert("RGB").resize((8, 8), Image.Resampling.NEAREST).save(files[5])
    return root, None


def _gaps(base, tmp):
    root = _copy(base["good"], tmp / "data")
    shutil.rmtree(root / "ID_3")
    (root / "ID_2").rename(root / "ID_7")
    return root, None


ACCEPTED_DATA = {
    # name: (build, images decoded by inspect-data, skipped, user names)
    "truncated_png": (_damage_one("truncated"), 9, 1, ["ID_1", "ID_2", "ID_3"]),
    "zero_byte_file": (_damage_one("zero_byte"), 9, 1, ["ID_1", "ID_2", "ID_3"]),
    "non_image_with_png_name": (_damage_one("text"), 9, 1, ["ID_1", "ID_2", "ID_3"]),
    "rgba_palette_16bit_grey": (_modes, 12, 0, ["ID_1", "ID_2", "ID_3"]),
    "mixed_image_sizes": (_mixed_sizes, 12, 0, ["ID_1", "ID_2", "ID_3"]),
    "non_contiguous_ids": (_gaps, 8, 0, ["ID_1", "ID_7"]),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED_DATA))
def test_odd_but_usable_data_trains(base, tmp_path, case):
    build, decoded, skipped, names = ACCEPTED_DATA[case]
    root, victim = build(base, tmp_path)
    before = _tree_hash(root)

    shown = assert_ok(invoke("inspect-data", root, "--image-size", 16))
    assert f"images:    {decoded} decoded to 1x16x16" in shown
    assert f"skipped:   {skipped}" in shown
    if victim is not None:
        assert str(victim) in shown  # named

    out = tmp_path / "out"
    logs = [
        assert_ok(invoke("train-clip", "--data_root", root, "--output_dir", out, "--experiment_name", "clip",
                         *TINY_CLIP, *QUICK)),
        assert_ok(invoke("train-decoder", "--data_root", root, "--output_dir", out, "--experiment_name", "run",
                         *TINY_DECODER, *QUICK)),
        # no --clip_path: the run folder's own clip_final.pt (written by train-decoder) is used
        assert_ok(invoke("train-prior", "--data_root", root, "--output_dir", out, "--experiment_name", "run",
                         *TINY_PRIOR, *QUICK)),
    ]
    for log in logs:
        if victim is not None:
            assert f"data: skipped 1 unreadable file(s): {victim.name}" in log  # counted and named
        else:
            assert "skipped" not in log
    run = out / "run"
    assert {p.name for p in run.glob("*_final.pt")} == {"clip_final.pt", "decoder_final.pt", "prior_final.pt"}
    assert json.loads((run / "label_map.json").read_text())["names"] == names
    assert _tree_hash(root) == before  # training never writes into the data set
    if case == "non_contiguous_ids":
        # ID_7 is class 1; asked for by its own number it is found and named after its folder
        gen = tmp_path / "gen"
        assert_ok(invoke("generate", "--decoder_path", run / "decoder_final.pt", "--prior_path",
                         run / "prior_final.pt", "--user_ids", "7", "--output_dir", gen, *SAMPLE))
        assert sorted(p.name for p in gen.glob("*.png")) == ["ID_7_000.png", "grid.png"]


# ------------------------------------------------------------------------------------------
# model files, user IDs and flags


def _gen(b, *extra):
    return ["generate", "--decoder_path", b["decoder"], "--prior_path", b["prior"], *SAMPLE, *extra]


def _train(entry, b, *extra):
    sizes = {"train-decoder": TINY_DECODER, "train-prior": [*TINY_PRIOR, "--clip_path", b["clip"]],
             "train-clip": TINY_CLIP}[entry]
    return [entry, "--data_root", b["good"], *sizes, *QUICK, *extra]


REFUSED_ARGS = {
    # name: (argv(base), fragments of the error line)
    "generate_truncated_decoder": (lambda b: _gen(b, "--decoder_path", b["truncated"]), ["truncated.pt", "truncated"]),
    "generate_truncated_prior": (lambda b: _gen(b, "--prior_path", b["truncated"]), ["truncated.pt", "truncated"]),
    "generate_truncated_clip": (lambda b: _gen(b, "--clip_path", b["truncated"]), ["truncated.pt", "retrain"]),
    "generate_truncated_chained_model": (lambda b: ["generate", "--model_path", b["truncated"], *SAMPLE],
                                         ["truncated.pt", "truncated"]),
    "generate_zero_byte_decoder": (lambda b: _gen(b, "--decoder_path", b["empty"]), ["empty.pt", "truncated"]),
    "generate_text_file_as_decoder": (lambda b: _gen(b, "--decoder_path", b["notes"]), ["notes.pt", "not a PyTorch"]),
    "generate_folder_as_decoder": (lambda b: _gen(b, "--decoder_path", b["root"]), ["is a folder"]),
    "generate_missing_decoder": (lambda b: _gen(b, "--decoder_path", b["root"] / "nope.pt"), ["nope.pt", "no such"]),
    "generate_prior_as_decoder": (lambda b: _gen(b, "--decoder_path", b["prior"]),
                                  ["prior_final.pt", "'prior' model", "decoder model is needed"]),
    "generate_decoder_as_prior": (lambda b: _gen(b, "--prior_path", b["decoder"]), ["decoder_final.pt", "prior model"]),
    "generate_decoder_as_clip": (lambda b: _gen(b, "--clip_path", b["decoder"]), ["decoder_final.pt", "clip model"]),
    "generate_checkpoint_as_decoder": (lambda b: _gen(b, "--decoder_path", b["decoder_ckpt"]),
                                       ["step_000001.pt", "'checkpoint' model"]),
    "generate_part_as_chained_model": (lambda b: ["generate", "--model_path", b["decoder"], *SAMPLE],
                                       ["decoder_final.pt", "dalle2 model"]),
    "generate_unknown_user": (lambda b: _gen(b, "--user_ids", "9"), ["unknown user '9'", "ID_1, ID_2, ID_3"]),
    "generate_unknown_interp_user": (lambda b: _gen(b, "--interpolate", "--interp_user_1", "1", "--interp_user_2", "ID_8"),
                                     ["unknown user 'ID_8'"]),
    "interpolate_unknown_user": (lambda b: ["interpolate", "--decoder_path", b["decoder"], "--prior_path", b["prior"],
                                            "--interp_user_1", "42", "--interp_user_2", "1"], ["unknown user '42'"]),
    "generate_batch_size_0": (lambda b: _gen(b, "--batch_size", "0"), ["--batch_size", "at least 1"]),
    "generate_zero_samples": (lambda b: _gen(b, "--num_samples_per_user", "0"), ["--num_samples_per_user", "at least 1"]),
    "generate_unknown_device": (lambda b: _gen(b, "--device", "tpu9"), ["--device 'tpu9'"]),
    "generate_missing_gpu": (lambda b: _gen(b, "--device", "cuda:99"), ["--device cuda:99", "--device cpu"]),
    "train_prior_decoder_as_clip": (lambda b: _train("train-prior", b, "--clip_path", b["decoder"]),
                                    ["decoder_final.pt", "clip model"]),
    "train_prior_truncated_clip": (lambda b: _train("train-prior", b, "--clip_path", b["truncated"]), ["truncated.pt"]),
    "train_decoder_prior_as_clip": (lambda b: _train("train-decoder", b, "--clip_path", b["prior"]),
                                    ["prior_final.pt", "clip model"]),
    "train_decoder_prior_as_vqgan": (lambda b: _train("train-decoder", b, "--clip_path", b["clip"], "--use_vqgan",
                                                      "--vqgan_path", b["prior"]), ["prior_final.pt", "vqgan model"]),
    "train_decoder_resume_clip_checkpoint": (lambda b: _train("train-decoder", b, "--resume", b["clip_ckpt"]),
                                             ["step_000001.pt", "'clip' stage, not of 'decoder'"]),
    "train_decoder_resume_truncated": (lambda b: _train("train-decoder", b, "--resume", b["truncated_step"]),
                                       ["truncated_step.pt", "truncated"]),
    "train_prior_resume_decoder_checkpoint": (lambda b: _train("train-prior", b, "--resume", b["decoder_ckpt"]),
                                              ["'decoder' stage, not of 'prior'"]),
    "train_prior_resume_truncated": (lambda b: _train("train-prior", b, "--resume", b["truncated_step"]),
                                     ["truncated_step.pt"]),
    "train_clip_resume_prior_checkpoint": (lambda b: _train("train-clip", b, "--resume", b["prior_ckpt"]),
                                           ["'prior' stage, not of 'clip'"]),
    "train_decoder_image_size_18": (lambda b: _train("train-decoder", b, "--image_size", "18", "--dim_mults", "1,2,4"),
                                    ["image_size 18", "dim_mults (1, 2, 4)", "16 or 20"]),
    "train_decoder_vqgan_latent_odd": (lambda b: _train("train-decoder", b, "--image_size", "20", "--use_vqgan",
                                                        "--vqgan_layers", "2", "--vqgan_dim", "8"),
                                       ["VQGAN latent is 5 px", "dim_mults"]),
    "train_decoder_batch_size_0": (lambda b: _train("train-decoder", b, "--batch_size", "0"), ["--batch-size"]),
    "train_prior_batch_size_0": (lambda b: _train("train-prior", b, "--batch_size", "0"), ["--batch-size"]),
    "train_clip_batch_size_0": (lambda b: _train("train-clip", b, "--batch_size", "0"), ["--batch-size"]),
    "train_prior_lr_nan": (lambda b: _train("train-prior", b, "--lr", "nan"), ["--lr"]),
    "train_clip_max_steps_0": (lambda b: _train("train-clip", b, "--max_steps", "0"), ["--max-steps", "at least 1"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED_ARGS))
def test_bad_model_file_user_or_flag_is_refused(base, tmp_path, case):
    argv, fragments = REFUSED_ARGS[case]
    words = argv(base)
    out = tmp_path / "out"
    if words[0] == "generate" or words[0] == "interpolate":
        words += ["--output_dir", out]
        assert_refused(invoke(*words), *fragments)
        assert not out.exists() or not list(out.rglob("*.png"))  # no images from a refused run
    else:
        words += ["--output_dir", out, "--experiment_name", "run"]
        assert_refused(invoke(*words), *fragments, run_dir=out)


def test_truncated_latest_checkpoint_names_the_one_before(base, tmp_path):
    out = tmp_path / "out"
    assert_ok(invoke(*_train("train-prior", base, "--max_steps", 2, "--checkpoint_every", 1),
                     "--output_dir", out, "--experiment_name", "run"))
    (out / "run" / "prior_final.pt").unlink()  # as if the run had been stopped before its end
    latest = out / "run" / "prior" / "checkpoints" / "step_000002.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    result = invoke(*_train("train-prior", base, "--max_steps", 4, "--resume", "latest"),
                    "--output_dir", out, "--experiment_name", "run")
    assert_refused(result, "step_000002.pt", "resume from", "step_000001.pt", run_dir=out)


# ------------------------------------------------------------------------------------------
# the seed's scripts, as real subprocesses (what a terminal shows); one per kind of fault, run at once


def _script_cases(b):
    t = b["root"] / "scripts"
    meta_escape = t / "escape"
    if not meta_escape.exists():
        _metadata(b, meta_escape, _escape)
    return {
        "decoder_missing_root": (["train_micro_doppler_decoder.py", "--data_root", t / "nowhere", *QUICK],
                                 2, ["nowhere", "does not exist"]),
        "prior_truncated_clip": (["train_micro_doppler_prior.py", "--data_root", b["good"], "--clip_path", b["truncated"],
                                  *QUICK], 2, ["truncated.pt", "truncated"]),
        "generate_text_as_decoder": (["generate_micro_doppler.py", "--decoder_path", b["notes"], "--prior_path",
                                      b["prior"]], 2, ["notes.pt"]),
        "smoke_test_escaping_metadata": (["test_micro_doppler.py", "--data_root", meta_escape / "flat", "--num_users",
                                          "3", "--image_size", "16"], 1, ["FAIL", "outside the data root"]),
    }


@pytest.fixture(scope="module")
def script_runs(base):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cases = _script_cases(base)
    cwd = base["root"] / "scripts"
    cwd.mkdir(exist_ok=True)
    procs = {}
    for name, (words, _, _) in cases.items():
        where = "--work_dir" if words[0] == "test_micro_doppler.py" else "--output_dir"
        cmd = [sys.executable, str(REPO / words[0]), *map(str, words[1:]), where, str(cwd / "out" / name)]
        procs[name] = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=240)
        done[name] = (proc.returncode, stdout, stderr)
    return cases, done, cwd


@pytest.mark.slow
@pytest.mark.parametrize("case", ["decoder_missing_root", "prior_truncated_clip", "generate_text_as_decoder",
                                  "smoke_test_escaping_metadata"])
def test_seed_scripts_answer_bad_input_without_traceback(script_runs, case):
    cases, done, cwd = script_runs
    _, expected_rc, fragments = cases[case]
    rc, stdout, stderr = done[case]
    both = stdout + stderr
    assert rc == expected_rc, both[-2000:]
    assert "Traceback" not in both
    if expected_rc == 2:
        errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, stderr[-2000:]
        message = errors[0]
    else:
        message = "\n".join(line for line in stdout.splitlines() if line.startswith("FAIL"))
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert not list((cwd / "out").rglob("*_final.pt"))
    assert not list((cwd / "out").rglob("*.png"))
