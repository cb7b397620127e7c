//! `source-git@1`: export one revision of a git repository (without `.git`) into an output
//! artifact, with CodePipeline-style output variables.
//!
//! git runs on the host through the `process` capability (`process: [git]`): the repository
//! is cloned into the action's scratch directory, the revision checked out there, and the tree
//! copied into the output. The repository itself is only read.
//!
//! A remote repository (`http://` or `https://`) must be granted like any outbound HTTP:
//! before git runs, the plugin asks for the repository's `info/refs` through `wasi:http`, which
//! the engine refuses unless the pipeline granted the origin in `capabilities.http`.
use sluice_sdk::prelude::*;

struct SourceGit;

/// The host path of a local repository (a path or a `file://` URL).
fn local_path(source: &str) -> Option<String> {
    if source.starts_with("http://") || source.starts_with("https://") {
        return None;
    }
    Some(source.strip_prefix("file://").unwrap_or(source).to_string())
}

/// Run `git ARGS`; `what` names the step in the error (e.g. "checkout").
fn git(what: &str, args: &[&str]) -> Result<String, ActionError> {
    let status = process::run("git", args).map_err(ActionError::Config)?;
    match status.code {
        Some(0) => Ok(status.output_tail),
        _ => Err(ActionError::Failed(format!(
            "git {what} failed:\n{}",
            status.output_tail
        ))),
    }
}

impl Action for SourceGit {
    fn describe() -> Description {
        Description::new("source-git", env!("CARGO_PKG_VERSION"), Category::Source)
            .summary("Exports a branch, tag or commit of a git repository into one output artifact (without .git)")
            .required("repository", "a local path (relative to the pipeline file), a file:// URL, or an http(s):// URL whose origin is granted in capabilities.http")
            .optional("branch", "branch to export (one of branch, tag, commit)")
            .optional("tag", "tag to export")
            .optional("commit", "commit to export; wins over `branch` when not empty (commit: \"#{trigger.commit}\" builds what an event pushed)")
            .needs(Capability::Process("git".into()))
    }

    fn run(ctx: &Context, config: &Config) -> Result<Outcome, ActionError> {
        let out = ctx.single_output()?;
        let repo = config.require("repository")?;
        let source = if let Some(rest) = repo.strip_prefix("file://") {
            format!("file://{rest}")
        } else if repo.starts_with("http://") || repo.starts_with("https://") {
            // The engine's HTTP guard is the authority on remote repositories.
            let probe = format!(
                "{}/info/refs?service=git-upload-pack",
                repo.trim_end_matches('/')
            );
            match sluice_sdk::http::request("GET", &probe, &[], &[]) {
                Ok(r) => log::info(&format!("{repo}: reachable (HTTP {})", r.status)),
                Err(e) if e.contains("denied") => {
                    return Err(ActionError::Config(format!(
                        "`repository`: {repo} is not granted; add its origin to `capabilities: {{ http: [...] }}`"
                    )));
                }
                Err(e) => return Err(ActionError::Retryable(format!("`repository`: {e}"))),
            }
            repo.to_string()
        } else if repo.contains("://") {
            return Err(ActionError::Config(format!(
                "`repository`: {repo} — use a local path, a file:// URL, or an http(s):// URL"
            )));
        } else {
            ctx.host_path(repo).display().to_string()
        };
        // An empty value is no value: `commit: "#{trigger.commit}"` is empty when no event
        // named a commit (a manual start, `sluice run`).
        let given = |key: &str| config.get(key).filter(|v| !v.is_empty());
        let (kind, rev) = match (given("branch"), given("tag"), given("commit")) {
            // The event's commit wins over its branch: the build is of what was pushed, not of
            // whatever the branch points to when the job runs.
            (_, None, Some(c)) => ("commit", c.to_string()),
            (Some(b), None, None) => ("branch", format!("origin/{b}")),
            (None, Some(t), None) => ("tag", format!("refs/tags/{t}")),
            _ => {
                return Err(ActionError::Config(
                    "set one of `branch`, `tag`, `commit` (a `commit` may come with the `branch` to build when it is empty)".into(),
                ));
            }
        };
        if rev.starts_with('-') || rev.contains("..") {
            return Err(ActionError::Config(format!(
                "`{kind}`: {rev:?} is not a valid revision"
            )));
        }
        // git runs confined to what the action is granted: a local repository must be granted
        // (read-only), and the guest sees a granted directory at its host path.
        if let Some(local) = local_path(&source)
            && !std::path::Path::new(&local).exists()
        {
            return Err(ActionError::Config(format!(
                "`repository`: {repo} is not granted to this action (or does not exist); grant it read-only with `capabilities: {{ dirs: {{ {repo}: ro }} }}`"
            )));
        }
        // Host paths are relative to the workspace, which the guest sees at / (scratch/ = /scratch).
        git(
            "clone",
            &[
                "clone",
                "--quiet",
                "--no-checkout",
                "--",
                &source,
                "scratch/clone",
            ],
        )?;
        git(
            "checkout",
            &[
                "-C",
                "scratch/clone",
                "-c",
                "advice.detachedHead=false",
                "checkout",
                "--quiet",
                "--detach",
                &rev,
                "--",
            ],
        )?;
        let meta = git(
            "log",
            &["-C", "scratch/clone", "log", "-1", "--format=%H%n%aI%n%s"],
        )?;
        let mut lines = meta.lines().rev().take(3).collect::<Vec<_>>();
        lines.reverse();
        let [commit, date, message] = lines.as_slice() else {
            return Err(ActionError::Failed(format!(
                "unexpected git log output:\n{meta}"
            )));
        };
        let files = sluice_sdk::fs::copy_tree(
            &ctx.scratch_dir().join("clone"),
            &ctx.output_dir(out),
            &[".git"],
        )
        .map_err(ActionError::Failed)?;
        let name = repo
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(repo)
            .trim_end_matches(".git");
        log::info(&format!(
            "{name} {kind} {} at {commit}: {files} files",
            config.get(kind).unwrap_or("")
        ));
        Ok(Outcome::success()
            .var("CommitId", commit)
            .var("AuthorDate", date)
            .var("CommitMessage", message)
            .var("BranchName", config.get("branch").unwrap_or(""))
            .var("RepositoryName", name)
            .summary(format!("{} {}", &commit[..commit.len().min(12)], message)))
    }
}

export_action!(SourceGit);
