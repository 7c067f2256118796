"""Generate micro-Doppler images per user (and interpolation strips) from trained models.

Same as `dalle2-md generate`; every option is listed by `python generate_micro_doppler.py --help`.
"""

from dalle2_md.cli import run_command

if __name__ == "__main__":
    run_command("generate", prog_name="generate_micro_doppler.py")
