"""The protocol's all-data generators under other sampling settings: decoder guidance, sampler
and DDIM eta, network evaluations. Per setting: A_gen / A_real, domain FID against its floor and
the kinematic errors, judged exactly as benchmarks/quality.py judges its own samples, from the
generators and reference recogniser a benchmarks/quality.py run left in its work folder (no training).

    python experiments/protocol_sampling.py --work_dir /tmp/dalle2md_quality_full_work
    python experiments/protocol_sampling.py --work_dir W --settings '[{"kind": "two_stage", "cond_scale": 2}]'

Every setting samples the same users with the same seed. One torch thread; times are wall-clock
on whatever else the machine runs.

Kind "true_embeds" splits the chain's shortfall between its stages: the two-stage decoder given
the embeddings of real *train* images of each user (as many as the chain draws, picked with the
sampling seed) instead of the prior's samples. If its FID is near the floor, the prior's draws
are what the chain lacks; if not, the decoder is. Every two-stage row also reports the prior's
within-user spread over that of the real train embeddings (`prior_spread_ratio`).

A two-stage setting's "prior_steps": N swaps in a prior retrained for N steps on the same
embeddings (the protocol's prior budget otherwise; cached as `prior_<N>.pt` in the work folder),
so a longer-trained prior is judged with the same embedding model and decoder.

A setting's "cas": true also trains `evaluate`'s CAS recogniser on as many draws per user as real
train has (the other measures keep the profile's samples per user, the first ones of that draw).
Every row reports KID and the background-defect rate beside FID. Only the generators the settings
name need to be in the work folder (`quality.py --train_only KIND` leaves one).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from dalle2_md.generation.samples import sample_tensors  # noqa: E402
from dalle2_md.evaluation.protocol import kinematic_ratios, profiles, protocol_data, reference_recogniser  # noqa: E402
from dalle2_md.evaluation.report import evaluate_samples  # noqa: E402
from dalle2_md.utils import plain_json  # noqa: E402
from dalle2_md.evaluation.stages import within_user_spread  # noqa: E402
from dalle2_md.models.chain import MicroDopplerDALLE2, sample_keys  # noqa: E402
from dalle2_md.models.embedding import compute_image_embeds  # noqa: E402
from dalle2_md.models.prior import UserConditionedDiffusionPrior  # noqa: E402
from dalle2_md.models.single_stage import SingleStageBaseline  # noqa: E402
from dalle2_md.training.fit import fit_prior_for_clip  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# the protocol's own setting (guidance 3, 15 steps of the default sampler) first, then lower guidance,
# stochastic DDIM and more steps; "guidance_interval": [lo, hi] guides only there (fractions of the schedule)
DEFAULT_SETTINGS = [
    {"kind": "two_stage", "cond_scale": 3.0},
    {"kind": "two_stage", "cond_scale": 2.0},
    {"kind": "two_stage", "cond_scale": 1.5},
    {"kind": "two_stage", "cond_scale": 1.0},
    {"kind": "two_stage", "cond_scale": 2.0, "sampler": "ddim", "eta": 1.0},
    {"kind": "two_stage", "cond_scale": 2.0, "steps": 30},
    {"kind": "baseline", "cond_scale": 3.0},
    {"kind": "baseline", "cond_scale": 2.0},
    {"kind": "baseline", "cond_scale": 1.0},
]


# the work-folder file each setting kind samples from
GENERATOR_FILES = {"two_stage": "two_stage.pt", "true_embeds": "two_stage.pt", "baseline": "baseline.pt"}


def setting_name(s: dict) -> str:
    parts = [s["kind"], f"g{s.get('cond_scale', 3.0):g}"]
    if s.get("sampler"):
        parts.append(f"{s['sampler']}_eta{s.get('eta', 0.0):g}")
    if s.get("steps"):
        parts.append(f"{s['steps']}steps")
    if s.get("guidance_interval"):
        parts.append("interval{:g}-{:g}".format(*s["guidance_interval"]))
    if s.get("prior_steps"):
        parts.append(f"prior{s['prior_steps']}")
    if s.get("sample_start"):
        parts.append(f"start{s['sample_start']:g}")
    if s.get("cas"):
        parts.append("cas")
    return "_".join(parts)


def retrained_prior(model, steps: int, p, work_dir: Path, real_embeds) -> UserConditionedDiffusionPrior:
    """The two-stage generator's prior retrained for `steps` on the real train embeddings (the
    protocol's prior budget and seed otherwise), cached in `work_dir`."""
    path = work_dir / f"prior_{steps}.pt"
    if path.exists():
        return UserConditionedDiffusionPrior.load(path).eval()
    embeds, ids = real_embeds
    log(f"training a prior for {steps} steps -> {path}")
    prior, _ = fit_prior_for_clip(model.clip, None, ids, num_users=p.num_users, embeds=embeds, seed=p.train_seed,
                                  budget=replace(p.budget, prior_train_steps=steps), work_dir=work_dir / f"runs/prior_{steps}")
    prior.save(path, label_map=model.label_map, meta=prior.meta)
    return prior.eval()


