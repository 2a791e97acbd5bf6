"""The README's quick start is the code that examples/quickstart.py runs."""

import re
from pathlib import Path

import pytest

# Needs no Keras backend: runs once per `make test`.
pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parents[1]


def test_quick_start_is_the_example_script():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = (ROOT / "examples" / "quickstart.py").read_text(encoding="utf-8")
    assert block.strip() in script


def test_readme_opens_with_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands == ["make sentiment", "make test"]
