"""``python -m benchmark`` is the ``relaxbench`` command."""

from benchmark.cli import main

raise SystemExit(main())
