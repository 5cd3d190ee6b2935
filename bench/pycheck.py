"""The peer of `dispatch_runner validate` in benchmarks 3 and 4: the check a user of a Python
task runner would write with pydantic models and networkx. It checks the same things the runner
checks for a batch of `command` tasks (field types, unknown fields, id pattern, duplicate ids,
unknown dependencies, self-dependencies, cycles) and prints the task count, dependency count and
dependency levels, as `dispatch_runner validate` does.

Usage: python pycheck.py BATCH.json   (exit 0 valid, 2 invalid)
"""

import json
import sys
from typing import Literal, Optional

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

TaskId = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")


class CommandInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    argv: list[str] = Field(min_length=1)
    cwd: Optional[str] = None
    env: dict[str, str] = {}
    stdin: Optional[str] = None


class Task(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: str = TaskId
    agent: Literal["command"]
    input_data: CommandInput
    description: str = ""
    dependencies: list[str] = []
    timeout_seconds: Optional[float] = Field(default=None, ge=0.001)
    retries: Optional[int] = Field(default=None, ge=0, le=100)


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_workers: Optional[int] = Field(default=None, ge=1, le=4096)
    timeout_seconds: Optional[float] = Field(default=None, ge=0.001)
    trace_dir: Optional[str] = None
    retries: Optional[int] = Field(default=None, ge=0, le=100)
    fail_fast: Optional[bool] = None


class Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[Task]
    config: Config = Config()


def main(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        batch = Batch.model_validate_json(text)
    except ValidationError as e:
        print(json.dumps({"status": "invalid", "errors": e.errors(include_url=False)}, default=str))
        return 2
    errors = []
    graph = nx.DiGraph()
    for i, t in enumerate(batch.tasks):
        if t.task_id in graph:
            errors.append(f"/tasks/{i}/task_id: duplicate task_id {t.task_id!r}")
        graph.add_node(t.task_id)
    for i, t in enumerate(batch.tasks):
        for j, d in enumerate(t.dependencies):
            if d not in graph:
                errors.append(f"/tasks/{i}/dependencies/{j}: unknown task {d!r}")
            elif d == t.task_id:
                errors.append(f"/tasks/{i}/dependencies/{j}: depends on itself")
            else:
                graph.add_edge(d, t.task_id)
    if not nx.is_directed_acyclic_graph(graph):
        for scc in nx.strongly_connected_components(graph):
            if len(scc) > 1:
                cycle = nx.find_cycle(graph.subgraph(scc))
                errors.append("dependency cycle: " + " -> ".join(u for u, _ in cycle))
    if errors:
        print(json.dumps({"status": "invalid", "errors": errors}))
        return 2
    levels = [sorted(g) for g in nx.topological_generations(graph)]
    print(
        json.dumps(
            {
                "status": "valid",
                "task_count": graph.number_of_nodes(),
                "dependency_count": graph.number_of_edges(),
                "levels": levels,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
