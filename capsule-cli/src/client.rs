//! The client side of the control socket: `publish`, `request`, `tail`, `ps`, `metrics`,
//! `load`, `unload` and `approve` connect to `<state>/control.sock`, send one JSON request with the
//! session token read from `<state>/control.token` (or `$CAPSULE_TOKEN`), and turn the answer
//! into output for people (or JSON with `--json`) and an exit code by the kind of failure.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::Failure;
use crate::control::{self, Kind};
use crate::report::{Snapshot, render_ps};

/// `capsule publish`.
#[derive(clap::Args, Debug)]
pub(crate) struct PublishArgs {
    /// The topic, e.g. `notes.add`
    topic: String,
    /// The payload: one JSON value, e.g. '{"text":"hi"}'
    payload: String,
    /// Publish as this principal [default: the host's owner]
    #[arg(long = "as", value_name = "PRINCIPAL")]
    principal: Option<String>,
}

/// `capsule request`.
#[derive(clap::Args, Debug)]
pub(crate) struct RequestArgs {
    /// The topic, e.g. `notes.list`
    topic: String,
    /// The payload: one JSON value
    payload: String,
    /// The topic pattern the reply comes on, e.g. `notes.reply`
    #[arg(long, value_name = "PATTERN")]
    reply: String,
    /// Ask as this principal; only its replies count [default: the host's owner]
    #[arg(long = "as", value_name = "PRINCIPAL")]
    principal: Option<String>,
    /// How long to wait for the reply: `500ms`, `5s`, `2m` [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    timeout: Option<Duration>,
    /// Print the whole reply message as JSON, not just its payload
    #[arg(long)]
    json: bool,
}

/// `capsule tail`.
#[derive(clap::Args, Debug)]
pub(crate) struct TailArgs {
    /// The topic pattern, e.g. `chat.*` or `*`
    pattern: String,
    /// Follow as this principal: audit topics then show only its entries unless its profile
    /// grants the firehose [default: the host's owner]
    #[arg(long = "as", value_name = "PRINCIPAL")]
    principal: Option<String>,
    /// One JSON object per message instead of a line for people
    #[arg(long)]
    json: bool,
    /// Stop after this many messages
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

/// `capsule ps`.
#[derive(clap::Args, Debug)]
pub(crate) struct PsArgs {
    /// The snapshot as JSON instead of a table
    #[arg(long)]
    json: bool,
}

/// Parses `500ms`, `5s`, `2m` or a number of seconds.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as 500ms, 5s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!("`{s}`: the unit must be ms, s or m")),
    }
}

fn payload(text: &str) -> Result<Value, Failure> {
    serde_json::from_str(text).map_err(|e| {
        Failure::Usage(format!(
            "the payload must be one JSON value (e.g. '{{\"text\":\"hi\"}}' or '\"hi\"'): {e}"
        ))
    })
}

/// One connection to a running host.
struct Connection {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Connection {
    async fn open(state: &Path) -> Result<Self, Failure> {
        let socket = control::socket_path(state);
        let stream = UnixStream::connect(&socket).await.map_err(|e| {
            Failure::Runtime(format!(
                "no capsule host is serving {} ({}: {e}); start one with `capsule run --state {} DIR...`",
                state.display(),
                socket.display(),
                state.display()
            ))
        })?;
        let (read, writer) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(read),
            writer,
        })
    }

    fn token(state: &Path) -> Result<Option<String>, Failure> {
        if let Some(t) = std::env::var_os("CAPSULE_TOKEN") {
            let t = t.to_string_lossy().trim().to_string();
            return Ok((!t.is_empty()).then_some(t));
        }
        let file = control::token_path(state);
        std::fs::read_to_string(&file)
            .map(|t| Some(t.trim().to_string()))
            .map_err(|e| {
                Failure::Runtime(format!(
                    "cannot read the session token {}: {e} (is `capsule run` serving this state directory?)",
                    file.display()
                ))
            })
    }

    async fn send(&mut self, state: &Path, mut request: Value) -> Result<(), Failure> {
        if let (Some(token), Some(obj)) = (Self::token(state)?, request.as_object_mut()) {
            obj.insert("token".into(), Value::String(token));
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|e| Failure::Runtime(format!("sending to the host: {e}")))
    }

    /// The next line from the host; `None` when it closed the connection.
    async fn next(&mut self) -> Result<Option<Value>, Failure> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(|e| Failure::Runtime(format!("reading from the host: {e}")))?;
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line).map(Some).map_err(|e| {
            Failure::Runtime(format!("the host answered something that is not JSON: {e}"))
        })
    }

    /// Sends `request` and returns the answer, or the failure it reports.
    async fn call(state: &Path, request: Value) -> Result<Value, Failure> {
        let mut c = Self::open(state).await?;
        c.send(state, request).await?;
        let answer = c.next().await?.ok_or_else(|| {
            Failure::Runtime("the host closed the connection without answering".into())
        })?;
        checked(answer)
    }
}

