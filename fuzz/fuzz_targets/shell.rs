//! `airlock::policy::shell::parse`: the run_shell command-line splitter the policy judges
//! segment by segment. The command comes from an LLM agent, so it is hostile.
//!
//! Invariants (each follows from the parser's code, see the comments):
//! * never panics, never loops, on any UTF-8 input; deterministic;
//! * `Ok`: segments sorted by `offset`, every offset within the command (in chars); a segment
//!   of `Origin::Command` shows a piece of the command itself (`source` is a substring);
//!   every word (and redirect target) is made of the command's own characters, plus the `…`
//!   of `$(…)`/`` `…` ``/`$((…))` and the blanks `eval` joins its words with;
//! * `Err`: the offset is within the command and there is a message;
//! * `pattern_words` (policy `command` patterns) never panics; a pattern is one plain command
//!   without expansions;
//! * a pattern of literal words (no glob, no expansion) matches the command written the same
//!   way, with and without `ignore_case`: otherwise a deny rule would not deny the command it
//!   names;
//! * the number of segments is linear in the length of the command (`eval eval … ls` was
//!   exponential: finding 2).
#![no_main]

use std::collections::HashSet;

use airlock::policy::eval::CommandPattern;
use airlock::policy::shell::{self, Origin};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(command) = std::str::from_utf8(data) else {
        return;
    };
    check(command);
});

fn check(command: &str) {
    let nchars = command.chars().count();
    let chars: HashSet<char> = command.chars().collect();
    // Characters the parser may add to a word's text that the command need not contain.
    let made_up = |c: char| c == '…' || c == ' ';

    let parsed = shell::parse(command);
    assert_eq!(parsed, shell::parse(command), "parse is deterministic");
    match &parsed {
        Ok(segments) => {
            // Each top-level segment unwraps into at most MAX_DEPTH + 1 nested ones (scripts
            // and wrapped commands alike), and a segment takes at least one character.
            assert!(
                segments.len() <= 64 * (nchars + 1),
                "{} segments from {nchars} characters",
                segments.len()
            );
            let mut last = 0;
            for s in segments {
                assert!(
                    s.offset >= last,
                    "segments are sorted by offset: {segments:?}"
                );
                last = s.offset;
                assert!(
                    s.offset <= nchars,
                    "offset {} past the end ({nchars} chars): {s:?}",
                    s.offset
                );
                if s.origin == Origin::Command {
                    assert!(
                        command.contains(&s.source),
                        "a command segment's source {:?} is not in the command",
                        s.source
                    );
                }
                let words = s.words.iter().chain(s.redirects.iter().map(|r| &r.target));
                for w in words {
                    if let Some(c) = w.text.chars().find(|c| !chars.contains(c) && !made_up(*c)) {
                        panic!("word {:?} has {c:?}, which the command does not", w.text);
                    }
                }
                // Cheap accessors the evaluator uses.
                let _ = (s.command(), s.writes_file());
                for r in &s.redirects {
                    let _ = (r.writes_file(), r.names_file());
                    assert!(!r.op.is_empty());
                }
            }
        }
        Err(e) => {
            assert!(
                e.offset <= nchars,
                "error offset {} past the end: {e:?}",
                e.offset
            );
            assert!(!e.message.is_empty());
        }
    }

    let Ok(words) = shell::pattern_words(command) else {
        return;
    };
    assert!(!words.is_empty(), "a pattern has at least one word");
    assert!(
        words.iter().all(|w| !w.dynamic),
        "a pattern has no expansion"
    );
    if words.iter().any(|w| w.glob) {
        return;
    }
    // `pattern_words` accepted it: exactly one plain command, which `parse` also gives (first
    // of its segments of origin Command; wrapped ones come after with the same offset). `parse`
    // also looks into what the command runs (`sh -c 'a('`), which may not parse: then no rule
    // matches anyway (the policy asks about a command it cannot analyse).
    let Ok(segments) = parsed else {
        return;
    };
    // Never the command inside a substitution (`for f in $(curl x)` is not `curl x`).
    let seg = segments
        .iter()
        .find(|s| s.origin == Origin::Command)
        .unwrap_or_else(|| panic!("pattern {command:?} is the command inside a substitution"));
    assert_eq!(seg.words, words, "pattern_words and parse split alike");
    for ignore_case in [false, true] {
        if let Ok(p) = CommandPattern::new(command, ignore_case) {
            assert!(
                p.matches(&seg.words),
                "the literal pattern {command:?} (ignore_case {ignore_case}) does not match \
                 the command written the same way: {:?}",
                seg.words
            );
        }
    }
}
