//! Asks the operator on the terminal: a capsule's install/upgrade questions and the approval of
//! its capability requests. Prompts go to stderr, answers come from stdin one line each,
//! secrets are read with echo off when stdin is a terminal, and questions are asked one at a
//! time even if capsules ask concurrently. With stdin closed, every question is refused rather
//! than answered with a guess. Text from a capsule (its description, keys, options, paths) is
//! shown with control characters and invisible formatting escaped, never interpreted, so a
//! manifest cannot clear the screen, move the cursor or fake lines of the prompt.

use std::io::{BufRead, Write};
use std::sync::Arc;

use capsule_runtime::{
    Approval, ApprovalRequest, Approver, ElicitAnswer, ElicitKind, ElicitPrompt, ElicitRefusal,
    Elicitor,
};
use futures::future::BoxFuture;

/// How many times a select question is re-asked after an answer that is not an option.
const SELECT_ATTEMPTS: usize = 3;

/// The `capsule run` elicitor and approver.
#[derive(Default)]
pub(crate) struct TerminalPrompter {
    /// Serialises questions: two prompts never interleave on one terminal.
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl Elicitor for TerminalPrompter {
    fn elicit(
        &self,
        prompt: ElicitPrompt,
    ) -> BoxFuture<'static, Result<ElicitAnswer, ElicitRefusal>> {
        let turn = Arc::clone(&self.turn);
        Box::pin(async move {
            let _mine = turn.lock().await;
            tokio::task::spawn_blocking(move || ask(&prompt, &mut Terminal))
                .await
                .unwrap_or_else(|e| Err(ElicitRefusal::Unavailable(format!("prompt failed: {e}"))))
        })
    }
}

impl Approver for TerminalPrompter {
    fn approve(&self, request: ApprovalRequest) -> BoxFuture<'static, Approval> {
        let turn = Arc::clone(&self.turn);
        Box::pin(async move {
            let _mine = turn.lock().await;
            tokio::task::spawn_blocking(move || approve(&request, &mut Terminal))
                .await
                .unwrap_or(Approval::Decline)
        })
    }
}

