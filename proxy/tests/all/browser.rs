//! A real browser for page tests: headless Chromium (Debian's `chromium`) driven over the DevTools protocol.
//!
//! The protocol goes over a pipe (`--remote-debugging-pipe`: commands in on fd 3, answers out on fd 4, each a
//! JSON message ended by a NUL byte), so there is no port to find and no WebSocket client to carry. A test
//! opens a page, then waits for the page's own state with [`Browser::wait_for`]: a JavaScript expression is
//! evaluated in the page until it returns something other than `null`/`false`, so a live page is checked as
//! soon as it shows what the test waits for, and a busy machine only makes the wait longer.

use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// One headless Chromium with one page.
pub struct Browser {
    child: Child,
    commands: ChildStdin,
    answers: BufReader<ChildStdout>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

/// Collects the page's Content-Security-Policy violations from the first script on, so a test can assert the
/// page runs under its policy without breaking it.
const RECORD_CSP_VIOLATIONS: &str =
    "window.__cspViolations = []; document.addEventListener('securitypolicyviolation', \
     (e) => window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));";

impl Browser {
    /// Starts Chromium and opens `url` in a page of `width` × `height` CSS pixels.
    pub async fn open(url: &str, width: u32, height: u32) -> Result<Browser, String> {
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let chromium = [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
        ]
        .join(" ");
        // fd 3 reads our commands (stdin), fd 4 writes the answers (stdout); Chromium's own stdout is dropped.
        let script = format!(
            "command -v chromium >/dev/null || exit 127; exec {chromium} --user-data-dir='{}' about:blank 3<&0 4>&1 1>/dev/null 2>/dev/null",
            profile.path().display()
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start sh: {e}"))?;
        let commands = child.stdin.take().ok_or("no stdin")?;
        let answers = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut browser = Browser { child, commands, answers, next_id: 0, session: String::new(), _profile: profile };
        let target = browser.call(None, "Target.createTarget", json!({ "url": "about:blank" })).await?;
        let target_id = target["targetId"].as_str().ok_or("no targetId")?.to_string();
        let attached =
            browser.call(None, "Target.attachToTarget", json!({ "targetId": target_id, "flatten": true })).await?;
        browser.session = attached["sessionId"].as_str().ok_or("no sessionId")?.to_string();
        browser.page("Page.enable", json!({})).await?;
        browser.page("Page.addScriptToEvaluateOnNewDocument", json!({ "source": RECORD_CSP_VIOLATIONS })).await?;
        browser
            .page(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
            )
            .await?;
        let navigated = browser.page("Page.navigate", json!({ "url": url })).await?;
        if let Some(error) = navigated.get("errorText").and_then(Value::as_str) {
            return Err(format!("navigating to {url}: {error}"));
        }
        Ok(browser)
    }

    /// Sends one command (to the page's session unless `session` is `None`) and returns its result.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).map_err(|e| e.to_string())?;
        bytes.push(0);
        self.commands.write_all(&bytes).await.map_err(|e| self.died(method, e))?;
        self.commands.flush().await.map_err(|e| self.died(method, e))?;
        loop {
            let mut frame = Vec::new();
            // Longer than any command takes: only a hung browser trips it.
            let read = tokio::time::timeout(Duration::from_secs(60), self.answers.read_until(0, &mut frame))
                .await
                .map_err(|_| format!("{method}: no answer from chromium within 60 s"))?
                .map_err(|e| self.died(method, e))?;
            if read == 0 {
                return Err(self.died(method, "pipe closed"));
            }
            frame.pop();
            let Ok(answer) = serde_json::from_slice::<Value>(&frame) else { continue };
            if answer["id"] != json!(id) {
                continue; // an event, or an answer to nothing we wait for
            }
            if let Some(error) = answer.get("error") {
                return Err(format!("{method}: {error}"));
            }
            return Ok(answer["result"].clone());
        }
    }

    fn died(&mut self, method: &str, e: impl std::fmt::Display) -> String {
        match self.child.try_wait() {
            Ok(Some(status)) if status.code() == Some(127) => {
                "chromium is needed (Debian package `chromium`; scripts/setup.sh installs it)".to_string()
            }
            Ok(Some(status)) => format!("{method}: chromium exited ({status}): {e}"),
            _ => format!("{method}: {e}"),
        }
    }

    async fn page(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let session = self.session.clone();
        self.call(Some(&session), method, params).await
    }

    /// Evaluates `expression` in the page; its value comes back as JSON.
    pub async fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let result = self.page("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true })).await?;
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(format!("{expression}: {exception}"));
        }
        Ok(result["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Evaluates `expression` until it returns something other than `null` or `false`, and returns that; fails
    /// after `limit` with the last value and what the test waited for.
    pub async fn wait_for(&mut self, what: &str, expression: &str, limit: Duration) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let value = self.eval(expression).await?;
            if !matches!(value, Value::Null | Value::Bool(false)) {
                return Ok(value);
            }
            if tokio::time::Instant::now() >= deadline {
                let body = self.eval("document.body ? document.body.innerText.slice(0, 3000) : ''").await?;
                return Err(format!("the page did not show {what} within {limit:?}; it shows:\n{body}"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A PNG of the page as it is now, the size of the viewport given to [`Browser::open`].
    pub async fn screenshot(&mut self) -> Result<Vec<u8>, String> {
        let shot =
            self.page("Page.captureScreenshot", json!({ "format": "png", "captureBeyondViewport": false })).await?;
        let data = shot["data"].as_str().ok_or("no screenshot data")?;
        base64_decode(data).ok_or_else(|| "the screenshot is not base64".to_string())
    }

    /// Closes the browser and waits for it to exit.
    pub async fn close(mut self) {
        let _ = self.call(None, "Browser.close", json!({})).await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// Standard base64 (the DevTools protocol's encoding of binary results).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=').map(value).collect::<Option<_>>()?;
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, d)| n | u32::from(*d) << (18 - 6 * i));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    Some(out)
}
