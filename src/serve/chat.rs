//! `awqc chat`: the terminal chat of `lmdeploy chat`. One line of stdin is one user turn; the
//! whole conversation is rendered with the chat template at every turn and the answer streams to
//! stdout (one answer, then a newline). `exit` or end of input quits. The same engine thread as
//! `serve` runs the model, in process. When the conversation outgrows the session the oldest
//! turns are dropped (the system message is kept).

use crate::error::Result;
use crate::serve::detok::TextStream;
use crate::serve::model::{load_engine, EngineOptions, Prompter};
use crate::serve::scheduler::{GenEvent, GenRequest, SamplingParams};
use serde_json::{json, Value};
use std::io::{BufRead, IsTerminal, Write};

#[derive(Debug, Clone)]
pub struct ChatOptions {
    pub engine: EngineOptions,
    pub system: Option<String>,
    /// None: what is left of the session.
    pub max_new_tokens: Option<usize>,
    pub sampling: SamplingParams,
}

/// Drop the oldest turn after the system message (a user message and the answers up to the next
/// user message). False when nothing but the last user message is left.
fn drop_oldest_turn(history: &mut Vec<Value>) -> bool {
    let start = usize::from(history.first().is_some_and(|m| m["role"] == "system"));
    if history.len() <= start + 1 {
        return false;
    }
    let mut end = start + 1;
    while end < history.len() - 1 && history[end]["role"] != "user" {
        end += 1;
    }
    history.drain(start..end);
    true
}

pub fn run(o: ChatOptions) -> Result<()> {
    o.engine.check()?;
    o.sampling.validate()?;
    let mut prompter = Prompter::load(&o.engine.model, o.engine.chat_template.as_deref())?;
    let le = load_engine(&o.engine)?;
    prompter.add_stop_id(le.eos);
    let engine = le.handle;
    let session = le.session_len;
    let interactive = std::io::stdin().is_terminal();
    crate::progress::status(&format!(
        "awqc chat: {} on {:?}, session {session} tokens, chat template: {}. One line per turn; `exit` or end of input quits.",
        o.engine.model.display(),
        le.device,
        prompter.template_source
    ));
    let mut history: Vec<Value> = Vec::new();
    if let Some(s) = &o.system {
        history.push(json!({"role": "system", "content": s}));
    }
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut stdout = std::io::stdout();
    let mut turn = 0u64;
    loop {
        if interactive {
            eprint!(">>> ");
        }
        let mut line = String::new();
        if input.read_line(&mut line).map_err(|e| crate::error::Error::io("stdin", e))? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim() == "exit" {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        history.push(json!({"role": "user", "content": line}));
        let prompt = loop {
            let ids = prompter.render_chat(&history).and_then(|t| prompter.encode_chat(&t));
            match ids {
                Ok(ids) if ids.len() < session => break Some(ids),
                Ok(ids) => {
                    if drop_oldest_turn(&mut history) {
                        crate::progress::status(&format!("awqc chat: the conversation ({} tokens) is longer than the session ({session}); dropped the oldest turn", ids.len()));
                        continue;
                    }
                    eprintln!("awqc chat: this message is {} tokens, longer than the session ({session} tokens); not sent", ids.len());
                    break None;
                }
                Err(e) => {
                    eprintln!("awqc chat: {e}");
                    break None;
                }
            }
        };
        let Some(prompt) = prompt else {
            history.pop();
            continue;
        };
        let room = session - prompt.len();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sampling = SamplingParams { seed: o.sampling.seed.wrapping_add(turn), ..o.sampling };
        turn += 1;
        let req = GenRequest {
            prompt,
            max_tokens: o.max_new_tokens.unwrap_or(room).min(room),
            sampling,
            stop_ids: prompter.stop_ids().to_vec(),
            events: tx,
            constraint: None,
        };
        if let Err(e) = engine.submit(req) {
            eprintln!("awqc chat: {e}");
            history.pop();
            continue;
        }
        let mut ts = TextStream::new(Vec::new());
        let mut answer = String::new();
        let mut emit = |t: &str, answer: &mut String| {
            answer.push_str(t);
            let _ = write!(stdout, "{t}");
            let _ = stdout.flush();
        };
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                GenEvent::Token(t) => {
                    let p = ts.push(&prompter.tok, t);
                    emit(&p.text, &mut answer);
                }
                GenEvent::Done(_) => {
                    let p = ts.finish(&prompter.tok);
                    emit(&p.text, &mut answer);
                    break;
                }
                GenEvent::Error(e) => {
                    eprintln!("\nawqc chat: {e}");
                    break;
                }
            }
        }
        let _ = writeln!(stdout);
        let _ = stdout.flush();
        history.push(json!({"role": "assistant", "content": answer}));
    }
    engine.shutdown();
    engine.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_turns_keeps_the_system_message_and_the_last_question() {
        let m = |r: &str, c: &str| json!({"role": r, "content": c});
        let mut h = vec![m("system", "s"), m("user", "u1"), m("assistant", "a1"), m("user", "u2"), m("assistant", "a2"), m("user", "u3")];
        assert!(drop_oldest_turn(&mut h));
        assert_eq!(h, vec![m("system", "s"), m("user", "u2"), m("assistant", "a2"), m("user", "u3")]);
        assert!(drop_oldest_turn(&mut h));
        assert_eq!(h, vec![m("system", "s"), m("user", "u3")]);
        assert!(!drop_oldest_turn(&mut h));
        let mut h = vec![m("user", "u1"), m("assistant", "a1"), m("user", "u2")];
        assert!(drop_oldest_turn(&mut h));
        assert_eq!(h, vec![m("user", "u2")]);
    }
}
