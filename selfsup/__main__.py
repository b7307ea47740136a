"""`python -m selfsup ...`: the same as the `selfsup` command."""

import sys

from selfsup.cli.main import main

sys.exit(main())
