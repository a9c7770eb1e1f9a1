//! `GET /v1/openapi.json`: the OpenAPI 3.1 document, built from [`super::ROUTES`] and the
//! request/response types of `model.rs` (their JSON Schemas, draft 2020-12, which is what
//! OpenAPI 3.1 uses). One source: the handlers return these types, so the document cannot
//! drift from what they send; a route in `ROUTES` without an entry here panics the build of
//! the document (and its test).

use std::sync::LazyLock;

use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{json, Map, Value};

use super::model::*;
use super::{Access, ROUTES};

/// What one operation takes and gives.
struct Op {
    summary: &'static str,
    /// `(status, description, body schema)`; `None` = no JSON body.
    ok: (u16, &'static str, Option<Value>),
    body: Option<Value>,
    query: Option<Value>,
    /// `text/plain`, `text/html`, `text/event-stream`, … instead of JSON for the success.
    media: Option<&'static str>,
}

fn op(summary: &'static str, status: u16, desc: &'static str, schema: Option<Value>) -> Op {
    Op {
        summary,
        ok: (status, desc, schema),
        body: None,
        query: None,
        media: None,
    }
}

fn describe(method: &str, path: &str, g: &mut SchemaGenerator) -> Op {
    let mut s = |f: fn(&mut SchemaGenerator) -> schemars::Schema| Some(f(g).to_value());
    macro_rules! t {
        ($t:ty) => {
            s(|g| g.subschema_for::<$t>())
        };
    }
    match (method, path) {
        ("GET", "/healthz") => op("Liveness", 200, "The process is up", t!(Health)),
        ("GET", "/readyz") => Op {
            ..op(
                "Readiness: Redis and Docker reachable",
                200,
                "Ready",
                t!(Readiness),
            )
        },
        ("GET", "/metrics") => Op {
            media: Some("text/plain"),
            ..op(
                "Prometheus metrics (admins)",
                200,
                "Text exposition format",
                None,
            )
        },
        ("POST", "/v1/sessions") => op("Create a session", 201, "The new session", t!(Session)),
        ("GET", "/v1/sessions") => op("Your sessions", 200, "Newest first", t!(SessionList)),
        ("GET", "/v1/sessions/{id}") => Op {
            query: t!(AfterQuery),
            ..op(
                "A session with its events",
                200,
                "The session",
                t!(SessionDetail),
            )
        },
        ("DELETE", "/v1/sessions/{id}") => op(
            "Delete a session with its calls, events and history",
            204,
            "Deleted",
            None,
        ),
        ("POST", "/v1/sessions/{id}/tool-calls") => Op {
            body: Some(propose_body()),
            ..op(
                "Propose a tool call: policy, preview, then approval or a run",
                201,
                "The call as the policy left it",
                t!(Call),
            )
        },
        ("GET", "/v1/sessions/{id}/tool-calls") => Op {
            query: t!(CallsQuery),
            ..op("The session's calls", 200, "Oldest first", t!(CallList))
        },
        ("POST", "/v1/sessions/{id}/messages") => Op {
            body: t!(MessageBody),
            ..op(
                "Send the agent a message (starts a turn)",
                202,
                "The turn started",
                t!(TurnStarted),
            )
        },
        ("GET", "/v1/sessions/{id}/messages") => op(
            "The agent's stored conversation",
            200,
            "Oldest first",
            t!(Messages),
        ),
        ("POST", "/v1/sessions/{id}/cancel") => op(
            "Cancel the running agent turn (idempotent)",
            200,
            "What was cancelled",
            t!(TurnCancelled),
        ),
        ("GET", "/v1/sessions/{id}/events") => Op {
            query: t!(AfterQuery),
            media: Some("text/event-stream"),
            ..op(
                "The session's events: SSE, or a WebSocket on upgrade (subprotocol airlock.v1)",
                200,
                "Events as `event: TYPE`, `id: ID`, `data: JSON`; never ends by itself",
                None,
            )
        },
        ("POST", "/v1/sessions/{id}/grants") => Op {
            body: t!(GrantBody),
            ..op(
                "Approve a tool and command pattern for the rest of the session",
                201,
                "The grant",
                t!(GrantAdded),
            )
        },
        ("GET", "/v1/sessions/{id}/grants") => {
            op("The session's grants", 200, "Grants", t!(GrantList))
        }
        ("GET", "/v1/tool-calls/{id}") => {
            op("A call with its output", 200, "The call", t!(CallDetail))
        }
        ("POST", "/v1/tool-calls/{id}/decision") => Op {
            body: t!(DecisionBody),
            ..op(
                "Approve or deny a call, bound to its args_sha256",
                200,
                "The call after the decision",
                t!(Call),
            )
        },
        ("POST", "/v1/tool-calls/{id}/edit") => Op {
            body: t!(EditBody),
            ..op(
                "Replace a waiting change's content before deciding; the call stays pending, bound to the new args_sha256",
                200,
                "The call with the edited arguments and preview",
                t!(Call),
            )
        },
        ("POST", "/v1/tool-calls/{id}/revert") => op(
            "Propose putting back what an applied call replaced: a new call in its session, previewed against the files as they are now, waiting for approval (409 names files changed since; 410 when what it replaced is no longer kept)",
            201,
            "The revert call, awaiting approval",
            t!(Call),
        ),
        ("POST", "/v1/tool-calls/{id}/cancel") => op(
            "Cancel a pending or running call",
            200,
            "The call after the cancel",
            t!(Call),
        ),
        ("GET", "/v1/openapi.json") => op(
            "This document (OpenAPI 3.1)",
            200,
            "The document",
            Some(json!({"type": "object"})),
        ),
        ("GET", "/v1/audit") => Op {
            query: t!(AfterQuery),
            ..op(
                "Audit entries with their hash chain (admins)",
                200,
                "Oldest first",
                t!(AuditPage),
            )
        },
        ("GET", "/" | "/index.html") => Op {
            media: Some("text/html"),
            ..op("The web UI", 200, "The page", None)
        },
        ("GET", "/assets/app.js") => Op {
            media: Some("text/javascript"),
            ..op("The web UI's script", 200, "JavaScript", None)
        },
        ("GET", "/assets/app.css") => Op {
            media: Some("text/css"),
            ..op("The web UI's styles", 200, "CSS", None)
        },
        ("GET", "/assets/icon.svg") => Op {
            media: Some("image/svg+xml"),
            ..op("The web UI's icon", 200, "SVG", None)
        },
        other => panic!("api::ROUTES has {other:?} but the OpenAPI document does not describe it"),
    }
}

/// [`ProposeBody`] with each tool's arguments: one alternative per tool, its `args` schema
/// the very one the agent gives the model (`agent::prompt::tool_schemas`).
fn propose_body() -> Value {
    let alternatives: Vec<Value> = crate::agent::prompt::tool_schemas()
        .into_iter()
        .map(|t| {
            let f = &t["function"];
            let mut args = f["parameters"].clone();
            nullable_optionals(&mut args);
            // Absent `args` reads as `{}`: required only where the tool has required fields.
            let required = if args["required"].as_array().is_some_and(|r| !r.is_empty()) {
                json!(["tool", "args"])
            } else {
                json!(["tool"])
            };
            json!({
                "type": "object",
                "title": f["name"],
                "description": f["description"],
                "properties": {"tool": {"const": f["name"]}, "args": args},
                "required": required,
                "additionalProperties": false,
            })
        })
        .collect();
    json!({ "oneOf": alternatives })
}

/// Every optional argument of the executor's protocol is an `Option` (null reads as absent),
/// so the API accepts `null` for each one; the schemas the model gets leave that out.
fn nullable_optionals(schema: &mut Value) {
    let required: Vec<Value> = schema["required"].as_array().cloned().unwrap_or_default();
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for (name, p) in props.iter_mut() {
            if !required.contains(&Value::String(name.clone())) {
                if let Some(t) = p.get("type").cloned().filter(Value::is_string) {
                    p["type"] = json!([t, "null"]);
                }
            }
            nullable_optionals(p);
        }
    }
    if let Some(items) = schema.get_mut("items") {
        nullable_optionals(items);
    }
}

