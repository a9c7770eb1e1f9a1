//! Sessions, their grants and a call's output, owner-checked.

use super::*;

impl Engine {
    pub async fn create_session(&self, user: &User) -> Result<SessionRecord, EngineError> {
        Ok(self.store.create_session(&user.name).await?)
    }

    pub async fn list_sessions(&self, user: &User) -> Result<Vec<SessionRecord>, EngineError> {
        Ok(self.store.list_sessions(&user.name).await?)
    }

    /// The session if it exists and belongs to `user` (another user's session is "not found").
    pub async fn owned_session(&self, user: &User, id: &str) -> Result<SessionRecord, EngineError> {
        match self.store.get_session(id).await? {
            Some(s) if s.owner == user.name => Ok(s),
            _ => Err(EngineError::NotFound("session")),
        }
    }

    pub async fn delete_session(&self, user: &User, id: &str) -> Result<(), EngineError> {
        self.owned_session(user, id).await?;
        // One script: the agent's conversation and turn lock go with the session's events and
        // calls (and a turn still running cannot write them back: its appends need the session).
        self.store.delete_session(id).await?;
        Ok(())
    }

    pub async fn history(
        &self,
        user: &User,
        id: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<StoredEvent>, EngineError> {
        self.owned_session(user, id).await?;
        Ok(self.store.read_events(id, after, count).await?)
    }

    /// The call if it belongs to `user`.
    pub async fn owned_call(&self, user: &User, id: &str) -> Result<CallRecord, EngineError> {
        match self.store.get_call(id).await? {
            Some(c) if c.owner == user.name => Ok(c),
            _ => Err(EngineError::NotFound("tool call")),
        }
    }

    // ---- session grants ---------------------------------------------------------------------

    /// Approves `tool` + `pattern` (a path glob, or a command pattern for run_shell) for the
    /// rest of session `session_id`: later calls the policy would ask about and that match it
    /// run without asking. Refused unless the user's policy allows session grants; a grant
    /// never lifts a deny or an ask whose rule forbids grants, and it stops working as soon
    /// as a new policy forbids grants. Kept in this orchestrator's memory (a restart forgets
    /// it: the user is asked again).
    pub async fn add_grant(
        &self,
        user: &User,
        session_id: &str,
        tool: &str,
        pattern: &str,
    ) -> Result<ev::SessionGrant, EngineError> {
        self.owned_session(user, session_id).await?;
        if !self.policy().session_grants_allowed(user) {
            return Err(EngineError::Forbidden(
                "your policy does not allow approving calls for the rest of a session".into(),
            ));
        }
        let g = Grant::new(tool, pattern).map_err(EngineError::BadRequest)?;
        // `writable`: what the grant allows runs with the mount its approval had.
        let shown = ev::SessionGrant {
            tool: g.tool.as_str().to_string(),
            pattern: g.pattern.clone(),
            writable: g.write,
        };
        match self
            .store
            .add_grant(session_id, &shown, MAX_GRANTS_PER_SESSION)
            .await?
        {
            GrantAdded::Added | GrantAdded::Exists => Ok(shown),
            GrantAdded::Full => Err(EngineError::Conflict(format!(
                "this session already has {MAX_GRANTS_PER_SESSION} grants"
            ))),
            GrantAdded::NoSession => Err(EngineError::NotFound("session")),
        }
    }

    /// The session's grants, from Redis (shared by every orchestrator). A stored grant that
    /// no longer compiles (a newer Airlock changed the pattern syntax) is left out: the user
    /// is asked again.
    pub(super) async fn grants(&self, session_id: &str) -> Result<Vec<Grant>, EngineError> {
        Ok(self
            .store
            .grants(session_id)
            .await?
            .into_iter()
            .filter_map(|(tool, pattern)| match Grant::new(&tool, &pattern) {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::warn!(session_id, tool, error = %e, "ignoring a stored grant that does not compile");
                    None
                }
            })
            .collect())
    }

    /// The session's grants.
    /// The session's grants as (tool, pattern), and whether the policy lets `user` grant.
    pub async fn list_grants(
        &self,
        user: &User,
        session_id: &str,
    ) -> Result<(Vec<(String, String)>, bool), EngineError> {
        self.owned_session(user, session_id).await?;
        let list = self
            .grants(session_id)
            .await?
            .into_iter()
            .map(|g| (g.tool.as_str().to_string(), g.pattern))
            .collect();
        Ok((list, self.policy().session_grants_allowed(user)))
    }

    /// The output a call has produced so far, in order. Only the session's events from the
    /// call's own lifetime are read (with a margin for clocks that differ between this host
    /// and Redis), not the whole session.
    pub async fn call_output(&self, rec: &CallRecord) -> Result<Vec<Value>, EngineError> {
        const SKEW_MS: u64 = 5 * 60 * 1000;
        let to = rec
            .status
            .is_terminal()
            .then_some(rec.updated_at_ms.saturating_add(SKEW_MS));
        let events = self
            .store
            .read_events_between(
                &rec.session_id,
                rec.created_at_ms.saturating_sub(SKEW_MS),
                to,
                100_000,
            )
            .await?;
        Ok(events
            .iter()
            .filter_map(|e| match e.event() {
                Ok(ev::Event::Output(o)) if o.call_id == rec.id => {
                    Some(json!({"stream": o.stream, "data": o.data}))
                }
                _ => None,
            })
            .collect())
    }
}
