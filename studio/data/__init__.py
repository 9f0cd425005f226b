"""The data engine: read (io), detect and convert (formats), render and split (render)."""
