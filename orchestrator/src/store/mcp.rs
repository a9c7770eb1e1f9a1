//! What the MCP front end keeps in Redis: which session an MCP conversation runs in, and the
//! key that signs `requestState` (shared so that any replica can check what another signed).

use super::*;

/// How long a conversation's session binding lives without use.
const CONVERSATION_TTL_SECS: u64 = 30 * 24 * 3600;

impl Store {
    /// The session bound to conversation `conv` (a hex digest) of `owner`, renewing the
    /// binding's lifetime.
    pub async fn mcp_conversation(
        &self,
        owner: &str,
        conv: &str,
    ) -> Result<Option<String>, StoreError> {
        let key = self.inner.keys.mcp_conversation(owner, conv);
        let sid: Option<String> = self
            .query(
                redis::cmd("GETEX")
                    .arg(&key)
                    .arg("EX")
                    .arg(CONVERSATION_TTL_SECS),
            )
            .await?;
        Ok(sid)
    }

    /// Binds conversation `conv` of `owner` to `sid`. With `replace` false, an existing
    /// binding wins (two first calls at once end up in one session); the bound id is returned.
    pub async fn bind_mcp_conversation(
        &self,
        owner: &str,
        conv: &str,
        sid: &str,
        replace: bool,
    ) -> Result<String, StoreError> {
        let key = self.inner.keys.mcp_conversation(owner, conv);
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(sid).arg("EX").arg(CONVERSATION_TTL_SECS);
        if !replace {
            cmd.arg("NX");
        }
        cmd.arg("GET");
        let previous: Option<String> = self.query(&cmd).await?;
        Ok(match previous {
            Some(p) if !replace => p,
            _ => sid.to_string(),
        })
    }

    /// The key that signs MCP `requestState`: made once (32 random bytes) by whichever
    /// replica asks first, the same for all of them afterwards.
    pub async fn mcp_state_key(&self) -> Result<Vec<u8>, StoreError> {
        let key = self.inner.keys.mcp_state_key();
        let fresh = hex::encode(rand::random::<[u8; 32]>());
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(&fresh).arg("NX").arg("GET");
        let previous: Option<String> = self.query(&cmd).await?;
        let hexkey = previous.unwrap_or(fresh);
        hex::decode(hexkey.trim())
            .ok()
            .filter(|k| k.len() >= 32)
            .ok_or_else(|| StoreError::Corrupt(format!("{key} is not 32 hex-encoded bytes")))
    }
}
