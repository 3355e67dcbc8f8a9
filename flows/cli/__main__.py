"""``python -m flows.cli``: the same dispatcher as the ``checkout-restore`` console script."""

import sys

from flows.cli import main

sys.exit(main())
