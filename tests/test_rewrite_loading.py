"""A malformed rule file is refused when it is loaded, with an error naming the file, the rule
and the offending key — before any graph is touched."""

from __future__ import annotations

import textwrap

import pytest

from graphopt.errors import RuleError
from graphopt.rewrite import load_rule_file, load_rules

GOOD = '''
[rule.remove_copy_again]
description = "_copy(x) == x"
phase = "cleanup"
anchor = "copy"
guards = ["single_consumer(x, copy)"]
compute = []
edits = [{ replace_uses = "copy", by = "x" }]

[rule.remove_copy_again.pattern]
copy = { op = "_copy", inputs = ["x"] }
'''


def write(tmp_path, text: str, name: str = "bad.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_the_good_file_loads(tmp_path):
    (rule,) = load_rule_file(write(tmp_path, GOOD))
    assert rule.name == "remove_copy_again" and rule.anchor_ops == ("_copy",)


BROKEN = [
    # (what the user got wrong, replace this, with that, the key named, words in the message)
    ("a misspelt op", 'op = "_copy"', 'op = "_cpoy"', "pattern.copy.op", "MXNet has no op '_cpoy'"),
    ("the Python alias of an op", 'op = "_copy"', 'op = "identity"', "pattern.copy.op", "'_copy'"),
    ("a slot beyond the op's inputs", 'inputs = ["x"]', 'inputs = ["x", "y"]',
     "pattern.copy.inputs[1]", "slot 1 is out of range: _copy has 1 inputs"),
    ("a guard that is not registered", "single_consumer(x, copy)", "only_child(x, copy)",
     "guards[0]", "no guard named 'only_child'"),
    ("a guard given too many arguments", "single_consumer(x, copy)", "single_consumer(x, copy, x)",
     "guards[0]", "takes 1 to 2 arguments, 3 given"),
    ("a name used before it is bound", "single_consumer(x, copy)", "single_consumer(y, copy)",
     "guards[0]", "'y' is used before it is bound"),
    ("a function that is not registered", "compute = []", 'compute = ["s = magic(x)"]',
     "compute[0]", "no function named 'magic'"),
    ("a computed value used before it is computed", "compute = []",
     'compute = ["w = scale_filters(x, s)"]', "compute[0]", "'s' is used before it is bound"),
    ("a misspelt rule key", "guards =", "guard =", "guard", "unknown key"),
    ("an attribute the op does not have", 'inputs = ["x"] }', 'inputs = ["x"], attrs = { p = 0.5 } }',
     "pattern.copy.attrs.p", "_copy has no attribute 'p'"),
    ("an anchor outside the pattern", 'anchor = "copy"', 'anchor = "x"', "anchor",
     "not a node of the pattern"),
    ("an unknown phase", 'phase = "cleanup"', 'phase = "tidy"', "phase", "unknown phase 'tidy'"),
    ("an unknown edit verb", "replace_uses =", "replace_all =", "edits[0]", "exactly one verb"),
    ("an edit naming an unbound node", 'by = "x"', 'by = "z"', "edits[0].by", "'z' is used before"),
    ("no description", 'description = "_copy(x) == x"', "", "description", "missing required key"),
]


@pytest.mark.parametrize("old, new, key, words", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_a_malformed_rule_is_refused_naming_file_rule_and_key(tmp_path, old, new, key, words):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(RuleError) as error:
        load_rule_file(path)
    assert error.value.file == str(path)
    assert error.value.rule == "remove_copy_again"
    assert error.value.key == key
    assert words in str(error.value)


def test_invalid_toml_names_the_file(tmp_path):
    path = write(tmp_path, "[rule.x\n")
    with pytest.raises(RuleError, match="not valid TOML") as error:
        load_rule_file(path)
    assert error.value.file == str(path)


def test_a_user_rule_may_not_reuse_a_builtin_name(tmp_path):
    write(tmp_path, GOOD.replace("remove_copy_again", "remove_copy"), "mine.toml")
    with pytest.raises(RuleError, match="already used") as error:
        load_rules(rules_dirs=[tmp_path])
    assert error.value.rule == "remove_copy"


def test_a_missing_rules_folder_is_an_error(tmp_path):
    with pytest.raises(RuleError, match="not found"):
        load_rules(rules_dirs=[tmp_path / "nowhere"])
