"""Entry point: `python -m tests.testbed.node_agent --help`."""

from __future__ import annotations

import logging
import sys

from tests.testbed.node_agent.agent import Agent
from tests.testbed.node_agent.settings import parse_args


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    return Agent(parse_args()).run()


if __name__ == "__main__":
    sys.exit(main())
