"""The recorded histories guard the workflow: an extra command on (almost) any branch fails replay.

See tests/replay_mutation.py. The branches left uncaught are listed, with the reason, in
tests/replay_mutation_report.md (`python -m tests.replay_mutation --write tests/replay_mutation_report.md`).
"""
import ast
import textwrap

from tests.replay_mutation import (
    REQUIRED_SHARE,
    WorkflowModule,
    build_set,
    mutation_for,
    run_check,
    workflow_classes,
    workflow_modules,
)


async def test_an_extra_command_on_a_workflow_branch_fails_replay_of_a_recorded_history():
    result = await run_check()
    print(result.summary())
    for outcome in result.uncaught():
        print(f"  uncaught {outcome.branch.where} {outcome.branch.function} ({outcome.branch.kind}): {outcome.why}")
    assert len(result.outcomes) >= 100, "branch enumeration found too few branches in workflows/"
    assert result.share >= REQUIRED_SHARE, (
        f"{result.summary()}: record the release's histories (python -m tests.record_histories --out "
        f"tests/histories/<release>), with a scenario for each new path")


def test_branches_are_found_in_every_construct_and_skip_queries_and_validators(tmp_path):
    source = textwrap.dedent('''
        from temporalio import workflow

        @workflow.defn
        class W:
            @workflow.query
            def status(self):
                if self.x:
                    return 1

            @workflow.run
            async def run(self):
                """doc"""
                if a:
                    x
                elif b:
                    y
                else:
                    z
                for i in c:
                    pass
                else:
                    pass
                try:
                    t
                except E:
                    e
                else:
                    o
                finally:
                    f
                async with l:
                    w
                match m:
                    case 1:
                        one
                    case _:
                        other

            @update.validator
            def check(self, v):
                if v:
                    raise ValueError

            def helper(self):
                while q:
                    r
    ''')
    path = tmp_path / "w.py"
    path.write_text(source)
    branches = WorkflowModule("w", path, source).branches()
    kinds = [(b.function, b.kind, b.text) for b in branches]
    assert kinds == [
        ("W.run", "body of the function", "if a:"),
        ("W.run", "if", "x"), ("W.run", "if", "y"), ("W.run", "else", "z"),
        ("W.run", "for body", "pass"), ("W.run", "loop else", "pass"),
        ("W.run", "try", "t"), ("W.run", "except E", "e"), ("W.run", "try else", "o"), ("W.run", "finally", "f"),
        ("W.run", "with", "w"), ("W.run", "case 1", "one"), ("W.run", "case _", "other"),
        ("W.helper", "body of the function", "while q:"), ("W.helper", "while body", "r"),
    ]
    assert {b.function: b.is_async for b in branches} == {"W.run": True, "W.helper": False}
    assert "await" in ast.unparse(mutation_for(branches[0]))
    assert "await" not in ast.unparse(mutation_for(branches[-1]))


def test_every_workflow_module_is_checked():
    names = {m.module for m in workflow_modules()}
    assert "workflows.order" in names


def test_a_mutated_helper_module_reaches_the_workflow_module_that_imports_it(tmp_path, monkeypatch):
    package = tmp_path / "wfpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def pick(x):\n    if x:\n        return 1\n    return 2\n")
    (package / "flows.py").write_text(textwrap.dedent('''
        from temporalio import workflow
        from wfpkg.helpers import pick

        @workflow.defn
        class Flow:
            @workflow.run
            async def run(self) -> int:
                return pick(True)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = workflow_modules(package)
    assert sorted(m.module for m in modules) == ["wfpkg.flows", "wfpkg.helpers"]
    helpers = next(m for m in modules if m.module == "wfpkg.helpers")
    branch = next(b for b in helpers.branches() if b.kind == "if")
    built = build_set(modules, {"wfpkg.helpers": {branch.index: mutation_for(branch)}}, {"wfpkg.helpers"})
    assert set(built) == {"wfpkg.helpers", "wfpkg.flows"}  # the importer is rebuilt on the mutant
    assert built["wfpkg.flows"].pick is built["wfpkg.helpers"].pick
    assert "__mutation_command__" in built["wfpkg.helpers"].pick.__code__.co_names
    assert [cls.__name__ for cls in workflow_classes(built["wfpkg.flows"])] == ["Flow"]
    import wfpkg.helpers  # the real module is untouched

    assert "__mutation_command__" not in wfpkg.helpers.pick.__code__.co_names
