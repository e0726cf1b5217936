"""``python -m slmops.serving [--params params.yaml] [--host H] [--port N]``: start the service."""

from __future__ import annotations

import argparse
import logging
import sys

from slmops.offline import apply_offline_defaults

# Set before MLflow, transformers and Great Expectations are imported below.
apply_offline_defaults()

from slmops.serving.app import run  # noqa: E402
from slmops.tasks.core.config import DEFAULT_PARAMS, ConfigError, load_params  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, load the params and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m slmops.serving", description=__doc__)
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="params file (params.yaml)")
    parser.add_argument("--host", help="bind address (default: serve.host)")
    parser.add_argument("--port", type=int, help="port (default: serve.port)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        params = load_params(args.params)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run(params, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
