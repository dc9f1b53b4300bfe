//! An example plugin showing the whole plugin surface: it appends each event it is
//! handed to a file, one JSON line per event, and can poll events from another file.
//!
//! Build it with `cargo build -p file-sink-plugin` and copy
//! `target/debug/libfile_sink_plugin.so` into `Plugins/file-sink/`.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use plugin_api::model::PolledEvent;
use plugin_api::{
    Event, EventTypeDecl, FieldError, Logger, Manifest, OpenContext, Outcome, Plugin, PluginError,
    PollRequest, PollResult, SettingDecl, Settings, TestReport,
};

const SECTION: &str = "File Sink";
const OUTPUT_FILE: &str = "output_file";
const SKIP_WITHOUT_LSID: &str = "skip_without_lsid";
const POLL_SOURCE_FILE: &str = "poll_source_file";

/// This plugin's own settings, read once: `validate` reports what `parse` finds and
/// `open` uses what it returns, so the two can never disagree. (The host checks the
/// common B Series section; `plugin_api::CommonSettings` reads it.)
struct Config {
    output: PathBuf,
    skip_without_lsid: bool,
    poll_source: Option<PathBuf>,
}

impl Config {
    fn parse(settings: &Settings) -> Result<Self, Vec<FieldError>> {
        let mut faults = Vec::new();
        let mut absolute = |key: &str| {
            let path = settings.str(key).map(PathBuf::from);
            if path.as_deref().is_some_and(|p| !p.is_absolute()) {
                faults.push(FieldError::new(key, "must be an absolute path"));
            }
            path
        };
        let output = absolute(OUTPUT_FILE);
        let poll_source = absolute(POLL_SOURCE_FILE);
        let Some(output) = output else {
            faults.push(FieldError::new(OUTPUT_FILE, "is required"));
            return Err(faults);
        };
        if !faults.is_empty() {
            return Err(faults);
        }
        Ok(Self {
            output,
            skip_without_lsid: settings.bool(SKIP_WITHOUT_LSID),
            poll_source,
        })
    }
}

pub struct FileSink {
    output: PathBuf,
    skip_without_lsid: bool,
    poll_source: Option<PathBuf>,
    log: Logger,
}

impl Plugin for FileSink {
    fn manifest() -> Manifest {
        let end = EventTypeDecl::new("support_conference_end", "Support Session End");
        Manifest::new(
            "file-sink",
            "File Sink (example)",
            env!("CARGO_PKG_VERSION"),
            "Appends every event it handles to a file, one JSON line each.",
            vec![
                end.clone(),
                EventTypeDecl::new(
                    "support_conference_customer_exit_survey_completed",
                    "Customer Exit Survey is Completed",
                ),
            ],
            vec![end],
            vec![
                SettingDecl::text(OUTPUT_FILE, "Output File")
                    .required()
                    .help("Absolute path of the file events are appended to.")
                    .section(SECTION),
                SettingDecl::bool(SKIP_WITHOUT_LSID, "Skip Events Without a Session")
                    .default(true)
                    .help("Events that carry no lsid are recorded as skipped.")
                    .section(SECTION),
                SettingDecl::text(POLL_SOURCE_FILE, "Poll Source File")
                    .help("For polling: a file of JSON lines, each an event to pick up.")
                    .section(SECTION),
            ],
        )
    }

    fn validate(settings: &Settings) -> Vec<FieldError> {
        Config::parse(settings).err().unwrap_or_default()
    }

    fn open(ctx: OpenContext) -> Result<Self, PluginError> {
        let config = Config::parse(&ctx.settings)
            .map_err(|faults| PluginError::configuration(FieldError::summary(&faults)))?;
        ctx.log
            .info(&format!("writing events to {}", config.output.display()));
        Ok(Self {
            output: config.output,
            skip_without_lsid: config.skip_without_lsid,
            poll_source: config.poll_source,
            log: ctx.log,
        })
    }

    fn test(&self) -> TestReport {
        let mut report = TestReport::default();
        let writable = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.output)
            .map(|_| format!("{} is writable", self.output.display()))
            .map_err(|e| {
                format!(
                    "cannot write {}: {e}; fix the path or its permissions",
                    self.output.display()
                )
            });
        report.push("Output file", writable);
        if let Some(source) = &self.poll_source {
            let readable = std::fs::metadata(source)
                .map(|_| format!("{} is readable", source.display()))
                .map_err(|e| format!("cannot read {}: {e}", source.display()));
            report.push("Poll source file", readable);
        }
        report
    }

    fn handle_event(&self, event: &Event) -> Result<Outcome, PluginError> {
        if self.skip_without_lsid && event.lsid.is_none() {
            return Ok(Outcome::Skipped {
                reason: "the event carries no session (lsid)".into(),
            });
        }
        let mut line = serde_json::to_vec(event)
            .map_err(|e| PluginError::permanent(format!("cannot encode event: {e}")))?;
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true) // O_APPEND: each write lands at the end of the file
            .open(&self.output)
            // A full disk or a missing share may pass: worth a retry.
            .map_err(|e| {
                PluginError::retryable(format!("cannot open {}: {e}", self.output.display()))
            })?;
        // The whole line, newline included, in one `write`: `writeln!` on an unbuffered
        // `File` makes a `write` per piece, and a kill -9 between two of them leaves a
        // torn line that the next append would continue. No system promises that one
        // write is all or nothing, but for a small buffer to a local file it is in
        // practice; should one come up short, `write_all` writes the rest or fails.
        file.write_all(&line).map_err(|e| {
            PluginError::retryable(format!("cannot write {}: {e}", self.output.display()))
        })?;
        self.log.debug(&format!("appended event {}", event.id));
        Ok(Outcome::Done {
            detail: format!("appended to {}", self.output.display()),
        })
    }

    /// The cursor is the number of lines of the poll source already taken.
    fn poll(&self, request: &PollRequest) -> Result<PollResult, PluginError> {
        let source = self
            .poll_source
            .as_ref()
            .ok_or_else(|| PluginError::configuration("poll_source_file is not set"))?;
        let taken = request
            .cursor
            .as_ref()
            .and_then(|c| c.as_u64())
            .unwrap_or(0);
        let file = std::fs::File::open(source).map_err(|e| {
            PluginError::retryable(format!("cannot read {}: {e}", source.display()))
        })?;
        let mut events = Vec::new();
        let mut lines = 0u64;
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| PluginError::retryable(e.to_string()))?;
            lines += 1;
            if lines <= taken || line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<PolledEvent>(&line) {
                Ok(event) if request.event_types.contains(&event.event_type) => events.push(event),
                Ok(_) => {}
                Err(e) => self.log.warn(&format!(
                    "line {lines} of {} ignored: {e}",
                    source.display()
                )),
            }
        }
        Ok(PollResult {
            events,
            cursor: lines.into(),
        })
    }
}

plugin_api::export_plugin!(FileSink);
