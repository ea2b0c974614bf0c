"""`python -m ops …` is `oracle …`."""

from ops.cli import main

raise SystemExit(main())
