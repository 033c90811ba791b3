//! AWS ARNs as Pinpoint's cloud authentication sees them: a real parser for the
//! identities STS returns (IAM users and assumed-role sessions; `root` and other principal
//! types are refused), session names kept apart and sanitised, and mapping patterns with
//! their rules (an exact identity ARN, or one `*` as the whole last segment after a
//! specific role), matched segment by segment.

use std::fmt;

/// AWS partitions Pinpoint knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Partition {
    Aws,
    AwsCn,
    AwsUsGov,
}

impl Partition {
    pub fn parse(s: &str) -> Option<Partition> {
        match s {
            "aws" => Some(Partition::Aws),
            "aws-cn" => Some(Partition::AwsCn),
            "aws-us-gov" => Some(Partition::AwsUsGov),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Partition::Aws => "aws",
            Partition::AwsCn => "aws-cn",
            Partition::AwsUsGov => "aws-us-gov",
        }
    }
}

/// Why an ARN or pattern was refused. Messages are safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArnError {
    #[error("not an ARN: expected arn:<partition>:<service>:<region>:<account>:<resource>")]
    Malformed,
    #[error("unknown partition `{0}`")]
    Partition(String),
    #[error("the account must be 12 digits")]
    Account,
    #[error("principal type `{0}` cannot log in; use an IAM user or an assumed-role session")]
    PrincipalType(String),
    #[error("invalid name `{0}`")]
    Name(String),
    #[error("a wildcard is allowed only as the whole last segment after a specific role, as in arn:aws:sts::123456789012:assumed-role/RoleName/*")]
    Wildcard,
    #[error("this is an IAM role ARN; sessions of that role look like {0}")]
    RoleNotSession(String),
}

/// A caller identity as STS returned it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub partition: Partition,
    pub account: String,
    pub kind: IdentityKind,
}

/// The allow-listed principal types.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    /// `arn:aws:iam::<acct>:user/<path/>Name`
    User { path: String, name: String },
    /// `arn:aws:sts::<acct>:assumed-role/RoleName/SessionName` (the session is kept apart).
    AssumedRole { role: String, session: String },
}

fn is_account(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// IAM names: letters, digits and `+=,.@_-` (1 to 128 characters).
fn is_iam_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

/// A caller-chosen session name made safe to show anywhere: characters outside AWS's own
/// set (`[A-Za-z0-9+=,.@_-]`) become `_`, and it is cut to 64 characters.
pub fn sanitize_session(session: &str) -> String {
    session
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@_-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn split(arn: &str) -> Result<(Partition, &str, &str, &str, &str), ArnError> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some(service), Some(region), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(ArnError::Malformed);
    };
    let partition = Partition::parse(partition).ok_or_else(|| ArnError::Partition(partition.to_owned()))?;
    Ok((partition, service, region, account, resource))
}

impl Identity {
    /// Parses an identity ARN from a GetCallerIdentity response.
    pub fn parse(arn: &str) -> Result<Identity, ArnError> {
        let (partition, service, region, account, resource) = split(arn)?;
        if !region.is_empty() {
            return Err(ArnError::Malformed);
        }
        if !is_account(account) {
            return Err(ArnError::Account);
        }
        let kind = match (service, resource.split_once('/')) {
            ("iam", Some(("user", rest))) => {
                let (path, name) = match rest.rsplit_once('/') {
                    Some((path, name)) => (format!("{path}/"), name),
                    None => (String::new(), rest),
                };
                if !is_iam_name(name) || path.split('/').any(|seg| !seg.is_empty() && !is_iam_name(seg)) {
                    return Err(ArnError::Name(name.to_owned()));
                }
                IdentityKind::User {
                    path,
                    name: name.to_owned(),
                }
            }
            ("sts", Some(("assumed-role", rest))) => {
                let (role, session) = rest.split_once('/').ok_or(ArnError::Malformed)?;
                if !is_iam_name(role) || session.is_empty() || session.contains('/') {
                    return Err(ArnError::Name(role.to_owned()));
                }
                IdentityKind::AssumedRole {
                    role: role.to_owned(),
                    session: sanitize_session(session),
                }
            }
            (_, Some((kind, _))) => return Err(ArnError::PrincipalType(kind.to_owned())),
            (_, None) => return Err(ArnError::PrincipalType(resource.to_owned())),
        };
        Ok(Identity {
            partition,
            account: account.to_owned(),
            kind,
        })
    }

