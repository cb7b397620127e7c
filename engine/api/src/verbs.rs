//! The verbs: one request type each, with the type of its reply and the role it needs.
//! [`Request`] is any of them as sent on the wire (`{"verb": "start", …}`; on NATS the verb is
//! the subject's last part and the body holds the rest).
use crate::error::ApiError;
use crate::limits::{TooLong, check_len};
use crate::principal::Role;
pub use crate::tenancy::{AuditRecord, Policy, Quotas, TenantInfo, TokenCreated, TokenInfo, Usage};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sluice_core::events::Event;
use sluice_core::lockfile::Locked;
use sluice_core::plugin::Description;
use sluice_core::scheduler::lanes::Lanes;
use sluice_core::scheduler::{Execution, Status, Timestamp};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A request type: its wire name, its reply and the role it needs.
pub trait Verb: Serialize + DeserializeOwned + Into<Request> {
    /// The verb as written on the wire (`pipeline.put`).
    const NAME: &'static str;
    /// The role a principal needs.
    const ROLE: Role;
    /// What a success returns.
    type Reply: Serialize + DeserializeOwned;
}

macro_rules! verbs {
    ($($(#[$doc:meta])* $name:literal => $ty:ident -> $reply:ty, $role:ident;)*) => {
        /// Any request, tagged with its verb.
        #[derive(Clone, Debug, Serialize, Deserialize)]
        #[serde(tag = "verb")]
        pub enum Request {
            $($(#[$doc])* #[serde(rename = $name)] $ty($ty),)*
        }

        $(
            impl Verb for $ty {
                const NAME: &'static str = $name;
                const ROLE: Role = Role::$role;
                type Reply = $reply;
            }

            impl From<$ty> for Request {
                fn from(v: $ty) -> Self {
                    Request::$ty(v)
                }
            }
        )*

        /// Every verb's wire name, for subscriptions and help.
        pub const VERBS: &[&str] = &[$($name),*];

        impl Request {
            /// The verb's wire name.
            pub fn verb(&self) -> &'static str {
                match self {
                    $(Request::$ty(_) => $name,)*
                }
            }

            /// The role the verb needs.
            pub fn role(&self) -> Role {
                match self {
                    $(Request::$ty(_) => Role::$role,)*
                }
            }
        }
    };
}

verbs! {
    /// Upload a pipeline's folder (a tar archive): a tree in the artifact store that
    /// `pipeline.put` names as its `bundle`.
    "bundle.put" => BundlePut -> Bundle, Developer;
    /// Keep one part of a file being uploaded (at most
    /// [`MAX_PART`](crate::limits::MAX_PART) bytes), for transports whose messages are
    /// smaller than a component (NATS); `upload.join` makes the file of its parts.
    "upload.part" => UploadPart -> UploadedPart, Developer;
    /// Make one file of uploaded parts, for the engines: its `blake3:` digest is what
    /// `pipeline.put`'s `plugins` and `function.put`'s `digest` name.
    "upload.join" => UploadJoin -> Uploaded, Developer;
    /// Register a new version of a pipeline.
    "pipeline.put" => PipelinePut -> PipelineVersion, Developer;
    /// A registered pipeline (current or given version).
    "pipeline.get" => PipelineGet -> StoredPipeline, Viewer;
    /// Registered pipelines.
    "pipeline.ls" => PipelineLs -> Vec<PipelineSummary>, Viewer;
    /// Unregister a pipeline.
    "pipeline.rm" => PipelineRm -> Named, Developer;
    /// A pipeline's stage lanes: executions inside and waiting, disabled transitions.
    "pipeline.state" => PipelineState -> Lanes, Viewer;
    /// Rebuild a pipeline's stage lanes from its executions' records (an operator's repair).
    "pipeline.repair" => PipelineRepair -> Lanes, Developer;
    /// Disable or enable the transition into a stage.
    "transition" => Transition -> Lanes, Developer;
    /// Start a rollback execution of a stage to an earlier execution.
    "rollback" => Rollback -> ExecutionRef, Developer;
    /// Start a pipeline (through the trigger path, like any event).
    "start" => Start -> Started, Developer;
    /// One execution.
    "status" => GetExecution -> Execution, Viewer;
    /// Executions, newest first.
    "executions" => Executions -> Vec<ExecutionSummary>, Viewer;
    /// Stop an execution.
    "stop" => Stop -> ExecutionState, Developer;
    /// Re-run a failed or stopped stage.
    "retry" => Retry -> ExecutionState, Developer;
    /// Approve or reject an action waiting for approval.
    "approve" => Approve -> Decided, Approver;
    /// Approvals waiting for a decision, oldest first.
    "approvals" => Approvals -> Vec<Event>, Viewer;
    /// Wake an action waiting for an external event.
    "wake" => Wake -> ExecutionState, Developer;
    /// Register a function for `invoke@1`.
    "function.put" => FunctionPut -> StoredFunction, Developer;
    /// Registered functions.
    "function.ls" => FunctionLs -> Vec<StoredFunction>, Viewer;
    /// Unregister a function.
    "function.rm" => FunctionRm -> Named, Developer;
    /// Rejected trigger events kept in the dead letter, newest first.
    "deadletter.ls" => DeadLetters -> Vec<DeadLetterSummary>, Viewer;
    /// Send a dead letter's event again; it leaves the dead letter once an execution started.
    "deadletter.replay" => DeadLetterReplay -> Replayed, Developer;
    /// One action attempt's log.
    "logs" => Logs -> LogPage, Viewer;
    /// The plugins pipelines may use, with their descriptions.
    "plugin.ls" => PluginLs -> Vec<Description>, Viewer;
    /// Keep a marketplace plugin for the tenant: the client fetched, verified and accepted it
    /// (`sluice plugin install --service`); pipelines' `uses: NAMESPACE/NAME@MAJOR` resolve to it.
    "plugin.install" => PluginInstall -> Locked, Developer;
    /// The tenant's installed marketplace plugins.
    "plugin.installed" => PluginInstalled -> Vec<Locked>, Viewer;
    /// Store (or replace) a secret of the tenant; no verb ever returns a value.
    "secret.put" => SecretPut -> SecretInfo, Developer;
    /// The tenant's secrets: names, scopes, dates.
    "secret.ls" => SecretLs -> Vec<SecretInfo>, Viewer;
    /// Remove a secret.
    "secret.rm" => SecretRm -> Named, Developer;
    /// Re-seal every tenant's data key under the engines' current master key (the last step
    /// of an online rotation: engines first get the new key, with the old one as previous).
    "secret.rotate-key" => SecretRotateKey -> KeysRotated, Operator;
    /// The tenant's action cache: the successes pure actions may be taken from.
    "cache.ls" => CacheLs -> Vec<CacheEntry>, Viewer;
    /// Forget cached successes (of one pipeline, if named): those actions run again next time.
    "cache.clear" => CacheClear -> CacheCleared, Developer;
    /// Make a token for the tenant (shown once).
    "token.create" => TokenCreate -> TokenCreated, Admin;
    /// The tenant's tokens (never their secrets).
    "token.ls" => TokenLs -> Vec<TokenInfo>, Admin;
    /// Revoke a token: it stops working at once.
    "token.revoke" => TokenRevoke -> TokenInfo, Admin;
    /// Create a tenant, with its policy and quotas.
    "tenant.create" => TenantCreate -> TenantInfo, Operator;
    /// Every tenant.
    "tenant.ls" => TenantLs -> Vec<TenantInfo>, Operator;
    /// Change a tenant's policy or quotas.
    "tenant.set" => TenantSet -> TenantInfo, Operator;
    /// Remove a tenant: its tokens stop working (its data stays until removed by hand).
    "tenant.rm" => TenantRm -> Named, Operator;
    /// What the tenant uses, against its quotas.
    "tenant.usage" => TenantUsage -> Usage, Admin;
    /// The audit trail: changes made and calls refused, newest first.
    "audit" => Audit -> Vec<AuditRecord>, Admin;
}

fn yes() -> bool {
    true
}

// ---- Requests ----

/// `pipeline.put`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelinePut {
    /// File name, for messages.
    pub file: String,
    /// Directory relative paths resolve against: a directory on the engine's host, so only
    /// for an [`Origin::HostUser`](crate::Origin::HostUser); without it the pipeline may
    /// reference no relative path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// The YAML.
    pub yaml: String,
    /// Plugin and rule files the client uploaded to the artifact store: the path as written in
    /// the YAML → `blake3:` digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plugins: BTreeMap<String, String>,
    /// The pipeline's folder, uploaded as an artifact tree (`POST /api/v1/bundles`): relative
    /// paths in the pipeline resolve inside it, on whichever engine runs the pipeline, and none
    /// may lead out of it. Not together with `dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
}

/// `bundle.put`: a pipeline's folder as a tar archive (regular files, directories, and links
/// that stay inside; at most [`MAX_UPLOAD`](crate::limits::MAX_UPLOAD) bytes).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundlePut {
    /// The archive's bytes, base64.
    pub tar: String,
}

/// The reply to `bundle.put`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// The folder's tree digest (`blake3:…`), for `pipeline.put`'s `bundle`.
    pub digest: String,
    /// Regular files in it.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// `upload.part`: one part of a file, in order; a part is kept in the tenant's artifact store
/// (counted against its quota) until the collector finds nothing names it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadPart {
    /// The part's bytes, base64 (at most [`MAX_PART`](crate::limits::MAX_PART) decoded).
    pub bytes: String,
}

