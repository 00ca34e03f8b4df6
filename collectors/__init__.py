"""Collectors: one module per outside source (NVML, DCGM through PromQL, inference servers'
/metrics, cloud billing, trace replay). Each turns its source into `auditor.model` records."""

# Read (not imported) at start-up by auditor.installation: this package is gpu-auditor's.
__distribution__ = "gpu-auditor"
