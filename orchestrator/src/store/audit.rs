//! The audit stream: a hash chain written by the call scripts, read in pages, verified and
//! trimmed behind a checkpoint.
//!
//! Every entry ends with `seq` (1, 2, … with no gaps), `prev` (the previous entry's `hash`;
//! the checkpoint's after a trim; 64 zeros at the start) and `hash`: the SHA-256 of
//! `airlock-audit-v1\n` followed by each field name and value before `hash`, in stream order,
//! as a netstring (`len:bytes,`). `prelude.lua`'s `append_audit` writes an entry and the head
//! (`{p}audit:head`) in the script that makes the change it records, so the chain cannot
//! miss an entry. [`chain_hash`] is the same function in Rust; [`Store::verify_audit`] walks
//! the stream with it.

use std::collections::HashMap;

use redis::Value;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{checked_event_id, now_ms, AuditEntry, Store, StoreError};

/// `prev` of the first entry ever written.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an entry's `hash` is the SHA-256 of: its pairs up to and including `prev`.
pub fn chain_message<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut m = String::from("airlock-audit-v1\n");
    for (k, v) in pairs {
        for s in [k, v] {
            m.push_str(&s.len().to_string());
            m.push(':');
            m.push_str(s);
            m.push(',');
        }
    }
    m
}

/// The SHA-256 an entry's `hash` must equal, over its pairs up to and including `prev`.
pub fn chain_hash<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    hex::encode(Sha256::digest(chain_message(pairs).as_bytes()))
}

/// The link a script may use for the next entry, into its `ARGV[4..5]` (`args[3..5]`): the
/// message `append_audit` will build if the head is still `head` (seq, hash) when the script
/// runs, and its SHA-256. The script
/// compares its own message with this one byte for byte and hashes in Lua when they differ
/// (the head moved, or the script wrote another entry), so a stale link costs time, never a
/// wrong chain. Hashing in Rust saves ~0.4 ms of Redis's one thread per entry (measured,
/// docs/PERFORMANCE.md).
pub(super) fn put_link(
    args: &mut [String],
    head: (Option<String>, Option<String>),
    fields: &[String],
) {
    let seq = head.0.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) + 1;
    let seq = seq.to_string();
    let prev = head.1.unwrap_or_else(|| GENESIS_HASH.to_string());
    let pairs = fields
        .chunks(2)
        .filter(|p| p.len() == 2)
        .map(|p| (p[0].as_str(), p[1].as_str()))
        .chain([("seq", seq.as_str()), ("prev", prev.as_str())]);
    let msg = chain_message(pairs);
    args[4] = hex::encode(Sha256::digest(msg.as_bytes()));
    args[3] = msg;
}

/// One stored audit entry with its stream id and its links in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ChainedEntry {
    pub id: String,
    pub seq: u64,
    pub prev: String,
    pub hash: String,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// A point of the chain: the entry numbered `seq` has hash `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainPoint {
    pub seq: u64,
    pub hash: String,
    /// Its stream id (empty when not known).
    pub id: String,
}

/// The first thing [`Store::verify_audit`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChainProblem {
    #[error("entry {id} (seq {seq}) was changed: its hash does not match its fields")]
    Changed { id: String, seq: u64 },
    #[error("entry {id} is malformed: {reason}")]
    Malformed { id: String, reason: String },
    #[error(
        "entries seq {from}..={to} were removed (the chain jumps to seq {found} at entry {id})"
    )]
    Removed {
        id: String,
        from: u64,
        to: u64,
        found: u64,
    },
    #[error("entry {id} (seq {seq}) is out of order: seq {expected} was expected there")]
    Reordered { id: String, seq: u64, expected: u64 },
    #[error(
        "entry {id} (seq {seq}) does not link to the entry before it: that entry was replaced"
    )]
    Unlinked { id: String, seq: u64 },
    #[error(
        "the newest entries were removed: the chain ends at seq {last}, its head says seq {head}"
    )]
    Truncated { last: u64, head: u64 },
    #[error("the head ({head_hash}) does not match the newest entry (seq {last}): the head or the entry was rewritten")]
    HeadMismatch { last: u64, head_hash: String },
    #[error("the chain does not hold the anchor seq {seq} = {expected}: {found}")]
    AnchorMismatch {
        seq: u64,
        expected: String,
        found: String,
    },
}

