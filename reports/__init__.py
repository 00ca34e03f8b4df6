"""Reports: the monthly finance report, the weekly digest and their delivery."""

# Read (not imported) at start-up by auditor.installation: this package is gpu-auditor's.
__distribution__ = "gpu-auditor"
