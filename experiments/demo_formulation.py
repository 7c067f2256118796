"""The README's demo (64 px over the VQGAN latent) under two decoder formulations: eps + P2
(`--prediction eps`, what bundles without the formulation fields are) and v-prediction on a
zero-terminal-SNR schedule with min-SNR-5 weights (`protocol.V_ZSNR_DECODER`, the cascade
profiles' base). Same data, seeds and steps; one demo per formulation and seed, each in its own
folder with its grid and report.

    python experiments/demo_formulation.py --seeds 0 --out benchmarks/results/demo_formulation.json

Prints a table (A_gen / A_real, domain FID / its floor, background-defect rate of the samples and
of the real test images, seconds) and writes it as JSON and markdown.
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from dalle2_md.cli.demo_run import DemoConfig, run_demo  # noqa: E402
from dalle2_md.evaluation.protocol import V_ZSNR_DECODER  # noqa: E402
from dalle2_md.utils import plain_json  # noqa: E402

FORMULATIONS = {
    "eps_p2": dict(prediction="eps", zero_terminal_snr=False, loss_weighting="p2"),
    "v_zsnr_minsnr5": dict(V_ZSNR_DECODER),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--formulations", default=",".join(FORMULATIONS))
    ap.add_argument("--work_dir", default="/tmp/demo_formulation")
    ap.add_argument("--quick", action="store_true", help="the --quick demo's sizes (a smoke run)")
    ap.add_argument("--out", default="benchmarks/results/demo_formulation.json")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    base = DemoConfig.quick() if args.quick else DemoConfig()
    rows = []
    for seed in args.seeds:
        for name in args.formulations.split(","):
            config = replace(base, decoder={**base.decoder, **FORMULATIONS[name]})
            folder = Path(args.work_dir) / f"{name}_seed{seed}"
            done = run_demo(folder, config, seed=seed, progress=False)
            m = done["metrics"]
            rows.append({"formulation": name, "seed": seed, **m, "a_gen_over_a_real": m["a_gen"] / m["a_real"],
                         "fid_over_floor": m["fid"] / m["fid_floor"] if m["fid"] is not None else None,
                         "seconds": sum(done["timings"].values()), "peak_rss_mb": done["peak_rss_mb"],
                         "grid": str(done["grid"])})
            print(json.dumps(plain_json(rows[-1])), flush=True)
    table = ["| formulation | seed | A_gen / A_real | FID / floor | background defects (real test) | seconds |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        fid = f"{r['fid']:.2f} / {r['fid_floor']:.2f}" if r["fid"] is not None else "-"
        table.append(f"| {r['formulation']} | {r['seed']} | {r['a_gen']:.3f} / {r['a_real']:.3f} | {fid} | "
                     f"{r['background_defects']:.2f} ({r['real_background_defects']:.2f}) | {r['seconds']:.0f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(plain_json({"args": vars(args), "rows": rows}), indent=2))
    out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