def real_embeds_per_user(embeds: torch.Tensor, ids: torch.Tensor, num_users: int, n: int, seed: int):
    """(num_users * n, D) real train embeddings, user-major, n per user drawn without replacement
    (with replacement where a user has fewer than n), reproducible from `seed`."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for u in range(num_users):
        own = torch.nonzero(ids == u).flatten()
        pick = torch.randperm(len(own), generator=g)[:n] if len(own) >= n else torch.randint(len(own), (n,), generator=g)
        rows.append(own[pick])
    return embeds[torch.cat(rows)]


def draw(model, budget, s: dict, p, real_embeds, n: int) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """(images in [-1, 1], user indices, prior spread over real spread or None) for one setting,
    `n` per user."""
    users = list(range(p.num_users))
    ids = torch.tensor([u for u in users for _ in range(n)], dtype=torch.long)
    if s["kind"] == "true_embeds":
        embeds = real_embeds_per_user(*real_embeds, p.num_users, n, p.sample_seed)
        sampling = budget.sampling
        images = model.decode(embeds, cond_scale=sampling.cond_scale, decoder_steps=sampling.decoder_steps,
                              seed=p.sample_seed, keys=sample_keys(model.labels_of(users), n), eta=sampling.eta,
                              sampler=sampling.sampler, colorize=False, user_indices=ids.tolist())
        return images.cpu() * 2.0 - 1.0, ids, None
    images, ids = sample_tensors(model, users, n, seed=p.sample_seed, sampling=budget.sampling)
    if s["kind"] != "two_stage":
        return images, ids, None
    # the same prior draws the chain decoded (same keys and seed), against the real train embeddings' spread
    sampling = budget.sampling
    embeds = model.sample_image_embeds(users, num_samples_per_user=n, prior_cond_scale=sampling.prior_cond_scale,
                                       prior_steps=sampling.prior_steps, seed=p.sample_seed, eta=sampling.eta,
                                       sampler=sampling.sampler)
    return images, ids, within_user_spread(embeds, ids) / within_user_spread(*real_embeds)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work_dir", type=Path, required=True, help="a quality.py work folder (two_stage.pt, baseline.pt, "
                                                                 "recogniser.pt)")
    ap.add_argument("--profile", default="full", help="the quality.py profile that filled it")
    ap.add_argument("--settings", type=json.loads, default=DEFAULT_SETTINGS,
                    help="JSON list of {kind (two_stage, baseline, true_embeds), cond_scale, sampler, eta, steps, "
                         "guidance_interval, prior_steps, sample_start, cas}")
    ap.add_argument("--sample_seed", type=int, default=None,
                    help="sampling seed (default the profile's): other draws of the same settings, for FID's own noise")
    ap.add_argument("--eval_dir", type=Path, default=Path("/tmp/dalle2md_protocol_sampling"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/protocol_sampling.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    p = profiles()[args.profile]
    if args.sample_seed is not None:
        p = replace(p, sample_seed=args.sample_seed)
    unknown = sorted({str(s.get("kind")) for s in args.settings} - set(GENERATOR_FILES))
    if unknown:
        raise SystemExit(f"--settings: unknown kind(s) {unknown}; choose from {sorted(GENERATOR_FILES)}")
    files = sorted({GENERATOR_FILES[s["kind"]] for s in args.settings})
    missing = [f for f in files if not (args.work_dir / f).exists()]
    if missing:
        raise SystemExit(f"{args.work_dir}: no {', '.join(missing)}; run benchmarks/quality.py --profile {args.profile} "
                         f"--work_dir {args.work_dir} first (or --train_only two_stage / baseline).")
    data = protocol_data(p)
    recogniser = reference_recogniser(p, data, args.work_dir)
    loaders = {"two_stage.pt": MicroDopplerDALLE2.load, "baseline.pt": SingleStageBaseline.load}
    loaded = {f: loaders[f](args.work_dir / f).eval() for f in files}
    models = {kind: loaded[f] for kind, f in GENERATOR_FILES.items() if f in loaded}
    train_images, train_ids = data["sets"]["train"]
    real_embeds = ((compute_image_embeds(models["two_stage"].clip, train_images), train_ids)
                   if "two_stage" in models else None)
    cas_per_user = int(torch.bincount(train_ids).max())
    rows = []
    for s in args.settings:
        own = p.budget.sampling  # a setting's missing fields are the protocol's own
        steps = s.get("steps", own.decoder_steps)
        budget = replace(p.budget, sampling=replace(
            own, cond_scale=s.get("cond_scale", own.cond_scale), sampler=s.get("sampler", own.sampler),
            eta=s.get("eta", own.eta), decoder_steps=steps, prior_steps=steps,
            guidance_interval=s.get("guidance_interval", own.guidance_interval)))
        model = models[s["kind"]]
        stored_prior = getattr(model, "prior", None)
        if s.get("prior_steps"):
            if s["kind"] != "two_stage":
                raise SystemExit(f"setting {s}: prior_steps applies to the two-stage generator only")
            model.prior = retrained_prior(model, int(s["prior_steps"]), p, args.work_dir, real_embeds)
        start = time.perf_counter()
        try:
            with model.decoder.sampling_config_for(guidance_interval=budget.sampling.guidance_interval,
                                                   sample_start=s.get("sample_start")):  # true_embeds decodes directly
                n = max(p.samples_per_user, cas_per_user) if s.get("cas") else p.samples_per_user
                images, ids, spread_ratio = draw(model, budget, s, p, real_embeds, n)
        finally:
            if stored_prior is not None:
                model.prior = stored_prior
        seconds = time.perf_counter() - start
        # the profile's samples per user (the first of each user's draws) for every measure but CAS
        judged = torch.cat([torch.nonzero(ids == u).flatten()[:p.samples_per_user] for u in range(p.num_users)])
        m = evaluate_samples(data["sets"]["train"], data["sets"]["test"], (images[judged], ids[judged]),
                             recogniser=recogniser, out_dir=args.eval_dir / setting_name(s), label_map=data["label_map"],
                             colormap="jet", grid_per_user=4, cas=bool(s.get("cas")), cas_generated=(images, ids))
        worst, errs, floors, _ = kinematic_ratios(m)
        fid, floor, matched = m["fid"]["gen_vs_test"], m["fid"]["train_vs_test"], m["fid"]["train_vs_test_matched"]
        cas = m.get("cas", {})
        rows.append({"setting": s, "name": setting_name(s), "A_gen": m["identity"]["A_gen"],
                     "A_real": m["identity"]["A_real"], "A_gen_over_A_real": m["identity"]["A_gen_over_A_real"],
                     "fid": fid, "fid_floor": floor, "fid_over_floor": fid / floor if floor else None,
                     "fid_floor_matched": matched, "fid_over_matched_floor": fid / matched if matched else None,
                     "kinematic_errors": errs, "kinematic_floors": floors, "worst_kinematic_ratio": worst,
                     "kid": m["kid"]["gen_vs_test"], "kid_floor_matched": m["kid"]["train_vs_test_matched"],
                     "kid_over_matched_floor": m["kid"]["ratio"],
                     "background_defects": m["background"]["gen"]["rate"],
                     "real_test_background_defects": m["background"]["real_test"]["rate"],
                     "CAS": cas.get("CAS"), "CAS_over_A_real": cas.get("CAS_over_A_real"),
                     "cas_train_images": cas.get("num_train_images"),
                     "prior_spread_ratio": spread_ratio, "sample_seconds": seconds})
        r = rows[-1]
        log(f"{r['name']}: A_gen/A_real {r['A_gen_over_A_real']:.3f}, FID {fid:.2f} ({r['fid_over_floor']:.1f}x floor, "
            f"{r['fid_over_matched_floor']:.1f}x the size-matched one), "
            f"worst kinematic ratio {worst:.2f}, "
            + (f"KID {r['kid']['mean']:.3g} (floor {r['kid_floor_matched']['mean']:.3g}), " if r["kid"] else "")
            + f"background defects {r['background_defects']:.3f} "
            f"(real test {r['real_test_background_defects']:.3f}), {seconds:.0f}s"
            + (f", CAS {r['CAS']:.3f} ({r['CAS_over_A_real']:.3f} of A_real)" if r["CAS"] is not None else "")
            + (f", prior spread {spread_ratio:.2f} of the real one" if spread_ratio is not None else ""))
        args.out.parent.mkdir(parents=True, exist_ok=True)  # after every setting: a stopped run keeps what it measured
        args.out.write_text(json.dumps(plain_json({"profile": args.profile, "work_dir": str(args.work_dir),
                                                      "samples_per_user": p.samples_per_user, "sample_seed": p.sample_seed,
                                                      "rows": rows}), indent=1))
    print(f"\n{'setting':<40} {'A_gen/A_real':>12} {'FID/floor':>9} {'FID/matched':>11} {'worst kin.':>10}")
    for r in rows:
        print(f"{r['name']:<40} {r['A_gen_over_A_real']:>12.3f} {r['fid_over_floor']:>9.2f} "
              f"{r['fid_over_matched_floor']:>11.2f} {r['worst_kinematic_ratio']:>10.2f}")
    print(f"wrote {args.out}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
