import sys

from cost_middleware.ops.cli import main

sys.exit(main())
