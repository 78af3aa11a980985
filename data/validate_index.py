"""Check an index file and its videos: ``python data/validate_index.py --data_root DIR --index_file FILE``.

The same as ``python -m thematrix.data.validate``; see data/README.md.
"""

import sys

from thematrix.data.validate import main

if __name__ == "__main__":
    sys.exit(main())
