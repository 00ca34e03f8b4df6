"""The console script `auditor` (and `python -m auditor`).

It checks that `rules`, `reports` and `collectors` are gpu-auditor's own before anything imports
them (`auditor.installation`), then hands over to the CLI.
"""

from __future__ import annotations

import os

from auditor.installation import check_or_exit


def one_blas_thread() -> None:
    """Start numpy's OpenBLAS with one thread, unless the user chose a number.

    At import, OpenBLAS starts a thread per core (up to 64), and they spin for a while: a tenth of a
    second of CPU in `auditor demo` on two cores, and 64 threads in a daemon on a GPU host. Nothing
    here multiplies matrices (numpy sums, sorts and searches, which use no BLAS)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main() -> None:
    check_or_exit()
    one_blas_thread()
    # Imported only now: importing the CLI imports `rules`, `reports` and `collectors`.
    from auditor.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