    /// The identity without its session: what mappings match against.
    pub fn base(&self) -> String {
        match &self.kind {
            IdentityKind::User { path, name } => {
                format!(
                    "arn:{}:iam::{}:user/{path}{name}",
                    self.partition.as_str(),
                    self.account
                )
            }
            IdentityKind::AssumedRole { role, .. } => {
                format!(
                    "arn:{}:sts::{}:assumed-role/{role}",
                    self.partition.as_str(),
                    self.account
                )
            }
        }
    }

    /// The session name (sanitised), for assumed roles.
    pub fn session(&self) -> Option<&str> {
        match &self.kind {
            IdentityKind::AssumedRole { session, .. } => Some(session),
            IdentityKind::User { .. } => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            IdentityKind::User { .. } => f.write_str(&self.base()),
            IdentityKind::AssumedRole { session, .. } => write!(f, "{}/{session}", self.base()),
        }
    }
}

/// A validated mapping pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    pub partition: Partition,
    pub account: String,
    pub target: PatternTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PatternTarget {
    /// One IAM user, exactly.
    User { path: String, name: String },
    /// Every session of a role: `assumed-role/Role/*`.
    AnySessionOf { role: String },
    /// One session of a role, exactly.
    Session { role: String, session: String },
}

impl Pattern {
    /// Parses and checks a pattern as written by an operator.
    pub fn parse(pattern: &str) -> Result<Pattern, ArnError> {
        let (partition, service, region, account, resource) = split(pattern)?;
        if !is_account(account) {
            return Err(ArnError::Account);
        }
        if !region.is_empty() {
            return Err(ArnError::Malformed);
        }
        if service == "iam" {
            if let Some(("role", rest)) = resource.split_once('/') {
                let name = rest.rsplit('/').next().unwrap_or(rest);
                return Err(ArnError::RoleNotSession(format!(
                    "arn:{}:sts::{account}:assumed-role/{name}/*",
                    partition.as_str()
                )));
            }
        }
        let star_count = pattern.matches('*').count();
        let target = match (service, resource.split_once('/')) {
            ("iam", Some(("user", _))) if star_count > 0 => return Err(ArnError::Wildcard),
            ("iam", Some(("user", _))) => match Identity::parse(pattern)?.kind {
                IdentityKind::User { path, name } => PatternTarget::User { path, name },
                IdentityKind::AssumedRole { .. } => return Err(ArnError::Malformed),
            },
            ("sts", Some(("assumed-role", rest))) => {
                let (role, session) = rest.split_once('/').ok_or(ArnError::Malformed)?;
                if role.contains('*') || !is_iam_name(role) {
                    return Err(if role.contains('*') {
                        ArnError::Wildcard
                    } else {
                        ArnError::Name(role.to_owned())
                    });
                }
                match session {
                    "*" => PatternTarget::AnySessionOf { role: role.to_owned() },
                    s if s.contains('*') || s.contains('/') || s.is_empty() => return Err(ArnError::Wildcard),
                    s if s == sanitize_session(s) => PatternTarget::Session {
                        role: role.to_owned(),
                        session: s.to_owned(),
                    },
                    s => return Err(ArnError::Name(s.to_owned())),
                }
            }
            _ if star_count > 0 => return Err(ArnError::Wildcard),
            (_, Some((kind, _))) => return Err(ArnError::PrincipalType(kind.to_owned())),
            (_, None) => return Err(ArnError::PrincipalType(resource.to_owned())),
        };
        Ok(Pattern {
            partition,
            account: account.to_owned(),
            target,
        })
    }

    /// Whether `identity` matches, segment by segment (`Dev/*` never matches `DevAdmin/x`).
    pub fn matches(&self, identity: &Identity) -> bool {
        if self.partition != identity.partition || self.account != identity.account {
            return false;
        }
        match (&self.target, &identity.kind) {
            (PatternTarget::User { path, name }, IdentityKind::User { path: p, name: n }) => path == p && name == n,
            (PatternTarget::AnySessionOf { role }, IdentityKind::AssumedRole { role: r, .. }) => role == r,
            (PatternTarget::Session { role, session }, IdentityKind::AssumedRole { role: r, session: s }) => {
                role == r && session == s
            }
            _ => false,
        }
    }

    /// Whether two patterns can match a common identity (duplicates and overlaps are refused).
    pub fn overlaps(&self, other: &Pattern) -> bool {
        if self.partition != other.partition || self.account != other.account {
            return false;
        }
        use PatternTarget::*;
        match (&self.target, &other.target) {
            (User { path: a, name: b }, User { path: c, name: d }) => a == c && b == d,
            (AnySessionOf { role: a }, AnySessionOf { role: b })
            | (AnySessionOf { role: a }, Session { role: b, .. })
            | (Session { role: a, .. }, AnySessionOf { role: b }) => a == b,
            // Session names are chosen by whoever assumes the role, so two exact-session
            // patterns of one role (alice -> admin, bob -> viewer) would let any holder of
            // the role pick its principal: one role maps to one principal.
            (Session { role: a, .. }, Session { role: b, .. }) => a == b,
            _ => false,
        }
    }

