"""`python -m light_the_torch install torch<spec> [pip options]` as light-the-torch runs it, in the Slicer twin:
light-the-torch picks the torch build for this computer from the PyTorch index; here that index is out of reach
and the build is the local CPU wheel, torch==2.13.0. The other arguments (the constraints SegVol passes) go to
pip unchanged. A requirement that build does not meet, or another command, fails as light-the-torch would."""

import subprocess
import sys

from packaging.requirements import InvalidRequirement, Requirement

BUILD = "2.13.0"  # the local wheel (pip's find-links)
TAKES_A_VALUE = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url", "-f"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "install":
        print(f"light-the-torch stand-in: only 'install' is known, not {argv[:1]}", file=sys.stderr)
        return 2
    arguments, value_next = [], False
    for argument in argv[1:]:
        if value_next or argument.startswith("-"):
            value_next = argument in TAKES_A_VALUE
            arguments.append(argument)
            continue
        try:
            requirement = Requirement(argument)
        except InvalidRequirement:
            arguments.append(argument)
            continue
        if requirement.name == "torch":
            if not requirement.specifier.contains(BUILD):
                print(f"ERROR: no torch build for this computer satisfies {argument}", file=sys.stderr)
                return 1
            argument = f"torch=={BUILD}"
        arguments.append(argument)
    return subprocess.call([sys.executable, "-m", "pip", "install", *arguments])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
