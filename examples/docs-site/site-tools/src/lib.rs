//! `site-tools`: one plugin, four tasks, for a Markdown site.
//!
//! - `lint`: every page starts with a `# ` title, has no trailing whitespace, no line over
//!   120 characters and no `TODO`; fails listing each problem as `file:line`.
//! - `render`: each page to HTML (headings, paragraphs, lists, `code`, `[links](x.md)`).
//! - `assemble`: the rendered sections into one site with an index page.
//! - `check`: every local link of the site leads to a page that exists.
//!
//! It reads only its inputs and writes only its outputs, so the engine may take its result
//! from the action cache when nothing it reads has changed.
use sluice_sdk::prelude::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

struct SiteTools;

impl Action for SiteTools {
    fn describe() -> Description {
        Description::new("site-tools", "1.0.0", Category::Build)
            .summary("Lint, render, assemble and link-check Markdown pages")
            .required("task", "lint | render | assemble | check")
            .optional(
                "title",
                "render and assemble: the title of the section or site",
            )
    }

    fn run(ctx: &Context, config: &Config) -> Result<Outcome, ActionError> {
        match config.require("task")? {
            "lint" => lint(&ctx.input_dir(ctx.single_input()?)),
            "render" => render(
                &ctx.input_dir(ctx.single_input()?),
                &ctx.output_dir(ctx.single_output()?),
                config.get("title").unwrap_or("Pages"),
            ),
            "assemble" => assemble(ctx, config.get("title").unwrap_or("Site")),
            "check" => check(&ctx.input_dir(ctx.single_input()?)),
            other => Err(ActionError::Config(format!(
                "unknown task {other:?}: lint, render, assemble or check"
            ))),
        }
    }
}

fn failed(e: impl std::fmt::Display) -> ActionError {
    ActionError::Failed(e.to_string())
}

/// Files with `extension` directly in `dir`, sorted by name.
fn files(dir: &Path, extension: &str) -> Result<Vec<PathBuf>, ActionError> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| failed(format!("{}: {e}", dir.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == extension))
        .collect();
    out.sort();
    Ok(out)
}

fn name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

