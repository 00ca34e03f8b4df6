"""gpu-auditor: is self-hosting LLMs on your own GPUs still paying for itself?

The core package: configuration, data model, store, roll-ups, costing and price catalogs.
Nothing here imports `collectors`, `rules` or `reports`; only the composition root
(`auditor.cli`, later `auditor.daemon`) does.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gpu-auditor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
