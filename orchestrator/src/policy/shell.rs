//! A conservative parser for `run_shell` command lines: it splits a command into the simple
//! commands ("segments") that would run — across pipes, `&&`, `||`, `;`, `&`, newlines,
//! subshells, `{ …; }` groups, `$(…)`, backticks, `if`/`while`/`for` bodies and commands that
//! run other commands (`sh -c`, `xargs`, `env`, `find -exec`, …) — so the policy can judge each
//! one. Pure and sans-IO.
//!
//! It never guesses: anything it does not analyse (here-documents, `case`, function
//! definitions, `$'…'`, process substitution, unbalanced quotes or parentheses, a trailing
//! operator) is a [`ParseError`], and the policy never allows an unparseable command without
//! asking.

use std::fmt;

/// Deepest nesting of subshells and substitutions analysed (deeper is a parse error).
const MAX_DEPTH: usize = 32;

/// One word of a command after quote removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The word's text with quotes and escapes removed. Expansions are shown as written
    /// (`$HOME`, `$(…)`), and make the word [`dynamic`](Word::dynamic).
    pub text: String,
    /// Contains a parameter expansion, command substitution, arithmetic or `~`: its value is
    /// only known at run time.
    pub dynamic: bool,
    /// Contains an unquoted `*`, `?` or `[`: the shell may expand it to file names.
    pub glob: bool,
}

/// A redirection of a segment (`> out.txt`, `2>&1`, `< in`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The operator as written (`>`, `>>`, `2>`, `&>`, `<`, `>&` …).
    pub op: String,
    pub target: Word,
}

impl Redirect {
    /// Whether the redirection writes (creates or truncates) a file. Duplicating a descriptor
    /// (`2>&1`, `>&-`) and `/dev/null` do not count.
    pub fn writes_file(&self) -> bool {
        let op = self.op.trim_start_matches(|c: char| c.is_ascii_digit());
        let dup = matches!(op, ">&" | "<&")
            && (self.target.text == "-" || self.target.text.chars().all(|c| c.is_ascii_digit()));
        if dup || op == "<" || op == "<&" {
            return false;
        }
        self.target.dynamic || self.target.text != "/dev/null"
    }

    /// Whether the target names a file (rather than a descriptor).
    pub fn names_file(&self) -> bool {
        let op = self.op.trim_start_matches(|c: char| c.is_ascii_digit());
        !(matches!(op, ">&" | "<&")
            && (self.target.text == "-" || self.target.text.chars().all(|c| c.is_ascii_digit())))
    }
}

/// Where a segment was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A command of the command line itself (possibly in a pipeline or a `( … )` subshell).
    Command,
    /// Inside `$( … )` or backticks.
    Substitution,
    /// The command another command runs (`sh -c '…'`, `xargs rm`, `env X=1 cmd`, `find -exec`).
    Wrapped,
}

/// One simple command that would run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Command name and arguments (assignments and redirections removed). Empty for a segment
    /// that only assigns or redirects (`X=1`, `> file`).
    pub words: Vec<Word>,
    /// Leading `NAME=value` assignments.
    pub assignments: Vec<String>,
    pub redirects: Vec<Redirect>,
    /// The segment as written (for explanations).
    pub source: String,
    pub origin: Origin,
    /// Character offset of the segment in the command line (for ordering).
    pub offset: usize,
}

impl Segment {
    /// The command name, if the segment has one.
    pub fn command(&self) -> Option<&Word> {
        self.words.first()
    }

    /// Whether any redirection writes a file.
    pub fn writes_file(&self) -> bool {
        self.redirects.iter().any(Redirect::writes_file)
    }
}

/// Why a command could not be analysed; `offset` is a character offset into the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at character {})", self.message, self.offset + 1)
    }
}

impl std::error::Error for ParseError {}

/// Splits `command` into the segments that would run, in source order.
pub fn parse(command: &str) -> Result<Vec<Segment>, ParseError> {
    let mut out = Vec::new();
    for seg in parse_unwrapped(command)? {
        unwrap_into(seg, &mut out, 0)?;
    }
    out.sort_by_key(|s| s.offset);
    Ok(out)
}

/// The segments as written, without looking into commands that run commands.
fn parse_unwrapped(command: &str) -> Result<Vec<Segment>, ParseError> {
    let chars: Vec<char> = command.chars().collect();
    let mut p = Parser {
        src: &chars,
        pos: 0,
        base: 0,
        depth: 0,
        segments: Vec::new(),
    };
    p.parse_list(None)?;
    p.segments.sort_by_key(|s| s.offset);
    Ok(p.segments)
}