fn lint(pages: &Path) -> Result<Outcome, ActionError> {
    let mut problems = Vec::new();
    let mut words = 0;
    let all = files(pages, "md")?;
    for page in &all {
        let text = std::fs::read_to_string(page).map_err(failed)?;
        let file = name(page);
        if !text.starts_with("# ") {
            problems.push(format!("{file}:1: a page starts with a `# ` title"));
        }
        for (i, line) in text.lines().enumerate() {
            let at = format!("{file}:{}", i + 1);
            if line.ends_with(' ') || line.ends_with('\t') {
                problems.push(format!("{at}: trailing whitespace"));
            }
            if line.chars().count() > 120 {
                problems.push(format!("{at}: longer than 120 characters"));
            }
            if line.contains("TODO") {
                problems.push(format!("{at}: a TODO left in"));
            }
            words += line.split_whitespace().count();
        }
    }
    for p in &problems {
        log::error(p);
    }
    if !problems.is_empty() {
        return Err(failed(format!(
            "{} lint problem(s), first: {}",
            problems.len(),
            problems[0]
        )));
    }
    log::info(&format!("{} page(s), {words} words: clean", all.len()));
    Ok(Outcome::success()
        .var("Pages", all.len())
        .var("Words", words)
        .summary(format!("{} page(s) clean", all.len())))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Inline Markdown: `code` and [text](page.md) (links to pages become .html).
fn inline(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('`')
            && let Some(end) = after.find('`')
        {
            out.push_str(&format!("<code>{}</code>", escape(&after[..end])));
            rest = &after[end + 1..];
        } else if let Some(after) = rest.strip_prefix('[')
            && let Some(mid) = after.find("](")
            && let Some(end) = after[mid + 2..].find(')')
        {
            let target = &after[mid + 2..mid + 2 + end];
            let href = target
                .strip_suffix(".md")
                .map_or(target.to_string(), |t| format!("{t}.html"));
            out.push_str(&format!(
                "<a href=\"{}\">{}</a>",
                escape(&href),
                escape(&after[..mid])
            ));
            rest = &after[mid + 2 + end + 1..];
        } else {
            let c = rest.chars().next().unwrap();
            out.push_str(&escape(&c.to_string()));
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn to_html(markdown: &str) -> (String, String) {
    let mut title = String::new();
    let mut body = String::new();
    let mut paragraph: Vec<&str> = Vec::new();
    let mut in_list = false;
    let flush = |paragraph: &mut Vec<&str>, body: &mut String| {
        if !paragraph.is_empty() {
            body.push_str(&format!("<p>{}</p>\n", inline(&paragraph.join(" "))));
            paragraph.clear();
        }
    };
    for line in markdown.lines() {
        let item = line.strip_prefix("- ");
        if item.is_none() && in_list {
            body.push_str("</ul>\n");
            in_list = false;
        }
        if let Some(h) = line.strip_prefix("# ") {
            flush(&mut paragraph, &mut body);
            title = h.trim().to_string();
            body.push_str(&format!("<h1>{}</h1>\n", inline(h.trim())));
        } else if let Some(h) = line.strip_prefix("## ") {
            flush(&mut paragraph, &mut body);
            body.push_str(&format!("<h2>{}</h2>\n", inline(h.trim())));
        } else if let Some(item) = item {
            flush(&mut paragraph, &mut body);
            if !in_list {
                body.push_str("<ul>\n");
                in_list = true;
            }
            body.push_str(&format!("<li>{}</li>\n", inline(item.trim())));
        } else if line.trim().is_empty() {
            flush(&mut paragraph, &mut body);
        } else {
            paragraph.push(line.trim());
        }
    }
    flush(&mut paragraph, &mut body);
    if in_list {
        body.push_str("</ul>\n");
    }
    (title, body)
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head>\n<body>\n{body}</body></html>\n",
        escape(title)
    )
}

fn render(pages: &Path, out: &Path, section: &str) -> Result<Outcome, ActionError> {
    std::fs::create_dir_all(out).map_err(failed)?;
    let mut toc = String::new();
    let all = files(pages, "md")?;
    for md in &all {
        let (title, body) = to_html(&std::fs::read_to_string(md).map_err(failed)?);
        let html = name(md).trim_end_matches(".md").to_string() + ".html";
        std::fs::write(out.join(&html), page(&title, &body)).map_err(failed)?;
        toc.push_str(&format!(
            "<li><a href=\"{html}\">{}</a></li>\n",
            escape(&title)
        ));
    }
    let index = format!("<h1>{}</h1>\n<ul>\n{toc}</ul>\n", escape(section));
    std::fs::write(out.join("index.html"), page(section, &index)).map_err(failed)?;
    log::info(&format!("rendered {} page(s) of {section}", all.len()));
    Ok(Outcome::success().var("Pages", all.len()))
}

/// Each input (a rendered section) becomes a folder of the site; the index links them.
fn assemble(ctx: &Context, title: &str) -> Result<Outcome, ActionError> {
    let site = ctx.output_dir(ctx.single_output()?);
    let mut toc = String::new();
    let mut pages = 0;
    for input in &ctx.inputs {
        // `guide_html` is served as guide/.
        let section = input.strip_suffix("_html").unwrap_or(input);
        let n = sluice_sdk::fs::copy_tree(&ctx.input_dir(input), &site.join(section), &[])
            .map_err(failed)?;
        pages += n;
        toc.push_str(&format!(
            "<li><a href=\"{section}/index.html\">{section}</a></li>\n"
        ));
    }
    let index = format!("<h1>{}</h1>\n<ul>\n{toc}</ul>\n", escape(title));
    std::fs::write(site.join("index.html"), page(title, &index)).map_err(failed)?;
    Ok(Outcome::success().var("Files", pages + 1))
}

/// `href="…"` values of a page.
fn links(html: &str) -> Vec<&str> {
    html.split("href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect()
}

fn check(site: &Path) -> Result<Outcome, ActionError> {
    let mut pages = BTreeSet::new();
    let mut stack = vec![site.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)
            .map_err(failed)?
            .filter_map(Result::ok)
        {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "html") {
                pages.insert(p);
            }
        }
    }
    let (mut checked, mut broken) = (0, Vec::new());
    for p in &pages {
        let html = std::fs::read_to_string(p).map_err(failed)?;
        for href in links(&html) {
            if href.contains("://") || href.starts_with('#') || href.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let target = p
                .parent()
                .unwrap_or(site)
                .join(href.split('#').next().unwrap_or(href));
            if !pages.contains(&target) {
                let from = p.strip_prefix(site).unwrap_or(p).display().to_string();
                broken.push(format!("{from}: {href}"));
            }
        }
    }
    for b in &broken {
        log::error(&format!("broken link in {b}"));
    }
    if !broken.is_empty() {
        return Err(failed(format!(
            "{} broken link(s), first: {}",
            broken.len(),
            broken[0]
        )));
    }
    log::info(&format!(
        "{checked} link(s) in {} page(s): none broken",
        pages.len()
    ));
    Ok(Outcome::success()
        .var("Links", checked)
        .var("Pages", pages.len()))
}

export_action!(SiteTools);