/// The reply to `upload.part`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedPart {
    /// The part's address in the tenant's store, for `upload.join`.
    pub part: String,
    /// Its bytes.
    pub bytes: u64,
}

/// `upload.join`: the parts, in order, and the digest the whole must have.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadJoin {
    /// What `upload.part` replied, in the file's order (at most
    /// [`MAX_PARTS`](crate::limits::MAX_PARTS)).
    pub parts: Vec<String>,
    /// The whole file's `blake3:` digest, as the client computed it: a file that comes out
    /// otherwise is refused.
    pub digest: String,
}

/// The reply to `upload.join`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uploaded {
    /// The file's `blake3:` digest.
    pub digest: String,
    /// Its bytes.
    pub bytes: u64,
}

/// `pipeline.get`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineGet {
    /// Name.
    pub name: String,
    /// Version (default: current).
    #[serde(default)]
    pub version: Option<u64>,
}

/// `pipeline.ls`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineLs {}

/// `pipeline.rm`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineRm {
    /// Name.
    pub name: String,
}

/// `pipeline.state`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineState {
    /// Pipeline name.
    pub name: String,
}

/// `pipeline.repair`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineRepair {
    /// Pipeline name.
    pub name: String,
}

/// `transition`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    /// Pipeline name.
    pub pipeline: String,
    /// The stage the transition leads into.
    pub stage: String,
    /// Enable (else disable).
    pub enable: bool,
    /// Why (required to disable).
    #[serde(default)]
    pub reason: Option<String>,
    /// Who asks.
    #[serde(default)]
    pub by: Option<String>,
}

