//! mammo-edge: the edge appliance's command line (the daemon `run`, `check`, inspect files,
//! generate phantoms, score files, run the demo).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use mammo_edge::cli::inspect::{self, Outputs};
use mammo_edge::ingest::dicom::{IngestOptions, Resolution, Vendor, View};
use mammo_edge::ingest::preprocess::PreprocessConfig;
use mammo_edge::synth::generator::{generate, image_count, SynthConfig};
use mammo_edge::synth::style::styled_vendors;

/// Exit status of `inspect` when some inputs were rejected (each still reported). 2 is clap's usage error.
const EXIT_REJECTED: u8 = 3;
/// Exit statuses of `run` and `check` (documented in their --help).
const EXIT_CONFIG: u8 = 3;
const EXIT_MODEL: u8 = 4;
const EXIT_BROKER: u8 = 5;
const EXIT_STATE: u8 = 6;
const EXIT_SR_DESTINATION: u8 = 7;

const DAEMON_EXIT_HELP: &str = "Exit status: 0 ok (run: stopped by SIGTERM/SIGINT), \
    1 other failure, 2 usage error, 3 configuration refused (the message names the key) or a \
    watch.dirs folder that cannot be watched, 4 model refused (unreadable or not following docs/model-contract.md), \
    5 broker unreachable or TLS / credential files unusable, \
    6 state folder or database unusable, or privacy.key_file unusable, \
    7 (check) an [[sr.destination]] does not answer C-ECHO.";

