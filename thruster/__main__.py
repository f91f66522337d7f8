import sys

from thruster.cli import main

sys.exit(main())
