"""The README's Python examples run as written (in order, one namespace, as a reader pastes them)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples():
    assert len(_examples()) >= 1


def test_readme_examples_run():
    namespace: dict = {}
    for i, code in enumerate(_examples()):
        try:
            exec(compile(code, f"README.md python example {i + 1}", "exec"), namespace)
        except Exception as e:  # name the example, keep the traceback
            pytest.fail(f"README python example {i + 1} raised {type(e).__name__}: {e}\n---\n{code}")
