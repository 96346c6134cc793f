"""``python -m s3_retriever --index DIR ...``"""

from s3_retriever.server import main

raise SystemExit(main())