/// `rollback`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// Pipeline name.
    pub pipeline: String,
    /// Stage name.
    pub stage: String,
    /// The execution (which succeeded in the stage) to roll back to.
    pub to: String,
    /// Who asks.
    #[serde(default)]
    pub by: Option<String>,
}

/// `start`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    /// Pipeline name.
    pub pipeline: String,
    /// Variable overrides.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Event id (default: a fresh one); a repeated id starts nothing new.
    #[serde(default)]
    pub event_id: Option<String>,
    /// Who asks.
    #[serde(default)]
    pub started_by: Option<String>,
    /// What the start is about, as a push event would say it (`#{trigger.commit}`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<StartSource>,
}

/// The git fields a manual start may give its execution (`#{trigger.commit}`, `#{trigger.ref}`,
/// `#{trigger.branch}`, `#{trigger.tag}`, `#{trigger.repository}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartSource {
    /// Commit id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// `refs/heads/<branch>` or `refs/tags/<tag>`.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// Repository URL or path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
}

/// `approvals`: each waiting approval as its approval event (`approval`: approvers, custom
/// data, link, expiry, how to decide; the token left out).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approvals {
    /// Only this pipeline's.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// Only those this identity may decide: listed among the approvers (or no list) and not
    /// decided by it yet.
    #[serde(default)]
    pub approver: Option<String>,
}