/// Splits a pattern (the `command` of a policy rule) into words: plain words and quotes only.
pub fn pattern_words(pattern: &str) -> Result<Vec<Word>, ParseError> {
    let segs = parse_unwrapped(pattern)?;
    match segs.as_slice() {
        // Of origin Command: the only segment of `for f in $(curl x)` is the substitution's.
        [one]
            if one.origin == Origin::Command
                && one.redirects.is_empty()
                && one.assignments.is_empty() =>
        {
            if let Some(w) = one.words.iter().find(|w| w.dynamic) {
                return Err(ParseError {
                    offset: 0,
                    message: format!(
                        "`{}`: a command pattern cannot contain `$` expansions or substitutions",
                        w.text
                    ),
                });
            }
            Ok(one.words.clone())
        }
        [] => Err(ParseError {
            offset: 0,
            message: "the command pattern is empty".into(),
        }),
        _ => Err(ParseError {
            offset: 0,
            message: "a command pattern is one simple command: no `|`, `;`, `&&`, redirections or assignments (each segment of a command line is matched on its own)".into(),
        }),
    }
}

struct Parser<'a> {
    src: &'a [char],
    pos: usize,
    /// Offset of `src` in the outermost command (for backtick bodies parsed on their own).
    base: usize,
    depth: usize,
    segments: Vec<Segment>,
}

fn is_meta(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\n' | ';' | '&' | '|' | '(' | ')' | '<' | '>'
    )
}

/// Words that open or close compound commands; they stand before (or after) the commands
/// that actually run and are skipped.
const SKIPPED_RESERVED: [&str; 12] = [
    "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}",
];