/// What [`Store::verify_audit`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// Entries read.
    pub entries: u64,
    /// Where the chain starts (after a trim), if it was trimmed.
    pub checkpoint: Option<ChainPoint>,
    /// The newest entry as the head records it.
    pub head: Option<ChainPoint>,
    /// The first problem, or `None` when the chain verifies.
    pub problem: Option<ChainProblem>,
}

/// What [`Store::trim_audit`] removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrimReport {
    pub removed: u64,
    /// The new checkpoint (the last removed entry), when anything was removed.
    pub checkpoint: Option<ChainPoint>,
}

/// Entries per `XRANGE` page when walking the whole stream.
const PAGE: usize = 500;

type RawEntry = (String, Vec<String>);

fn parse_chained((id, flat): RawEntry) -> Result<ChainedEntry, ChainProblem> {
    let bad = |reason: &str| ChainProblem::Malformed {
        id: id.clone(),
        reason: reason.into(),
    };
    if flat.len() % 2 != 0 || flat.len() < 6 {
        return Err(bad(
            "not a list of field/value pairs ending in seq, prev, hash",
        ));
    }
    let n = flat.len();
    let (seq, prev, hash) = (&flat[n - 5], &flat[n - 3], &flat[n - 1]);
    if flat[n - 6] != "seq" || flat[n - 4] != "prev" || flat[n - 2] != "hash" {
        return Err(bad("the last fields are not seq, prev, hash"));
    }
    let seq: u64 = seq.parse().map_err(|_| bad("seq is not a number"))?;
    let pairs: Vec<(&str, &str)> = flat[..n - 2]
        .chunks(2)
        .map(|p| (p[0].as_str(), p[1].as_str()))
        .collect();
    if chain_hash(pairs.iter().copied()) != *hash {
        return Err(ChainProblem::Changed { id, seq });
    }
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let entry = AuditEntry::from_fields(&m).map_err(|e| bad(&e.to_string()))?;
    Ok(ChainedEntry {
        seq,
        prev: prev.clone(),
        hash: hash.clone(),
        entry,
        id,
    })
}

fn point_from(m: HashMap<String, String>, what: &str) -> Result<Option<ChainPoint>, StoreError> {
    if m.is_empty() {
        return Ok(None);
    }
    let seq = m
        .get("seq")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("{what} without a numeric seq")))?;
    let hash = m
        .get("hash")
        .cloned()
        .ok_or_else(|| StoreError::Corrupt(format!("{what} without a hash")))?;
    Ok(Some(ChainPoint {
        seq,
        hash,
        id: m.get("id").cloned().unwrap_or_default(),
    }))
}

impl Store {
    /// Up to `count` raw entries strictly after `after` (from the start when `None`).
    async fn audit_range(
        &self,
        after: Option<(u64, u64)>,
        count: usize,
    ) -> Result<Vec<RawEntry>, StoreError> {
        let Some(start) = super::keys::range_start_after(after) else {
            return Ok(Vec::new());
        };
        self.query(
            redis::cmd("XRANGE")
                .arg(self.inner.keys.audit())
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(count),
        )
        .await
    }

