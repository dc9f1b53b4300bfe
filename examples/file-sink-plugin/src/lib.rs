//! An example plugin showing the whole plugin surface: it appends each event it is
//! handed to a file, one JSON line per event, and can poll events from another file.
//!
//! Build it with `cargo build -p file-sink-plugin` and copy
//! `target/debug/libfile_sink_plugin.so` into `Plugins/file-sink/`.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use plugin_api::model::PolledEvent;
use plugin_api::{
    Event, EventTypeDecl, FieldError, Logger, Manifest, OpenContext, Outcome, Plugin, PluginError,
    PollRequest, PollResult, SettingDecl, Settings, TestReport,
};

const SECTION: &str = "File Sink";

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
                SettingDecl::text("output_file", "Output File")
                    .required()
                    .help("Absolute path of the file events are appended to.")
                    .section(SECTION),
                SettingDecl::bool("skip_without_lsid", "Skip Events Without a Session")
                    .default(true)
                    .help("Events that carry no lsid are recorded as skipped.")
                    .section(SECTION),
                SettingDecl::text("poll_source_file", "Poll Source File")
                    .help("For polling: a file of JSON lines, each an event to pick up.")
                    .section(SECTION),
            ],
        )
    }

    fn validate(settings: &Settings) -> Vec<FieldError> {
        ["output_file", "poll_source_file"]
            .into_iter()
            .filter(|key| {
                settings
                    .str(key)
                    .is_some_and(|p| !Path::new(p).is_absolute())
            })
            .map(|key| FieldError::new(key, "must be an absolute path"))
            .collect()
    }

    fn open(ctx: OpenContext) -> Result<Self, PluginError> {
        let output = ctx
            .settings
            .str("output_file")
            .ok_or_else(|| PluginError::configuration("output_file is not set"))?;
        ctx.log.info(&format!("writing events to {output}"));
        Ok(Self {
            output: PathBuf::from(output),
            skip_without_lsid: ctx.settings.bool("skip_without_lsid"),
            poll_source: ctx.settings.str("poll_source_file").map(PathBuf::from),
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
        let line = serde_json::to_string(event)
            .map_err(|e| PluginError::permanent(format!("cannot encode event: {e}")))?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.output)
            // A full disk or a missing share may pass: worth a retry.
            .map_err(|e| {
                PluginError::retryable(format!("cannot open {}: {e}", self.output.display()))
            })?;
        writeln!(file, "{line}").map_err(|e| {
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
