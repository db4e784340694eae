"""Where a benchmark finds tinygpt's programs: BUILD_DIR is a build tree
(build/cli/tinygpt) or a flat folder of binaries (device-stage/bin/tinygpt)."""
import os


def binary(build_dir, name, subdir):
    flat = os.path.join(build_dir, name)
    return flat if os.path.isfile(flat) else os.path.join(build_dir, subdir, name)
