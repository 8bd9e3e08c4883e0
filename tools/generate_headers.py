"""Regenerate csrc/core/generated/*.h from jaxbatmobile/_src/tables.py (needs e3nn-jax and sympy).

Run from anywhere: python tools/generate_headers.py
"""

import importlib.util
import pathlib

root = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("jbm_tables", root / "jaxbatmobile" / "_src" / "tables.py")
tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tables)

for name, text in tables.render_headers().items():
    path = root / "csrc" / "core" / "generated" / name
    path.write_text(text)
    print("wrote", path.relative_to(root))
