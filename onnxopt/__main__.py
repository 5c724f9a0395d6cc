"""``python -m onnxopt``."""

import sys

from onnxopt.cli.app import main

sys.exit(main())