/// Turns a `{"ok": false}` answer into the failure of its kind.
fn checked(answer: Value) -> Result<Value, Failure> {
    if answer.get("ok").and_then(Value::as_bool) == Some(true) {
        return Ok(answer);
    }
    let message = answer
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("the host refused the request")
        .to_string();
    let kind = answer
        .get("kind")
        .cloned()
        .and_then(|k| serde_json::from_value(k).ok())
        .unwrap_or(Kind::Runtime);
    Err(match kind {
        Kind::Usage => Failure::Usage(message),
        Kind::Load => Failure::Load(message),
        Kind::Runtime => Failure::Runtime(message),
        Kind::Refused => Failure::Refused(message),
    })
}

/// A message as one readable line: `topic [principal] payload`.
fn line(message: &Value) -> String {
    let topic = message.get("topic").and_then(Value::as_str).unwrap_or("?");
    let who = match (
        message.get("attribution").and_then(Value::as_str),
        message.get("principal").and_then(Value::as_str),
    ) {
        (Some("claimed"), Some(p)) => format!("{p} (claimed)"),
        (_, Some(p)) => p.to_string(),
        _ => "host".to_string(),
    };
    let payload = message
        .get("payload")
        .map(Value::to_string)
        .unwrap_or_default();
    // Payload text comes from capsules: shown escaped, never interpreted by the terminal.
    crate::terminal::shown(&format!("{topic}  [{who}]  {payload}"))
}

pub(crate) async fn publish(state: &Path, args: PublishArgs) -> Result<(), Failure> {
    let answer = Connection::call(
        state,
        json!({"op": "publish", "topic": args.topic, "payload": payload(&args.payload)?, "as": args.principal}),
    )
    .await?;
    let delivered = answer.get("delivered").and_then(Value::as_u64).unwrap_or(0);
    println!("published on {} ({delivered} subscriptions)", args.topic);
    Ok(())
}

pub(crate) async fn request(state: &Path, args: RequestArgs) -> Result<(), Failure> {
    let answer = Connection::call(
        state,
        json!({
            "op": "request",
            "topic": args.topic,
            "payload": payload(&args.payload)?,
            "reply": args.reply,
            "as": args.principal,
            "timeout_ms": args.timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        }),
    )
    .await?;
    let message = answer.get("message").cloned().unwrap_or(Value::Null);
    if args.json {
        println!("{message}");
    } else {
        let payload = message.get("payload").cloned().unwrap_or(Value::Null);
        println!("{}", crate::terminal::shown(&payload.to_string()));
    }
    Ok(())
}

pub(crate) async fn tail(state: &Path, args: TailArgs) -> Result<(), Failure> {
    let mut c = Connection::open(state).await?;
    c.send(
        state,
        json!({"op": "tail", "pattern": args.pattern, "as": args.principal}),
    )
    .await?;
    let ack = c.next().await?.ok_or_else(|| {
        Failure::Runtime("the host closed the connection without answering".into())
    })?;
    let ack = checked(ack)?;
    eprintln!(
        "following {} as seen by {} (Ctrl-C to stop)",
        args.pattern,
        ack.get("scope").and_then(Value::as_str).unwrap_or("?")
    );
    let mut seen = 0u64;
    if args.count == Some(0) {
        return Ok(());
    }
    loop {
        let next = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            n = c.next() => n?,
        };
        let Some(event) = next else {
            return Err(Failure::Runtime("the host closed the connection".into()));
        };
        if let Some(m) = event.get("message") {
            if args.json {
                println!("{m}");
            } else {
                println!("{}", line(m));
            }
            seen += 1;
            if args.count.is_some_and(|n| seen >= n) {
                return Ok(());
            }
        } else if let Some(n) = event.get("dropped") {
            eprintln!("({n} messages lost: this tail fell behind)");
        } else if let Some(why) = event.get("end") {
            eprintln!("tail ended: {}", why.as_str().unwrap_or("the host stopped"));
            return Ok(());
        }
    }
}

