"""Decoder training step time on CPU with the U-Net's weights NCHW (PyTorch's default), channels-last
(what `dalle2_md.models.decoder.channels_last_unet` does before a latent decoder trains), and channels-last with the
training step compiled (`TrainConfig.compile`, torch.compile with inductor), at the quality
protocol's two decoder shapes: the 32 px pixel decoder and the 128 px profile's decoder over its
16 x 32 x 32 VQGAN latent (and AdamW's step over that decoder's weights, per-tensor loop vs fused).
Rounds alternate between the arms in one process, so machine load hits
them alike; the ratios are what to read. The compiled arm's first step, which compiles, is timed
on its own (`compile_seconds`): set TORCHINDUCTOR_CACHE_DIR to an empty folder to time a first
compilation, as a fresh machine pays it. `--other_core busy` keeps a second process training the
128 px latent decoder meanwhile, as the quality protocol's second worker does (the two share
caches and memory bandwidth).

    python experiments/bench_memory_format.py [--rounds 3 --steps 8 --out benchmarks/results/bench_memory_format.json]
    python experiments/bench_memory_format.py --other_core busy --out benchmarks/results/bench_memory_format_busy.json
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from dalle2_md.models.compat import decoder_unet  # noqa: E402
from dalle2_md.training.fit import LatentLoss
from dalle2_md.training.fit import latent_decoder_config, user_table_size
from dalle2_md.models.decoder import DecoderConfig, build_decoder  # noqa: E402
from dalle2_md.training.presets import GeneratorBudget  # noqa: E402
from dalle2_md.evaluation.protocol import PROTOCOL_BUDGET  # noqa: E402

NUM_USERS, EMBED_DIM, BATCH = 31, 32, 16


def models(image_size: int, budget: GeneratorBudget):
    """(NCHW training module, channels-last copy, one batch) for the protocol's decoder at this size."""
    config = latent_decoder_config(DecoderConfig(image_size=image_size, channels=1, image_embed_dim=EMBED_DIM,
                                                 **user_table_size(budget.decoder, NUM_USERS)), budget)
    torch.manual_seed(0)
    decoder = build_decoder(config)
    embeds, users = torch.randn(BATCH, EMBED_DIM), torch.randint(0, NUM_USERS, (BATCH,))
    if config.use_vqgan:
        channels, size, _ = decoder.diffused_shape
        module, x = LatentLoss(decoder), torch.randn(BATCH, channels, size, size)
        unet = lambda m: decoder_unet(m.inner.decoder)
    else:
        module, x = decoder, torch.rand(BATCH, 1, image_size, image_size) * 2 - 1
        unet = lambda m: decoder_unet(m.decoder)
    nhwc = copy.deepcopy(module)
    unet(nhwc).to(memory_format=torch.channels_last)
    return module, nhwc, (x, embeds, users)


def seconds_per_step(module, batch, steps: int, first: list | None = None) -> float:
    """Mean seconds of `steps` training steps after one warm-up step (whose time is appended to
    `first` when given)."""
    # fused, as `training.loop.train` builds it
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4, fused=True)
    torch.manual_seed(1)
    start = time.perf_counter()
    for i in range(steps + 1):  # the first step warms up the kernels (and compiles)
        if i == 1:
            if first is not None:
                first.append(time.perf_counter() - start)
            start = time.perf_counter()
        loss = module(*batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return (time.perf_counter() - start) / steps


def optimizer_milliseconds(rounds: int = 30) -> dict:
    """AdamW's step over the 128 px latent decoder's weights: the per-tensor loop (PyTorch's
    default on a CPU) against the fused kernel `training.loop.train` uses."""
    _, module, _ = models(128, GeneratorBudget(vqgan_train_steps=1000))
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    out = {}
    for name, kw in (("loop", {}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(params, lr=1e-4, **kw)
        opt.step()
        start = time.perf_counter()
        for _ in range(rounds):
            opt.step()
        out[name] = 1000 * (time.perf_counter() - start) / rounds
    return out


def keep_busy() -> None:
    """Train the 128 px latent decoder eagerly until killed (the load of `--other_core busy`)."""
    torch.set_num_threads(1)
    _, nhwc, batch = models(128, GeneratorBudget(vqgan_train_steps=1000))
    while True:
        seconds_per_step(nhwc, batch, 8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--other_core", choices=("idle", "busy"), default="idle")
    ap.add_argument("--keep_busy", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="benchmarks/results/bench_memory_format.json")
    args = ap.parse_args()
    if args.keep_busy:
        return keep_busy()
    load = None
    if args.other_core == "busy":
        load = subprocess.Popen([sys.executable, __file__, "--keep_busy"], stdout=subprocess.DEVNULL)
    try:
        rows = measure(args)
        optimizer = optimizer_milliseconds()
    finally:
        if load is not None:
            load.kill()
    print(f"| decoder (batch {BATCH}, 1 thread, other core {args.other_core}) | NCHW s/step | channels-last s/step "
          "| speed-up | loss difference | compiled s/step | compiled vs channels-last | first compiled step s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['decoder']} | {r['best']['nchw']:.3f} | {r['best']['channels_last']:.3f} | "
              f"{r['speedup']:.2f}x | {r['loss_difference']:.1e} | {r['best']['compiled']:.3f} | "
              f"{r['compiled_speedup']:.2f}x | {r['compile_seconds']:.0f} |")
    print(f"AdamW step over the 128 px latent decoder's weights: per-tensor loop {optimizer['loop']:.1f} ms, "
          f"fused {optimizer['fused']:.1f} ms")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rounds": args.rounds, "steps": args.steps, "threads": 1, "other_core": args.other_core,
                               "load_average": os.getloadavg(), "rows": rows, "adamw_step_ms": optimizer}, indent=1))
    print(f"wrote {out}")


def measure(args) -> list[dict]:
    torch.set_num_threads(1)
    shapes = {"32 px pixel decoder": (32, PROTOCOL_BUDGET),
              "128 px decoder over a 16 x 32 x 32 latent": (128, GeneratorBudget(vqgan_train_steps=1000))}
    rows = []
    for name, (size, budget) in shapes.items():
        nchw, nhwc, batch = models(size, budget)
        with torch.no_grad():  # same weights, same input: the layouts compute the same function
            torch.manual_seed(2)
            a = nchw(*batch)
            torch.manual_seed(2)
            b = nhwc(*batch)
        # the compiled arm wraps its own copy: the wrapper shares weights with what it wraps
        arms = {"nchw": nchw, "channels_last": nhwc, "compiled": torch.compile(copy.deepcopy(nhwc))}
        times, compile_seconds = {arm: [] for arm in arms}, []
        for i in range(args.rounds):
            for arm, module in arms.items():
                first = compile_seconds if arm == "compiled" and i == 0 else None
                times[arm].append(seconds_per_step(module, batch, args.steps, first))
        best = {k: min(v) for k, v in times.items()}
        rows.append({"decoder": name, "batch": BATCH, "seconds_per_step": times, "best": best,
                     "speedup": best["nchw"] / best["channels_last"],
                     "compiled_speedup": best["channels_last"] / best["compiled"],
                     "compile_seconds": compile_seconds[0], "loss_difference": abs(float(a - b))})
    return rows


if __name__ == "__main__":
    main()
