import sys

from wsseg_fast.cli import main

sys.exit(main())
