"""An MCP client on the 2025-11-25 revision (the official Python SDK, mcp 1.x: `initialize`,
`Mcp-Session-Id`, `elicitation/create`), driven by tests/tests/integration/mcp.rs:
`legacy.py URL TOKEN SCENARIO [ARG]` prints one JSON object with what the client saw. With
SCENARIO `stdio`, URL is the path of the `airlock` binary and the client talks to
`airlock mcp --server SERVER` over stdio (ARG: {"server": ..., "calls": [...]})."""

import json
import sys

import anyio
import mcp.types as types
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client

URL, TOKEN, SCENARIO = sys.argv[1], sys.argv[2], sys.argv[3]
ARG = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
seen = {"progress": [], "asked": []}
INFO = types.Implementation(name="airlock-tests-legacy", version="1")


def dump(result):
    return {
        "is_error": bool(result.isError),
        "text": "".join(c.text for c in result.content if getattr(c, "type", "") == "text"),
        "structured": result.structuredContent,
    }


def answering(action):
    if action is None:
        return None

    async def callback(context, params):
        seen["asked"].append(params.message)
        return types.ElicitResult(action=action, content={} if action == "accept" else None)

    return callback


async def progress(p, total, message):
    seen["progress"].append({"progress": p, "message": message})


async def calls(session, out):
    init = await session.initialize()
    out["protocol"] = init.protocolVersion
    out["server"] = init.serverInfo.name
    tools = await session.list_tools()
    out["tools"] = [
        {
            "name": t.name,
            "schema": t.inputSchema,
            "read_only": t.annotations.readOnlyHint if t.annotations else None,
            "destructive": t.annotations.destructiveHint if t.annotations else None,
        }
        for t in tools.tools
    ]
    out["results"] = []
    for c in ARG.get("calls", []):
        r = await session.call_tool(c["tool"], c["args"], progress_callback=progress)
        out["results"].append(dump(r))


async def main():
    out = {}
    if SCENARIO == "calls":
        # ARG: {"answer": "accept"|"decline"|null, "calls": [{"tool", "args"}, ...]}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with streamablehttp_client(URL, headers=headers, sse_read_timeout=180) as (r, w, sid):
            async with ClientSession(r, w, elicitation_callback=answering(ARG.get("answer")), client_info=INFO) as s:
                await calls(s, out)
                out["session_id"] = sid()
    elif SCENARIO == "cancel":
        # ARG: {"tool", "args", "answer", "after"}: send notifications/cancelled after that long.
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with streamablehttp_client(URL, headers=headers, sse_read_timeout=180) as (r, w, _):
            async with ClientSession(r, w, elicitation_callback=answering(ARG.get("answer")), client_info=INFO) as s:
                await s.initialize()
                request_id = s._request_id  # the id the next request gets
                with anyio.move_on_after(ARG["after"]) as scope:
                    await s.call_tool(ARG["tool"], ARG["args"])
                out["cancelled"] = scope.cancelled_caught
                await s.send_notification(
                    types.ClientNotification(
                        types.CancelledNotification(
                            params=types.CancelledNotificationParams(requestId=request_id, reason="the test cancels")
                        )
                    )
                )
                await anyio.sleep(1)
    elif SCENARIO == "stdio":
        # URL is the airlock binary; the bridge gets the token from AIRLOCK_TOKEN.
        params = StdioServerParameters(
            command=URL,
            args=["mcp", "--server", ARG["server"]],
            env={"AIRLOCK_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"},
        )
        async with stdio_client(params) as (r, w):
            async with ClientSession(r, w, elicitation_callback=answering(ARG.get("answer")), client_info=INFO) as s:
                await calls(s, out)
    else:
        raise SystemExit(f"unknown scenario {SCENARIO}")
    out["progress"] = seen["progress"]
    out["asked"] = seen["asked"]
    print(json.dumps(out))


anyio.run(main)
