"""CLI command groups, one module each; every module has `add(subparsers)`.

Each command calls the same functions in studio/ that the matching UI tab calls.
"""
