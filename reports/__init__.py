"""Reports: the monthly finance report, the weekly digest and their delivery."""
