//! `cellar`: the command-line face of cellar. Values are shown and read as Python literals.
//!
//! - `cellar marshal show FILE|-`: decode marshal data (or a `.pyc`: header, then the code
//!   object) safely and print it in Python literal syntax.
//! - `cellar marshal encode [--version N]`: read a Python literal on stdin, write marshal bytes.
//! - `cellar get|set|del|keys|dump|load|convert|info|check|repair|compact PATH ...`: work with
//!   any store cellar opens (native, sqlite3, dumb; Redis, Redis Cluster and PostgreSQL stores
//!   given by URL where a PATH goes), see [`store`].
//! - `cellar pickle show FILE|- [--ops|--globals]`: decode a pickle safely (inert objects), list
//!   its opcodes, or list the globals it names and what each would need.
//! - `cellar demo`: the main job end to end on the native engine.

mod pickle_show;
mod store;

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use cellar::marshal::pyc::{PycHeader, Validation};
use cellar::marshal::{self, LoadOptions};
use cellar::value::{parse, repr};

#[derive(Parser)]
#[command(
    name = "cellar",
    version,
    about = "Python's data-persistence stack (marshal, pickle, dbm, shelve), in Rust",
    after_help = "Store commands take a server URL wherever they take a PATH: \
                  redis://[user[:pass]@]host:port/db?prefix=app:, \
                  redis+cluster://host:port,host:port/?prefix=app:, \
                  postgresql://user@host:port/dbname?table=name (passwords also from \
                  REDISCLI_AUTH / PGPASSWORD; never shown).\n\n\
                  Exit status: 0 success; 1 failure (damage found, key or store not found, bad \
                  data; the message says what and what to do); 2 usage error. Output into a \
                  closed pipe ends quietly, as coreutils do."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// cellar's main job, end to end on the embedded native engine: store Python values
    /// (marshal-encoded) in a store file, reopen it, read them back and show its statistics.
    Demo {
        /// The store file to create (replaced if it exists).
        #[arg(default_value = "demo.cellar")]
        path: PathBuf,
        /// How many generated records to store besides the seed example.
        #[arg(long, default_value_t = 100_000)]
        records: u32,
    },
    /// Print the value stored under KEY.
    Get {
        /// The store: any format cellar reads (native, sqlite3, dumb, dbm.gnu, dbm.ndbm).
        path: PathBuf,
        /// The key: UTF-8 text, or a Python literal with --literal.
        key: String,
        #[command(flatten)]
        view: View,
        /// Read KEY as a Python bytes/str literal (b'\x00', 'é').
        #[arg(long)]
        literal: bool,
    },
    /// Store VALUE under KEY (creates a native store if PATH does not exist).
    Set {
        path: PathBuf,
        key: String,
        value: String,
        /// Read KEY and VALUE as Python bytes/str literals.
        #[arg(long)]
        literal: bool,
        /// Store the marshal bytes of VALUE, read as any Python literal.
        #[arg(long, value_enum)]
        encode: Option<EncodeAs>,
    },
    /// Delete KEY.
    Del {
        path: PathBuf,
        key: String,
        #[arg(long)]
        literal: bool,
    },
    /// List the keys as Python bytes literals (--json: a JSON array).
    Keys {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write every record as JSON Lines: {"key": K, "value": V}, strings when UTF-8, else {"base64": ...}.
    Dump {
        path: PathBuf,
        /// Also add each value decoded ("repr"), for reading; load ignores it. Default: the codec
        /// a native shelf records in its header, else none.
        #[arg(long, value_enum)]
        decode: Option<store::Decode>,
    },
    /// Read JSON Lines (as dump writes them) from FILE or stdin into the store.
    Load {
        path: PathBuf,
        /// The JSON Lines file (default: standard input).
        file: Option<PathBuf>,
        /// Backend for a new store.
        #[arg(long, default_value = "native")]
        to: String,
    },
    /// Copy every record of SRC (any store cellar reads, dbm.gnu and dbm.ndbm included) into a
    /// new store DST, then compare the count and checksum of both.
    Convert {
        src: PathBuf,
        dst: PathBuf,
        /// Backend of DST: native, sqlite or dumb (a server URL as DST names its own backend).
        #[arg(long, default_value = "native")]
        to: String,
        /// Record in a native DST's header how its values are encoded: `pickle` for a shelf
        /// (protocol taken from the values), `pickle:N`, `marshal[:N]`, or `raw`. Default: the
        /// source's own record (native sources), else none.
        #[arg(long)]
        values: Option<String>,
    },
    /// Show the format, key count and sizes (live, dead and checkpoint bytes for native
    /// stores), how values are encoded, whether the last writer closed the store, and whether it
    /// is damaged (native stores are checked record by record; exit status 1 on damage).
    Info {
        path: PathBuf,
        /// Print one JSON object (exact byte counts).
        #[arg(long)]
        json: bool,
        /// Show sizes as exact byte counts instead of KiB/MiB.
        #[arg(long)]
        bytes: bool,
    },
    /// Verify every record's checksum (native stores), or read every bucket and record of a
    /// dbm.gnu / dbm.ndbm file and report what is readable.
    Check {
        path: PathBuf,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Salvage every intact record of a damaged native store (or every readable pair of a
    /// damaged dbm.gnu / dbm.ndbm file) into a new native store.
    Repair {
        src: PathBuf,
        dst: PathBuf,
        /// Print the report as one JSON object (native stores).
        #[arg(long)]
        json: bool,
    },
    /// Reclaim dead space.
    Compact { path: PathBuf },
    /// Inspect pickles safely: nothing is imported or run.
    Pickle {
        #[command(subcommand)]
        command: PickleCommand,
    },
    /// Inspect and produce CPython marshal data (.pyc files included).
    Marshal {
        #[command(subcommand)]
        command: MarshalCommand,
    },
}

#[derive(clap::Args)]
struct View {
    /// Print JSON (strings when UTF-8, else {"base64": ...}).
    #[arg(long)]
    json: bool,
    /// Show values decoded (marshal or pickle, safely) instead of as bytes. Default: the codec
    /// a native shelf records in its header, else bytes.
    #[arg(long, value_enum)]
    decode: Option<store::Decode>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum EncodeAs {
    /// marshal version 4
    Marshal,
}

#[derive(Subcommand)]
enum PickleCommand {
    /// Decode a pickle and print it as Python literals; objects of any class are shown inertly
    /// as module.Name(args...) with the state the pickle gives them. Never executes anything.
    Show {
        /// The file to read, or - for standard input.
        file: PathBuf,
        /// List the opcodes instead, like pickletools.dis.
        #[arg(long)]
        ops: bool,
        /// List every global the pickle names and what loading it would need (class, function
        /// or value; allowed by default or not) instead.
        #[arg(long, conflicts_with = "ops")]
        globals: bool,
    },
}

#[derive(Subcommand)]
enum MarshalCommand {
    /// Decode marshal data or a .pyc file and print it as a Python literal. Never executes anything.
    Show {
        /// The file to read, or - for standard input.
        file: PathBuf,
        /// Refuse code objects instead of printing them.
        #[arg(long)]
        no_code: bool,
    },
    /// Read a Python literal on standard input and write its marshal bytes to standard output.
    Encode {
        /// Marshal format version (0-5; 4 is CPython's default, 5 adds slices).
        #[arg(long, default_value_t = marshal::DEFAULT_VERSION, value_parser = clap::value_parser!(u32).range(0..=5))]
        version: u32,
    },
}

/// Exit codes: 0 success; 1 failure (damage found, key or store not found, bad data); 2 usage
/// (clap's own exit code for bad arguments). A closed output pipe ends the process quietly as
/// coreutils do (killed by SIGPIPE: 141 in a shell).
fn main() {
    restore_sigpipe();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        if is_broken_pipe(&e) {
            std::process::exit(141);
        }
        eprintln!("cellar: {e:#}");
        std::process::exit(1);
    }
}

/// Rust ignores SIGPIPE at start-up, so `cellar keys big.db | head` would end with an EPIPE error
/// (or a panic inside `println!`). A command-line filter should die quietly instead, like `cat`.
#[cfg(unix)]
#[allow(unsafe_code)]
fn restore_sigpipe() {
    // SAFETY: called first thing in main, before any thread is started; setting the default
    // disposition of SIGPIPE installs no handler code and touches no Rust state.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn restore_sigpipe() {}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo { path, records } => demo(&path, records),
        Command::Get {
            path,
            key,
            view,
            literal,
        } => store::get(
            &path,
            &store::arg_bytes(&key, literal)?,
            store::Output {
                json: view.json,
                decode: view.decode,
            },
        ),
        Command::Set {
            path,
            key,
            value,
            literal,
            encode,
        } => {
            let k = store::arg_bytes(&key, literal)?;
            let v = match encode {
                Some(EncodeAs::Marshal) => {
                    let v = parse(&value)
                        .map_err(|e| anyhow::anyhow!("VALUE is not a Python literal: {e}"))?;
                    marshal::dumps(&v, marshal::DEFAULT_VERSION)?
                }
                None => store::arg_bytes(&value, literal)?,
            };
            store::set(&path, &k, &v)
        }
        Command::Del { path, key, literal } => store::del(&path, &store::arg_bytes(&key, literal)?),
        Command::Keys { path, json } => store::keys(&path, store::Output { json, decode: None }),
        Command::Dump { path, decode } => store::dump(&path, store::Output { json: true, decode }),
        Command::Load { path, file, to } => {
            store::load(&path, file.as_deref(), Some(store::backend_named(&to)?))
        }
        Command::Convert {
            src,
            dst,
            to,
            values,
        } => store::convert(&src, &dst, store::backend_named(&to)?, values.as_deref()),
        Command::Info { path, json, bytes } => {
            store::info(&path, store::Output { json, decode: None }, bytes)
        }
        Command::Check { path, json } => store::check(&path, json),
        Command::Repair { src, dst, json } => store::repair(&src, &dst, json),
        Command::Compact { path } => store::compact(&path),
        Command::Pickle {
            command: PickleCommand::Show { file, ops, globals },
        } => {
            let data = read_input(&file)?;
            let text = if ops {
                pickle_show::ops(&data)?
            } else if globals {
                pickle_show::globals(&data)
            } else {
                let v = pickle_show::decode(&data)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                pickle_show::show(&v) + "\n"
            };
            std::io::stdout().write_all(text.as_bytes())?;
            Ok(())
        }
        Command::Marshal { command } => match command {
            MarshalCommand::Show { file, no_code } => show(&file, no_code),
            MarshalCommand::Encode { version } => encode(version),
        },
    }
}

fn demo(path: &PathBuf, records: u32) -> Result<()> {
    use cellar::engine::{Batch, Options, Store, ValueEncoding};
    use cellar::Value;
    let t0 = std::time::Instant::now();
    let opts = Options {
        truncate: true,
        value_encoding: ValueEncoding::Marshal {
            version: marshal::DEFAULT_VERSION as u8,
        },
        ..Options::default()
    };
    let store = Store::open(path, opts).with_context(|| format!("creating {}", path.display()))?;
    // The seed's example: db["test key"] = "test data"
    store.put(b"test key", &marshal::dumps(&Value::str("test data"), 4)?)?;
    // Then records shaped like {"id": i, "name": "user%d" % i, "tags": ("a", "b"), "score": 1.5},
    // written in atomic batches of 1000.
    let tags = Value::tuple(vec![Value::str("a"), Value::str("b")]);
    let mut batch = Batch::new();
    for i in 0..records {
        let v = Value::dict([
            (Value::str("id"), Value::int(i.into())),
            (Value::str("name"), Value::from(format!("user{i}"))),
            (Value::str("tags"), tags.clone()),
            (Value::str("score"), Value::Float(1.5)),
        ])?;
        batch.put(format!("user:{i}").into_bytes(), marshal::dumps(&v, 4)?);
        if batch.len() == 1000 {
            store.batch(&batch)?;
            batch = Batch::new();
        }
    }
    if !batch.is_empty() {
        store.batch(&batch)?;
    }
    store.sync()?;
    store.close()?;
    let written = t0.elapsed();

    let store = Store::open(
        path,
        Options {
            read_only: true,
            create: false,
            ..Options::default()
        },
    )?;
    let test = store.get(b"test key")?.context("the seed key is missing")?;
    println!("db[\"test key\"] = {}", repr(&marshal::loads(&test)?));
    if records > 0 {
        let last = format!("user:{}", records - 1);
        let v = store
            .get(last.as_bytes())?
            .context("the last record is missing")?;
        println!("db[{last:?}] = {}", repr(&marshal::loads(&v)?));
    }
    let mut decoded = 0u64;
    let mut failed = None;
    store.for_each(|_, v| match marshal::loads(v) {
        Ok(_) => decoded += 1,
        Err(e) => failed = Some(e),
    })?;
    if let Some(e) = failed {
        bail!("a stored value does not decode: {e}");
    }
    let s = store.stats()?;
    println!(
        "{}: {} keys ({} decoded), values: {}, file {} bytes, live {} bytes, dead {} bytes",
        path.display(),
        s.keys,
        decoded,
        store.value_encoding(),
        s.file_bytes,
        s.live_bytes,
        s.dead_bytes
    );
    println!(
        "wrote {} records in {:.3}s, read everything back in {:.3}s",
        records + 1,
        written.as_secs_f64(),
        (t0.elapsed() - written).as_secs_f64()
    );
    Ok(())
}

fn read_input(file: &PathBuf) -> Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading standard input")?;
        Ok(buf)
    } else {
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))
    }
}

