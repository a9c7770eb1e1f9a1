//! The six tools as MCP tool definitions: the agent's own JSON Schemas (one source,
//! `agent::prompt::tool_schemas`), with annotations saying which only read.

use std::sync::Arc;

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde_json::Value;

use crate::agent::prompt::tool_schemas;

/// Every tool's name, in the order `tools/list` returns them (the executor's own list).
pub const TOOL_NAMES: [&str; 6] = airlock_executor::protocol::ToolCall::NAMES;

/// Tools that never change the workspace.
fn read_only(name: &str) -> bool {
    matches!(name, "read_file" | "list_dir" | "search")
}

/// The tools, in a fixed order (clients cache the list), with the agent's schemas.
pub fn mcp_tools() -> Vec<Tool> {
    tool_schemas()
        .into_iter()
        .filter_map(|t| {
            let f = &t["function"];
            let name = f["name"].as_str()?.to_string();
            let description = f["description"].as_str().unwrap_or_default().to_string();
            let schema: JsonObject = match &f["parameters"] {
                Value::Object(m) => m.clone(),
                _ => return None,
            };
            let ro = read_only(&name);
            let annotations = ToolAnnotations::with_title(title(&name))
                .read_only(ro)
                .destructive(!ro)
                .idempotent(ro)
                // The sandbox has no network: nothing reaches beyond the workspace.
                .open_world(false);
            Some(
                Tool::new(name, description, Arc::new(schema))
                    .with_title(title(f["name"].as_str().unwrap_or_default()))
                    .with_annotations(annotations),
            )
        })
        .collect()
}

fn title(name: &str) -> &'static str {
    match name {
        "read_file" => "Read a workspace file",
        "list_dir" => "List a workspace directory",
        "search" => "Search the workspace",
        "write_file" => "Write a workspace file (approved diff)",
        "edit_file" => "Edit a workspace file (approved diff)",
        "run_shell" => "Run a command in the sandbox",
        _ => "Airlock tool",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_six_tools_in_order_with_the_agents_schemas_and_hints() {
        let tools = mcp_tools();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(names, TOOL_NAMES);
        for (t, agent) in tools.iter().zip(tool_schemas()) {
            assert_eq!(
                Value::Object((*t.input_schema).clone()),
                agent["function"]["parameters"],
                "{}",
                t.name
            );
            let a = t.annotations.as_ref().unwrap();
            let ro = read_only(&t.name);
            assert_eq!(a.read_only_hint, Some(ro), "{}", t.name);
            assert_eq!(a.destructive_hint, Some(!ro), "{}", t.name);
        }
    }
}