/// `status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetExecution {
    /// Execution id.
    pub execution_id: String,
}

/// `executions`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Executions {
    /// Only this pipeline.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// Only this status.
    #[serde(default)]
    pub status: Option<Status>,
    /// At most this many (default 20, at most [`MAX_LIST`](crate::limits::MAX_LIST)).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only executions older than this one (the last id of the previous page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
}

/// `stop`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stop {
    /// Execution id.
    pub execution_id: String,
    /// Cancel running actions instead of letting them finish.
    #[serde(default)]
    pub abandon: bool,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `retry`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Execution id.
    pub execution_id: String,
    /// Stage name.
    pub stage: String,
    /// Every action, not only those that did not succeed.
    #[serde(default)]
    pub all: bool,
}

/// `approve`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approve {
    /// Execution id.
    pub execution_id: String,
    /// `STAGE/ACTION`.
    pub action: String,
    /// Approve (default) or reject.
    #[serde(default = "yes")]
    pub approved: bool,
    /// Who decides (the caller's identity). With authentication on, the token's holder: left
    /// empty, or it must name them.
    #[serde(default)]
    pub by: String,
    /// Why.
    #[serde(default)]
    pub summary: Option<String>,
    /// The token of the approval notification, if the caller quotes it.
    #[serde(default)]
    pub token: Option<String>,
}

/// `wake`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wake {
    /// Execution id.
    pub execution_id: String,
    /// `STAGE/ACTION`.
    pub action: String,
    /// The event's payload, handed to the action.
    #[serde(default)]
    pub payload: Option<String>,
}

/// `function.put`. The engine never reads a file the client names: the client sends the
/// component.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionPut {
    /// Name.
    pub name: String,
    /// The component's bytes, base64 (at most [`MAX_UPLOAD`](crate::limits::MAX_UPLOAD)
    /// bytes)…
    #[serde(default)]
    pub bytes: Option<String>,
    /// …or the digest of a component already uploaded to the artifact store (NATS).
    #[serde(default)]
    pub digest: Option<String>,
}

/// `function.ls`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionLs {}

/// `function.rm`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionRm {
    /// Name.
    pub name: String,
}

/// `deadletter.ls`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetters {
    /// Only those addressed to this pipeline.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// At most this many (default 20, at most [`MAX_LIST`](crate::limits::MAX_LIST)).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `deadletter.replay`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterReplay {
    /// The dead letter's id (as `deadletter.ls` lists it).
    pub id: String,
}

/// `logs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logs {
    /// Execution id.
    pub execution_id: String,
    /// Stage name.
    pub stage: String,
    /// Action name.
    pub action: String,
    /// Attempt (default: the latest).
    #[serde(default)]
    pub attempt: Option<u32>,
}

/// `plugin.ls`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginLs {}

/// `plugin.install`. The engine checks the component against the entry (its blake3 digest,
/// the name, version and capabilities it describes) before it keeps either.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginInstall {
    /// The lock entry the client wrote after verifying the signature and the user accepted the
    /// capabilities.
    pub locked: Locked,
    /// The component's bytes, base64 (at most [`MAX_UPLOAD`](crate::limits::MAX_UPLOAD)
    /// bytes)…
    #[serde(default)]
    pub bytes: Option<String>,
    /// …or the digest of a component already uploaded to the artifact store (NATS).
    #[serde(default)]
    pub digest: Option<String>,
}

/// `secret.put`. Its `Debug` shows no value (requests may be logged).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretPut {
    /// Its name: letters, digits and `_`, starting with a letter.
    pub name: String,
    /// The value (at least 8 bytes, at most 64 KiB).
    pub value: String,
    /// Only these pipelines may use it; empty: every pipeline of the tenant.
    #[serde(default)]
    pub pipelines: Vec<String>,
}

impl std::fmt::Debug for SecretPut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretPut")
            .field("name", &self.name)
            .field("value", &"***")
            .field("pipelines", &self.pipelines)
            .finish()
    }
}

