"""``python -m s3_controller --redis-url URL ...``"""

from s3_controller.server import main

raise SystemExit(main())