/// `text` as it may be shown on a terminal: control characters (C0, DEL, C1), line and
/// paragraph separators and invisible formatting (bidirectional overrides, zero-width
/// characters) become `\u{…}` escapes, and a backslash is doubled so an escape cannot be
/// faked.
pub(crate) fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if interpreted(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a terminal would act on `c` rather than show it: a control character (C0, DEL,
/// C1), a line or paragraph separator, or invisible formatting (the host's whole
/// [`printable`](capsule_runtime::store::identity::printable) set: fillers, variation
/// selectors, tags), which would let two different texts look alike.
fn interpreted(c: char) -> bool {
    c.is_control()
        || !capsule_runtime::store::identity::printable(c)
        || matches!(
            c,
            '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

/// `text` with every character a terminal would act on escaped except its line breaks, and
/// nothing else touched: applied to whatever the program prints last, so text that was
/// escaped already passes unchanged and text that was not cannot act on the terminal.
pub(crate) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if interpreted(c) && c != '\n' {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// One log record as it may reach the terminal: the formatter already escapes ESC inside
/// field values (and uses it for colours), so what is left are the other control characters a
/// capsule or a remote user can put in a field (a carriage return that overwrites the line, a
/// line break that forges a record of its own) become `\u{…}` escapes, except the record's
/// own final line break. Backslashes are left alone: field values are already quoted by the
/// formatter, and a log is read, not parsed.
pub(crate) fn log_record(record: &str) -> String {
    let (body, end) = match record.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (record, ""),
    };
    let mut out = String::with_capacity(record.len());
    for c in body.chars() {
        if interpreted(c) && c != '\x1b' && c != '\t' {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out.push_str(end);
    out
}

/// Where `capsule` writes its log records: stderr, one whole record per write, through
/// [`log_record`].
pub(crate) struct LogStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogStderr {
    type Writer = LogStderr;

    fn make_writer(&'a self) -> Self::Writer {
        LogStderr
    }
}

impl Write for LogStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let record = log_record(&String::from_utf8_lossy(buf));
        std::io::stderr().lock().write_all(record.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `text` shown line by line: its line breaks are kept, everything else is [`shown`].
pub(crate) fn shown_lines(text: &str) -> String {
    text.split('\n').map(shown).collect::<Vec<_>>().join("\n")
}

/// Shows one screen with everything `r` asks for and reads a yes or no.
fn approve(r: &ApprovalRequest, io: &mut impl Lines) -> Approval {
    let mut screen = vec![format!(
        "capsule `{}` {}{}{}",
        shown(&r.capsule),
        r.version,
        r.previous_version
            .as_ref()
            .map(|v| format!(" (upgrade from {v})"))
            .unwrap_or_default(),
        r.description
            .as_deref()
            .map(|d| format!(": {}", shown(d)))
            .unwrap_or_default(),
    )];
    screen.push("requests beyond its own confinement:".to_string());
    let mut list = |mark: &str, items: &[capsule_runtime::security::Request], note: &str| {
        for item in items {
            screen.push(format!("  {mark} {}{note}", shown(&item.to_string())));
        }
    };
    list("+", &r.diff.added, "  (needs your approval)");
    list("=", &r.diff.unchanged, "  (approved before)");
    list("x", &r.diff.denied, "  (refused before; stays refused)");
    list("-", &r.diff.removed, "  (no longer requested)");
    screen.push("may use without approval:".to_string());
    for u in &r.ungated {
        screen.push(format!("  {}", shown(u)));
    }
    io.note(&screen.join("\n"));
    match io.line("approve the requests marked + ? [y/N] ", true) {
        Ok(answer) if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") => {
            Approval::all(r)
        }
        Ok(_) => Approval::Decline,
        Err(e) => {
            io.note(&format!("not approved: {e}"));
            Approval::Decline
        }
    }
}

/// Where answers come from: the terminal, or a script in tests.
trait Lines {
    /// Shows `prompt` and reads one answer line; `echo` false hides the typing.
    fn line(&mut self, prompt: &str, echo: bool) -> Result<String, ElicitRefusal>;
    /// Tells the operator something.
    fn note(&mut self, text: &str);
}

/// stdin and stderr.
struct Terminal;

impl Lines for Terminal {
    fn line(&mut self, prompt: &str, echo: bool) -> Result<String, ElicitRefusal> {
        read_line(prompt, echo)
    }

    fn note(&mut self, text: &str) {
        eprintln!("{text}");
    }
}

fn ask(p: &ElicitPrompt, io: &mut impl Lines) -> Result<ElicitAnswer, ElicitRefusal> {
    let header = format!(
        "[{} for {}] {} ({})",
        shown(&p.capsule),
        p.principal,
        shown(&p.description),
        shown(&p.key)
    );
    match p.kind {
        ElicitKind::Text => {
            let default = p
                .default
                .as_deref()
                .map(|d| format!(" [{}]", shown(d)))
                .unwrap_or_default();
            let line = io.line(&format!("{header}{default}: "), true)?;
            Ok(ElicitAnswer::Value(match (&p.default, line.is_empty()) {
                (Some(d), true) => d.clone(),
                _ => line,
            }))
        }
        ElicitKind::Secret => {
            let line = io.line(&format!("{header} (hidden): "), false)?;
            Ok(ElicitAnswer::Secret(line.into_bytes()))
        }
        ElicitKind::Array => {
            let line = io.line(&format!("{header} (comma-separated): "), true)?;
            Ok(ElicitAnswer::Values(
                line.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ))
        }
        ElicitKind::Select => {
            let options = p.options.clone().unwrap_or_default();
            let listed: Vec<String> = options
                .iter()
                .enumerate()
                .map(|(i, o)| format!("  {}) {}", i + 1, shown(o)))
                .collect();
            for _ in 0..SELECT_ATTEMPTS {
                let line = io.line(
                    &format!(
                        "{header}\n{}\nchoose 1-{}: ",
                        listed.join("\n"),
                        options.len()
                    ),
                    true,
                )?;
                let chosen = line
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| n.checked_sub(1))
                    .and_then(|i| options.get(i).cloned())
                    .or_else(|| options.iter().find(|o| **o == line).cloned())
                    .or_else(|| p.default.clone().filter(|_| line.is_empty()));
                if let Some(value) = chosen {
                    return Ok(ElicitAnswer::Value(value));
                }
                io.note(&format!("`{}` is not one of the options", shown(&line)));
            }
            Err(ElicitRefusal::Cancelled)
        }
    }
}

/// Shows `prompt` on stderr and reads one answer line from stdin; `None` when stdin is closed.
pub(crate) fn read_answer(prompt: &str) -> Option<String> {
    read_line(prompt, true).ok()
}

/// Prints `prompt` to stderr and reads one line from stdin (without its line ending); with
/// `echo` false and a terminal on stdin, typing is not shown.
fn read_line(prompt: &str, echo: bool) -> Result<String, ElicitRefusal> {
    let mut err = std::io::stderr().lock();
    let _shown = write!(err, "{prompt}").and_then(|()| err.flush());
    drop(err);
    let stdin = std::io::stdin();
    let hidden = if echo { None } else { EchoOff::new(&stdin) };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if hidden.is_some() {
        // The user's Enter was not echoed either.
        eprintln!();
    }
    drop(hidden);
    match read {
        Ok(0) => Err(ElicitRefusal::Unavailable(
            "standard input is closed; nobody can answer".into(),
        )),
        Ok(_) => Ok(line.trim_end_matches(['\r', '\n']).to_string()),
        Err(e) => Err(ElicitRefusal::Unavailable(format!(
            "reading standard input: {e}"
        ))),
    }
}

/// Echo switched off on a terminal for as long as this lives.
struct EchoOff {
    saved: rustix::termios::Termios,
}

impl EchoOff {
    fn new(stdin: &std::io::Stdin) -> Option<Self> {
        use std::os::fd::AsFd;
        let fd = stdin.as_fd();
        if !rustix::termios::isatty(fd) {
            return None;
        }
        let saved = rustix::termios::tcgetattr(fd).ok()?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &quiet).ok()?;
        Some(Self { saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        use std::os::fd::AsFd;
        let stdin = std::io::stdin();
        // Best effort: if the terminal went away there is nothing left to restore.
        let _restored = rustix::termios::tcsetattr(
            stdin.as_fd(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers from a list; records whether each line was asked with echo, and everything
    /// shown.
    struct Script(Vec<&'static str>, Vec<bool>, String);

    impl Lines for Script {
        fn line(&mut self, prompt: &str, echo: bool) -> Result<String, ElicitRefusal> {
            self.1.push(echo);
            self.2.push_str(prompt);
            if self.0.is_empty() {
                return Err(ElicitRefusal::Unavailable("closed".into()));
            }
            Ok(self.0.remove(0).to_string())
        }
        fn note(&mut self, text: &str) {
            self.2.push_str(text);
            self.2.push('\n');
        }
    }

    /// Whether `screen` holds anything a terminal would interpret rather than show.
    fn interpretable(screen: &str) -> bool {
        screen
            .chars()
            .any(|c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c))
    }

    fn prompt(kind: ElicitKind, options: Option<&[&str]>, default: Option<&str>) -> ElicitPrompt {
        let principal =
            capsule_runtime::bus::PrincipalId::parse("p").unwrap_or_else(|e| panic!("{e}"));
        let mut prompt = ElicitPrompt::new("c", principal, kind, "K", "d");
        prompt.options = options.map(|o| o.iter().map(|s| s.to_string()).collect());
        prompt.default = default.map(str::to_owned);
        prompt
    }

    fn answer(
        p: &ElicitPrompt,
        lines: Vec<&'static str>,
    ) -> (Result<ElicitAnswer, ElicitRefusal>, Vec<bool>) {
        let mut s = Script(lines, Vec::new(), String::new());
        let a = ask(p, &mut s);
        (a, s.1)
    }

    #[test]
    fn escapes_make_control_text_visible_and_unambiguous() {
        assert_eq!(shown("plain /srv/data é"), "plain /srv/data é");
        assert_eq!(shown("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(shown("line\nfake"), "line\\u{a}fake");
        assert_eq!(shown("\u{202e}txt.exe"), "\\u{202e}txt.exe");
        assert_eq!(shown("\u{9b}31m"), "\\u{9b}31m", "C1 CSI");
        // Invisible characters that would make two texts look alike.
        assert_eq!(shown("/srv/x\u{fe0f}"), "/srv/x\\u{fe0f}");
        assert_eq!(shown("/srv/\u{ad}x\u{e0001}"), "/srv/\\u{ad}x\\u{e0001}");
        assert_eq!(shown("\u{3164}bob"), "\\u{3164}bob");
        assert_eq!(
            shown("\\u{1b}"),
            "\\\\u{1b}",
            "a literal escape stays distinguishable"
        );
    }

    #[test]
    fn log_records_cannot_forge_or_overwrite_lines() {
        let forged =
            "INFO inbound uplink message user=bob\r\nERROR capsule: key stolen\u{2028}\x0b\n";
        let shown = log_record(forged);
        assert_eq!(
            shown,
            "INFO inbound uplink message user=bob\\u{d}\\u{a}ERROR capsule: key stolen\\u{2028}\\u{b}\n"
        );
        assert_eq!(shown.matches('\n').count(), 1, "one record, one line");
        // The formatter's colours survive; a record without a final line break stays so.
        assert_eq!(
            log_record("\x1b[33mWARN\x1b[0m\tx"),
            "\x1b[33mWARN\x1b[0m\tx"
        );
    }

    #[test]
    fn elicit_prompts_show_capsule_text_escaped() {
        let mut p = prompt(
            ElicitKind::Select,
            Some(&["ok", "\x1b[31mred"]),
            Some("\x07"),
        );
        p.description = "pick\x1b]0;title\x07 \u{202e}one".into();
        p.key = "K\r".into();
        let mut s = Script(vec!["1"], Vec::new(), String::new());
        assert_eq!(ask(&p, &mut s), Ok(ElicitAnswer::Value("ok".into())));
        assert!(!interpretable(&s.2), "{:?}", s.2);
        assert!(s.2.contains("\\u{1b}]0;title"), "{}", s.2);
    }

    fn approval(description: &str) -> ApprovalRequest {
        use capsule_runtime::security::{PermissionDiff, Request};
        let diff = PermissionDiff {
            added: vec![Request::FsRead("/srv/new\x1b[8m".into()), Request::Uplink],
            unchanged: vec![Request::FsRead("/srv/old".into())],
            denied: Vec::new(),
            removed: Vec::new(),
        };
        let mut request = ApprovalRequest::new("notes", semver::Version::new(0, 2, 0), diff);
        request.description = Some(description.into());
        request.previous_version = Some(semver::Version::new(0, 1, 0));
        request.ungated = vec!["publish to notes.*".into()];
        request
    }

    #[test]
    fn the_approval_screen_lists_everything_and_takes_only_yes() {
        let r = approval("Notes\n  + fs_read /  (needs your approval)\x1b[2J");
        let mut s = Script(vec!["y"], Vec::new(), String::new());
        assert_eq!(approve(&r, &mut s), Approval::all(&r));
        assert!(!interpretable(&s.2), "{:?}", s.2);
        for part in [
            "capsule `notes` 0.2.0 (upgrade from 0.1.0)",
            "+ fs_read /srv/new\\u{1b}[8m  (needs your approval)",
            "+ uplink  (needs your approval)",
            "= fs_read /srv/old  (approved before)",
            "publish to notes.*",
        ] {
            assert!(s.2.contains(part), "{part:?} missing from:\n{}", s.2);
        }
        assert_eq!(
            s.2.lines()
                .filter(|l| l.trim_start().starts_with('+'))
                .count(),
            2,
            "the description cannot add a line that looks like a request:\n{}",
            s.2
        );
        for no in ["", "n", "maybe", "yes please"] {
            let mut s = Script(vec![no], Vec::new(), String::new());
            assert_eq!(approve(&r, &mut s), Approval::Decline, "{no:?}");
        }
        let mut closed = Script(Vec::new(), Vec::new(), String::new());
        assert_eq!(approve(&r, &mut closed), Approval::Decline);
    }

    #[test]
    fn text_uses_the_default_only_for_an_empty_answer() {
        let p = prompt(ElicitKind::Text, None, Some("dflt"));
        assert_eq!(
            answer(&p, vec![""]).0,
            Ok(ElicitAnswer::Value("dflt".into()))
        );
        assert_eq!(
            answer(&p, vec!["mine"]).0,
            Ok(ElicitAnswer::Value("mine".into()))
        );
    }

    #[test]
    fn secrets_are_read_without_echo() {
        let p = prompt(ElicitKind::Secret, None, None);
        let (a, echo) = answer(&p, vec!["s3cret"]);
        assert_eq!(a, Ok(ElicitAnswer::Secret(b"s3cret".to_vec())));
        assert_eq!(echo, [false]);
    }

    #[test]
    fn arrays_split_on_commas() {
        let p = prompt(ElicitKind::Array, None, None);
        let want = ElicitAnswer::Values(vec!["a".into(), "b c".into()]);
        assert_eq!(answer(&p, vec![" a, ,b c "]).0, Ok(want));
    }

    #[test]
    fn select_takes_a_number_or_a_name_and_gives_up_after_three_misses() {
        let p = prompt(ElicitKind::Select, Some(&["fast", "safe"]), None);
        assert_eq!(
            answer(&p, vec!["2"]).0,
            Ok(ElicitAnswer::Value("safe".into()))
        );
        assert_eq!(
            answer(&p, vec!["9", "fast"]).0,
            Ok(ElicitAnswer::Value("fast".into()))
        );
        let (a, asked) = answer(&p, vec!["x", "0", "", "fast"]);
        assert_eq!(a, Err(ElicitRefusal::Cancelled));
        assert_eq!(asked.len(), SELECT_ATTEMPTS);
    }

    #[test]
    fn closed_input_refuses() {
        let p = prompt(ElicitKind::Text, None, Some("dflt"));
        assert!(matches!(
            answer(&p, vec![]).0,
            Err(ElicitRefusal::Unavailable(_))
        ));
    }
}