impl<'a> Parser<'a> {
    fn err<T>(&self, offset: usize, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            offset: self.base + offset,
            message: message.into(),
        })
    }

    fn peek(&self) -> Option<char> {
        self.src.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.src.get(self.pos + n).copied()
    }

    /// Skips blanks and `\`-newline continuations.
    fn skip_blanks(&mut self) {
        loop {
            match self.peek() {
                Some(' ' | '\t') => self.pos += 1,
                Some('\\') if self.peek_at(1) == Some('\n') => self.pos += 2,
                _ => return,
            }
        }
    }

    fn skip_comment(&mut self) {
        while let Some(c) = self.peek() {
            if c == '\n' {
                return;
            }
            self.pos += 1;
        }
    }

    /// Parses commands and operators until the end of input or, with `close`, the matching
    /// `)` (consumed).
    fn parse_list(&mut self, close: Option<usize>) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err(
                self.pos,
                "the command nests subshells or substitutions too deeply",
            );
        }
        // After `|`, `&&` or `||` a command must follow.
        let mut need: Option<(usize, &'static str)> = None;
        // Whether the current position may start a command (not right after one).
        let mut at_start = true;
        loop {
            self.skip_blanks();
            let Some(c) = self.peek() else {
                if let Some(open) = close {
                    return self.err(open, "`(` is never closed by a matching `)`");
                }
                if let Some((at, op)) = need {
                    return self.err(
                        at,
                        format!("the command ends with `{op}`: a command must follow it"),
                    );
                }
                self.depth -= 1;
                return Ok(());
            };
            let start = self.pos;
            match c {
                '#' if at_start => self.skip_comment(),
                ')' => {
                    if let Some((at, op)) = need {
                        return self.err(at, format!("`{op}` must be followed by a command"));
                    }
                    if close.is_none() {
                        return self.err(start, "unbalanced `)`");
                    }
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                '\n' => {
                    self.pos += 1;
                    at_start = true;
                }
                ';' => {
                    if self.peek_at(1) == Some(';') {
                        return self.err(start, "`;;` (a `case` statement) is not analysed");
                    }
                    if let Some((at, op)) = need {
                        return self.err(at, format!("`{op}` must be followed by a command"));
                    }
                    if at_start {
                        return self.err(start, "`;` without a command before it");
                    }
                    self.pos += 1;
                    at_start = true;
                }
                '&' | '|' => {
                    let two = self.peek_at(1) == Some(c);
                    let op: &'static str = match (c, two) {
                        ('&', true) => "&&",
                        ('|', true) => "||",
                        ('&', false) => "&",
                        _ => "|",
                    };
                    if let Some((at, prev)) = need {
                        return self.err(at, format!("`{prev}` must be followed by a command"));
                    }
                    if at_start {
                        return self.err(start, format!("`{op}` without a command before it"));
                    }
                    self.pos += op.len();
                    if op == "|" && self.peek() == Some('&') {
                        self.pos += 1; // `|&`: pipes stderr too
                    }
                    at_start = true;
                    if op != "&" {
                        need = Some((start, op));
                    }
                }
                '(' => {
                    if !at_start {
                        return self.err(
                            start,
                            "`(` after a word (a function definition?) is not analysed",
                        );
                    }
                    if self.peek_at(1) == Some('(') {
                        return self.err(start, "`(( … ))` arithmetic commands are not analysed");
                    }
                    self.pos += 1;
                    self.parse_list(Some(start))?;
                    // Redirections may follow a subshell: `( … ) > out`.
                    let redirects = self.parse_trailing_redirects()?;
                    if !redirects.is_empty() {
                        self.push_segment(
                            start,
                            Vec::new(),
                            Vec::new(),
                            redirects,
                            Origin::Command,
                        );
                    }
                    need = None;
                    at_start = false;
                }
                _ => {
                    let complete = self.parse_command()?;
                    if complete {
                        need = None;
                        at_start = false;
                    } else {
                        // Only reserved words so far (`if`, `then` …): a command may follow.
                        at_start = true;
                    }
                }
            }
        }
    }

    /// Redirections after a subshell.
    fn parse_trailing_redirects(&mut self) -> Result<Vec<Redirect>, ParseError> {
        let mut out = Vec::new();
        loop {
            self.skip_blanks();
            if self.at_redirect() {
                out.push(self.parse_redirect()?);
            } else {
                return Ok(out);
            }
        }
    }

    /// Whether a redirection operator (optionally with an fd number) starts here.
    fn at_redirect(&self) -> bool {
        let mut i = self.pos;
        while self.src.get(i).is_some_and(|c| c.is_ascii_digit()) {
            i += 1;
        }
        match self.src.get(i) {
            Some('<' | '>') => true,
            Some('&') => i == self.pos && self.src.get(i + 1) == Some(&'>'),
            _ => false,
        }
    }

    fn parse_redirect(&mut self) -> Result<Redirect, ParseError> {
        let start = self.pos;
        let mut op = String::new();
        while let Some(c) = self.peek().filter(|c| c.is_ascii_digit()) {
            op.push(c);
            self.pos += 1;
        }
        let rest: String = self.src[self.pos..self.src.len().min(self.pos + 3)]
            .iter()
            .collect();
        let sym = if rest.starts_with("<<") {
            return self.err(
                start,
                "here-documents and here-strings (`<<`, `<<<`) are not analysed",
            );
        } else if rest.starts_with("&>>") {
            "&>>"
        } else if rest.starts_with("&>") {
            "&>"
        } else if rest.starts_with("<(") || rest.starts_with(">(") {
            return self.err(start, "process substitution `<( … )` is not analysed");
        } else if rest.starts_with(">>") {
            ">>"
        } else if rest.starts_with(">|") {
            ">|"
        } else if rest.starts_with(">&") {
            ">&"
        } else if rest.starts_with("<&") {
            "<&"
        } else if rest.starts_with("<>") {
            "<>"
        } else if rest.starts_with('>') {
            ">"
        } else {
            "<"
        };
        op.push_str(sym);
        self.pos += sym.len();
        self.skip_blanks();
        match self.peek() {
            Some(c) if !is_meta(c) => {}
            _ => return self.err(start, format!("`{op}` needs a target")),
        }
        let target = self.parse_word()?;
        Ok(Redirect { op, target })
    }

    fn push_segment(
        &mut self,
        start: usize,
        words: Vec<Word>,
        assignments: Vec<String>,
        redirects: Vec<Redirect>,
        origin: Origin,
    ) {
        let source: String = self.src[start..self.pos].iter().collect();
        self.segments.push(Segment {
            words,
            assignments,
            redirects,
            source: source.trim().to_string(),
            origin,
            offset: self.base + start,
        });
    }

    /// Parses one simple command up to an operator. Returns false when it held only reserved
    /// words (so the next thing may still be a command, e.g. after `then`).
    fn parse_command(&mut self) -> Result<bool, ParseError> {
        let mut start = self.pos;
        let mut words: Vec<Word> = Vec::new();
        let mut assignments = Vec::new();
        let mut redirects = Vec::new();
        loop {
            self.skip_blanks();
            let Some(c) = self.peek() else { break };
            if self.at_redirect() {
                redirects.push(self.parse_redirect()?);
                continue;
            }
            if is_meta(c) {
                if c == '(' && !words.is_empty() {
                    return self.err(
                        self.pos,
                        "`(` after a word (a function definition?) is not analysed",
                    );
                }
                break;
            }
            if c == '#' {
                // `#` at the start of a word begins a comment.
                self.skip_comment();
                break;
            }
            let word_start = self.pos;
            let raw_start = self.pos;
            let w = self.parse_word()?;
            let raw: String = self.src[raw_start..self.pos].iter().collect();
            if words.is_empty() && assignments.is_empty() && redirects.is_empty() {
                // Reserved words only count unquoted, in command position.
                if raw == w.text && SKIPPED_RESERVED.contains(&raw.as_str()) {
                    start = self.pos;
                    // `{`/`}`/`then`… : the command (if any) starts after it.
                    continue;
                }
                if raw == w.text
                    && matches!(raw.as_str(), "case" | "select" | "function" | "coproc")
                {
                    return self.err(word_start, format!("`{raw}` is not analysed"));
                }
                if raw == w.text && raw == "for" {
                    self.parse_for_head(word_start)?;
                    return Ok(false);
                }
            }
            if words.is_empty() && is_assignment(&raw) {
                assignments.push(w.text);
                continue;
            }
            words.push(w);
        }
        if words.is_empty() && assignments.is_empty() && redirects.is_empty() {
            return Ok(false);
        }
        self.push_segment(start, words, assignments, redirects, Origin::Command);
        Ok(true)
    }

    /// `for NAME [in WORD…]` up to `;` or a newline; substitutions in the words are parsed.
    fn parse_for_head(&mut self, at: usize) -> Result<(), ParseError> {
        self.skip_blanks();
        let name = match self.peek() {
            Some(c) if !is_meta(c) => self.parse_word()?,
            _ => return self.err(at, "`for` needs a variable name"),
        };
        if name.dynamic || !is_name(&name.text) {
            return self.err(at, format!("`for {}`: not a variable name", name.text));
        }
        loop {
            self.skip_blanks();
            match self.peek() {
                None | Some(';' | '\n') => break,
                Some(c) if is_meta(c) => {
                    return self.err(self.pos, format!("unexpected `{c}` in a `for` list"))
                }
                Some(_) => {
                    self.parse_word()?;
                }
            }
        }
        if self.peek() == Some(';') {
            self.pos += 1;
        }
        Ok(())
    }

    /// Parses one word up to an unquoted metacharacter, parsing any substitutions in it.
    fn parse_word(&mut self) -> Result<Word, ParseError> {
        let mut w = Word {
            text: String::new(),
            dynamic: false,
            glob: false,
        };
        let first = self.pos;
        while let Some(c) = self.peek() {
            if is_meta(c) {
                break;
            }
            match c {
                '\'' => {
                    let open = self.pos;
                    self.pos += 1;
                    loop {
                        match self.peek() {
                            None => return self.err(open, "unterminated single quote `'`"),
                            Some('\'') => {
                                self.pos += 1;
                                break;
                            }
                            Some(ch) => {
                                w.text.push(ch);
                                self.pos += 1;
                            }
                        }
                    }
                }
                '"' => self.parse_double_quoted(&mut w)?,
                '\\' => match self.peek_at(1) {
                    None => return self.err(self.pos, "the command ends with a lone `\\`"),
                    Some('\n') => self.pos += 2,
                    Some(ch) => {
                        w.text.push(ch);
                        self.pos += 2;
                    }
                },
                '$' => self.parse_dollar(&mut w)?,
                '`' => self.parse_backticks(&mut w)?,
                '~' if self.pos == first => {
                    w.dynamic = true;
                    w.text.push(c);
                    self.pos += 1;
                }
                '*' | '?' | '[' => {
                    w.glob = true;
                    w.text.push(c);
                    self.pos += 1;
                }
                _ => {
                    w.text.push(c);
                    self.pos += 1;
                }
            }
        }
        Ok(w)
    }

    fn parse_double_quoted(&mut self, w: &mut Word) -> Result<(), ParseError> {
        let open = self.pos;
        self.pos += 1;
        loop {
            match self.peek() {
                None => return self.err(open, "unterminated double quote `\"`"),
                Some('"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some('\\') => match self.peek_at(1) {
                    Some(ch @ ('$' | '`' | '"' | '\\')) => {
                        w.text.push(ch);
                        self.pos += 2;
                    }
                    Some('\n') => self.pos += 2,
                    _ => {
                        w.text.push('\\');
                        self.pos += 1;
                    }
                },
                Some('$') => self.parse_dollar(w)?,
                Some('`') => self.parse_backticks(w)?,
                Some(ch) => {
                    w.text.push(ch);
                    self.pos += 1;
                }
            }
        }
    }

    /// `$name`, `${…}`, `$(…)`, `$((…))`, or a literal `$`.
    fn parse_dollar(&mut self, w: &mut Word) -> Result<(), ParseError> {
        let start = self.pos;
        match self.peek_at(1) {
            Some('(') if self.peek_at(2) == Some('(') => {
                // Arithmetic: opaque, but must not hide commands.
                let end = self.find_arith_end(start)?;
                let body: String = self.src[start + 3..end].iter().collect();
                if body.contains("$(") || body.contains('`') {
                    return self.err(
                        start,
                        "command substitution inside `$(( … ))` is not analysed",
                    );
                }
                self.pos = end + 2;
                w.text.push_str("$((…))");
                w.dynamic = true;
            }
            Some('(') => {
                self.pos += 2;
                let before = self.segments.len();
                self.parse_list(Some(start))?;
                for s in &mut self.segments[before..] {
                    if s.origin == Origin::Command {
                        s.origin = Origin::Substitution;
                    }
                }
                w.text.push_str("$(…)");
                w.dynamic = true;
            }
            Some('{') => {
                let mut i = self.pos + 2;
                let mut nest = 1;
                while let Some(&c) = self.src.get(i) {
                    match c {
                        '{' => nest += 1,
                        '}' => {
                            nest -= 1;
                            if nest == 0 {
                                break;
                            }
                        }
                        '`' => {
                            return self
                                .err(i, "command substitution inside `${ … }` is not analysed")
                        }
                        '$' if self.src.get(i + 1) == Some(&'(') => {
                            return self
                                .err(i, "command substitution inside `${ … }` is not analysed")
                        }
                        _ => {}
                    }
                    i += 1;
                }
                if nest != 0 {
                    return self.err(start, "`${` is never closed by `}`");
                }
                let text: String = self.src[start..=i].iter().collect();
                w.text.push_str(&text);
                w.dynamic = true;
                self.pos = i + 1;
            }
            Some('\'') => {
                return self.err(start, "`$'…'` quoting is not analysed");
            }
            Some('"') => {
                // `$"…"` (locale translation) is the same as "…".
                self.pos += 1;
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let mut i = self.pos + 1;
                while self
                    .src
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    i += 1;
                }
                let text: String = self.src[start..i].iter().collect();
                w.text.push_str(&text);
                w.dynamic = true;
                self.pos = i;
            }
            Some(c) if c.is_ascii_digit() || "@*#?$!-".contains(c) => {
                w.text.push('$');
                w.text.push(c);
                w.dynamic = true;
                self.pos += 2;
            }
            _ => {
                w.text.push('$');
                self.pos += 1;
            }
        }
        Ok(())
    }

    /// The index of the first `)` of the `))` that closes `$((` at `start`.
    fn find_arith_end(&self, start: usize) -> Result<usize, ParseError> {
        let mut nest = 0usize;
        let mut i = start + 3;
        while let Some(&c) = self.src.get(i) {
            match c {
                '(' => nest += 1,
                ')' if nest > 0 => nest -= 1,
                ')' if self.src.get(i + 1) == Some(&')') => return Ok(i),
                ')' => return self.err(start, "`$((` is not closed by `))`"),
                _ => {}
            }
            i += 1;
        }
        self.err(start, "`$((` is not closed by `))`")
    }

    /// `` `…` ``: the body (with `\``, `\\`, `\$` unescaped) is parsed as a command on its own.
    fn parse_backticks(&mut self, w: &mut Word) -> Result<(), ParseError> {
        let open = self.pos;
        self.pos += 1;
        let mut body = String::new();
        loop {
            match self.peek() {
                None => return self.err(open, "unterminated backtick `` ` ``"),
                Some('`') => {
                    self.pos += 1;
                    break;
                }
                Some('\\') => match self.peek_at(1) {
                    Some(ch @ ('`' | '\\' | '$')) => {
                        body.push(ch);
                        self.pos += 2;
                    }
                    _ => {
                        body.push('\\');
                        self.pos += 1;
                    }
                },
                Some(ch) => {
                    body.push(ch);
                    self.pos += 1;
                }
            }
        }
        let chars: Vec<char> = body.chars().collect();
        let mut inner = Parser {
            src: &chars,
            pos: 0,
            base: self.base + open + 1,
            depth: self.depth,
            segments: Vec::new(),
        };
        inner.parse_list(None)?;
        for mut s in inner.segments {
            if s.origin == Origin::Command {
                s.origin = Origin::Substitution;
            }
            self.segments.push(s);
        }
        w.text.push_str("`…`");
        w.dynamic = true;
        Ok(())
    }
}

