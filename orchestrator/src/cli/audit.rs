//! `airlock audit verify` and `airlock audit export`: read the audit chain straight from
//! Redis (not through a server that could be the thing being checked).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use airlock::store::{ChainPoint, Store};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

/// Where the Redis is: the server's config.
#[derive(Args, Debug)]
pub struct StoreArgs {
    /// The server's TOML config (its `[redis]` section, or the embedded Redis's socket in
    /// `data_dir` while `airlock serve` runs). Without it: the defaults and
    /// AIRLOCK_REDIS_URL.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// `airlock audit verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// A point the chain must still hold, as `SEQ:HASH`, taken from an earlier
    /// "audit chain head" log line or export kept outside Redis. Repeatable. Without an
    /// anchor, verify proves the entries are consistent with each other; with one, also
    /// that nobody rewrote the chain (and recomputed its hashes) since that point.
    #[arg(long, value_parser = parse_anchor)]
    pub anchor: Vec<ChainPoint>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Export formats.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line: the entry's fields, its stream `id`, `seq`, `prev`, `hash`.
    Jsonl,
}

/// `airlock audit export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: ExportFormat,
    /// Only the entries after this stream id (the last `id` of a previous export).
    #[arg(long)]
    pub after: Option<String>,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

fn parse_anchor(s: &str) -> Result<ChainPoint, String> {
    let (seq, hash) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected SEQ:HASH"))?;
    let seq = seq
        .parse()
        .map_err(|_| format!("`{seq}`: SEQ must be a number"))?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{hash}`: HASH must be 64 hex digits"));
    }
    Ok(ChainPoint {
        seq,
        hash: hash.to_ascii_lowercase(),
        id: String::new(),
    })
}

async fn open(args: &StoreArgs) -> anyhow::Result<Store> {
    let config = super::serve::load_config(args.config.as_deref())?;
    let url = match config
        .redis
        .effective_url()
        .map_err(|e| anyhow::anyhow!(e))?
    {
        Some(u) => u,
        None => {
            let socket = airlock::embedded_redis::socket_path(&config.data_dir);
            if !socket.exists() {
                bail!(
                    "no Redis to read: redis.url is not set and the embedded Redis's socket {} does not exist (it runs only while `airlock serve` does; start the server or set redis.url / AIRLOCK_REDIS_URL)",
                    socket.display()
                );
            }
            airlock::embedded_redis::url_for(&config.data_dir)
        }
    };
    Store::connect(&url, &config.redis.prefix)
        .await
        .context("cannot connect to Redis")
}

/// Exit 0 when the chain verifies, 1 (with the first problem) when it does not.
pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args.store).await?;
    let report = store.verify_audit(&args.anchor).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        match &report.checkpoint {
            Some(cp) => println!(
                "chain starts after the checkpoint seq {} ({}) left by a trim",
                cp.seq, cp.hash
            ),
            None => println!("chain starts at the genesis hash"),
        }
        println!("{} entries read", report.entries);
        if let Some(h) = &report.head {
            println!("head: seq {} hash {} (entry {})", h.seq, h.hash, h.id);
        }
        match &report.problem {
            None => println!(
                "✓ the audit chain verifies{}",
                if args.anchor.is_empty() {
                    " (pass --anchor SEQ:HASH from an outside copy to rule out a rewrite)"
                } else {
                    ", anchors included"
                }
            ),
            Some(p) => println!("✗ {p}"),
        }
    }
    Ok(if report.problem.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Writes the entries, oldest first, a page at a time; reports how many on stderr.
pub async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args.store).await?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut after = args.after.clone();
    let mut n = 0u64;
    loop {
        let page = store.read_audit(after.as_deref(), 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for e in &page {
            match args.format {
                ExportFormat::Jsonl => {
                    serde_json::to_writer(&mut out, e)?;
                    out.write_all(b"\n")?;
                }
            }
            n += 1;
        }
    }
    out.flush()?;
    eprintln!(
        "exported {n} audit entries{}",
        after
            .map(|a| format!("; the last id is {a} (pass --after {a} to continue from it)"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
