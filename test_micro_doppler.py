"""Smoke-test the installation (--create_dummy) or your data set (--data_root): every stage a few steps, one sample.

Same as `dalle2-md check`; every option is listed by `python test_micro_doppler.py --help`.
"""

from dalle2_md.cli import run_command

if __name__ == "__main__":
    run_command("check", prog_name="test_micro_doppler.py")
