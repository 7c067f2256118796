"""The real-only K-shot recogniser of the 128 px quality profile trained for fewer steps: does
the baseline of the augmentation gain stay as strong? (It does not: this is why the profile's
60-minute cut falls on the K-shot decoders instead; see docs/results.md.)

Same data, K-shot picks, recogniser shape and training settings as `benchmarks/quality.py
--profile full128` (`dalle2_md.evaluation.protocol.profiles()["full128"]`), only the step count
varies. Prints a table and writes JSON. One torch thread; run several invocations side by side to
use more cores.

    python experiments/recogniser_steps_128.py [--steps 2000 2500 --seeds 0 --out benchmarks/results/recogniser_steps_128.json]
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from dalle2_md.augmentation.harness import kshot_indices  # noqa: E402
from dalle2_md.evaluation.protocol import profiles, protocol_data, recogniser_config  # noqa: E402
from dalle2_md.evaluation.recogniser import accuracy, train_recogniser  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[2000, 2500])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--profile", default="full128")
    ap.add_argument("--out", default="benchmarks/results/recogniser_steps_128.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    p = profiles()[args.profile]
    data = protocol_data(p)
    (images, ids), test = data["sets"]["train"], data["sets"]["test"]
    shape = recogniser_config(p)
    rows = []
    for seed in args.seeds:
        idx = kshot_indices(ids, p.k, seed)
        for steps in args.steps:
            start = time.perf_counter()
            rec = train_recogniser(images[idx], ids[idx], num_users=p.num_users, config=shape,
                                   train=replace(p.recogniser_train, seed=seed, steps=steps))
            rows.append({"seed": seed, "steps": steps, "accuracy": accuracy(rec, *test)[0],
                         "seconds": time.perf_counter() - start})
            print(f"seed {seed}, {steps} steps: real-only K = {p.k} accuracy {rows[-1]['accuracy']:.3f} "
                  f"({rows[-1]['seconds']:.0f} s)", flush=True)
    print(f"| seed | steps | real-only K = {p.k} test accuracy |\n|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['steps']} | {r['accuracy']:.3f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"profile": args.profile, "k": p.k, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
