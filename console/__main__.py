"""`python -m console …` is `oracle …`."""

from console.cli import main

raise SystemExit(main())
