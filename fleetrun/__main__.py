import sys

from fleetrun.cli import main

sys.exit(main())