/// Query parameters from an object schema's properties (all optional here).
fn query_parameters(schema: &Value, defs: &Map<String, Value>) -> Vec<Value> {
    let resolved = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .and_then(|name| defs.get(name))
        .unwrap_or(schema);
    let Some(props) = resolved.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, s)| {
            let mut s = s.clone();
            let description = s
                .as_object_mut()
                .and_then(|o| o.remove("description"))
                .unwrap_or(Value::Null);
            let mut p = json!({"name": name, "in": "query", "required": false, "schema": s});
            if !description.is_null() {
                p["description"] = description;
            }
            p
        })
        .collect()
}

fn build() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut g = settings.into_generator();
    let error = g.subschema_for::<ErrorBody>().to_value();
    let described: Vec<_> = ROUTES
        .iter()
        .map(|(m, p, a)| (*m, *p, *a, describe(m, p, &mut g)))
        .collect();
    let defs = g.take_definitions(true);
    let mut paths = Map::new();
    for (method, path, access, op) in described {
        let mut params = Vec::new();
        if path.contains("{id}") {
            params.push(json!({
                "name": "id", "in": "path", "required": true,
                "schema": {"type": "string"},
                "description": "A session or call id (a UUID)",
            }));
        }
        if let Some(q) = &op.query {
            params.extend(query_parameters(q, &defs));
        }
        let (status, desc, schema) = op.ok;
        let mut ok = json!({"description": desc});
        match (schema, op.media) {
            (Some(s), _) => ok["content"] = json!({"application/json": {"schema": s}}),
            (None, Some(m)) => ok["content"] = json!({ m: {"schema": {"type": "string"}} }),
            (None, None) => {}
        }
        let err = json!({"description": "An error with a stable code", "content": {"application/json": {"schema": error}}});
        let mut responses = Map::new();
        responses.insert(status.to_string(), ok);
        if access != Access::Public {
            responses.insert("4XX".into(), err.clone());
            responses.insert("503".into(), err.clone());
        } else if path == "/readyz" {
            responses.insert(
                "503".into(),
                json!({"description": "Not ready", "content": {"application/json": {"schema": g.subschema_for::<Readiness>().to_value()}}}),
            );
        }
        let mut o = json!({
            "summary": op.summary,
            "operationId": operation_id(method, path),
            "parameters": params,
            "responses": responses,
        });
        if access == Access::Public {
            o["security"] = json!([]);
        }
        if let Some(b) = op.body {
            o["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": b}}});
        }
        paths
            .entry(path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("path item")
            .insert(method.to_ascii_lowercase(), o);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Airlock",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Sandboxed, approval-gated tool calls for LLM agents. See docs/API.md.",
        },
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    })
}

