"""An MCP client on the 2026-07-28 revision (the official Python SDK, mcp 2.x), driven by
tests/tests/integration/mcp.rs: `modern.py URL TOKEN SCENARIO [ARG]` prints one JSON object
with what the client saw. Assertions about the workspace and the audit are made in Rust."""

import json
import sys

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

URL, TOKEN, SCENARIO = sys.argv[1], sys.argv[2], sys.argv[3]
ARG = sys.argv[4] if len(sys.argv) > 4 else None
seen = {"progress": [], "asked": []}


def dump(result):
    """A CallToolResult as plain JSON."""
    return {
        "is_error": bool(result.is_error),
        "text": "".join(c.text for c in result.content if getattr(c, "type", "") == "text"),
        "structured": result.structured_content,
    }


async def answer_with(action):
    async def callback(context, params):
        seen["asked"].append(params.message)
        return types.ElicitResult(action=action, content={} if action == "accept" else None)

    return callback


async def progress(p, total, message):
    seen["progress"].append({"progress": p, "message": message})


def client(elicitation=None):
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    return Client(
        streamable_http_client(URL, http_client=http),
        mode="2026-07-28",
        elicitation_callback=elicitation,
        client_info=types.Implementation(name="airlock-tests-modern", version="1"),
    )


async def main():
    out = {}
    if SCENARIO == "list":
        async with client() as c:
            tools = await c.list_tools()
            out["tools"] = [
                {
                    "name": t.name,
                    "schema": t.input_schema,
                    "read_only": t.annotations.read_only_hint if t.annotations else None,
                    "destructive": t.annotations.destructive_hint if t.annotations else None,
                }
                for t in tools.tools
            ]
            out["protocol"] = c.protocol_version
    elif SCENARIO == "call":
        # ARG: {"tool": ..., "args": {...}, "answer": "accept"|"decline"|null}
        spec = json.loads(ARG)
        cb = await answer_with(spec["answer"]) if spec.get("answer") else None
        async with client(cb) as c:
            meta = {"dev.airlock/conversation": spec["conversation"]} if spec.get("conversation") else None
            r = await c.call_tool(spec["tool"], spec["args"], progress_callback=progress, meta=meta)
            out["result"] = dump(r)
    elif SCENARIO == "unknown-tool":
        async with client() as c:
            try:
                await c.call_tool("format_disk", {})
                out["error"] = None
            except Exception as e:  # the SDK raises MCPError for a JSON-RPC error
                out["error"] = {"type": type(e).__name__, "code": getattr(getattr(e, "error", None), "code", None), "message": str(e)}
    elif SCENARIO == "replay":
        # Two asks; then a transplanted answer, the real one, and the real one replayed.
        a = {"path": "a.txt", "content": "from a\n"}
        b = {"path": "b.txt", "content": "from b\n"}
        accept = {"airlock_approval": {"action": "accept", "content": {}}}
        async with client(await answer_with("accept")) as c:
            s = c.session
            ra = await s.call_tool("write_file", a, allow_input_required=True)
            rb = await s.call_tool("write_file", b, allow_input_required=True)
            out["first"] = [ra.result_type, rb.result_type]
            # B's state on A's request: opens nothing.
            t = await s.call_tool("write_file", a, input_responses=accept, request_state=rb.request_state, allow_input_required=True)
            out["transplanted"] = dump(t)
            # A's state on A's request: approves A.
            ok = await s.call_tool("write_file", a, input_responses=accept, request_state=ra.request_state, allow_input_required=True)
            out["accepted"] = dump(ok)
            # The same answer again: nothing new is approved or run.
            again = await s.call_tool("write_file", a, input_responses=accept, request_state=ra.request_state, allow_input_required=True)
            out["replayed"] = dump(again)
            # An edited state opens nothing either.
            forged = ra.request_state[:-2] + ("AA" if not ra.request_state.endswith("AA") else "BB")
            f = await s.call_tool("write_file", b, input_responses=accept, request_state=forged, allow_input_required=True)
            out["forged"] = dump(f)
    elif SCENARIO == "cancel":
        # ARG: {"tool", "args", "answer", "after": seconds}: cancel the call after that long.
        spec = json.loads(ARG)
        cb = await answer_with(spec["answer"]) if spec.get("answer") else None
        async with client(cb) as c:
            with anyio.move_on_after(spec["after"]) as scope:
                await c.call_tool(spec["tool"], spec["args"], progress_callback=progress)
            out["cancelled"] = scope.cancelled_caught
    else:
        raise SystemExit(f"unknown scenario {SCENARIO}")
    out["progress"] = seen["progress"]
    out["asked"] = seen["asked"]
    print(json.dumps(out))


anyio.run(main)
