//! `deploy-http@1`: send the input artifact, packed as a tar.gz, to `url` with PUT or POST.
//! A 5xx answer (or a connection failure) is a retryable error, so `retry:` with a backoff
//! covers a server that is restarting; a 4xx is a failure. The status is the output variable
//! `StatusCode`.
use flate2::Compression;
use flate2::write::GzEncoder;
use sluice_sdk::prelude::*;

struct DeployHttp;

/// `Name: value` pairs, one per line (or separated by `;`).
fn parse_headers(text: &str) -> Result<Vec<(String, String)>, ActionError> {
    text.split(['\n', ';'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').ok_or_else(|| {
                ActionError::Config(format!("`headers`: {l:?} is not `Name: value`"))
            })?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// The artifact's tree as a gzipped tar, entries relative to its root, in name order,
/// with fixed times and modes so the same tree packs to the same bytes. Headers are built by
/// hand: the tar crate cannot read file metadata on wasm32.
fn pack(dir: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    add_dir(&mut builder, dir, std::path::Path::new("."))
        .map_err(|e| format!("packing {}: {e}", dir.display()))?;
    builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .map_err(|e| format!("packing {}: {e}", dir.display()))
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_000_000_000); // fixed: reproducible archives
    h
}

fn add_dir<W: std::io::Write>(
    b: &mut tar::Builder<W>,
    host: &std::path::Path,
    name: &std::path::Path,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(host)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let (path, rel) = (e.path(), name.join(e.file_name()));
        let kind = e.file_type()?;
        if kind.is_symlink() {
            let target = std::fs::read_link(&path)?;
            b.append_link(
                &mut header(tar::EntryType::Symlink, 0, 0o777),
                &rel,
                &target,
            )?;
        } else if kind.is_dir() {
            b.append_data(
                &mut header(tar::EntryType::Directory, 0, 0o755),
                &rel,
                std::io::empty(),
            )?;
            add_dir(b, &path, &rel)?;
        } else {
            let file = std::fs::File::open(&path)?;
            let size = file.metadata()?.len();
            b.append_data(
                &mut header(tar::EntryType::Regular, size, 0o644),
                &rel,
                file,
            )?;
        }
    }
    Ok(())
}

impl Action for DeployHttp {
    fn describe() -> Description {
        Description::new("deploy-http", env!("CARGO_PKG_VERSION"), Category::Deploy)
            .summary("Sends its input artifact as a tar.gz to a URL (PUT or POST); 5xx answers are retryable")
            .required("url", "where to send it; its origin must be granted with capabilities.http")
            .optional_default("method", "PUT or POST", "PUT")
            .optional("headers", "extra request headers, `Name: value` per line (or `;`-separated)")
            .optional_default("content_type", "Content-Type of the request", "application/gzip")
            .typed("url", ConfigType::Url)
            .needs(Capability::Http)
            .side_effects()
    }

    fn run(ctx: &Context, config: &Config) -> Result<Outcome, ActionError> {
        let url = config.require("url")?;
        let method = config.get("method").unwrap_or("PUT").to_ascii_uppercase();
        if method != "PUT" && method != "POST" {
            return Err(ActionError::Config(format!(
                "`method` must be PUT or POST, got {method:?}"
            )));
        }
        let mut headers = parse_headers(config.get("headers").unwrap_or(""))?;
        headers.push((
            "Content-Type".into(),
            config
                .get("content_type")
                .unwrap_or("application/gzip")
                .to_string(),
        ));
        headers.push(("Idempotency-Key".into(), ctx.idempotency_key.clone()));
        let input = ctx.single_input()?;
        let body = pack(&ctx.input_dir(input)).map_err(ActionError::Failed)?;
        log::info(&format!(
            "{method} {url} ({} bytes, artifact {input})",
            body.len()
        ));
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // Denied origins and refused connections may be transient (a restarting server) only
        // in the second case; a denial is a configuration problem.
        let response = sluice_sdk::http::request(&method, url, &pairs, &body).map_err(|e| {
            if e.contains("denied") {
                ActionError::Config(e)
            } else {
                ActionError::Retryable(e)
            }
        })?;
        let status = response.status;
        let answer = String::from_utf8_lossy(&response.body)
            .chars()
            .take(200)
            .collect::<String>();
        match status {
            500.. => Err(ActionError::Retryable(format!(
                "{url} answered {status}: {answer}"
            ))),
            400..=499 => Err(ActionError::Failed(format!(
                "{url} answered {status}: {answer}"
            ))),
            _ => Ok(Outcome::success()
                .var("StatusCode", status)
                .var("Bytes", body.len())
                .summary(format!("{method} {url} → {status} ({} bytes)", body.len()))),
        }
    }
}

export_action!(DeployHttp);
