import sys

from convert._convert import main

sys.exit(main())
