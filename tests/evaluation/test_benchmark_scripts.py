"""Scripts under benchmarks/ and experiments/ whose figures docs/results.md quotes still run
against today's library (a smoke run each: tiny models, seconds), and every script imports the
installed package only (no sys.path edits, no imports from tests/ or from another script)."""

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # end-to-end runs of whole commands or scripts

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "experiments").glob("*.py"))


def test_scripts_import_the_package_only():
    script_names = {p.stem for p in SCRIPTS}
    test_modules = {p.stem for p in (ROOT / "tests").glob("*.py")}
    for path in SCRIPTS:
        source = path.read_text()
        assert "sys.path" not in source, f"{path.name} edits sys.path"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert top not in script_names, f"{path.name} imports the script {module}"
                assert top not in test_modules and top != "tests", f"{path.name} imports {module} from tests/"


def test_protocol_profiles_and_split():
    from dalle2_md.evaluation.protocol import PROFILE_NAMES, profiles, split

    assert set(profiles()) == set(PROFILE_NAMES)
    parts = split(torch.arange(3).repeat_interleave(10), per_user=10, num_test=2, num_val=3)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [15, 9, 6]
    assert parts["test"][:2].tolist() == [8, 9] and parts["val"][:3].tolist() == [5, 6, 7]


def test_digits_are_ordered_by_class_in_equal_counts_and_repeat_under_a_seed():
    from dalle2_md.evaluation.protocol import digits, split
    from dalle2_md.utils import UserError

    images, labels = digits(30, 16, seed=0)
    assert images.shape == (300, 1, 16, 16) and -1 <= images.min() < images.max() <= 1
    assert torch.equal(labels, torch.arange(10).repeat_interleave(30))  # the order `split` expects
    again, _ = digits(30, 16, seed=0)
    other, _ = digits(30, 16, seed=1)
    assert torch.equal(images, again) and not torch.equal(images, other)
    assert labels[split(labels, 30, 5, 5)["test"]].bincount().tolist() == [5] * 10
    with pytest.raises(UserError, match="at most"):
        digits(500, 16, seed=0)


def test_latent_vs_pixel_smoke_trains_every_arm_within_the_pixel_arms_time(tmp_path):
    out = tmp_path / "lvp.json"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/latent_vs_pixel.py"), "--smoke",
                           "--work_dir", str(tmp_path / "work"), "--out", str(out), "--eval_dir", str(tmp_path / "eval")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["arm"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"pixel U-Net", "latent U-Net (f = 4)", "latent DiT (f = 4)"}
    pixel_seconds = rows["pixel U-Net"]["seconds"]["decoder"]
    for name in ("latent U-Net (f = 4)", "latent DiT (f = 4)"):
        row = rows[name]
        assert row["seconds"]["vqgan"] > 0 and row["steps"]["decoder"] > 0
        assert row["budget"]["decoder_seconds"] == pixel_seconds  # equal compute: the pixel arm's seconds
        assert 0 <= row["a_gen_over_a_real"]