/// `secret.ls`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretLs {}

/// `secret.rm`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRm {
    /// Its name.
    pub name: String,
}

/// What anyone may see of a secret: never its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    /// Its name.
    pub name: String,
    /// The pipelines that may use it; empty: every pipeline of the tenant.
    #[serde(default)]
    pub pipelines: Vec<String>,
    /// When it was first stored (RFC 3339).
    pub created: String,
    /// When its value last changed.
    pub updated: String,
}

/// `secret.rotate-key`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRotateKey {}

/// The reply to `secret.rotate-key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysRotated {
    /// Data keys re-sealed (one per tenant with secrets).
    pub resealed: usize,
    /// The master key they are sealed under now.
    pub master_key: String,
}

/// `cache.ls`: newest first, a page at a time (a tenant may have 10,000 entries: more than one
/// NATS message holds).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheLs {
    /// Only this pipeline's entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// At most this many (default 100, at most [`MAX_LIST`](crate::limits::MAX_LIST)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Only entries after this one in the listing: the previous page's last entry as
    /// [`CacheEntry::cursor`] gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
}

/// `cache.clear`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheClear {
    /// Only this pipeline's entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
}

/// One cached success of a pure action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// Its key: blake3 over the plugin's digest, world, resolved configuration, inputs' tree
    /// digests, limits and a version salt.
    pub key: String,
    /// The pipeline it was recorded in.
    pub pipeline: String,
    /// The attempt that recorded it: `EXECUTION/STAGE/ACTION`.
    pub from: String,
    /// Output variables.
    pub variables: BTreeMap<String, String>,
    /// Output artifacts: name → digest.
    pub artifacts: BTreeMap<String, String>,
    /// Its summary.
    pub summary: Option<String>,
    /// When it was recorded (RFC 3339).
    pub created: String,
}

impl CacheEntry {
    /// Where this entry stands in `cache.ls`'s order (newest first, then by key): the `before`
    /// of the page after it.
    pub fn cursor(&self) -> String {
        format!("{}/{}", self.created, self.key)
    }
}

/// The reply to `cache.clear`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheCleared {
    /// Entries removed.
    pub removed: usize,
}

/// `plugin.installed`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginInstalled {}

/// `token.create`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// Who or what will hold it (unique in the tenant): its name in decisions and the audit.
    pub name: String,
    /// `viewer`, `approver`, `developer` or `admin` (`operator`: an operator's token, made by
    /// an operator).
    pub role: String,
    /// Its tenant: the caller's own unless an operator names another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// How long it works (`90d`, `12h`); for ever when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// `token.ls`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLs {
    /// Another tenant's (operators only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// `token.revoke`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRevoke {
    /// The token's name (or id).
    pub name: String,
    /// Another tenant's (operators only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// `tenant.create`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantCreate {
    /// The tenant's name.
    pub name: String,
    /// What its pipelines may grant (nothing outside the sandbox when left out).
    #[serde(default)]
    pub policy: Policy,
    /// What it may use (no limits when left out).
    #[serde(default)]
    pub quotas: Quotas,
}

/// `tenant.ls`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLs {}

/// `tenant.set`: replace a tenant's policy and/or quotas.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSet {
    /// The tenant's name.
    pub name: String,
    /// The new policy, if it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// The new quotas, if they change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quotas: Option<Quotas>,
}

/// `tenant.rm`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRm {
    /// The tenant's name.
    pub name: String,
}

/// `tenant.usage`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantUsage {
    /// Another tenant's (operators only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `audit`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// At most this many (newest first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Every tenant's (operators only).
    #[serde(default)]
    pub all_tenants: bool,
}

// ---- Replies ----

/// One log line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When.
    pub at: Timestamp,
    /// The attempt that wrote it.
    pub attempt: u32,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// Text.
    pub message: String,
    /// Structured fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<(String, String)>,
}

/// The reply to `logs`: the lines so far, and whether the attempt has ended (no more come).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    /// The attempt shown.
    pub attempt: u32,
    /// Its lines, oldest first.
    pub lines: Vec<LogEntry>,
    /// The attempt has ended.
    pub complete: bool,
}

