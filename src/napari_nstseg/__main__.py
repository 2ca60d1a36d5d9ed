"""`python -m napari_nstseg ...` is the `nstseg` command (cli.main) under a chosen interpreter:
how `nstseg reproduce` runs a recipe's `nstseg` steps."""

import sys

from napari_nstseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