/// `GET /v1/sessions/{id}/tool-calls` → `get_v1_sessions_id_tool_calls`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        id.push('_');
        id.extend(part.chars().filter(|c| !matches!(c, '{' | '}')).map(|c| {
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '_'
            }
        }));
    }
    if path == "/" {
        id.push_str("_root");
    }
    id
}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOC: LazyLock<Value> = LazyLock::new(build);
    &DOC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_once_with_its_access() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        let mut n = 0;
        for (m, p, a) in ROUTES {
            let op = &paths[*p][m.to_ascii_lowercase()];
            assert!(op.is_object(), "{m} {p} missing from the OpenAPI document");
            assert_eq!(op["security"] == json!([]), *a == Access::Public, "{m} {p}");
            n += 1;
        }
        let described: usize = paths.values().map(|v| v.as_object().unwrap().len()).sum();
        assert_eq!(
            described, n,
            "the document describes a route ROUTES does not have"
        );
        // Every $ref resolves.
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "dangling $ref {name}"
            );
        }
        assert_eq!(doc["openapi"], "3.1.0");
        // The request bodies refuse unknown fields, like the handlers.
        assert_eq!(
            doc["components"]["schemas"]["DecisionBody"]["additionalProperties"],
            json!(false)
        );
        // A proposal: one alternative per tool, each with that tool's argument schema.
        let propose = &paths["/v1/sessions/{id}/tool-calls"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"]["oneOf"];
        let tools: Vec<&str> = propose
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["properties"]["tool"]["const"].as_str().unwrap())
            .collect();
        assert_eq!(tools, airlock_executor::protocol::ToolCall::NAMES);
        let read = &propose[0];
        assert_eq!(read["properties"]["args"]["required"], json!(["path"]));
        assert_eq!(
            read["properties"]["args"]["properties"]["limit"]["type"],
            json!(["integer", "null"])
        );
        assert_eq!(read["additionalProperties"], json!(false));
    }
}
