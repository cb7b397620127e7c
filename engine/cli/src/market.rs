//! `sluice plugin publish|search|info|install|yank`, `sluice key`, `sluice trust`: the
//! marketplace commands. The registry work is sluice-market's; loading and describing the
//! components is the engine's.
use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use sluice_core::lockfile::{self, Lockfile};
use sluice_market::config::Config;
use sluice_market::install::{self, Signature};
use sluice_market::signing::{PublicKey, SecretKey};
use sluice_market::trust::{self, Policy};
use sluice_market::{PluginRef, Repository};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `sluice plugin publish`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  sluice plugin publish target/wasm32-wasip2/release/semver.wasm oci://registry.example/acme/semver:1.2.0 --key acme.key\n  sluice plugin publish semver.wasm file:///srv/plugins/acme/semver:1.2.0 --key acme.key"
)]
pub struct PublishArgs {
    /// The component (.wasm).
    path: PathBuf,
    /// Where: oci://HOST[:PORT]/NAMESPACE/NAME:VERSION, file:///DIR/NAMESPACE/NAME:VERSION or ALIAS/NAME:VERSION.
    reference: String,
    /// Sign with this key (made by `sluice key generate`); unsigned versions need
    /// --allow-unsigned to install.
    #[arg(long)]
    key: Option<PathBuf>,
}

/// `sluice plugin search`.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Words to find in names and summaries (empty: everything).
    #[arg(default_value = "")]
    text: String,
    /// Only this category (source, build, test, deploy, approval, invoke, other).
    #[arg(long)]
    category: Option<String>,
    /// The registry namespace: oci://HOST/NAMESPACE, file:///DIR/NAMESPACE or an alias
    /// [default: sluice.toml's default-registry].
    #[arg(long)]
    registry: Option<String>,
}

/// `sluice plugin info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// The plugin, with :VERSION for one version (the latest otherwise).
    reference: String,
}

/// `sluice plugin install`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  sluice plugin install oci://registry.example/acme/semver@1      # newest 1.x\n  sluice plugin install acme/semver@^1.2 --yes                    # alias from sluice.toml\n  sluice plugin install                                           # fetch what sluice.lock pins"
)]
pub struct InstallArgs {
    /// The plugin and an optional version requirement (REF@^1.2) or exact version (REF:1.2.0);
    /// without one, fetch every plugin sluice.lock pins into the data folder.
    reference: Option<String>,
    /// The pipelines' folder: sluice.lock is written and sluice.toml read here.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Install it for your tenant on the service (the embedded one in --data, or on NATS with
    /// --nats) instead of into sluice.lock: pipelines registered afterwards use it.
    #[arg(long)]
    service: bool,
    /// The service (with --service), and --data: the data folder that keeps the component
    /// and its compiled code [default: DIR/.sluice; for --service: ./.sluice].
    #[command(flatten)]
    target: crate::service::Target,
    /// Accept the capabilities it declares without asking.
    #[arg(long, short = 'y')]
    yes: bool,
    /// Install a version that is unsigned or signed by a key not trusted here (recorded in
    /// sluice.lock).
    #[arg(long)]
    allow_unsigned: bool,
}

/// `sluice plugin yank`.
#[derive(Args, Debug)]
pub struct YankArgs {
    /// The version to withdraw: REF:VERSION.
    reference: String,
    /// Sign the catalog with this key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Take a yank back.
    #[arg(long)]
    undo: bool,
}

/// `sluice key`.
#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Make an ed25519 key pair: NAME.key (mode 0600, keep it secret) and NAME.pub.
    Generate {
        /// The key's name (its files' names).
        name: String,
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

/// `sluice trust`.
#[derive(Subcommand, Debug)]
pub enum TrustCmd {
    /// Trust a publisher's key for repositories matching a scope.
    #[command(
        after_help = "Example:\n  sluice trust add acme acme.pub --scope 'oci://registry.example/acme/*'"
    )]
    Add {
        /// A name for the publisher.
        name: String,
        /// Its public key file (NAME.pub), or the key itself (ed25519:…).
        key: String,
        /// Repositories it may sign for: oci://HOST/PATH or file:///PATH globs (repeatable).
        #[arg(long, required = true)]
        scope: Vec<String>,
    },
    /// List trusted publishers.
    Ls,
    /// Stop trusting a publisher.
    Rm {
        /// The publisher's name.
        name: String,
    },
}

fn parse_ref(reference: &str, config: &Config) -> anyhow::Result<PluginRef> {
    Ok(PluginRef::parse(reference, &|a| config.alias(a))?)
}