    /// Up to `count` audit entries strictly after `after` (from the start when `None`),
    /// with their chain fields. An entry that does not verify is an error here: pages are
    /// for reading a good chain; [`Store::verify_audit`] says what is wrong with a bad one.
    pub async fn read_audit(
        &self,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<ChainedEntry>, StoreError> {
        let after = checked_event_id(after)?;
        if count == 0 {
            return Ok(Vec::new());
        }
        self.audit_range(after, count)
            .await?
            .into_iter()
            .map(|raw| parse_chained(raw).map_err(|p| StoreError::Corrupt(p.to_string())))
            .collect()
    }

    /// The chain's head and checkpoint.
    pub async fn audit_ends(&self) -> Result<(Option<ChainPoint>, Option<ChainPoint>), StoreError> {
        let k = &self.inner.keys;
        let (head, cp): (HashMap<String, String>, HashMap<String, String>) = self
            .run(|mut c| async move {
                redis::pipe()
                    .hgetall(k.audit_head())
                    .hgetall(k.audit_checkpoint())
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok((
            point_from(head, "audit head")?,
            point_from(cp, "audit checkpoint")?,
        ))
    }

    /// Walks the whole audit stream and reports the first entry that was changed, removed
    /// or reordered, and whether the chain holds each of `anchors` (points logged earlier).
    pub async fn verify_audit(&self, anchors: &[ChainPoint]) -> Result<ChainReport, StoreError> {
        let (head, checkpoint) = self.audit_ends().await?;
        let mut report = ChainReport {
            entries: 0,
            checkpoint: checkpoint.clone(),
            head: head.clone(),
            problem: None,
        };
        let (mut want_seq, mut want_prev) = match &checkpoint {
            Some(cp) => (cp.seq + 1, cp.hash.clone()),
            None => (1, GENESIS_HASH.to_string()),
        };
        let mut anchors: HashMap<u64, &ChainPoint> = anchors.iter().map(|a| (a.seq, a)).collect();
        for a in anchors.values() {
            if checkpoint
                .as_ref()
                .is_some_and(|cp| a.seq == cp.seq && a.hash == cp.hash)
            {
                continue;
            }
            if a.seq < want_seq {
                report.problem = Some(ChainProblem::AnchorMismatch {
                    seq: a.seq,
                    expected: a.hash.clone(),
                    found: "that entry was trimmed (it is before the checkpoint)".into(),
                });
                return Ok(report);
            }
        }
        let mut last: Option<ChainPoint> = None;
        let mut after = None;
        'pages: loop {
            let page = self.audit_range(after, PAGE).await?;
            let Some((last_id, _)) = page.last() else {
                break;
            };
            after = super::parse_event_id(last_id);
            let parsed: Vec<Result<ChainedEntry, ChainProblem>> =
                page.into_iter().map(parse_chained).collect();
            for (i, e) in parsed.iter().enumerate() {
                report.entries += 1;
                let e = match e {
                    Ok(e) => e,
                    Err(p) => {
                        report.problem = Some(p.clone());
                        break 'pages;
                    }
                };
                if e.seq != want_seq {
                    let later = parsed[i + 1..]
                        .iter()
                        .any(|x| x.as_ref().is_ok_and(|x| x.seq == want_seq));
                    report.problem = Some(if e.seq > want_seq && !later {
                        ChainProblem::Removed {
                            id: e.id.clone(),
                            from: want_seq,
                            to: e.seq - 1,
                            found: e.seq,
                        }
                    } else {
                        ChainProblem::Reordered {
                            id: e.id.clone(),
                            seq: e.seq,
                            expected: want_seq,
                        }
                    });
                    break 'pages;
                }
                if e.prev != want_prev {
                    report.problem = Some(ChainProblem::Unlinked {
                        id: e.id.clone(),
                        seq: e.seq,
                    });
                    break 'pages;
                }
                if let Some(a) = anchors.remove(&e.seq) {
                    if a.hash != e.hash {
                        report.problem = Some(ChainProblem::AnchorMismatch {
                            seq: a.seq,
                            expected: a.hash.clone(),
                            found: format!("entry {} has hash {}", e.id, e.hash),
                        });
                        break 'pages;
                    }
                }
                want_seq = e.seq + 1;
                want_prev = e.hash.clone();
                last = Some(ChainPoint {
                    seq: e.seq,
                    hash: e.hash.clone(),
                    id: e.id.clone(),
                });
            }
        }
        if report.problem.is_some() {
            return Ok(report);
        }
        let last_seq = last.as_ref().map_or(want_seq - 1, |l| l.seq);
        match &head {
            Some(h) if h.seq != last_seq => {
                report.problem = Some(ChainProblem::Truncated {
                    last: last_seq,
                    head: h.seq,
                });
            }
            Some(h) if h.hash != want_prev => {
                report.problem = Some(ChainProblem::HeadMismatch {
                    last: last_seq,
                    head_hash: h.hash.clone(),
                });
            }
            None if report.entries > 0 => {
                report.problem = Some(ChainProblem::Truncated {
                    last: last_seq,
                    head: 0,
                });
            }
            _ => {}
        }
        if report.problem.is_none() {
            if let Some(a) = anchors.values().find(|a| {
                !checkpoint
                    .as_ref()
                    .is_some_and(|cp| a.seq == cp.seq && a.hash == cp.hash)
            }) {
                report.problem = Some(ChainProblem::AnchorMismatch {
                    seq: a.seq,
                    expected: a.hash.clone(),
                    found: format!("the chain ends at seq {last_seq}"),
                });
            }
        }
        Ok(report)
    }

    /// Removes the entries written before `before_ms`, oldest first, keeping the chain
    /// verifiable: the last removed entry becomes the checkpoint, and an entry recording the
    /// trim (with the checkpoint's seq and hash) is appended, all in one script.
    pub async fn trim_audit(&self, before_ms: u64) -> Result<TrimReport, StoreError> {
        let mut removed = 0;
        let mut checkpoint = None;
        loop {
            // Entries older than the cutoff, a page at a time; the script re-checks the last one.
            let end = format!("{}", before_ms.saturating_sub(1));
            let page: Vec<RawEntry> = self
                .query(
                    redis::cmd("XRANGE")
                        .arg(self.inner.keys.audit())
                        .arg("-")
                        .arg(&end)
                        .arg("COUNT")
                        .arg(PAGE),
                )
                .await?;
            let Some(raw) = page.last().cloned() else {
                break;
            };
            let n = page.len();
            let last = parse_chained(raw).map_err(|p| {
                StoreError::Corrupt(format!("not trimming past a broken chain: {p}"))
            })?;
            let mut detail = format!(
                "{n} audit entries up to seq {} removed; checkpoint hash {}",
                last.seq, last.hash
            );
            detail.truncate(400);
            let note = AuditEntry {
                at_ms: now_ms(),
                actor: "system".into(),
                action: "audit_trimmed".into(),
                session_id: String::new(),
                call_id: String::new(),
                tool: String::new(),
                args_sha256: String::new(),
                outcome: "trimmed".into(),
                policy_sha256: String::new(),
                rule: "retention".into(),
                detail: Some(detail),
            };
            let keys = self.call_keys(&[self.inner.keys.audit_checkpoint()]);
            let mut args = self.base_args();
            let (ms, sq) = super::parse_event_id(&last.id)
                .ok_or_else(|| StoreError::Corrupt(format!("audit id {}", last.id)))?;
            let keep_from = if sq == u64::MAX {
                format!("{}-0", ms + 1)
            } else {
                format!("{ms}-{}", sq + 1)
            };
            args.extend([
                last.id.clone(),
                last.seq.to_string(),
                last.hash.clone(),
                keep_from,
            ]);
            args.extend(note.to_fields());
            let r: Value = self
                .invoke(&super::SCRIPTS.trim_audit, &keys, &args)
                .await?;
            match r {
                Value::Int(k) => removed += k as u64,
                other => {
                    return Err(StoreError::Redis(format!(
                        "trim_audit answered {other:?} (the chain changed while trimming)"
                    )))
                }
            }
            checkpoint = Some(ChainPoint {
                seq: last.seq,
                hash: last.hash,
                id: last.id,
            });
            if n < PAGE {
                break;
            }
        }
        Ok(TrimReport {
            removed,
            checkpoint,
        })
    }
}
