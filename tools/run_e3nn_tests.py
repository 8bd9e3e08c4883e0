"""Run e3nn-jax's own tests of spherical harmonics and tensor products against jaxbatmobile.e3nn.

The e3nn-jax wheel installs its test suite as the top-level ``tests`` package. This script copies the
relevant files into a temporary directory with a conftest that replaces e3nn-jax's functions by our
adapters before the test modules import them (``e3nn_jax.spherical_harmonics``, ``e3nn_jax.sh``,
``e3nn_jax.tensor_product``, ``e3nn_jax.legacy.FunctionalTensorProduct``), runs pytest twice and prints
the counts:

* ``fallback``: as users get it (what our kernels do not cover runs on e3nn-jax's code);
* ``strict``: ``FALLBACK_TO_E3NN = False``, so a test passes only if everything it calls ran on ours.

Usage: python tools/run_e3nn_tests.py [--out DIR] [pytest args]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

TEST_FILES = (
    "_src/spherical_harmonics/sh_test.py",
    "_src/tensor_products_test.py",
    "_src/legacy/core_tensor_product_test.py",
)

PATCH = '''
import e3nn_jax, e3nn_jax.legacy
import jaxbatmobile.e3nn as jbe

jbe.FALLBACK_TO_E3NN = {fallback}
e3nn_jax.spherical_harmonics = jbe.spherical_harmonics
e3nn_jax.sh = jbe.sh
e3nn_jax.tensor_product = jbe.tensor_product
e3nn_jax.legacy.FunctionalTensorProduct = jbe.FunctionalTensorProduct
'''


def e3nn_tests_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("e3nn_jax")
    site = pathlib.Path(spec.origin).parent.parent
    tests = site / "tests"
    if not (tests / TEST_FILES[0]).exists():
        raise SystemExit(f"e3nn-jax's tests are not installed next to e3nn_jax ({tests})")
    return tests


def run(fallback: bool, pytest_args, log) -> dict:
    src = e3nn_tests_dir()
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp) / "e3nn_tests"
        for rel in TEST_FILES:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / rel, root / rel)
        conftest = (src / "conftest.py").read_text()
        (root / "conftest.py").write_text(PATCH.format(fallback=fallback) + "\n" + conftest)
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf",
                               str(root), *pytest_args], capture_output=True, text=True, cwd=tmp,
                              env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    text = proc.stdout + proc.stderr
    log.write(f"==== fallback={fallback}\n{text}\n")
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", text)}
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="write the full pytest output to OUT/e3nn_tests.log")
    args, pytest_args = parser.parse_known_args()
    out = pathlib.Path(args.out) if args.out else pathlib.Path(tempfile.gettempdir())
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "e3nn_tests.log", "w") as log:
        rows = [(mode, run(mode == "fallback", pytest_args, log)) for mode in ("fallback", "strict")]
    print(f"e3nn-jax's tests ({', '.join(TEST_FILES)}) against jaxbatmobile.e3nn; log: {out / 'e3nn_tests.log'}")
    print("| mode | passed | failed | skipped |")
    print("|---|---|---|---|")
    for mode, c in rows:
        print(f"| {mode} | {c.get('passed', 0)} | {c.get('failed', 0) + c.get('errors', 0) + c.get('error', 0)} "
              f"| {c.get('skipped', 0)} |")


if __name__ == "__main__":
    main()
