"""What this installation is: its own top-level packages, and the host files it ships.

gpu-auditor installs four top-level packages; three have generic names (`rules`, `reports`,
`collectors`). Another distribution with one of those names (django-rules installs `rules`) in the
same environment replaces ours without a word from pip, and the tool then dies far from the cause.
`foreign_packages` finds that before anything imports them: each of our packages' `__init__.py`
carries `OWNER_MARKER`, and a module that does not is named with the distribution that installed it.

The wheel also ships the systemd unit, the example config and the docs (as package data mapped from
`systemd/` and `docs/`); `host_file` and `doc` find them in an installed wheel or in a checkout, and
`unit_for` writes the unit for this installation (`auditor init`).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "gpu-auditor"
# Present in the `__init__.py` of each package below; nobody else's module says this.
OWNER_MARKER = '__distribution__ = "gpu-auditor"'
OWN_PACKAGES = ("rules", "reports", "collectors")
FIX = (
    "install gpu-auditor in an environment of its own (`pipx install PATH` or `uv tool install PATH`, "
    "PATH a wheel or a checkout; README: Install)"
)

_PACKAGE_ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class ForeignPackage:
    """One of our package names that resolves to someone else's code."""

    name: str
    origin: str  # where Python finds it, or "nowhere"
    owners: tuple[str, ...]  # "name version" of distributions with a top-level package of that name

    def message(self) -> str:
        if self.origin == "nowhere":
            return f"the '{self.name}' package of gpu-auditor is missing; reinstall: {FIX}"
        if not self.owners:
            return f"the '{self.name}' package at {self.origin} is not gpu-auditor's and hides ours; {FIX}"
        names = " and ".join(self.owners)
        uninstall = " ".join(owner.split()[0] for owner in self.owners)
        return (
            f"the '{self.name}' package at {self.origin} belongs to {names}, not gpu-auditor, and hides "
            f"ours; {FIX}, or `pip uninstall {uninstall}` here"
        )


def foreign_packages(names: tuple[str, ...] = OWN_PACKAGES) -> list[ForeignPackage]:
    """Our generic package names that Python would import from elsewhere; [] when all are ours.

    Nothing is imported: the module each name resolves to is found and its `__init__.py` read."""
    foreign = []
    for name in names:
        origin = _origin(name)
        if origin is not None and _is_ours(origin):
            continue
        foreign.append(
            ForeignPackage(
                name=name,
                origin="nowhere" if origin is None else str(origin),
                owners=_other_owners(name),
            )
        )
    return foreign


def _origin(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or spec.origin in {"namespace", "built-in", "frozen"}:
        # A namespace package (a folder without __init__.py) is not ours either: ours have one.
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        return Path(locations[0]) if locations else None
    return Path(spec.origin)


def _is_ours(origin: Path) -> bool:
    if origin.name != "__init__.py":
        return False
    try:
        return OWNER_MARKER in origin.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _other_owners(name: str) -> tuple[str, ...]:
    owners = metadata.packages_distributions().get(name, [])
    others = sorted({o for o in owners if o.lower().replace("_", "-") != DISTRIBUTION})
    return tuple(f"{o} {metadata.version(o)}" for o in others)


def check_or_exit() -> None:
    """At start-up: one line per shadowed package on stderr and exit 1, before anything imports them."""
    found = foreign_packages()
    for package in found:
        print(f"auditor: error: {package.message()}", file=sys.stderr)
    if found:
        sys.exit(1)


def host_file(name: str) -> Path:
    """A file of `systemd/` (the unit, the example config, the env example, install notes)."""
    return _shipped("host_files", "systemd", name)


def doc(name: str) -> Path:
    """A page of `docs/`."""
    return _shipped("docs", "docs", name)


def _shipped(package_dir: str, checkout_dir: str, name: str) -> Path:
    installed = _PACKAGE_ROOT / package_dir / name  # a wheel: auditor/host_files/, auditor/docs/
    if installed.is_file():
        return installed
    checkout = _PACKAGE_ROOT.parent / checkout_dir / name  # an editable install or a source tree
    if checkout.is_file():
        return checkout
    raise FileNotFoundError(f"{name} is not in this installation ({installed}); reinstall gpu-auditor")


def entry_point() -> str:
    """How a unit starts this installation's `auditor`: the script beside this interpreter (a venv, a
    pipx or uv tool environment), else the one on PATH, else `python -m auditor`."""
    script = Path(sys.executable).parent / "auditor"
    if script.is_file():
        return str(script)
    return shutil.which("auditor") or f"{sys.executable} -m auditor"


def unit_for(config_path: Path, env_path: Path, entry: str | None = None) -> str:
    """The shipped unit with this installation's ExecStart, config, secrets file and docs."""
    entry = entry or entry_point()
    values = {
        "ExecStart": f"{entry} daemon --config {config_path}",
        "EnvironmentFile": f"-{env_path}",
        "Documentation": f"file://{doc('host.md')}",
    }
    lines = [f"# Written by `auditor init` for the installation at {entry}."]
    for line in host_file("auditor.service").read_text(encoding="utf-8").splitlines():
        key = line.partition("=")[0]
        lines.append(f"{key}={values[key]}" if key in values and not line.startswith("#") else line)
    return "\n".join(lines) + "\n"


def hidden_from_units(entry: str) -> bool:
    """The unit's ProtectHome=yes hides /home, /root and /run/user: a pipx install there cannot start."""
    return entry.startswith(("/home/", "/root/", "/run/user/"))
