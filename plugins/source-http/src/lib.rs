//! `source-http@1`: download a `.tar.gz` or `.zip` from a granted origin, check its blake3
//! or sha256 digest when given, and unpack it into the output artifact. Unpacking is strict:
//! an entry with an absolute path, a `..` component, or that is a link (symbolic or hard) or
//! a device is refused, and the action fails naming it — nothing outside the artifact can be
//! written or pointed at.
use sha2::Digest as _;
use sluice_sdk::prelude::*;
use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Component, Path, PathBuf};

struct SourceHttp;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    TarGz,
    Zip,
}

fn format_of(config: Option<&str>, url: &str) -> Result<Format, ActionError> {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    match config.unwrap_or("auto") {
        "tar.gz" | "tgz" => Ok(Format::TarGz),
        "zip" => Ok(Format::Zip),
        "auto" if path.ends_with(".tar.gz") || path.ends_with(".tgz") => Ok(Format::TarGz),
        "auto" if path.ends_with(".zip") => Ok(Format::Zip),
        "auto" => Err(ActionError::Config(format!(
            "cannot tell the archive format of {url}; set `format: tar.gz` or `format: zip`"
        ))),
        other => Err(ActionError::Config(format!(
            "`format` must be auto, tar.gz or zip, got {other:?}"
        ))),
    }
}

/// An entry's path, if it stays inside the tree.
fn safe(name: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("entry {} goes up with `..`", name.display()));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("entry {} has an absolute path", name.display()));
            }
        }
    }
    Ok(out)
}

fn write_file(dest: &Path, rel: &Path, reader: &mut dyn Read) -> Result<u64, String> {
    let path = dest.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", rel.display()))?;
    }
    let mut file = File::create(&path).map_err(|e| format!("{}: {e}", rel.display()))?;
    std::io::copy(reader, &mut file).map_err(|e| format!("{}: {e}", rel.display()))
}

fn untar(archive: File, dest: &Path) -> Result<u64, String> {
    let mut files = 0;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    for entry in tar.entries().map_err(|e| format!("not a tar.gz: {e}"))? {
        let mut entry = entry.map_err(|e| format!("broken tar.gz: {e}"))?;
        let name = entry
            .path()
            .map_err(|e| format!("bad entry name: {e}"))?
            .into_owned();
        let rel = safe(&name)?;
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                write_file(dest, &rel, &mut entry)?;
                files += 1;
            }
            tar::EntryType::Directory => std::fs::create_dir_all(dest.join(&rel))
                .map_err(|e| format!("{}: {e}", rel.display()))?,
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                return Err(format!(
                    "entry {} is a link (to {target}); links are not unpacked",
                    name.display()
                ));
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => {
                return Err(format!(
                    "entry {} is a {other:?}, not a file or directory",
                    name.display()
                ));
            }
        }
    }
    Ok(files)
}

fn unzip(archive: File, dest: &Path) -> Result<u64, String> {
    let mut zip = zip::ZipArchive::new(archive).map_err(|e| format!("not a zip: {e}"))?;
    let mut files = 0;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| format!("broken zip: {e}"))?;
        let name = PathBuf::from(entry.name());
        let rel = safe(&name)?;
        if entry.is_symlink() {
            return Err(format!(
                "entry {} is a link; links are not unpacked",
                name.display()
            ));
        }
        if entry.is_dir() {
            std::fs::create_dir_all(dest.join(&rel))
                .map_err(|e| format!("{}: {e}", rel.display()))?;
        } else {
            write_file(dest, &rel, &mut entry)?;
            files += 1;
        }
    }
    Ok(files)
}

fn digests(path: &Path) -> Result<(String, String, u64), String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let (mut b3, mut sha) = (blake3::Hasher::new(), sha2::Sha256::new());
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        b3.update(&buf[..n]);
        sha.update(&buf[..n]);
        total += n as u64;
    }
    let sha_hex: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((b3.finalize().to_hex().to_string(), sha_hex, total))
}

impl Action for SourceHttp {
    fn describe() -> Description {
        Description::new("source-http", env!("CARGO_PKG_VERSION"), Category::Source)
            .summary("Downloads a .tar.gz or .zip from a granted origin, checks its digest, unpacks it safely")
            .required("url", "the archive; its origin must be granted with capabilities.http")
            .optional("blake3", "expected blake3 of the archive (hex, or blake3:<hex>)")
            .optional("sha256", "expected sha256 of the archive (hex, or sha256:<hex>)")
            .optional_default("format", "auto (from the URL), tar.gz or zip", "auto")
            .optional("headers", "extra request headers, `Name: value` per line (or `;`-separated)")
            .typed("url", ConfigType::Url)
            .typed(
                "format",
                ConfigType::OneOf(vec!["auto".into(), "tar.gz".into(), "tgz".into(), "zip".into()]),
            )
            .needs(Capability::Http)
    }

    fn run(ctx: &Context, config: &Config) -> Result<Outcome, ActionError> {
        let url = config.require("url")?;
        let format = format_of(config.get("format"), url)?;
        let output = ctx.single_output()?;
        let headers: Vec<(String, String)> = config
            .get("headers")
            .unwrap_or("")
            .split(['\n', ';'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.split_once(':')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| {
                        ActionError::Config(format!("`headers`: {l:?} is not `Name: value`"))
                    })
            })
            .collect::<Result<_, _>>()?;
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let download = ctx.scratch_dir().join("download");
        let mut file =
            File::create(&download).map_err(|e| ActionError::Failed(format!("scratch: {e}")))?;
        log::info(&format!("GET {url}"));
        let response =
            sluice_sdk::http::request_into("GET", url, &pairs, &[], &mut file).map_err(|e| {
                if e.contains("denied") {
                    ActionError::Config(e)
                } else {
                    ActionError::Retryable(e)
                }
            })?;
        drop(file);
        match response.status {
            200..=299 => {}
            500.. => {
                return Err(ActionError::Retryable(format!(
                    "{url} answered {}",
                    response.status
                )));
            }
            s => return Err(ActionError::Failed(format!("{url} answered {s}"))),
        }
        let (b3, sha, bytes) = digests(&download).map_err(ActionError::Failed)?;
        for (key, actual) in [("blake3", &b3), ("sha256", &sha)] {
            if let Some(expected) = config.get(key) {
                let expected = expected
                    .trim()
                    .trim_start_matches(&format!("{key}:"))
                    .to_ascii_lowercase();
                if expected != *actual {
                    return Err(ActionError::Failed(format!(
                        "{key} mismatch for {url}: expected {expected}, got {actual}; nothing was unpacked"
                    )));
                }
            }
        }
        let dest = ctx.output_dir(output);
        let mut archive = File::open(&download).map_err(|e| ActionError::Failed(e.to_string()))?;
        archive
            .rewind()
            .map_err(|e| ActionError::Failed(e.to_string()))?;
        let files = match format {
            Format::TarGz => untar(archive, &dest),
            Format::Zip => unzip(archive, &dest),
        }
        .map_err(|e| ActionError::Failed(format!("unpacking {url}: {e}")))?;
        let _ = std::fs::remove_file(&download);
        Ok(Outcome::success()
            .var("Files", files)
            .var("Bytes", bytes)
            .var("Blake3", format!("blake3:{b3}"))
            .var("SHA256", format!("sha256:{sha}"))
            .var("URL", url)
            .summary(format!("{files} files from {url} ({bytes} bytes)")))
    }
}

export_action!(SourceHttp);
