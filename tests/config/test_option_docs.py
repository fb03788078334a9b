"""The docs come from the option table: the README's table must be the one options.py renders."""

from __future__ import annotations

from binserve.options import OPTIONS, options_table

from support import REPO


def test_readme_options_table_is_generated_from_the_declarations() -> None:
    readme = (REPO / "README.md").read_text()
    start = readme.index("<!-- options-table:start -->\n") + len("<!-- options-table:start -->\n")
    end = readme.index("<!-- options-table:end -->")
    assert readme[start:end].strip() == options_table().strip(), "regenerate with binserve --help-options"


def test_every_option_has_help_and_a_scope() -> None:
    for opt in OPTIONS.values():
        assert opt.help and opt.scope in ("master", "worker", "emperor"), opt.name
