"""Collectors: one module per outside source (NVML, DCGM through PromQL, inference servers'
/metrics, cloud billing, trace replay). Each turns its source into `auditor.model` records."""
