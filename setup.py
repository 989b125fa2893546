"""Package layout: the library is ``privkit/``; the CLI lives in the top-level ``cli/`` folder and
is installed as the subpackage ``privkit.cli`` (no top-level ``cli`` module in site-packages)."""

from setuptools import find_packages, setup

library = find_packages(include=["privkit", "privkit.*"])
cli = ["privkit.cli" + name[len("cli"):] for name in find_packages(include=["cli", "cli.*"])]
setup(packages=library + cli, package_dir={"privkit.cli": "cli"})
