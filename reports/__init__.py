"""Report writers: they render a Report and compute nothing."""
