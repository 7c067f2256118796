"""Stage 2 of the seed README: train the user-conditioned prior (give --clip_path).

Same as `dalle2-md train-prior`; every option is listed by `python train_micro_doppler_prior.py --help`.
"""

from dalle2_md.cli import run_command

if __name__ == "__main__":
    run_command("train-prior", prog_name="train_micro_doppler_prior.py")
