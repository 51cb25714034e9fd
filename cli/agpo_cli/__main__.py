"""``python -m agpo_cli`` = ``agpo``."""

import sys

from agpo_cli.main import main

sys.exit(main())
