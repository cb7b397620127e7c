//! The documentation cannot drift from the binary: every block marked ```` ```sh runnable ````
//! in README.md and docs/*.md runs, page by page (one shell session per page, `set -e`), in a
//! fresh copy of examples/quickstart with the built `sluice` first on PATH.
use crate::harness::{Project, repo};
use std::process::{Command, Stdio};

/// The runnable blocks of a Markdown page, in order.
fn runnable_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_end() == "```sh runnable" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.push(current.take().unwrap()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    assert!(current.is_none(), "an unclosed runnable block");
    blocks
}

#[test]
fn every_runnable_block_in_the_readme_and_docs_runs() {
    let mut pages = vec![repo().join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_sluice"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = 0;
    for page in &pages {
        let blocks = runnable_blocks(&std::fs::read_to_string(page).unwrap());
        if blocks.is_empty() {
            continue;
        }
        let p = Project::copy_of("examples/quickstart");
        let home = tempfile::tempdir().unwrap();
        let script = format!("set -e\n{}", blocks.join("\n"));
        let out = Command::new("bash")
            .args(["-c", &script])
            .current_dir(p.dir.path())
            .env("PATH", &path)
            .env("HOME", home.path())
            .env_remove("SLUICE_DATA")
            .env_remove("SLUICE_NATS_URL")
            .env_remove("SLUICE_LOG")
            .env_remove("SLUICE_TENANT")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "a runnable block of {} failed ({}):\n{script}\n--- stdout\n{}\n--- stderr\n{}",
            page.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran += blocks.len();
    }
    assert!(ran >= 6, "only {ran} runnable blocks in the docs");
}
