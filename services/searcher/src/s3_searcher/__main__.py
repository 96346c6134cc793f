"""``python -m s3_searcher --retriever ADDR ...``"""

from s3_searcher.server import main

raise SystemExit(main())