    /// The pattern that would match `identity`, as a hint for `cloudauth.no_mapping`.
    pub fn suggestion_for(identity: &Identity) -> String {
        match &identity.kind {
            IdentityKind::User { .. } => identity.base(),
            IdentityKind::AssumedRole { .. } => format!("{}/*", identity.base()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_allow_listed_identities() {
        let id = Identity::parse("arn:aws:sts::123456789012:assumed-role/AgentRole/i-0abc").unwrap();
        assert_eq!(id.base(), "arn:aws:sts::123456789012:assumed-role/AgentRole");
        assert_eq!(id.session(), Some("i-0abc"));
        let user = Identity::parse("arn:aws:iam::123456789012:user/team/alice").unwrap();
        assert_eq!(user.to_string(), "arn:aws:iam::123456789012:user/team/alice");
        assert!(matches!(
            Identity::parse("arn:aws:iam::123456789012:root"),
            Err(ArnError::PrincipalType(_))
        ));
        assert!(matches!(
            Identity::parse("arn:aws:sts::123456789012:federated-user/bob"),
            Err(ArnError::PrincipalType(_))
        ));
        assert_eq!(Identity::parse("arn:aws:iam::12345:user/x"), Err(ArnError::Account));
        assert!(Identity::parse("arn:aws-cn:sts::123456789012:assumed-role/R/s").is_ok());
        assert!(matches!(
            Identity::parse("arn:aws-xx:sts::123456789012:assumed-role/R/s"),
            Err(ArnError::Partition(_))
        ));
        assert_eq!(Identity::parse("nonsense"), Err(ArnError::Malformed));
    }

    #[test]
    fn session_names_are_sanitised() {
        let id = Identity::parse("arn:aws:sts::123456789012:assumed-role/R/evil<script>\u{1b}[31m").unwrap();
        assert_eq!(id.session(), Some("evil_script___31m"));
        assert_eq!(sanitize_session(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn pattern_rules() {
        let p = Pattern::parse("arn:aws:sts::123456789012:assumed-role/Dev/*").unwrap();
        let dev = Identity::parse("arn:aws:sts::123456789012:assumed-role/Dev/s1").unwrap();
        let dev_admin = Identity::parse("arn:aws:sts::123456789012:assumed-role/DevAdmin/x").unwrap();
        let other_account = Identity::parse("arn:aws:sts::210987654321:assumed-role/Dev/s1").unwrap();
        assert!(p.matches(&dev));
        assert!(!p.matches(&dev_admin), "Dev/* never matches DevAdmin/x");
        assert!(!p.matches(&other_account));
        for bad in [
            "arn:aws:sts::123456789012:assumed-role/Dev*/x",
            "arn:aws:sts::123456789012:assumed-role/*/x",
            "arn:aws:sts::123456789012:assumed-role/Dev/x*",
            "arn:aws:iam::123456789012:user/*",
            "arn:aws:sts::*:assumed-role/Dev/*",
            "arn:aws:sts::123456789012:*",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad} must be refused");
        }
        assert_eq!(
            Pattern::parse("arn:aws:sts::1234:assumed-role/Dev/*"),
            Err(ArnError::Account)
        );
        match Pattern::parse("arn:aws:iam::123456789012:role/path/Dev") {
            Err(ArnError::RoleNotSession(hint)) => assert_eq!(hint, "arn:aws:sts::123456789012:assumed-role/Dev/*"),
            other => panic!("{other:?}"),
        }
        let exact = Pattern::parse("arn:aws:sts::123456789012:assumed-role/Dev/s1").unwrap();
        assert!(exact.matches(&dev) && exact.overlaps(&p) && p.overlaps(&exact));
        let other_session = Pattern::parse("arn:aws:sts::123456789012:assumed-role/Dev/s2").unwrap();
        assert!(
            exact.overlaps(&other_session),
            "one role, one mapping: sessions are caller-chosen"
        );
        let user = Pattern::parse("arn:aws:iam::123456789012:user/team/alice").unwrap();
        assert!(user.matches(&Identity::parse("arn:aws:iam::123456789012:user/team/alice").unwrap()));
        assert!(!user.matches(&Identity::parse("arn:aws:iam::123456789012:user/alice").unwrap()));
        assert_eq!(
            Pattern::suggestion_for(&dev),
            "arn:aws:sts::123456789012:assumed-role/Dev/*"
        );
    }
}
