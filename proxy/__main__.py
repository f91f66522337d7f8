"""`python -m proxy` is `pyproxy`."""

import sys

from proxy.cli import main

sys.exit(main())
