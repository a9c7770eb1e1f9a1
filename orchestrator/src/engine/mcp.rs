//! What the MCP front end needs from the engine besides proposing and deciding: the session a
//! conversation runs in, and the shared key that signs `requestState`.

use super::*;

impl Engine {
    /// The session MCP conversation `conv` (a hex digest) of `user` runs in: the one bound to
    /// it while that still exists and is theirs, otherwise a new one, bound from now on.
    pub async fn mcp_session(&self, user: &User, conv: &str) -> Result<String, EngineError> {
        if let Some(sid) = self.store.mcp_conversation(&user.name, conv).await? {
            match self.owned_session(user, &sid).await {
                Ok(_) => return Ok(sid),
                Err(EngineError::NotFound(_)) => {
                    // Deleted (by the user or the retention sweep): start a new one.
                    let rec = self.create_session(user).await?;
                    return Ok(self
                        .store
                        .bind_mcp_conversation(&user.name, conv, &rec.id, true)
                        .await?);
                }
                Err(e) => return Err(e),
            }
        }
        let rec = self.create_session(user).await?;
        let bound = self
            .store
            .bind_mcp_conversation(&user.name, conv, &rec.id, false)
            .await?;
        if bound != rec.id {
            // Another first call of the same conversation won: ours stays empty, remove it.
            let _ = self.delete_session(user, &rec.id).await;
        }
        Ok(bound)
    }

    /// The key that signs MCP `requestState`, the same on every replica.
    pub async fn mcp_state_key(&self) -> Result<Vec<u8>, EngineError> {
        Ok(self.store.mcp_state_key().await?)
    }
}
