"""Every built-in rule passes its own test vectors, and a user can add rules from a folder.

The test vectors are tiny graphs written as data in the rule files (rules/*.toml): each is
exported with MXNet, loaded, rewritten with that one rule and run again in MXNet. A rule
passes when the outputs stay within its declared tolerance and it fired (or was refused by the
named guard) as the vector says.
"""

from __future__ import annotations

import textwrap

import pytest

import graphopt
from graphopt.rewrite import list_rules, load_rules, rewrite
from graphopt.rewrite.testvectors import build_vector_graph, run_test_vector

BUILTIN = load_rules()
VECTORS = [pytest.param(rule, vector, id=f"{rule.name}: {vector['name']}")
           for rule in BUILTIN for vector in rule.tests]


@pytest.mark.parametrize("rule, vector", VECTORS)
def test_rule_test_vector(rule, vector):
    result = run_test_vector(rule, vector)
    assert result.ok, "\n".join(result.problems + ["attempts:"] + result.outcomes)


def test_every_builtin_rule_has_test_vectors_and_states_its_identity():
    for rule in BUILTIN:
        assert rule.tests, f"{rule.name} has no test vectors"
        assert "==" in rule.description, f"{rule.name}: the description states the identity"


def test_rules_list_shows_each_rule_with_its_description():
    listed = {rule["name"]: rule for rule in list_rules()}
    fold = listed["fold_batchnorm_into_convolution"]
    assert fold["anchor"] == "BatchNorm" and fold["phase"] == "fold" and fold["default"]
    assert fold["description"].startswith("BatchNorm(Convolution(x, W, b)) ==")
    assert not listed["lower_batchnorm_to_scale_shift"]["default"]  # opt-in: slower in MXNet


USER_RULE = textwrap.dedent('''
    [rule.collapse_double_relu]
    description = "relu(relu(x)) == relu(x)"
    phase = "cleanup"
    tolerance = 0.0
    anchor = "outer"
    edits = [{ replace_uses = "outer", by = "inner" }]

    [rule.collapse_double_relu.pattern]
    outer = { op = "Activation", inputs = ["inner"], attrs = { act_type = "relu" } }
    inner = { op = "Activation", inputs = ["x"], attrs = { act_type = "relu" } }

    [[rule.collapse_double_relu.tests]]
    name = "two relus"
    inputs = { data = [2, 5] }
    nodes = [
        { name = "a", op = "Activation", inputs = ["data"], attrs = { act_type = "relu" } },
        { name = "b", op = "Activation", inputs = ["a"], attrs = { act_type = "relu" } },
    ]
    outputs = ["b"]
    applied = 1
    remaining = { Activation = 1 }
''')


def test_a_user_adds_a_rule_from_a_folder(tmp_path):
    (tmp_path / "mine.toml").write_text(USER_RULE)
    names = [rule["name"] for rule in list_rules(rules_dirs=[tmp_path])]
    assert "collapse_double_relu" in names and "fold_batchnorm_into_convolution" in names

    (user_rule,) = [r for r in load_rules(rules_dirs=[tmp_path]) if r.name == "collapse_double_relu"]
    assert run_test_vector(user_rule, user_rule.tests[0]).ok

    graph = build_vector_graph(user_rule.tests[0], tmp_path)
    new_graph, report = rewrite(graph, rules_dirs=[tmp_path])
    assert report.fired()["collapse_double_relu"] == 1
    assert [n.op for n in new_graph.op_nodes()] == ["Activation"]


@pytest.mark.slow
def test_a_non_editable_install_finds_the_builtin_rules(tmp_path):
    """``pip install .`` (not -e): the rules come from the package graphopt.builtin_rules."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                    "-q", "--target", str(target), str(root)], check=True)
    script = ("from graphopt.rewrite import builtin_rules_dir, list_rules; "
              "print(builtin_rules_dir()); print(len(list_rules()))")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, env={"PYTHONPATH": str(target), "PATH": ""}, check=True)
    folder, count = result.stdout.split()
    assert Path(folder).is_relative_to(target) and Path(folder).name == "builtin_rules"
    assert int(count) == len(BUILTIN)