#[derive(Parser)]
#[command(
    name = "mammo-edge",
    version,
    about = "Mammography edge appliance: DICOM mammogram ingest, the shared preprocessing and synthetic \
             phantoms, and the scoring daemon that publishes results over MQTT (docs/daemon.md)"
)]
struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// `infer --precision`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PrecisionArg {
    Auto,
    File,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: watch the export folders, score each new mammogram, publish over MQTT.
    /// Stops cleanly on SIGTERM / SIGINT; SIGHUP reloads the configuration file and the model
    /// (a refused one is logged and the running one kept).
    #[command(after_help = DAEMON_EXIT_HELP)]
    Run {
        /// TOML configuration (keys: docs/daemon-store.md; `print-default-config` shows all).
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
    },
    /// Print the default configuration, every key commented, to edit into /etc/mammo-edge/config.toml.
    PrintDefaultConfig,
    /// Check a configuration: the config itself, the model contract, the state folder and,
    /// unless --no-broker, that the broker answers (CONNACK within 10 s) and each
    /// [[sr.destination]] answers C-ECHO.
    #[command(after_help = DAEMON_EXIT_HELP)]
    Check {
        /// TOML configuration.
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
        /// Do not connect to the broker or the SR destinations.
        #[arg(long)]
        no_broker: bool,
    },
    /// Queue again the result messages (image, exam, skipped, error) delivered to the broker in a
    /// time range, for consumers that missed them; the running daemon (or the next start)
    /// publishes them with their original result_id. Needs only the state folder.
    #[command(
        after_help = "Exit status: 0 queued (also when nothing matched), 2 usage error \
                            (e.g. a time that is not RFC 3339), 3 configuration refused, \
                            6 state folder or database unusable."
    )]
    Replay {
        /// TOML configuration (its state.dir is used).
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
        /// Start of the range, RFC 3339 (UTC), e.g. 2026-12-05T08:00:00Z.
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        since: std::time::SystemTime,
        /// End of the range (excluded), RFC 3339; default now.
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        until: Option<std::time::SystemTime>,
    },
    /// Delete now what the daemon purges every hour: delivered messages, finished ledger rows,
    /// results and published exams older than state.retention_days (or --older-than), e.g. after
    /// the retention was shortened. Safe beside the running daemon. Needs only the state folder.
    #[command(
        after_help = "Exit status: 0 purged (also when nothing was due), 2 usage error, \
                            3 configuration refused, 6 state folder or database unusable."
    )]
    Purge {
        /// TOML configuration (its state.dir and state.retention_days are used).
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
        /// Age past which finished rows go, e.g. 7days or 0s; default state.retention_days.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
    },
    /// Read DICOM files as the daemon would and report what was found, one line (or JSON object) per file.
    #[command(
        after_help = "Exit status: 0 all files accepted, 3 some rejected (each still reported), \
                            1 the tool failed (e.g. an output folder cannot be written), 2 usage error."
    )]
    Inspect {
        /// Print one JSON object per line (keys in docs/inspect.md).
        #[arg(long)]
        json: bool,
        /// Write the preprocessed model input of each accepted file as PNG into DIR (created if needed).
        #[arg(long, value_name = "DIR")]
        preview: Option<PathBuf>,
        /// Write the grey-level pipeline output at source resolution as 16-bit PNG into DIR.
        #[arg(long, value_name = "DIR")]
        grey: Option<PathBuf>,
        /// Decode any single-frame greyscale image (any modality, view, For Processing);
        /// "accepted" then means "decoded".
        #[arg(long)]
        any: bool,
        /// Accept For Processing images (windowed to the 0.5-99.5 percentiles).
        #[arg(long)]
        accept_for_processing: bool,
        /// DICOM files, or folders (searched recursively, in name order).
        #[arg(required = true, value_name = "FILE_OR_DIR")]
        files: Vec<PathBuf>,
    },
    /// Score DICOM files as the daemon would: per file the image / skipped / error message the
    /// daemon would publish, then the exam message of each study (exam rule of DESIGN.md).
    #[command(
        after_help = "Exit status: 0 all files scored, 3 some rejected (each still reported), \
                      1 the model was refused."
    )]
    Infer {
        /// The ONNX model (default: the bundled int8 demo model).
        #[arg(long)]
        model: Option<PathBuf>,
        /// `auto`: also time the model's other precision (X.onnx / X.int8.onnx beside it, the
        /// same model; the bundled float32 twin for the bundled model) and score with the faster
        /// on this CPU, as the daemon does; `file`: the model as given (always with `--tensor`).
        #[arg(long, value_enum, default_value = "auto")]
        precision: PrecisionArg,
        /// Print the messages as JSON, one per line (docs/schemas/; `file` is the path as given).
        #[arg(long)]
        json: bool,
        /// Score any single-frame greyscale DICOM image whatever its modality, view or intent
        /// (e.g. a chest CR, to see the out-of-distribution flag at work); never the daemon's rule.
        #[arg(long)]
        any: bool,
        /// Also write one Mammography CAD SR (DICOM, TID 4000) per study with scored images into
        /// DIR (it carries the source images' patient module: keep it on the hospital network).
        #[arg(long, value_name = "DIR")]
        sr: Option<PathBuf>,
        /// Decode JPEG 2000 at full resolution (default: the coarsest wavelet level that keeps
        /// four times the model's input per side, as the daemon does unless `ingest.reduced_decode =
        /// false`).
        #[arg(long)]
        full_resolution: bool,
        /// Instead of DICOM files: one raw little-endian f32 model-input tensor [H*W] (for checks
        /// against other runtimes); prints the raw outputs.
        #[arg(long, value_name = "FILE")]
        tensor: Option<PathBuf>,
        /// DICOM files, image files (PNG 8/16-bit, JPEG, PGM/PNM: laterality and polarity found
        /// from the pixels, no exam) or folders.
        #[arg(value_name = "FILE_OR_DIR", required_unless_present = "tensor")]
        files: Vec<PathBuf>,
    },
    /// Time tract inference of one or more models on this machine (Markdown table; speed-up
    /// relative to the first model).
    Bench {
        /// ONNX models, e.g. the float32 and the int8 file.
        #[arg(required = true, value_name = "MODEL")]
        models: Vec<PathBuf>,
        /// Timed forward passes per model (after 3 warm-up passes).
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Also write the timings as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also print where the time goes: ms per pass by operator kind of tract's plan.
        #[arg(long)]
        profile: bool,
        /// Also print the kernel tract chose for each matrix product on this CPU, with its time
        /// (under qemu-aarch64: the ARM kernels, docs/deploy.md).
        #[arg(long)]
        kernels: bool,
    },
    /// Generate synthetic mammograms (DICOM) with ground truth: masks and manifest.csv (docs/synth.md).
    Synth {
        /// Output folder (images/, masks/, manifest.csv); must not already hold a data set.
        #[arg(long)]
        out: PathBuf,
        /// Number of images, rounded up to whole exams (L/R x each view).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
        count: u64,
        /// Random seed: same seed and options, same bytes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Comma-separated vendor styles (default: all): hologic, ge, siemens, fujifilm, ims_giotto, planmed.
        #[arg(long, value_delimiter = ',')]
        vendors: Vec<String>,
        /// Comma-separated views: CC, MLO.
        #[arg(long, value_delimiter = ',', default_value = "CC,MLO")]
        views: Vec<String>,
        /// Matrix scale, 0.01-2 (1 = full detector size; pixel spacing grows as the matrix shrinks).
        #[arg(long, default_value_t = 0.25, allow_negative_numbers = true)]
        scale: f64,
        /// Probability that an exam has a malignant finding (0-1).
        #[arg(long, default_value_t = 0.3, allow_negative_numbers = true)]
        prevalence: f64,
        /// Probability that a breast has a benign finding (0-1).
        #[arg(long, default_value_t = 0.15, allow_negative_numbers = true)]
        benign_rate: f64,
        /// Rate of adjacent-class flips of the density label (0-1).
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        label_noise: f64,
        /// Compress with the vendor's usual transfer syntax (needs dcmtk and libgdcm-tools).
        #[arg(long)]
        compress: bool,
        /// Worker threads, 1-64.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
        threads: u16,
        /// Put every exam of this vendor in the test split (an unseen vendor for training).
        #[arg(long, value_name = "VENDOR")]
        hold_out: Option<String>,
        /// Also write a contact sheet PNG (one tile per vendor and view).
        #[arg(long, value_name = "PNG")]
        contact_sheet: Option<PathBuf>,
    },
    /// The hospital-side dashboard: subscribe to the appliances' brokers, keep what arrives in
    /// SQLite or PostgreSQL, serve a live web page (worklist, appliances, drift, charts) and a JSON API
    /// (docs/dashboard.md). Not for the appliance itself.
    #[cfg(feature = "dashboard")]
    #[command(
        after_help = "Exit status: 0 stopped by SIGTERM / SIGINT, 1 error (database, listen \
                      address, broker URL, token).\n\nExample: mammo-edge dashboard --broker \
                      mqtt://127.0.0.1:1883 --topics 'mammo/#' --listen 127.0.0.1:8080 --db \
                      sqlite:/var/lib/mammo-dashboard/db.sqlite"
    )]
    Dashboard {
        /// MQTT broker, mqtt://HOST:PORT or mqtts://HOST:PORT (repeat for several).
        #[arg(long = "broker", value_name = "URL", required = true)]
        brokers: Vec<String>,
        /// Topic filter to subscribe to (repeat for several).
        #[arg(long = "topics", value_name = "FILTER", default_value = "mammo/#")]
        topics: Vec<String>,
        /// Address of the page and the API. Anything but loopback needs --token-file.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Database: sqlite:PATH (created if missing) or
        /// postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (tables created if missing).
        #[arg(long, default_value = "sqlite:mammo-dashboard.sqlite")]
        db: String,
        /// File whose first line is the token the page and API require (>= 16 characters):
        /// open the page as /?token=…, call the API with `Authorization: Bearer …`.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// PEM CA bundle that signs mqtts:// brokers' certificates.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// PEM client certificate and key for mqtts:// brokers that require one.
        #[arg(long, value_name = "FILE", requires = "client_key")]
        client_cert: Option<PathBuf>,
        #[arg(long, value_name = "FILE", requires = "client_cert")]
        client_key: Option<PathBuf>,
        /// MQTT client id prefix (the broker's index is appended); keep it stable, the brokers
        /// keep this dashboard's session and queue what arrives while it is down.
        #[arg(long, default_value = "mammo-dashboard")]
        client_id: String,
    },
    /// The daemon end to end with nothing installed: an MQTT broker on loopback (embedded, or
    /// --broker), the daemon on a temporary export folder with the bundled model, a four-view
    /// phantom exam and four files it must refuse; prints each message as it arrives.
    #[command(
        after_help = "Exit status: 0 the exam and every refusal arrived, 1 the demo failed \
                      (the message says what was missing), 2 usage error."
    )]
    Demo {
        /// Random seed of the phantom exam.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Print the raw message payloads, one JSON object per line, instead of summary lines.
        #[arg(long)]
        json: bool,
        /// Score with this ONNX model instead of the bundled int8 demo model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Use this running broker (mqtt://HOST:PORT) instead of the embedded one.
        #[arg(long, value_name = "URL")]
        broker: Option<String>,
        /// Keep the export, state, phantom and model files and the daemon's config.toml in DIR
        /// (new, empty, or an earlier demo's) instead of a temporary folder.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
        timeout: u64,
        /// Send the exam by DICOM C-STORE to the daemon's receiver (on a loopback port) instead
        /// of dropping it into the export folder; the daemon writes the exam's Mammography CAD
        /// SR into the demo folder's sr/ (see --keep).
        #[arg(long)]
        dicom: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run { .. }) {
        // before logging, the configuration and the runtime: SIGHUP must not kill a starting daemon
        if let Err(e) = mammo_edge::edge::service::catch_sighup_early() {
            eprintln!("warning: SIGHUP handler not installed at start-up: {e}");
        }
    }
    let level = match cli.verbose {
        // the demo's output is its messages (the refusals it provokes are not warnings); the
        // daemon's own log only with -v
        0 if matches!(cli.command, Command::Demo { .. }) => "warn,mammo_edge::edge::daemon=error",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // the embedded broker (demo) logs its tracing spans at ERROR level: shown only with -vv
    let broker = if cli.verbose >= 2 {
        "rumqttd=debug"
    } else {
        "rumqttd=off"
    };
    if let Err(e) = mammo_edge::edge::logging::init(&format!("{level},jpeg2k=warn,{broker}")) {
        eprintln!("warning: {e}");
    }
    mammo_edge::edge::logging::install_panic_hook();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Write one line to stdout; a closed pipe (`| head`) ends the program quietly.
fn emit(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

fn print(report: &inspect::Report, json: bool) -> anyhow::Result<()> {
    if json {
        emit(&serde_json::to_string(report)?);
    } else {
        emit(&report.to_line());
    }
    Ok(())
}

/// An output folder, created now so that a bad path fails before any work is done.
fn output_dir(flag: &str, dir: Option<PathBuf>) -> anyhow::Result<Option<PathBuf>> {
    if let Some(d) = &dir {
        if d.exists() && !d.is_dir() {
            bail!("{flag} {}: is a file, not a folder", d.display());
        }
        std::fs::create_dir_all(d).with_context(|| format!("{flag} {}", d.display()))?;
    }
    Ok(dir)
}

/// Files named on the command line, folders expanded recursively in name order.
fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            out.extend(
                mammo_edge::ingest::files::files_under(p)
                    .with_context(|| format!("reading folder {}", p.display()))?,
            );
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn parse_vendor(v: &str) -> anyhow::Result<Vendor> {
    let styled = styled_vendors();
    let names: Vec<&str> = styled.iter().map(|v| v.as_str()).collect();
    let want = v.trim().to_ascii_lowercase();
    styled
        .into_iter()
        .find(|s| s.as_str() == want)
        .with_context(|| {
            format!(
                "--vendors: {v:?} has no phantom style; choose from {}",
                names.join(", ")
            )
        })
}

/// An RFC 3339 time (`2026-12-05T08:00:00Z`, fractions and offsets as humantime accepts).
fn parse_time(s: &str) -> Result<std::time::SystemTime, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{e} (expected e.g. 2026-12-05T08:00:00Z)"))
}

/// Exit status and message of a daemon error.
fn daemon_failure(e: &mammo_edge::edge::daemon::DaemonError) -> ExitCode {
    use mammo_edge::edge::daemon::DaemonError as D;
    eprintln!("error: {e}");
    ExitCode::from(match e {
        D::Model { .. } => EXIT_MODEL,
        D::Publish(_) => EXIT_BROKER,
        D::Store(_) | D::Privacy(_) => EXIT_STATE,
        D::Watch(_) | D::Scp(_) | D::Tls(_) => EXIT_CONFIG,
        D::SrDestination { .. } => EXIT_SR_DESTINATION,
        D::Runtime(_) => 1,
    })
}

fn load_config(path: &std::path::Path) -> Result<mammo_edge::edge::config::Config, ExitCode> {
    mammo_edge::edge::config::Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config: path } => {
            let config = match load_config(&path) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let rt = runtime()?;
            match rt.block_on(mammo_edge::edge::daemon::run_with(
                config,
                Some(path),
                mammo_edge::edge::daemon::shutdown_signal(),
            )) {
                Ok(_) => Ok(ExitCode::SUCCESS),
                Err(e) => Ok(daemon_failure(&e)),
            }
        }
        Command::Replay {
            config,
            since,
            until,
        } => {
            let config = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let until = until.unwrap_or_else(std::time::SystemTime::now);
            let ms = |t: std::time::SystemTime| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                    .unwrap_or(0)
            };
            let replayed =
                mammo_edge::edge::store::Store::open(&config.state.dir, config.ingest.max_attempts)
                    .and_then(|mut store| store.replay(ms(since), ms(until)));
            match replayed {
                Ok(n) => {
                    println!(
                        "replay: {n} message(s) delivered from {} to {} queued again; the daemon \
                         publishes them with their original result_id",
                        humantime::format_rfc3339_seconds(since),
                        humantime::format_rfc3339_seconds(until)
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(EXIT_STATE))
                }
            }
        }
        Command::Purge { config, older_than } => {
            let config = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let age = older_than.unwrap_or_else(|| config.state.retention());
            let purged =
                mammo_edge::edge::store::Store::open(&config.state.dir, config.ingest.max_attempts)
                    .and_then(|mut store| store.purge(age));
            match purged {
                Ok(p) => {
                    println!(
                        "purge: older than {}: {} delivered message(s), {} ledger row(s), {} \
                         result(s), {} exam(s) deleted",
                        humantime::format_duration(age),
                        p.outbox,
                        p.ledger,
                        p.results,
                        p.exams
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(EXIT_STATE))
                }
            }
        }
        Command::PrintDefaultConfig => {
            print!("{}", mammo_edge::edge::config::Config::default_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config, no_broker } => {
            let config = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let rt = runtime()?;
            match rt.block_on(mammo_edge::edge::daemon::check(
                &config,
                !no_broker,
                std::time::Duration::from_secs(10),
            )) {
                Ok(r) => {
                    emit(&format!(
                        "ok: config; model {} {} (sha256 {}); state {}; broker {}",
                        r.model_name,
                        r.model_version,
                        r.model_sha256,
                        config.state.dir.display(),
                        if r.broker_checked {
                            format!("{} reachable", config.mqtt.url)
                        } else {
                            "not checked".into()
                        }
                    ));
                    for key in &r.sr_echoed {
                        emit(&format!("ok: SR destination {key} answers C-ECHO"));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(daemon_failure(&e)),
            }
        }
        Command::Inspect {
            json,
            preview,
            grey,
            any,
            accept_for_processing,
            files,
        } => {
            let mut opts = if any {
                IngestOptions::any_image()
            } else {
                IngestOptions::default()
            };
            opts.accept_for_processing |= accept_for_processing;
            let out = Outputs {
                preview_dir: output_dir("--preview", preview)?,
                grey_dir: output_dir("--grey", grey)?,
            };
            let cfg = PreprocessConfig::default();
            let mut rejected = 0;
            for f in expand(&files)? {
                let r = inspect::inspect_file(&f, &opts, &cfg, &out)?;
                if r.status != "accepted" {
                    rejected += 1;
                }
                print(&r, json)?;
            }
            Ok(if rejected == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_REJECTED)
            })
        }
        Command::Bench {
            models,
            runs,
            json,
            profile,
            kernels,
        } => {
            let t = mammo_edge::cli::bench::bench(&models, runs)?;
            print!("{}", mammo_edge::cli::bench::markdown(&t));
            if profile {
                print!(
                    "{}",
                    mammo_edge::cli::bench::profile_markdown(&models, runs)?
                );
            }
            if kernels {
                print!(
                    "{}",
                    mammo_edge::cli::bench::kernels_markdown(&models, runs)?
                );
            }
            if let Some(j) = json {
                std::fs::write(&j, serde_json::to_string_pretty(&t)?)
                    .with_context(|| format!("--json {}", j.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Infer {
            model,
            precision,
            json,
            any,
            sr,
            full_resolution,
            tensor,
            files,
        } => {
            let model = if tensor.is_some() || precision == PrecisionArg::File {
                mammo_edge::model::score::load_model(model.as_deref())?
            } else {
                mammo_edge::model::score::load_model_for_cpu(model.as_deref())?
            };
            if let Some(t) = tensor {
                let bytes =
                    std::fs::read(&t).with_context(|| format!("--tensor {}", t.display()))?;
                let input: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                let o = model.runner.run(&input)?;
                let raw = serde_json::json!({
                    "cancer": o.cancer, "normal": o.normal, "density": o.density,
                    "percent_density": o.percent_density, "vendor": o.vendor, "view": o.view,
                    "dense_mask": o.dense_mask, "reconstruction": o.reconstruction,
                    "recon_error": o.recon_error, "ood_score": o.ood_score,
                });
                emit(&raw.to_string());
                return Ok(ExitCode::SUCCESS);
            }
            let show = |v: &serde_json::Value| {
                if json {
                    emit(&v.to_string());
                } else {
                    emit(&mammo_edge::edge::message::summary(v));
                }
            };
            let mut opts = if any {
                IngestOptions::any_image()
            } else {
                IngestOptions::default()
            };
            if full_resolution {
                opts.resolution = Resolution::Full;
            }
            let mut batch = mammo_edge::cli::infer::Batch::new(&model, opts);
            let mut rejected = 0;
            let mut scored = Vec::new();
            for f in expand(&files)? {
                let r = batch.file(&f);
                if !r.scored {
                    rejected += 1;
                }
                show(&r.payload);
                if r.scored {
                    scored.push((f, r.payload));
                }
            }
            let mut exams = Vec::new();
            for e in batch.exams() {
                match e {
                    Ok(v) => {
                        show(&v);
                        exams.push(v);
                    }
                    Err(e) => log::warn!("exam not aggregated: {e}"),
                }
            }
            if let Some(dir) = &sr {
                let written = mammo_edge::cli::infer::write_srs(
                    dir,
                    &scored,
                    &exams,
                    &model.sha256,
                    std::time::SystemTime::now(),
                )
                .with_context(|| format!("--sr {}", dir.display()))?;
                for p in written {
                    eprintln!("SR written: {}", p.display());
                }
            }
            if !json {
                let m = &model.runner.meta;
                emit(&format!(
                    "model: {} {} ({}); intended use: {}",
                    m.model_name, m.model_version, model.source, m.intended_use
                ));
            }
            Ok(if rejected == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_REJECTED)
            })
        }
        Command::Synth {
            out,
            count,
            seed,
            vendors,
            views,
            scale,
            prevalence,
            benign_rate,
            label_noise,
            compress,
            threads,
            hold_out,
            contact_sheet,
        } => {
            let parse_view = |v: &String| match View::from_view_position(v) {
                Some(v) if v.is_screening() => Ok(v),
                _ => Err(anyhow::anyhow!("--views: {v:?} is not CC or MLO")),
            };
            if out.exists() && !out.is_dir() {
                bail!("--out {}: is a file, not a folder", out.display());
            }
            if let Some(png) = &contact_sheet {
                let parent = png.parent().filter(|p| !p.as_os_str().is_empty());
                if let Some(p) = parent {
                    std::fs::create_dir_all(p)
                        .with_context(|| format!("--contact-sheet {}", png.display()))?;
                }
            }
            let defaults = SynthConfig::default();
            let cfg = SynthConfig {
                count: count as usize,
                seed,
                vendors: if vendors.is_empty() {
                    defaults.vendors
                } else {
                    vendors
                        .iter()
                        .map(|v| parse_vendor(v))
                        .collect::<anyhow::Result<_>>()?
                },
                views: views
                    .iter()
                    .map(parse_view)
                    .collect::<anyhow::Result<_>>()?,
                scale,
                prevalence,
                benign_rate,
                label_noise,
                compress,
                threads: threads as usize,
                hold_out: hold_out.as_deref().map(parse_vendor).transpose()?,
                ..defaults
            };
            if let Some(h) = cfg.hold_out {
                if !cfg.vendors.contains(&h) {
                    bail!("--hold-out {}: not among the --vendors", h.as_str());
                }
            }
            let n = image_count(&cfg);
            if n != cfg.count {
                log::info!(
                    "--count {} rounded up to {n} images (whole exams)",
                    cfg.count
                );
            }
            let t0 = std::time::Instant::now();
            let rows = generate(&cfg, &out)?;
            let secs = t0.elapsed().as_secs_f64();
            eprintln!(
                "synth: {} images in {:.1} s ({:.2} images/s) -> {}",
                rows.len(),
                secs,
                rows.len() as f64 / secs,
                out.join("manifest.csv").display()
            );
            if let Some(png) = contact_sheet {
                mammo_edge::synth::sheet::contact_sheet(&out, &rows, &png)?;
                eprintln!("synth: contact sheet {}", png.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "dashboard")]
        Command::Dashboard {
            brokers,
            topics,
            listen,
            db,
            token_file,
            ca_file,
            client_cert,
            client_key,
            client_id,
        } => {
            use mammo_edge::dashboard;
            let token = token_file
                .as_deref()
                .map(dashboard::read_token)
                .transpose()?;
            let opts = dashboard::Options {
                brokers,
                topics,
                listen,
                db,
                token,
                ca_file: ca_file.unwrap_or_default(),
                client_cert: client_cert.unwrap_or_default(),
                client_key: client_key.unwrap_or_default(),
                client_id,
            };
            let rt = runtime()?;
            rt.block_on(dashboard::run(
                opts,
                mammo_edge::edge::daemon::shutdown_signal(),
                |addr| emit(&format!("dashboard: http://{addr}/")),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            seed,
            json,
            model,
            broker,
            keep,
            timeout,
            dicom,
        } => {
            let opts = mammo_edge::cli::demo::DemoOptions {
                model,
                broker,
                keep,
                seed,
                timeout: std::time::Duration::from_secs(timeout),
                dicom,
            };
            let rt = runtime()?;
            let d = rt
                .block_on(mammo_edge::cli::demo::run(&opts, |m| {
                    if json {
                        emit(m.payload);
                    } else {
                        emit(&mammo_edge::edge::message::summary(m.json));
                    }
                }))
                .context("demo failed")?;
            if !json {
                emit(&format!(
                    "model: {}; intended use: {}",
                    d.model, d.intended_use
                ));
            }
            eprintln!(
                "demo: {} image, {} exam, {} skipped and {} error messages in {:.1} s from the daemon \
                 via {} ({}, topics {}/…){}{}",
                d.images,
                d.exams,
                d.skipped,
                d.errors,
                d.elapsed.as_secs_f64(),
                d.broker_url,
                if d.embedded_broker { "embedded broker" } else { "--broker" },
                d.topic_prefix,
                if d.sr_files > 0 {
                    format!("; {} Mammography CAD SR written", d.sr_files)
                } else {
                    String::new()
                },
                d.kept
                    .as_ref()
                    .map(|k| format!("; files kept in {}", k.display()))
                    .unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
