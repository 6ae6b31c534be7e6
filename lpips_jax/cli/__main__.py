"""``python -m lpips_jax.cli``: the ``lpips-jax`` command."""

import sys

from lpips_jax.cli import main

sys.exit(main())
