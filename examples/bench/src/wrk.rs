//! HTTP load from an independent generator, Debian's `wrk`, so that the figures are
//! the server's and not the benchmark client's: each event has its own session id
//! (a Lua script numbers them per thread), latency comes from wrk's own histogram.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// One wrk run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Answers other than 2xx/3xx, and socket errors.
    pub errors: u64,
}

/// A Lua script that posts a session-end event with a fresh lsid per request; the
/// run's `prefix` (the script's argument) keeps the runs apart.
const POST_EVENTS: &str = r#"
local thread_number = 0
function setup(thread)
  thread:set("thread_number", thread_number)
  thread_number = thread_number + 1
end
function init(args)
  prefix = args[1] or "run"
  counter = 0
end
function request()
  counter = counter + 1
  local body = "event=support_conference_end&version=3&timestamp=1764231302&lsid="
    .. prefix .. "-" .. thread_number .. "-" .. counter
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end
"#;

/// Writes the event script into `dir` and returns its path.
pub fn event_script(dir: &Path) -> std::io::Result<std::path::PathBuf> {
    let path = dir.join("post-events.lua");
    std::fs::write(&path, POST_EVENTS)?;
    Ok(path)
}

/// Runs wrk against `url` with `connections` for `seconds`; `script` (with its
/// argument) shapes the requests, none means plain GETs.
pub fn run(
    url: &str,
    connections: usize,
    seconds: u64,
    script: Option<(&Path, &str)>,
) -> Result<Run, String> {
    let threads = connections.clamp(1, 2);
    let mut command = Command::new("wrk");
    command
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency");
    if let Some((path, _)) = script {
        command.arg("-s").arg(path);
    }
    command.arg(url);
    if let Some((_, argument)) = script {
        command.args(["--", argument]);
    }
    let output = command
        .output()
        .map_err(|e| format!("cannot run wrk ({e}); install it: apt-get install wrk"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse(&text).ok_or_else(|| format!("cannot read wrk's report:\n{text}"))
}

/// Reads wrk's report: "Requests/sec:", the latency distribution, and errors.
fn parse(text: &str) -> Option<Run> {
    let mut run = Run::default();
    let mut seen_rate = false;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(rate)) => {
                run.per_second = rate.parse().ok()?;
                seen_rate = true;
            }
            (Some("50%"), Some(value)) => run.p50 = duration(value)?,
            (Some("99%"), Some(value)) => run.p99 = duration(value)?,
            (Some("Non-2xx"), _) => {
                run.errors += line.rsplit(' ').next()?.parse::<u64>().ok()?;
            }
            (Some("Socket"), Some("errors:")) => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                for part in line.trim_start_matches("Socket errors:").split(',') {
                    run.errors += part
                        .split_whitespace()
                        .nth(1)
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    seen_rate.then_some(run)
}

/// "812.00us", "1.37ms", "2.01s".
fn duration(text: &str) -> Option<Duration> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    number
        .parse::<f64>()
        .ok()
        .map(|n| Duration::from_secs_f64(n * factor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrk_report_is_read() {
        let report = "Running 5s test @ http://127.0.0.1:1/ERSPost
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.39ms  512.00us   9.87ms   80.00%
  Latency Distribution
     50%    1.26ms
     75%    1.60ms
     90%    2.01ms
     99%    4.56ms
  27600 requests in 5.00s, 3.61MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   5520.13
Transfer/sec:    739.91KB
";
        let run = parse(report).expect("parsed");
        assert!((run.per_second - 5520.13).abs() < 0.01);
        assert_eq!(run.p50, Duration::from_secs_f64(0.00126));
        assert_eq!(run.p99, Duration::from_secs_f64(0.00456));
        assert_eq!(run.errors, 7);
        assert_eq!(
            duration("812.00us"),
            Some(Duration::from_secs_f64(0.000812))
        );
        assert!(parse("garbage").is_none());
    }
}
