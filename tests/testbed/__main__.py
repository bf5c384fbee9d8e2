"""Command line of the testbed: `python -m tests.testbed {up,down,status,build,operator-up,operator-down,
images,images-check,images-prune,kueue-up,kueue-down}`."""

from __future__ import annotations

import sys

from tests.testbed import build, cluster, image_checks, images, kueue, layout, operator, provisioner, supervisor


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    if command == "up":
        cluster.up()
    elif command == "down":
        cluster.down()
    elif command == "status":
        return cluster.status()
    elif command == "build":
        build.link_into(build.build_all(), layout.BIN)
    elif command == "operator-up":
        operator.up()
    elif command == "operator-down":
        operator.down()
    elif command == "images":
        for variable, reference in images.ensure().items():
            print(f"{variable}={reference}")
        print(images.disk_usage())
    elif command == "images-check":
        image_checks.check_all(images.ensure())
    elif command == "images-prune":
        images.prune()
    elif command == "kueue-up":
        kueue.up()
    elif command == "kueue-down":
        kueue.down()
    elif command == "supervise":
        return supervisor.run(layout.BIN)
    elif command == "provisioner":
        return provisioner.run(argv[2])
    else:
        print(
            f"unknown command {command!r}: use up, down, status, build, operator-up, operator-down, "
            "images, images-check, images-prune, kueue-up or kueue-down",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