async fn snapshot(state: &Path) -> Result<Snapshot, Failure> {
    let answer = Connection::call(state, json!({"op": "ps"})).await?;
    serde_json::from_value(answer.get("snapshot").cloned().unwrap_or(Value::Null))
        .map_err(|e| Failure::Runtime(format!("the host's snapshot is not readable: {e}")))
}

pub(crate) async fn ps(state: &Path, args: PsArgs) -> Result<(), Failure> {
    let s = snapshot(state).await?;
    if args.json {
        let text = serde_json::to_string_pretty(&s).map_err(|e| Failure::Runtime(e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", crate::terminal::shown_lines(&render_ps(&s)));
    }
    Ok(())
}

pub(crate) async fn metrics(state: &Path) -> Result<(), Failure> {
    let answer = Connection::call(state, json!({"op": "metrics"})).await?;
    print!(
        "{}",
        answer.get("text").and_then(Value::as_str).unwrap_or("")
    );
    Ok(())
}

pub(crate) async fn load(state: &Path, dir: &Path) -> Result<(), Failure> {
    // The host resolves nothing relative to its own directory: the path is made absolute here.
    let dir =
        std::path::absolute(dir).map_err(|e| Failure::Usage(format!("{}: {e}", dir.display())))?;
    let answer = Connection::call(state, json!({"op": "load", "dir": dir})).await?;
    for c in answer
        .get("loaded")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!(
            "loaded {} {}",
            c.get("name").and_then(Value::as_str).unwrap_or("?"),
            c.get("version").and_then(Value::as_str).unwrap_or("?")
        );
    }
    Ok(())
}

pub(crate) async fn unload(state: &Path, name: &str) -> Result<(), Failure> {
    Connection::call(state, json!({"op": "unload", "name": name})).await?;
    println!("unloaded {name}");
    Ok(())
}

/// `capsule approve`: without an id, lists the pending approval requests; with one, decides
/// it (`once`, `session`, `always` or `deny`).
pub(crate) async fn approve(
    state: &Path,
    id: Option<u64>,
    decision: Option<&str>,
) -> Result<(), Failure> {
    let Some(id) = id else {
        let answer = Connection::call(state, json!({"op": "approvals"})).await?;
        let pending = answer.get("pending").and_then(Value::as_array);
        if pending.is_none_or(Vec::is_empty) {
            println!("no approval requests are pending");
        }
        for r in pending.into_iter().flatten() {
            let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
            println!(
                "{}",
                crate::terminal::printable(&format!(
                    "#{} {} for {}{}: {} {}",
                    r.get("id").and_then(Value::as_u64).unwrap_or(0),
                    text("capsule"),
                    text("principal"),
                    if r.get("claimed") == Some(&Value::Bool(true)) {
                        " (claimed)"
                    } else {
                        ""
                    },
                    text("action"),
                    text("resource"),
                ))
            );
        }
        return Ok(());
    };
    let decision = decision
        .ok_or_else(|| Failure::Usage("say how to decide: once, session, always or deny".into()))?;
    Connection::call(
        state,
        json!({"op": "approve", "id": id, "decision": decision}),
    )
    .await?;
    println!("approval #{id}: {decision}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("7"), Ok(Duration::from_secs(7)));
        assert!(duration("5h").is_err());
        assert!(duration("fast").is_err());
    }

    #[test]
    fn failures_map_to_their_kind() {
        let f = checked(json!({"ok": false, "kind": "refused", "error": "no"}));
        assert!(matches!(f, Err(Failure::Refused(m)) if m == "no"));
        let f = checked(json!({"ok": false, "kind": "load", "error": "x"}));
        assert!(matches!(f, Err(Failure::Load(_))));
        let f = checked(json!({"ok": false}));
        assert!(matches!(f, Err(Failure::Runtime(_))));
        assert!(checked(json!({"ok": true})).is_ok());
    }

    #[test]
    fn message_lines_escape_capsule_text() {
        let m = json!({"topic": "chat.room.message", "principal": "bob", "attribution": "verified",
                       "payload": {"text": "hi\u{1b}[2J"}});
        let l = line(&m);
        assert!(l.starts_with("chat.room.message  [bob]  "), "{l}");
        assert!(!l.contains('\u{1b}'), "{l}");
    }
}