fn is_name(s: &str) -> bool {
    let mut cs = s.chars();
    cs.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `NAME=…` as written (the `=` unquoted, the name plain).
fn is_assignment(raw: &str) -> bool {
    raw.split_once('=').is_some_and(|(name, _)| is_name(name))
}

/// The base name of a command word (`/usr/bin/env` → `env`).
pub fn base_name(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// Adds `seg` and, for commands that run another command, the command they run.
fn unwrap_into(seg: Segment, out: &mut Vec<Segment>, depth: usize) -> Result<(), ParseError> {
    if depth > MAX_DEPTH {
        return Err(ParseError {
            offset: seg.offset,
            message: "commands wrap other commands too deeply".into(),
        });
    }
    let inner = wrapped(&seg)?;
    let (offset, origin) = (seg.offset, seg.origin);
    out.push(seg);
    match inner {
        Wrapped::None => {}
        Wrapped::Words(words) => {
            let source = words
                .iter()
                .map(|w| w.text.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            let s = Segment {
                words,
                assignments: Vec::new(),
                redirects: Vec::new(),
                source,
                origin: Origin::Wrapped,
                offset,
            };
            unwrap_into(s, out, depth + 1)?;
        }
        Wrapped::Script(script) => {
            // Unwrapped here, once, with the depth carried on (not by `parse`, which would
            // unwrap each script again and restart the count: exponential in nesting).
            let segs = parse_unwrapped(&script).map_err(|e| ParseError {
                offset,
                message: format!("in the script given to a shell: {}", e.message),
            })?;
            for mut s in segs {
                s.offset = offset;
                if origin != Origin::Substitution || s.origin == Origin::Command {
                    s.origin = Origin::Wrapped;
                }
                unwrap_into(s, out, depth + 1)?;
            }
        }
    }
    Ok(())
}

enum Wrapped {
    None,
    Words(Vec<Word>),
    Script(String),
}

const SHELLS: [&str; 6] = ["sh", "bash", "dash", "ash", "zsh", "ksh"];

/// What `seg` runs besides itself: the words of a wrapped command, or a script.
fn wrapped(seg: &Segment) -> Result<Wrapped, ParseError> {
    let Some(cmd) = seg.words.first() else {
        return Ok(Wrapped::None);
    };
    if cmd.dynamic {
        return Ok(Wrapped::None);
    }
    let name = base_name(&cmd.text);
    let args = &seg.words[1..];
    let computed = |what: &str| ParseError {
        offset: seg.offset,
        message: format!("the command given to `{what}` is computed at run time"),
    };
    let rest_from = |i: usize| -> Wrapped {
        if i < args.len() {
            Wrapped::Words(args[i..].to_vec())
        } else {
            Wrapped::None
        }
    };
    // Skips leading options; `with_value` lists options that take a separate value.
    let skip_opts = |with_value: &[&str]| -> usize {
        let mut i = 0;
        while i < args.len() && args[i].text.starts_with('-') && args[i].text.len() > 1 {
            if args[i].text == "--" {
                return i + 1;
            }
            if with_value.contains(&args[i].text.as_str()) {
                i += 1;
            }
            i += 1;
        }
        i
    };
    Ok(match name {
        n if SHELLS.contains(&n) => {
            // `sh -c SCRIPT …`: the script is a command line of its own.
            let mut i = 0;
            while i < args.len() && args[i].text.starts_with('-') {
                if args[i].text.contains('c') && !args[i].text.starts_with("--") {
                    let Some(script) = args.get(i + 1) else {
                        return Ok(Wrapped::None);
                    };
                    if script.dynamic {
                        return Err(computed(n));
                    }
                    return Ok(Wrapped::Script(script.text.clone()));
                }
                i += 1;
            }
            Wrapped::None
        }
        "eval" => {
            if args.iter().any(|a| a.dynamic) {
                return Err(computed("eval"));
            }
            let script = args
                .iter()
                .map(|a| a.text.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            Wrapped::Script(script)
        }
        "busybox" => rest_from(0),
        "nohup" | "time" | "setsid" | "exec" | "builtin" => rest_from(skip_opts(&[])),
        "command" => rest_from(skip_opts(&[])),
        "nice" => rest_from(skip_opts(&["-n"])),
        "stdbuf" => rest_from(skip_opts(&["-i", "-o", "-e"])),
        "env" => {
            let mut i = skip_opts(&["-u", "-C", "-S"]);
            while i < args.len() && is_assignment(&args[i].text) {
                i += 1;
            }
            rest_from(i)
        }
        "timeout" => {
            // timeout [OPTIONS] DURATION COMMAND…
            let i = skip_opts(&["-s", "-k", "--signal", "--kill-after"]);
            rest_from(i + 1)
        }
        "xargs" => rest_from(skip_opts(&[
            "-n", "-I", "-i", "-d", "-P", "-L", "-l", "-s", "-E", "-e", "-a",
        ])),
        "find" => {
            // find … -exec CMD … ;  (also -execdir, -ok, -okdir)
            let Some(i) = args
                .iter()
                .position(|a| matches!(a.text.as_str(), "-exec" | "-execdir" | "-ok" | "-okdir"))
            else {
                return Ok(Wrapped::None);
            };
            let end = args[i + 1..]
                .iter()
                .position(|a| a.text == ";" || a.text == "+")
                .map_or(args.len(), |p| i + 1 + p);
            if end > i + 1 {
                Wrapped::Words(args[i + 1..end].to_vec())
            } else {
                Wrapped::None
            }
        }
        _ => Wrapped::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The segments as lists of words (dynamic words as written).
    fn segs(cmd: &str) -> Vec<Vec<String>> {
        parse(cmd)
            .unwrap_or_else(|e| panic!("`{cmd}` should parse: {e}"))
            .into_iter()
            .filter(|s| !s.words.is_empty())
            .map(|s| s.words.into_iter().map(|w| w.text).collect())
            .collect()
    }

    fn v(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn splits_on_every_operator() {
        let cases: &[(&str, &[&[&str]])] = &[
            ("ls; curl x", &[&["ls"], &["curl", "x"]]),
            ("cat a | sh", &[&["cat", "a"], &["sh"]]),
            ("a && rm -rf /", &[&["a"], &["rm", "-rf", "/"]]),
            ("a || b", &[&["a"], &["b"]]),
            ("a & b", &[&["a"], &["b"]]),
            ("a |& b", &[&["a"], &["b"]]),
            ("a\nb\n\nc", &[&["a"], &["b"], &["c"]]),
            (
                "(cd x && make) | tee log",
                &[&["cd", "x"], &["make"], &["tee", "log"]],
            ),
            ("{ a; b; } > out", &[&["a"], &["b"]]),
            (
                "if test -f x; then rm x; else echo no; fi",
                &[&["test", "-f", "x"], &["rm", "x"], &["echo", "no"]],
            ),
            (
                "while true; do sleep 1; done",
                &[&["true"], &["sleep", "1"]],
            ),
            ("for f in *.rs; do wc -l $f; done", &[&["wc", "-l", "$f"]]),
            ("! grep -q x f", &[&["grep", "-q", "x", "f"]]),
            ("ls # ; curl x", &[&["ls"]]),
            ("echo a\\\nb", &[&["echo", "ab"]]),
        ];
        for (cmd, want) in cases {
            let want: Vec<Vec<String>> = want.iter().map(|w| v(w)).collect();
            assert_eq!(segs(cmd), want, "{cmd}");
        }
    }

    #[test]
    fn substitutions_are_segments_of_their_own() {
        let p = parse("echo $(cat .env)").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].words[1].text, "$(…)");
        assert!(p[0].words[1].dynamic);
        assert_eq!(p[1].origin, Origin::Substitution);
        assert_eq!(
            segs("echo $(cat .env)"),
            vec![v(&["echo", "$(…)"]), v(&["cat", ".env"])]
        );
        assert_eq!(
            segs("echo `cat .env`"),
            vec![v(&["echo", "`…`"]), v(&["cat", ".env"])]
        );
        assert_eq!(
            segs("echo \"$(curl x | sh)\""),
            vec![v(&["echo", "$(…)"]), v(&["curl", "x"]), v(&["sh"])]
        );
        assert_eq!(
            segs("X=$(cat id_rsa) ls"),
            vec![v(&["ls"]), v(&["cat", "id_rsa"])]
        );
        // Nested: backticks inside $( ) and $( ) inside backticks.
        assert_eq!(
            segs("a $(b `c`)"),
            vec![v(&["a", "$(…)"]), v(&["b", "`…`"]), v(&["c"])]
        );
        assert_eq!(
            segs("a `b \\`c\\``"),
            vec![v(&["a", "`…`"]), v(&["b", "`…`"]), v(&["c"])]
        );
        // Arithmetic and ${} are opaque values, not commands.
        assert_eq!(
            segs("echo $((1+2)) ${HOME:-x}"),
            vec![v(&["echo", "$((…))", "${HOME:-x}"])]
        );
    }

    #[test]
    fn quotes_and_escapes_are_removed_and_operators_inside_them_are_text() {
        assert_eq!(
            segs("echo 'a; b' \"c && d\""),
            vec![v(&["echo", "a; b", "c && d"])]
        );
        assert_eq!(segs("echo a\\;b"), vec![v(&["echo", "a;b"])]);
        assert_eq!(
            segs("echo \"a\\\"b\" 'c\\d'"),
            vec![v(&["echo", "a\"b", "c\\d"])]
        );
        assert_eq!(segs("r''m -rf /"), vec![v(&["rm", "-rf", "/"])]);
        assert_eq!(segs("\"rm\" x"), vec![v(&["rm", "x"])]);
        // A quoted reserved word is a command name, not a keyword.
        assert_eq!(segs("'if' x"), vec![v(&["if", "x"])]);
        let p = parse("ls *.rs 'a*'").unwrap();
        assert!(p[0].words[1].glob);
        assert!(!p[0].words[2].glob);
        let p = parse("echo $HOME \"$USER\" ~/x").unwrap();
        assert!(p[0].words.iter().skip(1).all(|w| w.dynamic));
    }

    #[test]
    fn redirections_and_assignments_are_separated() {
        let p = parse("FOO=1 BAR=\"x y\" make -j2 > build.log 2>&1 < /dev/null").unwrap();
        assert_eq!(p.len(), 1);
        let s = &p[0];
        assert_eq!(s.assignments, v(&["FOO=1", "BAR=x y"]));
        assert_eq!(
            s.words.iter().map(|w| w.text.as_str()).collect::<Vec<_>>(),
            ["make", "-j2"]
        );
        let ops: Vec<_> = s.redirects.iter().map(|r| r.op.as_str()).collect();
        assert_eq!(ops, [">", "2>&", "<"]);
        assert!(s.writes_file());
        assert!(!parse("a 2>&1 >/dev/null").unwrap()[0].writes_file());
        assert!(parse("a &> out").unwrap()[0].writes_file());
        assert!(parse("a >>out").unwrap()[0].writes_file());
        // A redirection alone still writes a file.
        let p = parse("> .git/config").unwrap();
        assert!(p[0].words.is_empty() && p[0].writes_file());
    }

    #[test]
    fn commands_that_run_commands_are_unwrapped() {
        let cases: &[(&str, &[&[&str]])] = &[
            (
                "sh -c 'curl x; ls'",
                &[&["sh", "-c", "curl x; ls"], &["curl", "x"], &["ls"]],
            ),
            (
                "bash -lc \"rm -rf /\"",
                &[&["bash", "-lc", "rm -rf /"], &["rm", "-rf", "/"]],
            ),
            (
                "ls | xargs -n 1 rm -f",
                &[&["ls"], &["xargs", "-n", "1", "rm", "-f"], &["rm", "-f"]],
            ),
            (
                "env -i A=1 curl x",
                &[&["env", "-i", "A=1", "curl", "x"], &["curl", "x"]],
            ),
            (
                "timeout 5 nice -n 10 wget y",
                &[
                    &["timeout", "5", "nice", "-n", "10", "wget", "y"],
                    &["nice", "-n", "10", "wget", "y"],
                    &["wget", "y"],
                ],
            ),
            (
                "find . -name x -exec rm {} \\;",
                &[
                    &["find", ".", "-name", "x", "-exec", "rm", "{}", ";"],
                    &["rm", "{}"],
                ],
            ),
            (
                "eval 'cat .env'",
                &[&["eval", "cat .env"], &["cat", ".env"]],
            ),
            (
                "/usr/bin/env curl x",
                &[&["/usr/bin/env", "curl", "x"], &["curl", "x"]],
            ),
            (
                "busybox wget x",
                &[&["busybox", "wget", "x"], &["wget", "x"]],
            ),
        ];
        for (cmd, want) in cases {
            let want: Vec<Vec<String>> = want.iter().map(|w| v(w)).collect();
            assert_eq!(segs(cmd), want, "{cmd}");
        }
        assert!(parse("sh -c \"$X\"").is_err());
        assert!(parse("eval $X").is_err());
        assert!(parse("sh -c 'echo \"unbalanced'").is_err());
    }

    #[test]
    fn what_is_not_analysed_does_not_parse() {
        let bad = [
            ("echo 'unterminated", "single quote"),
            ("echo \"unterminated", "double quote"),
            ("echo `unterminated", "backtick"),
            ("echo $(ls", "never closed"),
            ("ls )", "unbalanced"),
            ("(ls", "never closed"),
            ("ls |", "ends with `|`"),
            ("ls &&", "ends with `&&`"),
            ("| ls", "without a command"),
            ("ls ;; x", "case"),
            ("ls && ; x", "must be followed"),
            ("cat <<EOF\nx\nEOF", "here-documents"),
            ("cat <<< x", "here-documents"),
            ("diff <(ls) x", "process substitution"),
            ("case x in a) ls;; esac", "not analysed"),
            ("f() { ls; }", "function"),
            ("echo $'a\\'b'", "not analysed"),
            ("echo ${X:-$(rm -rf /)}", "inside `${"),
            ("echo $(( $(cat x) ))", "inside `$(("),
            ("echo x\\", "lone"),
            ("a > ", "needs a target"),
        ];
        for (cmd, why) in bad {
            match parse(cmd) {
                Ok(s) => panic!("`{cmd}` should not parse, got {s:?}"),
                Err(e) => assert!(e.message.contains(why), "`{cmd}`: {e}"),
            }
        }
        let deep = "$(".repeat(100) + &")".repeat(100);
        assert!(parse(&deep).unwrap_err().message.contains("deeply"));
    }

    #[test]
    fn patterns_are_single_plain_commands() {
        let w = pattern_words("git status *").unwrap();
        assert_eq!(w.len(), 3);
        assert!(w[2].glob);
        assert!(pattern_words("a | b").is_err());
        assert!(pattern_words("echo $HOME").is_err());
        assert!(pattern_words("").is_err());
        assert!(pattern_words("'unbalanced").is_err());
    }

    /// Fuzz finding 2 (fuzz/ shell target): each `eval`/`sh -c` script was unwrapped twice
    /// (by `parse`, then again by `unwrap_into` on every segment `parse` returned) and each
    /// script restarted the depth count, so `eval eval … ls` took exponential time and memory
    /// (14 `eval`s: over 2 GB).
    #[test]
    fn nested_scripts_are_unwrapped_once_and_count_towards_the_depth() {
        assert_eq!(
            segs("eval eval 'sh -c ls'"),
            vec![
                v(&["eval", "eval", "sh -c ls"]),
                v(&["eval", "sh", "-c", "ls"]),
                v(&["sh", "-c", "ls"]),
                v(&["ls"]),
            ]
        );
        let deep = "eval ".repeat(40) + "ls";
        let start = std::time::Instant::now();
        assert!(parse(&deep).unwrap_err().message.contains("too deeply"));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    /// Fuzz finding 4 (fuzz/ shell target): a pattern whose only segment comes from inside a
    /// substitution was accepted as that inner command (the `for` head makes no segment), so
    /// the rule pattern `for f in $(curl x)` became the pattern `curl x`.
    #[test]
    fn a_pattern_is_never_the_command_inside_a_substitution() {
        for p in ["for f in `rm -rf x`", "for f in $(curl x)"] {
            assert!(pattern_words(p).is_err(), "{p}");
        }
        assert_eq!(pattern_words("if ls").unwrap().len(), 1);
    }
}
