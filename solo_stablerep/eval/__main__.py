import sys

from solo_stablerep.eval.cli import main

sys.exit(main())
