"""``python -m s3_generator``: see :mod:`s3_generator.server`."""

from s3_generator.server import main

raise SystemExit(main())
