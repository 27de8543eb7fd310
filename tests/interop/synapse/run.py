"""Runs Synapse for the interop test (tests/it/synapse/) until the test process is gone.

Usage: run.py <dir>. <dir> holds homeserver.yaml and log.yaml (made from the templates next to
this file by the harness) and the certificates. Synapse runs in this process; a thread reads
standard input, a pipe from the test process, and when it closes (the test binary exited,
however it ended: passed, failed, panicked or killed) the directory is removed and the
process exits. The harness shares one Synapse between the tests of a run, so nothing in Rust
could drop it; this is what stops it.
"""

import os
import shutil
import sys
import threading


def watch_parent(directory: str) -> None:
    # read() returns at end of file: the test process closed the pipe or exited.
    sys.stdin.buffer.read()
    if not os.environ.get("SYNAPSE_KEEP_DIR"):
        shutil.rmtree(directory, ignore_errors=True)
    os._exit(0)


def main() -> None:
    directory = sys.argv[1]
    threading.Thread(target=watch_parent, args=(directory,), daemon=True).start()
    from synapse.app import homeserver

    sys.argv = [
        "synapse",
        "--config-path",
        os.path.join(directory, "homeserver.yaml"),
    ]
    homeserver.main()


if __name__ == "__main__":
    main()
