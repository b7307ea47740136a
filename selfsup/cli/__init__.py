"""The `selfsup` command line: `main.py` builds the parser from the command modules beside it.

Importing it imports neither Ray nor DALI nor torch: each command's handler imports what it
needs, and only `train --workers`, `tune`, `submit` and `jobs` reach `selfsup.cluster`.
"""
