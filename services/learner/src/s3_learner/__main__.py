"""``python -m s3_learner --checkpoint-dir DIR ...``"""

from s3_learner.server import main

raise SystemExit(main())