/// `sluice plugin publish`.
pub async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&std::env::current_dir()?)?;
    let reference = parse_ref(&args.reference, &config)?;
    let key = args.key.as_deref().map(SecretKey::read).transpose()?;
    let bytes = sluice_engine::plugins::read_component(&args.path)?;
    let scratch = tempfile::tempdir()?;
    let plugin = sluice_engine::local::load_component(scratch.path(), &bytes)
        .await
        .with_context(|| {
            format!(
                "{} is not a Sluice action or function component",
                args.path.display()
            )
        })?;
    let published = sluice_market::publish::publish(
        &bytes,
        &plugin.description,
        &reference,
        key.as_ref(),
        &config.access,
    )
    .await?;
    let d = &plugin.description;
    println!(
        "{} {} {} at {}:{}",
        if published.unchanged {
            "already published (same bytes):"
        } else {
            "published"
        },
        published.name,
        published.version,
        reference.repository,
        published.version
    );
    println!(
        "  manifest {}\n  {}",
        published.oci_digest, published.blake3
    );
    if published.signed {
        println!("  signed by {}", key.as_ref().expect("signed").public());
    } else {
        eprintln!(
            "warning: unsigned: installing it will need --allow-unsigned (sign with --key KEYFILE)"
        );
    }
    if !d.capabilities.is_empty() {
        println!(
            "  capabilities: {}",
            d.capabilities
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    println!(
        "use it: sluice plugin install {}@{}",
        reference.repository,
        d.version.split('.').next().unwrap_or("1")
    );
    Ok(ExitCode::SUCCESS)
}

fn namespace(registry: Option<String>, config: &Config) -> anyhow::Result<Repository> {
    let registry = registry.or_else(|| config.default_registry.clone()).context(
        "say which registry to search: --registry oci://HOST/NAMESPACE (or set default-registry in sluice.toml)",
    )?;
    let url = config.alias(&registry).unwrap_or(registry);
    Ok(Repository::namespace_catalog(&url)?)
}

fn publisher_words(key: &str, repository: &str, trust: &Policy) -> (String, bool) {
    if key.is_empty() {
        return ("unsigned".into(), false);
    }
    let Ok(k) = key.parse::<PublicKey>() else {
        return ("(bad key)".into(), false);
    };
    match trust.trusts(&k, repository) {
        Some(p) => (p.name.clone(), true),
        None => (
            trust
                .name_of(key)
                .map(str::to_string)
                .unwrap_or_else(|| k.short()),
            false,
        ),
    }
}

/// `sluice plugin search`.
pub async fn search(args: SearchArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&std::env::current_dir()?)?;
    let trust = Policy::load()?;
    let catalog_repo = namespace(args.registry, &config)?;
    let read = sluice_market::catalog::Catalog::read(&sluice_market::transport::Transport::open(
        &catalog_repo,
        &config.access,
    ))
    .await?;
    if !read.exists {
        bail!(
            "{catalog_repo} has no catalog yet: nothing was published there with `sluice plugin publish`"
        );
    }
    let text = args.text.to_lowercase();
    let mut rows = vec![];
    for e in &read.catalog.plugins {
        if !(e.name.to_lowercase().contains(&text) || e.summary.to_lowercase().contains(&text)) {
            continue;
        }
        if args.category.as_ref().is_some_and(|c| c != &e.category) {
            continue;
        }
        let Some(latest) = e.latest() else { continue };
        let repository = catalog_repo
            .sibling(e.name.rsplit('/').next().unwrap_or_default())
            .to_string();
        let (publisher, trusted) = publisher_words(&latest.publisher, &repository, &trust);
        rows.push([
            e.name.clone(),
            latest.version.clone(),
            e.category.clone(),
            clip(&e.summary, 50),
            publisher,
            if trusted { "yes" } else { "no" }.to_string(),
        ]);
    }
    if rows.is_empty() {
        println!("no plugins match");
        return Ok(ExitCode::SUCCESS);
    }
    print_table(
        &[
            "NAME",
            "LATEST",
            "CATEGORY",
            "SUMMARY",
            "PUBLISHER",
            "TRUSTED",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

fn clip(s: &str, n: usize) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() <= n {
        clean
    } else {
        format!("{}…", clean.chars().take(n - 1).collect::<String>())
    }
}

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r.to_vec());
    }
}

