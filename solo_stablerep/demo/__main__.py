import sys

from solo_stablerep.demo.cli import main

sys.exit(main())
