import sys

from s3cli.main import main

sys.exit(main())