/// `sluice plugin info`.
pub async fn info(args: InfoArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&std::env::current_dir()?)?;
    let trust = Policy::load()?;
    let reference = parse_ref(&args.reference, &config)?;
    let repo = &reference.repository;
    let name = repo.plugin_name();
    let read = sluice_market::catalog::Catalog::read(&sluice_market::transport::Transport::open(
        &repo.catalog(),
        &config.access,
    ))
    .await?;
    let entry = read
        .catalog
        .entry(&name)
        .with_context(|| format!("{name} is not in the catalog at {}", repo.catalog()))?;
    let chosen = match &reference.tag {
        Some(t) => entry
            .versions
            .iter()
            .find(|v| &v.version == t)
            .with_context(|| format!("{name} has no version {t}"))?,
        None => entry
            .latest()
            .or(entry.versions.last())
            .context("no versions")?,
    };
    println!("{name} {}  ({})", chosen.version, entry.category);
    println!("{}", clip(&entry.summary, 200));
    println!("repository: {repo}");
    println!(
        "side effects: {}",
        if chosen.side_effects { "yes" } else { "no" }
    );
    if chosen.capabilities.is_empty() {
        println!("capabilities: none");
    } else {
        println!("capabilities:");
        for c in &chosen.capabilities {
            println!("  {}", clip(c, 200));
        }
    }
    let status = install::signature_of(
        repo,
        &chosen.version,
        &chosen.blake3,
        &config.access,
        &trust,
    )
    .await;
    println!(
        "signature: {}",
        match status {
            Ok(Signature::Trusted { publisher, key }) =>
                format!("valid, by {publisher} ({key}), trusted"),
            Ok(Signature::Untrusted(key)) =>
                format!("valid, by {key}, NOT trusted for {repo} (sluice trust add)"),
            Ok(Signature::Unsigned) => "none (unsigned)".to_string(),
            Err(e) => format!("INVALID: {e:#}"),
        }
    );
    println!("versions:");
    for v in &entry.versions {
        println!(
            "  {:<12} {}{}",
            v.version,
            v.oci_digest,
            if v.yanked { "  (yanked)" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn read_lock(dir: &Path) -> anyhow::Result<Lockfile> {
    let path = dir.join(lockfile::FILE_NAME);
    if !path.exists() {
        return Ok(Lockfile {
            version: lockfile::FORMAT,
            plugins: vec![],
        });
    }
    let text = sluice_engine::plugins::read_text(&path, lockfile::MAX_BYTES)
        .with_context(|| format!("read {}", path.display()))?;
    Lockfile::parse(&text).with_context(|| path.display().to_string())
}

fn write_lock(dir: &Path, lock: &Lockfile) -> anyhow::Result<PathBuf> {
    let path = dir.join(lockfile::FILE_NAME);
    sluice_market::transport::write_atomic(&path, lock.render().as_bytes())
        .with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// Ask on stderr, read one line from stdin; only `y`/`yes` accepts.
fn confirm(question: &str) -> bool {
    use std::io::Write as _;
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok()
        && matches!(answer.trim().to_lowercase().as_str(), "y" | "yes")
}

/// `sluice plugin install`.
pub async fn install(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.dir)?;
    let service = if args.service || args.target.nats.is_some() {
        Some(args.target.client().await?)
    } else {
        None
    };
    let data = args
        .target
        .data
        .clone()
        .unwrap_or_else(|| args.dir.join(".sluice"));
    let mut lock = read_lock(&args.dir)?;
    let Some(reference) = args.reference.as_deref() else {
        if service.is_some() {
            bail!("name the plugin to install on the service: sluice plugin install REF --service");
        }
        return sync(&lock, &data, &config).await;
    };
    let reference = parse_ref(reference, &config)?;
    let trust = Policy::load()?;
    let name = reference.repository.plugin_name();
    let previous = match &service {
        Some(client) => installed_on(client)
            .await?
            .into_iter()
            .find(|l| l.name == name),
        None => lock.get(&name).cloned(),
    };
    // On the service the component is kept there; here it only needs describing.
    let scratch = tempfile::tempdir()?;
    let data = if service.is_some() {
        scratch.path().to_path_buf()
    } else {
        data
    };
    let options = install::Options {
        allow_unsigned: args.allow_unsigned,
        max_bytes: config.max_plugin_bytes,
        access: &config.access,
        trust: &trust,
    };
    let fetched = install::fetch(&reference, previous.as_ref(), &options).await?;
    match &fetched.signature {
        Signature::Trusted { publisher, .. } => eprintln!(
            "{name} {}: signature valid, by {publisher} (trusted)",
            fetched.version
        ),
        Signature::Untrusted(key) => eprintln!(
            "WARNING: {name} {} is signed by {key}, which is NOT trusted for {}; installing because of --allow-unsigned (recorded in sluice.lock)",
            fetched.version, fetched.repository
        ),
        Signature::Unsigned => eprintln!(
            "WARNING: {name} {} is NOT signed; installing because of --allow-unsigned (recorded in sluice.lock)",
            fetched.version
        ),
    }
    let plugin = sluice_engine::local::load_component(&data, &fetched.bytes)
        .await
        .with_context(|| {
            format!(
                "{name} {} is not a Sluice action or function component; nothing installed",
                fetched.version
            )
        })?;
    fetched.check_description(&plugin.description)?;
    let d = &plugin.description;
    let capabilities: Vec<String> = d.capabilities.iter().map(ToString::to_string).collect();
    let before: Vec<String> = previous
        .as_ref()
        .map(|p| p.capabilities.clone())
        .unwrap_or_default();
    let new: Vec<&String> = capabilities
        .iter()
        .filter(|c| !before.contains(c))
        .collect();
    println!(
        "{name} {} ({}): {}",
        d.version,
        d.category,
        clip(&d.summary, 120)
    );
    println!(
        "side effects: {}",
        if d.side_effects { "yes" } else { "no" }
    );
    if capabilities.is_empty() {
        println!("capabilities: none");
    } else {
        println!(
            "capabilities it declares{}:",
            if previous.is_some() {
                " (+ new since the locked version)"
            } else {
                ""
            }
        );
        for c in &capabilities {
            let mark = if previous.is_some() && new.contains(&c) {
                "+ "
            } else {
                "  "
            };
            println!("  {mark}{c}");
        }
    }
    let dropped: Vec<&String> = before
        .iter()
        .filter(|c| !capabilities.contains(c))
        .collect();
    for c in dropped {
        println!("  - {c} (no longer declared)");
    }
    if !new.is_empty() && !args.yes {
        let question = if previous.is_some() {
            format!(
                "{name} {} declares {} new capabilit{}. Accept?",
                d.version,
                new.len(),
                if new.len() == 1 { "y" } else { "ies" }
            )
        } else {
            "Accept these capabilities?".to_string()
        };
        if !confirm(&question) {
            bail!(
                "capabilities not accepted (pass --yes to accept them in scripts); nothing installed"
            );
        }
    }
    let major = semver::Version::parse(&fetched.version)
        .map(|v| v.major)
        .unwrap_or(0);
    if let Some(client) = service {
        let locked = fetched.locked(capabilities);
        let request = if client.shares_host() {
            sluice_api::verbs::PluginInstall {
                locked,
                bytes: Some(sluice_api::limits::encode_upload(&fetched.bytes)),
                digest: None,
            }
        } else {
            let digest = match client.upload(&name, fetched.bytes.clone()).await {
                Ok(d) => d,
                Err(e) => return crate::service::refused(e),
            };
            sluice_api::verbs::PluginInstall {
                locked,
                bytes: None,
                digest: Some(digest),
            }
        };
        if let Err(e) = client.call(&request.into()).await {
            return crate::service::refused(e);
        }
        println!(
            "installed {name} {} ({}) for tenant {} on the service",
            fetched.version, fetched.blake3, args.target.tenant
        );
        println!("pipelines registered from now on may use it as `uses: {name}@{major}`");
        return Ok(ExitCode::SUCCESS);
    }
    sluice_engine::local::store_component(&data, &fetched.bytes)?;
    lock.upsert(fetched.locked(capabilities));
    let path = write_lock(&args.dir, &lock)?;
    println!(
        "installed {name} {} ({}) into {}",
        fetched.version,
        fetched.blake3,
        path.display()
    );
    println!("use it in a pipeline as `uses: {name}@{major}`");
    Ok(ExitCode::SUCCESS)
}

async fn installed_on(client: &sluice_api::Client) -> anyhow::Result<Vec<lockfile::Locked>> {
    let reply = client
        .call(&sluice_api::verbs::PluginInstalled {}.into())
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    Ok(serde_json::from_value(reply)?)
}

/// `sluice plugin installed`.
#[derive(Args, Debug)]
pub struct InstalledArgs {
    /// The pipelines' folder whose sluice.lock is listed.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// List your tenant's installs on the service instead.
    #[arg(long)]
    service: bool,
    #[command(flatten)]
    target: crate::service::Target,
}

/// `sluice plugin installed`: what sluice.lock pins, or what the tenant installed.
pub async fn installed(args: InstalledArgs) -> anyhow::Result<ExitCode> {
    let entries = if args.service || args.target.nats.is_some() {
        installed_on(&args.target.client().await?).await?
    } else {
        read_lock(&args.dir)?.plugins
    };
    if entries.is_empty() {
        println!("no marketplace plugins installed");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|l| {
            [
                l.name.clone(),
                l.version.clone(),
                l.registry.clone(),
                if l.unsigned {
                    "UNSIGNED".into()
                } else {
                    "signed".into()
                },
                l.blake3.clone(),
            ]
        })
        .collect();
    print_table(
        &["NAME", "VERSION", "REGISTRY", "SIGNATURE", "DIGEST"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// `sluice plugin install` with no reference: fetch what the lock pins and is missing.
async fn sync(lock: &Lockfile, data: &Path, config: &Config) -> anyhow::Result<ExitCode> {
    if lock.plugins.is_empty() {
        bail!(
            "no sluice.lock here (or it is empty): install a plugin with `sluice plugin install REF`"
        );
    }
    for entry in &lock.plugins {
        let digest: sluice_engine::artifacts::Digest =
            entry.blake3.parse().map_err(anyhow::Error::msg)?;
        if entry.unsigned {
            eprintln!(
                "warning: {} {} was installed unsigned or untrusted (--allow-unsigned)",
                entry.name, entry.version
            );
        }
        if sluice_engine::local::has_component(data, &digest) {
            if install::is_yanked(entry, &config.access).await {
                eprintln!(
                    "warning: {} {} is yanked by its publisher; it keeps working from sluice.lock, but install another version",
                    entry.name, entry.version
                );
            }
            println!("{} {}: present", entry.name, entry.version);
            continue;
        }
        let (bytes, yanked) =
            install::fetch_locked(entry, config.max_plugin_bytes, &config.access).await?;
        if yanked {
            eprintln!(
                "warning: {} {} is yanked by its publisher; it keeps working from sluice.lock, but install another version",
                entry.name, entry.version
            );
        }
        sluice_engine::local::load_component(data, &bytes).await?;
        sluice_engine::local::store_component(data, &bytes)?;
        println!(
            "{} {}: fetched ({})",
            entry.name, entry.version, entry.blake3
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice plugin yank`.
pub async fn yank(args: YankArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&std::env::current_dir()?)?;
    let reference = parse_ref(&args.reference, &config)?;
    let key = args.key.as_deref().map(SecretKey::read).transpose()?;
    let what =
        sluice_market::publish::yank(&reference, key.as_ref(), args.undo, &config.access).await?;
    println!(
        "{what} {}",
        if args.undo {
            "is no longer yanked"
        } else {
            "yanked: installs refuse it; existing locks keep working and warn"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `sluice key`.
pub fn key(cmd: KeyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        KeyCmd::Generate { name, out } => {
            let key = SecretKey::generate()?;
            let (k, p) = key.write(&out, &name)?;
            println!("secret key: {} (mode 0600: keep it secret)", k.display());
            println!("public key: {}  {}", p.display(), key.public());
            println!(
                "others trust it with: sluice trust add {name} {} --scope 'oci://REGISTRY/NAMESPACE/*'",
                p.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice trust`.
pub fn trust(cmd: TrustCmd) -> anyhow::Result<ExitCode> {
    let mut policy = Policy::load()?;
    match cmd {
        TrustCmd::Add { name, key, scope } => {
            let text = if key.starts_with("ed25519:") {
                key.clone()
            } else {
                let bytes = sluice_market::transport::read_bounded(Path::new(&key), 4096)
                    .with_context(|| format!("read {key}"))?;
                String::from_utf8_lossy(&bytes).trim().to_string()
            };
            let public: PublicKey = text.parse()?;
            for s in &scope {
                trust::check_scope(s).with_context(|| format!("scope `{s}`"))?;
            }
            policy.publishers.retain(|p| p.name != name);
            policy.publishers.push(trust::Publisher {
                name: name.clone(),
                key: public.to_string(),
                scopes: scope.clone(),
            });
            let path = policy.save()?;
            println!(
                "trusting {name} ({public}) for {} — {}",
                scope.join(", "),
                path.display()
            );
        }
        TrustCmd::Ls => {
            if policy.publishers.is_empty() {
                println!("no trusted publishers ({})", Policy::path()?.display());
            }
            let rows: Vec<[String; 3]> = policy
                .publishers
                .iter()
                .map(|p| [p.name.clone(), p.key.clone(), p.scopes.join(", ")])
                .collect();
            if !rows.is_empty() {
                print_table(&["NAME", "KEY", "SCOPES"], &rows);
            }
        }
        TrustCmd::Rm { name } => {
            let before = policy.publishers.len();
            policy.publishers.retain(|p| p.name != name);
            if policy.publishers.len() == before {
                bail!("no trusted publisher `{name}` (sluice trust ls)");
            }
            policy.save()?;
            println!("no longer trusting {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
