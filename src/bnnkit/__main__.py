import sys

from bnnkit.cli import main

sys.exit(main())