fn show(file: &PathBuf, no_code: bool) -> Result<()> {
    let data = read_input(file)?;
    let mut out = String::new();
    let mut body: &[u8] = &data;
    let is_pyc = file.extension().is_some_and(|e| e == "pyc") || PycHeader::looks_like_pyc(&data);
    if is_pyc {
        let h = PycHeader::parse(&data)
            .with_context(|| format!("{} is not a .pyc file", file.display()))?;
        out.push_str(&describe_header(&h));
        if !h.code_layout_supported() {
            bail!(
                "{}: magic {} ({}) uses a code object layout older than CPython 3.11, which cellar does not decode",
                file.display(),
                h.magic,
                h.python_version().unwrap_or("unknown version")
            );
        }
        body = &data[cellar::marshal::pyc::HEADER_LEN..];
    }
    let opts = LoadOptions {
        allow_code: !no_code,
        ..LoadOptions::default()
    };
    let (v, used) =
        marshal::loads_with(body, &opts).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    out.push_str(&repr(&v));
    out.push('\n');
    if used < body.len() {
        out.push_str(&format!(
            "# {} trailing bytes after the object were ignored\n",
            body.len() - used
        ));
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

fn describe_header(h: &PycHeader) -> String {
    let version = h
        .python_version()
        .map(|v| format!("CPython {v}"))
        .unwrap_or_else(|| "unknown CPython".into());
    let validation = match &h.validation {
        Validation::Timestamp { mtime, source_size } => {
            format!(
                "timestamp-based: source mtime {} ({mtime}), source size {source_size} bytes",
                utc(*mtime as i64)
            )
        }
        Validation::Hash {
            source_hash,
            check_source,
        } => {
            let hex: String = source_hash.iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "hash-based: source hash {hex}, check_source={}",
                if *check_source { "True" } else { "False" }
            )
        }
    };
    format!(
        "# .pyc header: magic {} ({version}), flags {:#x}, {validation}\n",
        h.magic, h.flags
    )
}

/// Seconds since the epoch as an ISO 8601 UTC timestamp (civil-from-days, proleptic Gregorian).
fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn encode(version: u32) -> Result<()> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading a Python literal from standard input")?;
    let v = parse(&text).map_err(|e| anyhow::anyhow!("not a Python literal: {e}"))?;
    let bytes = marshal::dumps(&v, version)
        .map_err(|e| anyhow::anyhow!("cannot marshal {}: {e}", repr(&v)))?;
    std::io::stdout().write_all(&bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(1_704_067_200), "2024-01-01T00:00:00Z");
        assert_eq!(super::utc(951_782_400), "2000-02-29T00:00:00Z");
    }
}
