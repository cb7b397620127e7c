//! Who asks. A server's transport attaches the principal to each request from what it can
//! verify (the socket's peer, the NATS subject's tenant, later a token or a NATS account);
//! nothing the client writes in a request body makes it someone else.
use serde::{Deserialize, Serialize};

/// A role within a tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read everything of the tenant.
    Viewer,
    /// Approve or reject.
    Approver,
    /// Pipelines, functions, start/stop/retry/rollback/transitions/wake.
    Developer,
    /// Everything in the tenant: its tokens, its audit trail.
    Admin,
    /// The platform's operator: tenants, their policies and quotas, every tenant's audit
    /// trail; everything in any tenant.
    Operator,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Approver,
        Role::Developer,
        Role::Admin,
        Role::Operator,
    ];

    /// The role written `text` (`viewer`, `approver`, `developer`, `admin`, `operator`).
    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// The role as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Approver => "approver",
            Role::Developer => "developer",
            Role::Admin => "admin",
            Role::Operator => "operator",
        }
    }
}

/// Where a request came from, as far as paths on the engine's host go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A process of the engine's own user on the engine's host (the embedded service's
    /// socket): it may name the directory a pipeline's relative paths resolve against, as
    /// `sluice run` would.
    HostUser,
    /// Anyone else: the engine resolves no path on its host that the caller names.
    Remote,
}

/// Who asks, for which tenant, with which roles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The tenant every name in the request belongs to.
    pub tenant: String,
    /// Who (a token's name, a user); `None` when the transport cannot tell.
    pub subject: Option<String>,
    /// What they may do in the tenant.
    pub roles: Vec<Role>,
    /// Where the request came from.
    pub origin: Origin,
}

impl Principal {
    /// The single user of a service without authentication: every role in `tenant`.
    pub fn local(tenant: impl Into<String>, origin: Origin) -> Self {
        Principal {
            tenant: tenant.into(),
            subject: None,
            roles: Role::ALL.to_vec(),
            origin,
        }
    }

    /// Whether the principal may do what needs `role`: admins may do everything in their
    /// tenant but the operator's work, operators everything, and every role may read.
    pub fn may(&self, role: Role) -> bool {
        self.roles.iter().any(|&r| {
            r == role
                || r == Role::Operator
                || (r == Role::Admin && role != Role::Operator)
                || (role == Role::Viewer)
        })
    }

    /// The principal's name in decisions and the audit trail.
    pub fn name(&self) -> &str {
        self.subject.as_deref().unwrap_or("anonymous")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_what_they_name_and_admins_everything() {
        let p = |roles: &[Role]| Principal {
            tenant: "t".into(),
            subject: None,
            roles: roles.to_vec(),
            origin: Origin::Remote,
        };
        assert!(p(&[Role::Approver]).may(Role::Viewer));
        assert!(p(&[Role::Approver]).may(Role::Approver));
        assert!(!p(&[Role::Approver]).may(Role::Developer));
        assert!(!p(&[Role::Viewer]).may(Role::Approver));
        assert!(!p(&[Role::Developer]).may(Role::Approver));
        assert!(p(&[Role::Admin]).may(Role::Developer));
        assert!(!p(&[Role::Admin]).may(Role::Operator));
        assert!(p(&[Role::Operator]).may(Role::Admin));
        assert!(!p(&[]).may(Role::Viewer));
        assert_eq!(Role::parse("approver"), Some(Role::Approver));
        assert_eq!(Role::parse("root"), None);
    }
}
