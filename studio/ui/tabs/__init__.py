"""One module per tab, each with TITLE and build(shared)."""
