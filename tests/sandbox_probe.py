"""A workflow that imports a module inside the sandbox, as a finalizer running during an activation
would, and answers which module object it got (tests/test_edge_paths.py)."""
from temporalio import workflow


@workflow.defn
class ImportProbeWorkflow:
    @workflow.run
    async def run(self, module: str) -> str:
        try:
            return str(id(__import__(module, fromlist=("__name__",))))
        except Exception as error:  # noqa: BLE001 - what the sandbox refused is the answer
            return f"{type(error).__name__}: {error}"
