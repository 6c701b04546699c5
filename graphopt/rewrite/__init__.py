"""The declarative rule engine: rules are data files, guards and tensor math are registered
Python functions, and every rewrite is validated locally and undone if it does not hold.

    from graphopt.rewrite import rewrite, format_report
    new_graph, report = rewrite(graph)                 # built-in rules, default phases
    print(format_report(report, explain=True))         # what fired, and why the rest did not

Layout: ``rules`` (format and strict loader), ``registry`` (guards and functions by name),
``guards`` and ``tensor_math`` (the built-in ones), ``match`` (patterns), ``edits`` (the edit
verbs), ``validate`` (local validation), ``engine`` (worklist and phases), ``report``,
``numeric`` (running a graph in MXNet), ``testvectors`` (the rules' own test graphs). The
built-in rule files live in the top-level ``rules/`` folder (package ``graphopt.builtin_rules``).
"""

from graphopt.rewrite import guards as _guards  # noqa: F401  (registers the built-in guards)
from graphopt.rewrite import tensor_math as _tensor_math  # noqa: F401  (and the functions)
from graphopt.rewrite.engine import list_rules, rewrite
from graphopt.rewrite.match import Ref
from graphopt.rewrite.registry import (FUNCTIONS, GUARDS, NoRewrite, register_context_factory,
                                       register_function, register_guard, rewrite_context)
from graphopt.rewrite.report import Attempt, Report, format_report
from graphopt.rewrite.rules import (DEFAULT_PHASES, PHASES, Rule, builtin_rules_dir,
                                    load_rule_file, load_rules)

__all__ = ["rewrite", "list_rules", "format_report", "Report", "Attempt", "Rule", "Ref",
           "load_rules", "load_rule_file", "builtin_rules_dir", "register_guard",
           "register_function", "NoRewrite", "rewrite_context", "register_context_factory", "GUARDS", "FUNCTIONS", "PHASES", "DEFAULT_PHASES"]
