//! Asks a capsule's install/upgrade questions on the operator's terminal: prompts go to
//! stderr, answers come from stdin one line each, secrets are read with echo off when stdin is
//! a terminal, and questions are asked one at a time even if capsules ask concurrently. With
//! stdin closed, every question is refused rather than answered with a guess.

use std::io::{BufRead, Write};
use std::sync::Arc;

use capsule_runtime::{ElicitAnswer, ElicitKind, ElicitPrompt, ElicitRefusal, Elicitor};
use futures::future::BoxFuture;

/// How many times a select question is re-asked after an answer that is not an option.
const SELECT_ATTEMPTS: usize = 3;

/// The `capsule run` elicitor.
#[derive(Default)]
pub(crate) struct TerminalElicitor {
    /// Serialises questions: two prompts never interleave on one terminal.
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl Elicitor for TerminalElicitor {
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
        p.capsule, p.principal, p.description, p.key
    );
    match p.kind {
        ElicitKind::Text => {
            let default = p
                .default
                .as_deref()
                .map(|d| format!(" [{d}]"))
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
                .map(|(i, o)| format!("  {}) {o}", i + 1))
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
                io.note(&format!("`{line}` is not one of the options"));
            }
            Err(ElicitRefusal::Cancelled)
        }
    }
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

    /// Answers from a list; records whether each line was asked with echo.
    struct Script(Vec<&'static str>, Vec<bool>);

    impl Lines for Script {
        fn line(&mut self, _prompt: &str, echo: bool) -> Result<String, ElicitRefusal> {
            self.1.push(echo);
            if self.0.is_empty() {
                return Err(ElicitRefusal::Unavailable("closed".into()));
            }
            Ok(self.0.remove(0).to_string())
        }
        fn note(&mut self, _text: &str) {}
    }

    fn prompt(kind: ElicitKind, options: Option<&[&str]>, default: Option<&str>) -> ElicitPrompt {
        ElicitPrompt {
            capsule: "c".into(),
            principal: capsule_runtime::bus::PrincipalId::parse("p")
                .unwrap_or_else(|e| panic!("{e}")),
            kind,
            key: "K".into(),
            description: "d".into(),
            options: options.map(|o| o.iter().map(|s| s.to_string()).collect()),
            default: default.map(str::to_owned),
        }
    }

    fn answer(
        p: &ElicitPrompt,
        lines: Vec<&'static str>,
    ) -> (Result<ElicitAnswer, ElicitRefusal>, Vec<bool>) {
        let mut s = Script(lines, Vec::new());
        let a = ask(p, &mut s);
        (a, s.1)
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