/// The reply to `pipeline.put`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineVersion {
    /// Name.
    pub name: String,
    /// The version just registered.
    pub version: u64,
}

/// A registered pipeline version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredPipeline {
    /// Pipeline name.
    pub name: String,
    /// Version, from 1.
    pub version: u64,
    /// The file it was registered from (for messages).
    pub file: String,
    /// The file's directory, relative paths in the pipeline resolve against it: given only by
    /// a caller of the engine's own user on its host. None for a pipeline registered
    /// remotely, which may reference no relative path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Plugin and rule files the client uploaded: the path as written → `blake3:` digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plugins: BTreeMap<String, String>,
    /// The pipeline's uploaded folder (an artifact tree's digest), see [`PipelinePut::bundle`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    /// The components of the plugin and rule files read from `dir` or `bundle` when it was
    /// registered (`blake3:` digests): the shared store keeps them while this version is.
    /// `None` in a record written before they were noted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<Vec<String>>,
    /// The YAML as registered.
    pub yaml: String,
    /// When it was registered.
    pub registered_at: Timestamp,
}

/// A row of `pipeline.ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineSummary {
    /// Name.
    pub name: String,
    /// Current version.
    pub version: u64,
    /// The file it was registered from.
    pub file: String,
    /// When the current version was registered.
    pub registered_at: Timestamp,
}

/// The reply naming what was removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Named {
    /// Name.
    pub name: String,
}

/// The reply naming an execution just started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionRef {
    /// Execution id.
    pub execution_id: String,
}

/// The reply to `start`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// The execution (an existing one when the event id was seen before).
    pub execution_id: String,
    /// The trigger event's id.
    pub event_id: String,
    /// The tenant is at its quota of running executions: the execution starts when one of
    /// them ends (it waits in the tenant's queue; until then `status` does not find it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub queued: bool,
}

/// An execution's status after a control verb.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionState {
    /// Execution id.
    pub execution_id: String,
    /// Its status now.
    pub status: Status,
}

/// The reply to `approve`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    /// Execution id.
    pub execution_id: String,
    /// Its status now.
    pub status: Status,
    /// `approved` or `rejected`.
    pub decision: String,
}

/// A registered function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFunction {
    /// Name.
    pub name: String,
    /// `blake3:<hex>` of the component.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// When.
    pub registered_at: Timestamp,
}

/// The reply to `deadletter.replay`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replayed {
    /// The execution started.
    pub execution_id: String,
    /// The event's id.
    pub event_id: String,
    /// Its pipeline.
    pub pipeline: String,
}

/// A row of `executions`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecutionSummary {
    /// Id.
    pub execution_id: String,
    /// Pipeline.
    pub pipeline: String,
    /// Version run.
    pub pipeline_version: u64,
    /// Status.
    pub status: Status,
    /// Started.
    pub started_at: Option<Timestamp>,
    /// Ended.
    pub finished_at: Option<Timestamp>,
    /// Trigger kind and event id.
    pub trigger: Option<String>,
    /// `STAGE/ACTION`s waiting for an approval or an event, and `entry to STAGE` while it waits
    /// before a stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<String>,
}

impl From<&Execution> for ExecutionSummary {
    fn from(e: &Execution) -> Self {
        ExecutionSummary {
            execution_id: e.execution_id.clone(),
            pipeline: e.pipeline.clone(),
            pipeline_version: e.pipeline_version,
            status: e.status,
            started_at: e.started_at,
            finished_at: e.finished_at,
            trigger: e
                .trigger
                .as_ref()
                .map(|t| format!("{} {}", t.kind, t.event_id)),
            waiting: e
                .stages
                .iter()
                .flat_map(|s| {
                    s.actions
                        .iter()
                        .filter(|a| {
                            a.status == Status::InProgress
                                && a.waiting.as_ref().is_some_and(|w| {
                                    !matches!(w.wake, sluice_core::scheduler::Wake::Timer(_))
                                })
                        })
                        .map(move |a| format!("{}/{}", s.name, a.name))
                })
                .chain(
                    e.entering
                        .map(|si| format!("entry to {}", e.stages[si].name)),
                )
                .collect(),
        }
    }
}

