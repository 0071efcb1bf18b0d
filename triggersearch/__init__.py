"""triggersearch package."""
