"""Stage 1 of the seed README: train the embedding model and the decoder.

Same as `dalle2-md train-decoder`; every option is listed by `python train_micro_doppler_decoder.py --help`.
"""

from dalle2_md.cli import run_command

if __name__ == "__main__":
    run_command("train-decoder", prog_name="train_micro_doppler_decoder.py")
