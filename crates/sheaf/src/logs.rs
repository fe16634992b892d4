//! Logs: Sheaf's own (`tracing` to stderr, as text or JSON lines) and the
//! flags of the guests' serial console logs the node agent keeps.
//!
//! Every process (`sheaf server`, `sheaf agent`, the `sheaf blk` storage
//! processes) sets its logging up with [`init`]: filtered by `SHEAF_LOG`
//! (an `EnvFilter`, default `info`), formatted by `--log-format` or
//! `SHEAF_LOG_FORMAT` (`text`, the default, or `json`: one JSON object per
//! line with `timestamp`, `level`, `fields`, `target` and `span`s).

use clap::{Args, ValueEnum};

/// How log lines look.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The logging flags of `sheaf server` and `sheaf agent`.
#[derive(Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// How log lines look on stderr: `text` or `json` (one JSON object
    /// per line). The level comes from SHEAF_LOG (default `info`).
    #[arg(long, value_enum, env = "SHEAF_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// The same as --log-format json (kept for older scripts).
    #[arg(long, hide = true)]
    pub log_json: bool,
}

impl LogArgs {
    pub fn format(&self) -> LogFormat {
        if self.log_json {
            LogFormat::Json
        } else {
            self.log_format
        }
    }
}

/// The format `SHEAF_LOG_FORMAT` asks for (processes without flags:
/// `sheaf blk`); text when unset or not understood.
pub fn format_from_env() -> LogFormat {
    match std::env::var("SHEAF_LOG_FORMAT").ok().as_deref().map(str::trim) {
        Some(f) if f.eq_ignore_ascii_case("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// Sets up `tracing` for this process: stderr, `SHEAF_LOG` filter,
/// `format`. Called once, first thing.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHEAF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
}

/// The node agent's flags for the guests' serial console logs
/// (`sheaf_agent::serial_log`).
#[derive(Args, Debug, Clone)]
pub struct SerialLogFlags {
    /// Size at which a VM's serial console log (RUN_DIR/UID/serial.log)
    /// is rotated (`1Mi`, `256Ki`; at least 4Ki).
    #[arg(long, default_value = "1Mi", value_parser = parse_log_size)]
    pub serial_log_size: u64,
    /// Rotated serial log generations kept per VM besides the current one
    /// (`sheaf vm logs --previous` reads them); 0 keeps none.
    #[arg(long, default_value = "3", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub serial_log_files: u32,
}

impl SerialLogFlags {
    pub fn policy(&self) -> sheaf_agent::serial_log::Policy {
        sheaf_agent::serial_log::Policy { max_bytes: self.serial_log_size, keep: self.serial_log_files }
    }
}

fn parse_log_size(s: &str) -> Result<u64, String> {
    let bytes = crate::blk::parse_size(s).map_err(|e| e.to_string())?;
    let min = sheaf_agent::serial_log::MIN_MAX_BYTES;
    if bytes < min {
        return Err(format!("{s:?} is too small: serial logs rotate at {min} bytes (4Ki) or more"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        serial: SerialLogFlags,
    }

    #[test]
    fn flags() {
        let c = Cli::try_parse_from(["x"]).expect("defaults");
        assert_eq!(c.log.format(), LogFormat::Text);
        assert_eq!(c.serial.policy(), sheaf_agent::serial_log::Policy { max_bytes: 1024 * 1024, keep: 3 });
        let c =
            Cli::try_parse_from(["x", "--log-format", "json", "--serial-log-size", "64Ki", "--serial-log-files", "0"])
                .expect("parse");
        assert_eq!(c.log.format(), LogFormat::Json);
        assert_eq!(c.serial.policy(), sheaf_agent::serial_log::Policy { max_bytes: 65536, keep: 0 });
        assert_eq!(Cli::try_parse_from(["x", "--log-json"]).expect("alias").log.format(), LogFormat::Json);
        let e = Cli::try_parse_from(["x", "--serial-log-size", "100"]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("too small"), "{e}");
        let e =
            Cli::try_parse_from(["x", "--serial-log-size", "lots"]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("not a quantity"), "{e}");
        assert!(Cli::try_parse_from(["x", "--log-format", "xml"]).is_err());
    }
}