/// A row of `deadletter.ls`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeadLetterSummary {
    /// Id, for `deadletter.replay`.
    pub id: String,
    /// The pipeline the event was addressed to.
    pub pipeline: String,
    /// The event's id, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Why it was rejected.
    pub reason: String,
    /// When.
    pub at: Timestamp,
    /// The event as received.
    pub payload: String,
}

// ---- Checks ----

impl Request {
    /// Refuse ids and names longer than [`MAX_ID_LEN`](crate::limits::MAX_ID_LEN) (the
    /// client before sending, the server on receipt). Free text (reasons, payloads, YAML) only
    /// rides in message bodies.
    pub fn check_lengths(&self) -> Result<(), TooLong> {
        self.fields()
            .iter()
            .try_for_each(|(what, value)| check_len(what, value))
    }

    /// What the request names first (a pipeline, an execution, a token…), for the audit.
    pub fn target(&self) -> String {
        if let Request::PipelinePut(r) = self {
            return r.file.clone();
        }
        self.fields()
            .into_iter()
            .map(|(_, v)| v)
            .find(|v| !v.is_empty())
            .unwrap_or_default()
    }

    /// The ids and names the request carries, described.
    fn fields(&self) -> Vec<(&'static str, String)> {
        let opt = |o: &Option<String>| o.clone().unwrap_or_default();
        let fields: Vec<(&'static str, String)> = match self {
            Request::PipelinePut(_) | Request::PipelineLs(_) | Request::FunctionLs(_) => vec![],
            Request::PipelineGet(PipelineGet { name, .. })
            | Request::PipelineRm(PipelineRm { name })
            | Request::PipelineState(PipelineState { name })
            | Request::PipelineRepair(PipelineRepair { name }) => {
                vec![("the pipeline name", name.clone())]
            }
            Request::Start(r) => vec![
                ("the pipeline name", r.pipeline.clone()),
                ("the event id", opt(&r.event_id)),
                ("`started_by`", opt(&r.started_by)),
            ],
            Request::GetExecution(GetExecution { execution_id })
            | Request::Stop(Stop { execution_id, .. }) => {
                vec![("the execution id", execution_id.clone())]
            }
            Request::Retry(r) => vec![
                ("the execution id", r.execution_id.clone()),
                ("the stage name", r.stage.clone()),
            ],
            Request::Approve(r) => vec![
                ("the execution id", r.execution_id.clone()),
                ("the action", r.action.clone()),
                ("`by`", r.by.clone()),
                ("the token", opt(&r.token)),
            ],
            Request::Wake(r) => vec![
                ("the execution id", r.execution_id.clone()),
                ("the action", r.action.clone()),
            ],
            Request::FunctionPut(r) => vec![
                ("the function name", r.name.clone()),
                ("the digest", opt(&r.digest)),
            ],
            Request::FunctionRm(FunctionRm { name }) => vec![("the function name", name.clone())],
            Request::Transition(r) => vec![
                ("the pipeline name", r.pipeline.clone()),
                ("the stage name", r.stage.clone()),
                ("`by`", opt(&r.by)),
            ],
            Request::Rollback(r) => vec![
                ("the pipeline name", r.pipeline.clone()),
                ("the stage name", r.stage.clone()),
                ("the execution id", r.to.clone()),
                ("`by`", opt(&r.by)),
            ],
            Request::Executions(Executions {
                pipeline, before, ..
            }) => vec![
                ("the pipeline name", opt(pipeline)),
                ("the cursor", opt(before)),
            ],
            Request::DeadLetters(DeadLetters { pipeline, .. }) => {
                vec![("the pipeline name", opt(pipeline))]
            }
            Request::DeadLetterReplay(DeadLetterReplay { id }) => {
                vec![("the dead letter id", id.clone())]
            }
            Request::Logs(r) => vec![
                ("the execution id", r.execution_id.clone()),
                ("the stage name", r.stage.clone()),
                ("the action name", r.action.clone()),
            ],
            Request::PluginInstall(r) => vec![("the plugin", r.locked.name.clone())],
            Request::SecretPut(SecretPut { name, .. }) | Request::SecretRm(SecretRm { name }) => {
                vec![("the secret", name.clone())]
            }
            Request::SecretLs(_) | Request::SecretRotateKey(_) => vec![],
            Request::CacheLs(CacheLs {
                pipeline, before, ..
            }) => vec![
                ("the pipeline name", opt(pipeline)),
                ("the cursor", opt(before)),
            ],
            Request::CacheClear(CacheClear { pipeline }) => {
                vec![("the pipeline name", opt(pipeline))]
            }
            Request::PluginLs(_)
            | Request::PluginInstalled(_)
            | Request::BundlePut(_)
            | Request::UploadPart(_)
            | Request::TenantLs(_)
            | Request::Audit(_) => vec![],
            Request::UploadJoin(r) => std::iter::once(("the digest", r.digest.clone()))
                .chain(r.parts.iter().map(|p| ("a part", p.clone())))
                .collect(),
            Request::TokenCreate(r) => vec![
                ("the token's name", r.name.clone()),
                ("the role", r.role.clone()),
                ("the tenant", opt(&r.tenant)),
                ("the expiry", opt(&r.expires)),
            ],
            Request::TokenLs(r) => vec![("the tenant", opt(&r.tenant))],
            Request::TokenRevoke(r) => vec![
                ("the token's name", r.name.clone()),
                ("the tenant", opt(&r.tenant)),
            ],
            Request::TenantCreate(TenantCreate { name, .. })
            | Request::TenantSet(TenantSet { name, .. })
            | Request::TenantRm(TenantRm { name }) => vec![("the tenant", name.clone())],
            Request::TenantUsage(r) => vec![("the tenant", opt(&r.name))],
            Request::Approvals(r) => vec![
                ("the pipeline name", opt(&r.pipeline)),
                ("the approver", opt(&r.approver)),
            ],
        };
        fields
    }

