"""Drives `dispatch_runner mcp-server` with the official MCP Python SDK client (tests/mcp_server.rs).

    client.py stdio MARKER -- COMMAND ARGS...     spawn the server, talk over stdin/stdout
    client.py http MARKER URL [TOKEN]             Streamable HTTP

One session runs every scenario in turn and prints one JSON object per scenario on stdout (the
Rust test asserts on them): list the tools, `validate` a bad batch, `dispatch` a small pipeline
with a progress callback, `get_run` and `rerun_failed` of it, a batch over the server's limits, a
task printing the secret $DEMO_API_KEY, then a long `dispatch` cancelled by the client once its
first task has finished. MARKER is the long task's `sleep` duration (a number no other process
uses, e.g. 3600.48213), so the test can look for it in /proc.
"""

import json
import os
import sys

import anyio
from mcp.client.session import ClientSession


def emit(name, **fields):
    print(json.dumps({"scenario": name, **fields}), flush=True)


def structured(result):
    return {
        "is_error": bool(result.is_error),
        "structured": result.structured_content,
        "text": [c.text for c in result.content if getattr(c, "type", "") == "text"],
    }


PIPELINE = {
    "tasks": [
        {"task_id": "make", "agent": "command", "input_data": {"argv": ["echo", "made"]}},
        {"task_id": "left", "agent": "command", "dependencies": ["make"],
         "input_data": {"argv": ["sh", "-c", "echo left-{{tasks.make.output.stdout}}"]}},
        {"task_id": "right", "agent": "command", "dependencies": ["make"],
         "input_data": {"argv": ["sh", "-c", "echo right >&2; exit 3"]}},
        {"task_id": "join", "agent": "command", "dependencies": ["left"],
         "input_data": {"argv": ["echo", "joined"]}},
    ],
    # More than the server allows (the test starts it with --max-workers 2).
    "config": {"max_workers": 8},
}

BAD = {
    "tasks": [
        {"task_id": "a", "agent": "command", "input_data": {"argv": "not a list"}},
        {"task_id": "b", "agent": "command", "dependencies": ["nope"],
         "input_data": {"argv": ["true"]}},
    ]
}


async def scenarios(session, marker):
    init = await session.initialize()
    emit("initialize", server=init.server_info.name, instructions=init.instructions or "")

    tools = await session.list_tools()
    emit("list_tools", tools=[
        {"name": t.name, "description": t.description or "", "input_schema": t.input_schema}
        for t in tools.tools
    ])

    bad = await session.call_tool("validate", {"batch": BAD})
    emit("validate_bad", batch=BAD, **structured(bad))

    # The batch as JSON text: the same bytes the command line would read.
    text = await session.call_tool("validate", {"batch": json.dumps(BAD)})
    emit("validate_text", **structured(text))

    over = await session.call_tool("dispatch", {"batch": {
        "tasks": [{"task_id": "x", "agent": "command", "input_data": {"argv": ["true"]}}],
        "config": {"max_output_bytes": 1048576},
    }})
    emit("over_limit", **structured(over))

    leak = await session.call_tool("dispatch", {"result": "full", "batch": {"tasks": [
        {"task_id": "leak", "agent": "command",
         "input_data": {"argv": ["sh", "-c", "echo key=$DEMO_API_KEY"]}},
    ]}})
    emit("secret", **structured(leak))

    good = await session.call_tool("validate", {"batch": PIPELINE})
    emit("validate_good", **structured(good))

    progress = []

    async def on_progress(value, total, message):
        progress.append({"progress": value, "total": total, "message": message})

    ran = await session.call_tool("dispatch", {"batch": PIPELINE}, progress_callback=on_progress)
    emit("dispatch", progress=progress, **structured(ran))

    run_id = (ran.structured_content or {}).get("run_id")
    got = await session.call_tool("get_run", {"run_id": run_id, "result": "full"})
    emit("get_run", **structured(got))

    rerun = await session.call_tool("rerun_failed", {"run_id": run_id})
    emit("rerun_failed", **structured(rerun))

    long_batch = {
        "tasks": [
            {"task_id": "quick", "agent": "command", "input_data": {"argv": ["true"]}},
            {"task_id": "long", "agent": "command",
             "input_data": {"argv": ["sleep", marker]}, "timeout_seconds": 3600},
        ]
    }
    first = anyio.Event()
    seen = []

    async def on_long_progress(value, total, message):
        seen.append(message)
        first.set()

    outcome = {}

    async def call():
        try:
            outcome["result"] = structured(await session.call_tool(
                "dispatch", {"batch": long_batch}, progress_callback=on_long_progress))
        except Exception as e:  # the call is cancelled: nothing comes back
            outcome["exception"] = repr(e)

    with anyio.move_on_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await first.wait()
            # The long task has started by now (it had no dependency); give it a moment anyway.
            await anyio.sleep(0.5)
            tg.cancel_scope.cancel()
    emit("cancel", progress=seen, **outcome)

    # The session still works after a cancelled call.
    schema = await session.call_tool("schema", {})
    emit("schema", **structured(schema))


async def main():
    mode, marker = sys.argv[1], sys.argv[2]
    if mode == "stdio":
        from mcp.client.stdio import StdioServerParameters, stdio_client

        rest = sys.argv[3:]
        if rest and rest[0] == "--":
            rest = rest[1:]
        env = {"PATH": "/usr/bin:/bin", "DEMO_API_KEY": os.environ.get("DEMO_API_KEY", "")}
        params = StdioServerParameters(command=rest[0], args=rest[1:], env=env)
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await scenarios(session, marker)
    else:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        url = sys.argv[3]
        headers = {"Authorization": f"Bearer {sys.argv[4]}"} if len(sys.argv) > 4 else {}
        timeout = httpx2.Timeout(30.0, read=300.0)
        async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
            async with streamable_http_client(url, http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    await scenarios(session, marker)


anyio.run(main)
