"""The console script `auditor` (and `python -m auditor`).

It checks that `rules`, `reports` and `collectors` are gpu-auditor's own before anything imports
them (`auditor.installation`), then hands over to the CLI.
"""

from __future__ import annotations

import gc
import os

from auditor.installation import check_or_exit


def one_blas_thread() -> None:
    """Start numpy's OpenBLAS with one thread, unless the user chose a number.

    At import, OpenBLAS starts a thread per core (up to 64), and they spin for a while: a tenth of a
    second of CPU in `auditor demo` on two cores, and up to 64 idle threads in a daemon on a GPU host
    once it has imported numpy (fleet mode, a bill read through Arrow, the digest's chart). Nothing
    here multiplies matrices (numpy sums, sorts and searches, which use no BLAS)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main() -> None:
    check_or_exit()
    one_blas_thread()
    # Imported only now: importing the CLI imports `rules`, `reports` and `collectors`.
    from auditor.cli import main as cli_main

    try:
        cli_main()
    finally:
        # The interpreter's last garbage collections at exit walk every object the command made
        # (SQLAlchemy's and pydantic's classes, a report's rows): 0.1-0.2 s of CPU in `auditor demo`
        # after its work is done. Frozen, they are left to the OS. Files and connections are closed
        # by then, and the atexit handlers (logging's flush among them) still run.
        gc.freeze()


if __name__ == "__main__":
    main()
