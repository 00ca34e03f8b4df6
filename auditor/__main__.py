"""The console script `auditor` (and `python -m auditor`).

It checks that `rules`, `reports` and `collectors` are gpu-auditor's own before anything imports
them (`auditor.installation`), then hands over to the CLI.
"""

from __future__ import annotations

from auditor.installation import check_or_exit


def main() -> None:
    check_or_exit()
    # Imported only now: importing the CLI imports `rules`, `reports` and `collectors`.
    from auditor.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
