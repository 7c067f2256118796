"""The `check` command (= `test_micro_doppler.py`): every stage a few steps on simulated data or
on your own, one PASS/FAIL line per check (what it runs is cli/selfcheck.py)."""

from __future__ import annotations

import sys

import click

from dalle2_md.cli.options import opt
from dalle2_md.utils import UserError, say


@click.command("check")
@opt("create_dummy", is_flag=True, default=False, help="Check on a simulated data set (not your data).")
@opt("data_root", type=click.Path(path_type=str), default=None, help="Check your own data set instead.")
@opt("num_users", type=int, default=5, help="Users to simulate, or the number expected in --data_root.")
@opt("image_size", type=int, default=None, help="Image side for the check [default: 32 simulated, 64 own data].")
@opt("flat_structure", is_flag=True, default=False, help="Require (or simulate) the flat layout.")
@opt("steps", type=int, default=2, help="Training steps per stage.")
@opt("work_dir", type=click.Path(path_type=str), default=None, help="Keep the check's files here [default: a temporary folder].")
def check_cmd(create_dummy, data_root, num_users, image_size, flat_structure, steps, work_dir):
    """Read every file of the data, run every stage for a few steps and sample once; prints one
    PASS/FAIL line per check and exits 1 if any failed (what test_micro_doppler.py runs). A file
    that cannot be read is skipped, named and counted, as training skips it; it fails nothing."""
    import tempfile

    from dalle2_md.cli.selfcheck import run_checks

    if create_dummy == (data_root is not None):
        raise UserError("give either --create_dummy (simulated data) or --data_root PATH (your data).")
    with tempfile.TemporaryDirectory(prefix="dalle2md-check-") as tmp:
        checks = run_checks(work_dir or tmp, data_root=data_root, num_users=num_users, image_size=image_size,
                            steps=steps, flat_structure=flat_structure)
    say("")
    for c in checks:
        say(f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
    failed = sum(not c.ok for c in checks)
    skipped = sorted({f for c in checks for f in c.skipped})
    listed = ", ".join(skipped[:5]) + (f", ... {len(skipped) - 5} more (named above)" if len(skipped) > 5 else "")
    note = f"; {len(skipped)} unreadable file(s) skipped, as training skips them: {listed}" if skipped else ""
    say(f"{len(checks) - failed}/{len(checks)} checks passed{note}")
    if failed:
        sys.exit(1)


COMMANDS = (check_cmd,)