def test_demo_formulation_smoke_trains_each_formulation_as_asked(tmp_path):
    """experiments/demo_formulation.py --quick: one demo per formulation, each decoder bundle
    trained under the formulation its row names, every measure in the table."""
    out = tmp_path / "df.json"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/demo_formulation.py"), "--quick",
                           "--work_dir", str(tmp_path / "work"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["formulation"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"eps_p2", "v_zsnr_minsnr5"}
    for name, prediction in (("eps_p2", "eps"), ("v_zsnr_minsnr5", "v")):
        config = torch.load(tmp_path / "work" / f"{name}_seed0" / "run" / "decoder_final.pt", weights_only=True)["config"]
        assert (config["prediction"], config["zero_terminal_snr"]) == (prediction, prediction == "v")
        assert 0 <= rows[name]["a_gen"] <= 1 and 0 <= rows[name]["background_defects"] <= 1
    assert out.with_suffix(".md").is_file()


def test_quality_latent_profile_runs_and_finds_kshot_generators_another_process_trained(tmp_path):
    """The 128 px profile's path at smoke size: both all-data generators over a VQGAN latent, and
    `--train_only kshot` (the second process of a 2-core run) fills the cache the augmentation
    phase then takes its K-shot generator from."""
    from dalle2_md.models.single_stage import SingleStageBaseline

    script, cache, work = str(ROOT / "benchmarks/quality.py"), tmp_path / "cache", tmp_path / "work"
    common = ["--profile", "smoke_latent", "--work_dir", str(work), "--generator_cache", str(cache)]
    first = subprocess.run([sys.executable, script, *common, "--train_only", "kshot"], capture_output=True, text=True,
                           timeout=600, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(list(cache.glob("two_stage_seed0_*.pt"))) >= 1
    out = tmp_path / "q.json"
    proc = subprocess.run([sys.executable, script, *common, "--out", str(out), "--page", str(tmp_path / "q.md"),
                           "--eval_dir", str(tmp_path / "eval")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["augmentation"]["per_seed"][0]["generator_seconds"] == {}  # found, not retrained
    assert {"vqgan", "decoder"} <= set(result["generators"]["baseline"]["seconds"])
    assert {"vqgan", "decoder", "clip", "prior"} <= set(result["generators"]["two_stage"]["seconds"])
    assert SingleStageBaseline.load(work / "baseline.pt").config.use_vqgan
    for kind in ("two_stage", "baseline"):
        assert 0 <= result["metrics"][kind]["identity"]["A_gen"] <= 1
    # --budget changes the all-data generators' training: another cache entry, left in the work folder too
    other = tmp_path / "work_cosine"
    before = set(cache.glob("baseline_seed0_*.pt"))
    proc = subprocess.run([sys.executable, script, "--profile", "smoke_latent", "--work_dir", str(other),
                           "--generator_cache", str(cache), "--train_only", "baseline",
                           "--budget", json.dumps({"decoder_lr_schedule": "cosine"})],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(set(cache.glob("baseline_seed0_*.pt")) - before) == 1
    assert SingleStageBaseline.load(other / "baseline.pt").config.use_vqgan
    # experiments/protocol_sampling.py re-judges those generators under other sampling settings, no training;
    # at the protocol's own setting it reproduces the protocol's A_gen
    settings = [{"kind": "two_stage", "cond_scale": 3.0}, {"kind": "baseline", "cond_scale": 1.0,
                                                            "guidance_interval": [0.1, 0.9], "sample_start": 1.0},
                {"kind": "true_embeds", "cond_scale": 3.0}, {"kind": "two_stage", "cond_scale": 3.0, "prior_steps": 40}]
    sweep = tmp_path / "ps.json"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/protocol_sampling.py"), "--profile", "smoke_latent",
                           "--work_dir", str(work), "--settings", json.dumps(settings), "--out", str(sweep),
                           "--eval_dir", str(tmp_path / "ps_eval")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(sweep.read_text())["rows"]
    assert [r["name"] for r in rows] == ["two_stage_g3", "baseline_g1_interval0.1-0.9_start1", "true_embeds_g3",
                                         "two_stage_g3_prior40"]
    assert rows[0]["A_gen"] == result["metrics"]["two_stage"]["identity"]["A_gen"]
    # the chain's prior draws have a spread; the other kinds draw no embeddings from a prior
    assert rows[0]["prior_spread_ratio"] > 0 and rows[1]["prior_spread_ratio"] is None
    assert rows[2]["prior_spread_ratio"] is None and 0 <= rows[2]["A_gen"] <= 1 and rows[2]["fid"] > 0
    # a prior retrained with the protocol's own budget (40 steps here) and seed is the protocol's prior
    assert (work / "prior_40.pt").exists()
    assert rows[3]["A_gen"] == rows[0]["A_gen"] and rows[3]["prior_spread_ratio"] == rows[0]["prior_spread_ratio"]
    # every row has KID and the background-defect rate; CAS only where a setting asks for it
    assert all(r["kid"] is not None and 0 <= r["background_defects"] <= 1 for r in rows)
    assert all(r["CAS"] is None for r in rows)
    # a folder holding only the single-stage generator judges it, and CAS trains on as many draws
    # per user as real train has (the other measures keep the profile's samples per user)
    cas_sweep = tmp_path / "ps_cas.json"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/protocol_sampling.py"), "--profile", "smoke_latent",
                           "--work_dir", str(other), "--settings", json.dumps([{"kind": "baseline", "cas": True}]),
                           "--out", str(cas_sweep), "--eval_dir", str(tmp_path / "ps_cas_eval")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row, = json.loads(cas_sweep.read_text())["rows"]
    metrics = json.loads((tmp_path / "ps_cas_eval" / row["name"] / "metrics.json").read_text())
    assert row["name"].endswith("_cas") and 0 <= row["CAS"] <= 1
    assert row["cas_train_images"] == metrics["counts"]["real_train"] > metrics["counts"]["generated"]
    # a setting that names a generator the folder lacks is refused before anything runs
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/protocol_sampling.py"), "--profile", "smoke_latent",
                           "--work_dir", str(other), "--settings", json.dumps([{"kind": "two_stage"}]),
                           "--out", str(tmp_path / "none.json")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode != 0 and "two_stage.pt" in proc.stderr and "Traceback" not in proc.stderr


def test_quality_with_two_workers_trains_nothing_twice(tmp_path):
    """`--workers 2`: a helper process trains the single-stage generator and K-shot repetitions
    beside the main one; every generator and every repetition is made by exactly one of them."""
    out, work = tmp_path / "q.json", tmp_path / "work"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/quality.py"), "--profile", "smoke_latent",
                           "--workers", "2", "--work_dir", str(work), "--out", str(out), "--page", str(tmp_path / "q.md"),
                           "--eval_dir", str(tmp_path / "eval")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [(r["lane"], r["returncode"]) for r in result["lanes"]] == [(1, 0)]
    lane_log = (work / "lane_1.log").read_text()
    assert "lane 1: done" in lane_log
    # one "[augment] seed 0" line per generator kind, whichever process ran it
    runs = [line for line in (proc.stdout + lane_log).splitlines() if "[augment] seed 0" in line]
    assert len(runs) == 2, runs
    assert result["augmentation"]["seeds"] == [0] and result["augmentation_baseline"]["seeds"] == [0]
    cache = work / "generator_cache"
    # each generator file once (two-stage ones also under their image-model name), one VQGAN per data set
    assert len(list(cache.glob("baseline_seed0_*.pt"))) == 2  # all data and K-shot
    assert len(list(cache.glob("two_stage_seed0_image_model_*.pt"))) == 2
    assert len(list((cache / "vqgan").glob("vqgan_*.pt"))) == 2
    assert not list(work.rglob("*.lock"))


def test_search_augment_smoke_selects_on_validation(tmp_path):
    out = tmp_path / "search.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/search_augment.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    names = [r["setting"] for r in result["rows"]]
    # the default first, each physics augmentation alone at two ranges, then combinations of the best
    assert names[0] == "default" and len([n for n in names[1:] if "+" not in n]) == 10
    assert any("+" in n for n in names) and result["selected_on"] == "val"
    assert result["best"]["mean"] == max(r["mean"] for r in result["rows"])
    assert all(set(r["per_k"]) == {"2", "all"} for r in result["rows"])
    assert "**best**" in out.with_suffix(".md").read_text()


AUGMENT_SMOKE = ["--k", "2", "--image_size", "16", "--per_user", "12", "--num_test", "2", "--clip_train_steps", "2",
                 "--decoder_train_steps", "2", "--prior_train_steps", "2", "--sample_steps", "2", "--recogniser_steps", "3"]


def _augment_ablation(*args):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks/augment_ablation.py"), *AUGMENT_SMOKE, *map(str, args)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_augment_ablation_runs_on_both_data_sets_and_merges_single_seed_runs(tmp_path):
    """benchmarks/augment_ablation.py (most gain rows of docs/results.md) at smoke size: gait31, and the
    held-out digits one seed per process, merged into one table of both seeds."""
    proc = _augment_ablation("--seeds", 0, "--recipes", "sdedit_nf,sdedit_kin,respeckle,prior_rs", "--cas",
                             "--out", tmp_path / "g.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    gait = json.loads((tmp_path / "g.json").read_text())
    assert set(gait["recipes"]) == {"sdedit_nf", "sdedit_kin", "respeckle", "prior_rs"}
    # 3 K prior samples and 3 K re-speckled copies per user, K = 2, 31 users
    assert gait["per_seed"][0]["recipes"]["prior_rs"]["num_generated"] == 31 * 12
    table = (tmp_path / "g.md").read_text()
    assert "gait31 at 16 px" in table and "| prior_rs | prior | 3 | 0 | none | 3 + 3 re-speckled |" in table
    for name, r in gait["recipes"].items():  # a share of each recipe's own drawn images, and of the real test images
        assert 0 <= r["background_defects"]["mean"] <= 1, name
    assert 0 <= gait["real_test_background_defects"]["mean"] <= 1 and "real test images: " in table
    # CAS for the generator's recipes only: the re-speckled copies are no generated data
    assert {name for name, r in gait["recipes"].items() if 0 <= r.get("cas", {}).get("mean", -1) <= 1} == \
        {"sdedit_nf", "sdedit_kin", "prior_rs"}
    for seed in (0, 1):
        proc = _augment_ablation("--data", "digits", "--seeds", seed, "--recipes", "sdedit_nf,no_filter",
                                 "--out", tmp_path / f"d{seed}.json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "digits 16 px: 10 users, train 100, test 20" in proc.stdout
    merged = tmp_path / "d.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/augment_ablation.py"), "--merge", tmp_path / "d0.json",
                           tmp_path / "d1.json", "--out", merged], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(merged.read_text())
    assert result["seeds"] == [0, 1] and set(result["recipes"]) == {"sdedit_nf", "no_filter"}
    for name, r in result["recipes"].items():
        per_seed = [row["recipes"][name]["gain_points"] for row in result["per_seed"]]
        assert r["gain_points"]["mean"] == pytest.approx(sum(per_seed) / 2)
    assert "digits at 16 px, seeds [0, 1]" in merged.with_suffix(".md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--data", "digits", "--recipes", "sdedit_kin"], "sdedit_kin filter by spectrogram kinematics"),
    (["--recipes", "sdedit_nf,nonsense"], "unknown nonsense"),
])
def test_augment_ablation_refuses_what_cannot_run_in_one_line(tmp_path, args, message):
    proc = _augment_ablation(*args, "--out", tmp_path / "x.json")
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr


def test_latent_washout_diagnoses_a_latent_demo_and_refuses_a_pixel_one(tmp_path):
    """experiments/latent_washout.py on a quick latent demo: every rate a share, one z-score per
    latent channel; a pixel demo is refused in one line."""
    from click.testing import CliRunner

    from dalle2_md.cli.main import cli

    for name, extra in (("latent", ["--vqgan_steps", "3"]), ("pixel", [])):
        result = CliRunner().invoke(cli, ["demo", "--quick", "--image_size", "32", *extra, "--output_dir",
                                          str(tmp_path / name), "--no-progress"])
        assert result.exit_code == 0, result.output
    out = tmp_path / "w.json"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/latent_washout.py"), "--demo", str(tmp_path / "latent"),
                           "--per_user", "2", "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("real_test", "vqgan_reconstruction_train", "vqgan_reconstruction_test", "sample_defects"):
        assert 0 <= result[key] <= 1
    assert result["samples"] == 2 * 3
    for z in (result["z_others_abs"], result["z_washed_out"]):  # one per channel of the latent, None for no sample
        assert z is None or (len(z) == result["latent_channels"] > 0 and all(map(math.isfinite, z)))
    assert result["z_others_abs"] is not None or result["z_washed_out"] is not None
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/latent_washout.py"), "--demo", str(tmp_path / "pixel")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode != 0 and "pixel decoder" in proc.stderr and "Traceback" not in proc.stderr