    /// Parse a request whose verb travels separately (a NATS subject, an HTTP route).
    pub fn for_verb(verb: &str, body: &[u8]) -> Result<Request, ApiError> {
        use serde_json::Value;
        if !VERBS.contains(&verb) {
            return Err(ApiError::invalid(format!("unknown verb `{verb}`")));
        }
        let mut value: Value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::invalid(format!("request body is not JSON: {e}")))?
        };
        let Some(map) = value.as_object_mut() else {
            return Err(ApiError::invalid("request body must be a JSON object"));
        };
        map.insert("verb".into(), Value::String(verb.to_string()));
        serde_json::from_value(value)
            .map_err(|e| ApiError::invalid(format!("bad `{verb}` request: {e}")))
    }

    /// The request's body without its verb (what NATS carries; the verb is in the subject).
    pub fn body(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.remove("verb");
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_travel_with_their_verb_and_back() {
        let r: Request = Stop {
            execution_id: "e1".into(),
            abandon: true,
            reason: None,
        }
        .into();
        let wire = serde_json::to_value(&r).unwrap();
        assert_eq!(wire["verb"], "stop");
        assert_eq!(wire["abandon"], true);
        let back = Request::for_verb("stop", r.body().to_string().as_bytes()).unwrap();
        assert!(matches!(back, Request::Stop(Stop { abandon: true, .. })));
        assert_eq!(back.verb(), Stop::NAME);
    }

    #[test]
    fn unknown_fields_and_verbs_are_refused_with_invalid() {
        let e = Request::for_verb("stop", br#"{"execution_id":"e","abandn":true}"#).unwrap_err();
        assert_eq!(e.code, crate::Code::Invalid);
        assert!(e.message.contains("abandn"), "{e}");
        assert!(Request::for_verb("nope", b"{}").is_err());
        assert!(Request::for_verb("stop", b"[1]").is_err());
        // A verb without fields takes an empty body.
        assert!(matches!(
            Request::for_verb("pipeline.ls", b" ").unwrap(),
            Request::PipelineLs(_)
        ));
    }

    #[test]
    fn every_verb_is_listed_once() {
        let mut v = VERBS.to_vec();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), VERBS.len());
        assert_eq!(VERBS.len(), 43);
    }
}
