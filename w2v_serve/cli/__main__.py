"""``python -m w2v_serve.cli`` is the ``w2v`` command."""

import sys

from w2v_serve.cli import main

sys.exit(main())
