"""Commands of the finance report: `report`, `replay`, `demo`."""
