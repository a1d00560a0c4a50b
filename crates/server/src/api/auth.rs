//! Bearer-token authentication and role checks for the coordinator's gRPC API.
//!
//! Tokens are configured by name, roles, an optional namespace and the SHA-256 of the token —
//! never the token itself:
//!
//! ```text
//! NAME:ROLES[:NAMESPACE]=sha256:HEX        e.g. shop:client:shop=sha256:9f86d0…
//!                                               ops:operator+client=sha256:2c26b4…
//! ```
//!
//! ROLES is one or more of `client`, `operator` and `participant` joined by `+`; roles do not
//! imply each other. Every call must carry `authorization: Bearer <token>`; [`Authenticated`]
//! wraps the gRPC service, answers `UNAUTHENTICATED` for a missing or unknown token and
//! `PERMISSION_DENIED` for a token without the method's role (see [`METHOD_ROLES`]), before the
//! request reaches a handler, so a refused call changes nothing. Accepted calls carry the
//! [`Principal`] in their request extensions.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::Status;

/// The label that places a transaction in a namespace. Stamped by the coordinator on `Start`
/// from the client token's namespace.
pub const NAMESPACE_LABEL: &str = "baton.namespace";

/// Longest token name or namespace.
const MAX_NAME_LEN: usize = 64;
/// Longest bearer token accepted on the wire; anything longer cannot be one of ours.
const MAX_TOKEN_LEN: usize = 1024;
/// The gRPC service whose methods [`METHOD_ROLES`] covers.
const SERVICE: &str = "baton.v1.Coordinator";

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Start transactions and follow them (Get, Wait, Watch), within the token's namespace.
    Client,
    /// Inspect and operate every transaction, the registry and the coordinators.
    Operator,
    /// Register a participant endpoint and keep it alive.
    Participant,
}

impl Role {
    const ALL: [Role; 3] = [Role::Client, Role::Operator, Role::Participant];

    /// The role's name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Operator => "operator",
            Role::Participant => "participant",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Role::Client => 1,
            Role::Operator => 2,
            Role::Participant => 4,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = AuthConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == text)
            .ok_or_else(|| {
                AuthConfigError(format!(
                    "unknown role {text:?} (roles are client, operator and participant, joined by +)"
                ))
            })
    }
}

/// A set of roles.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Roles(u8);

impl Roles {
    /// Every role: what a caller has when auth is disabled.
    pub const ALL: Roles = Roles(7);

    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    pub fn with(self, role: Role) -> Roles {
        Roles(self.0 | role.bit())
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Role::ALL
            .into_iter()
            .filter(|r| self.contains(*r))
            .map(Role::name)
            .collect();
        f.write_str(&names.join("+"))
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Roles({self})")
    }
}

impl FromIterator<Role> for Roles {
    fn from_iter<I: IntoIterator<Item = Role>>(iter: I) -> Self {
        iter.into_iter().fold(Roles::default(), Roles::with)
    }
}

/// The SHA-256 of a token: what the configuration holds instead of the token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of `token`.
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Equality that takes the same time wherever the hashes differ.
    fn matches(&self, other: &TokenHash) -> bool {
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for TokenHash {
    type Err = AuthConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // Never echo the text: a plain token pasted by mistake would end up in an error message.
        let bad = || {
            AuthConfigError(
                "the hash must be sha256: followed by 64 hex digits (make one with `baton auth hash-token`)"
                    .into(),
            )
        };
        let digits = text.strip_prefix("sha256:").ok_or_else(bad)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(digits, &mut bytes).map_err(|_| bad())?;
        Ok(TokenHash(bytes))
    }
}

/// A configuration error. The message names the entry (by token name or position), never the
/// text of a hash or token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthConfigError(String);

/// One configured token: `NAME:ROLES[:NAMESPACE]=sha256:HEX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSpec {
    /// Names the token in logs and errors (the token itself never appears).
    pub name: String,
    pub roles: Roles,
    /// For a client token: the namespace its transactions live in. `None` is the default
    /// namespace (transactions without the [`NAMESPACE_LABEL`]).
    pub namespace: Option<String>,
    pub hash: TokenHash,
}

fn check_name(what: &str, text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > MAX_NAME_LEN {
        return Err(format!("{what} must be 1 to {MAX_NAME_LEN} characters"));
    }
    if !text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "{what} may hold only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

impl FromStr for TokenSpec {
    type Err = AuthConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let shape = || {
            AuthConfigError(
                "expected NAME:ROLES[:NAMESPACE]=sha256:HEX, roles joined by + (make the hash with `baton auth hash-token`)"
                    .into(),
            )
        };
        let (head, hash) = text.split_once('=').ok_or_else(shape)?;
        let parts: Vec<&str> = head.split(':').collect();
        let (name, roles, namespace) = match parts[..] {
            [name, roles] => (name, roles, None),
            [name, roles, namespace] => (name, roles, Some(namespace)),
            _ => return Err(shape()),
        };
        // The name is checked before anything is echoed, so an entry that is really a token
        // pasted in the wrong place is not repeated back.
        check_name("the token name", name)
            .map_err(|e| AuthConfigError(format!("{e}; {}", shape())))?;
        let within = |e: String| AuthConfigError(format!("token {name:?}: {e}"));
        let roles = roles
            .split('+')
            .map(|r| r.parse::<Role>().map_err(|e| within(e.0)))
            .collect::<Result<Roles, _>>()?;
        if let Some(namespace) = namespace {
            check_name("the namespace", namespace).map_err(within)?;
            if !roles.contains(Role::Client) || roles.contains(Role::Operator) {
                return Err(within(
                    "a namespace binds a client token (an operator sees every namespace)".into(),
                ));
            }
        }
        let hash = hash.parse::<TokenHash>().map_err(|e| within(e.0))?;
        Ok(TokenSpec {
            name: name.to_string(),
            roles,
            namespace: namespace.map(str::to_string),
            hash,
        })
    }
}

/// Token entries from a file: one `NAME:ROLES[:NAMESPACE]=sha256:HEX` per line; blank lines and
/// lines starting with `#` are skipped. Errors name the line number.
pub fn parse_token_lines(text: &str) -> Result<Vec<TokenSpec>, AuthConfigError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let spec = line
            .parse()
            .map_err(|e: AuthConfigError| AuthConfigError(format!("line {}: {e}", i + 1)))?;
        out.push(spec);
    }
    Ok(out)
}

/// The checked set of tokens a server accepts: at least one, names and hashes unique.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens(Vec<TokenSpec>);

impl Tokens {
    pub fn new(specs: Vec<TokenSpec>) -> Result<Tokens, AuthConfigError> {
        if specs.is_empty() {
            return Err(AuthConfigError("no auth tokens configured".into()));
        }
        for (i, spec) in specs.iter().enumerate() {
            for earlier in &specs[..i] {
                if earlier.name == spec.name {
                    return Err(AuthConfigError(format!(
                        "token {:?} is configured twice",
                        spec.name
                    )));
                }
                if earlier.hash == spec.hash {
                    return Err(AuthConfigError(format!(
                        "tokens {:?} and {:?} have the same hash; give each its own token",
                        earlier.name, spec.name
                    )));
                }
            }
        }
        Ok(Tokens(specs))
    }

    pub fn specs(&self) -> &[TokenSpec] {
        &self.0
    }

    /// The entry whose hash is the token's. Every entry is compared, in constant time.
    fn find(&self, token: &str) -> Option<&TokenSpec> {
        let hash = TokenHash::of(token);
        let mut found = None;
        for spec in &self.0 {
            if spec.hash.matches(&hash) {
                found = Some(spec);
            }
        }
        found
    }
}

/// How the coordinator authenticates its callers. There is no default: running without
/// authentication is a choice someone writes down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthConfig {
    /// Every caller may call everything, with no namespace. Only for loopback or a private
    /// network.
    Disabled,
    /// Calls need a bearer token from this set, with the method's role.
    Tokens(Tokens),
}

/// Which transactions a caller's client verbs reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every transaction (operators, and every caller when auth is disabled).
    All,
    /// Only transactions of this namespace; `None` is the default namespace (no label).
    Namespace(Option<String>),
}

/// Who is calling, as the handlers see it (from the request extensions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's name (`anonymous` with auth disabled).
    pub name: String,
    pub roles: Roles,
    pub scope: Scope,
}

impl Principal {
    /// The caller when authentication is disabled.
    pub fn anonymous() -> Principal {
        Principal {
            name: "anonymous".into(),
            roles: Roles::ALL,
            scope: Scope::All,
        }
    }

    fn of(spec: &TokenSpec) -> Principal {
        Principal {
            name: spec.name.clone(),
            roles: spec.roles,
            scope: if spec.roles.contains(Role::Operator) {
                Scope::All
            } else {
                Scope::Namespace(spec.namespace.clone())
            },
        }
    }

    /// Whether a transaction with these labels is visible to this caller.
    pub fn sees(&self, labels: &BTreeMap<String, String>) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Namespace(ns) => labels.get(NAMESPACE_LABEL) == ns.as_ref(),
        }
    }

    /// Places a new transaction's labels in this caller's namespace. A namespaced caller may not
    /// set [`NAMESPACE_LABEL`] to another namespace; an unrestricted one may set it freely.
    pub fn stamp(&self, labels: &mut BTreeMap<String, String>) -> Result<(), Status> {
        let Scope::Namespace(ns) = &self.scope else {
            return Ok(());
        };
        let given = labels.get(NAMESPACE_LABEL);
        match (ns, given) {
            (_, None) => {}
            (Some(ns), Some(given)) if given == ns => {}
            (Some(ns), Some(_)) => {
                return Err(Status::permission_denied(format!(
                    "labels[{NAMESPACE_LABEL:?}]: token {:?} starts transactions in namespace {ns:?} only; the coordinator sets this label",
                    self.name
                )))
            }
            (None, Some(_)) => {
                return Err(Status::permission_denied(format!(
                    "labels[{NAMESPACE_LABEL:?}]: token {:?} has no namespace and may not set this label; the coordinator sets it",
                    self.name
                )))
            }
        }
        if let Some(ns) = ns {
            labels.insert(NAMESPACE_LABEL.to_string(), ns.clone());
        }
        Ok(())
    }
}

/// The role each method of `baton.v1.Coordinator` needs. A method not listed is refused.
pub const METHOD_ROLES: &[(&str, Role)] = &[
    ("Start", Role::Client),
    ("Get", Role::Client),
    ("Wait", Role::Client),
    ("Watch", Role::Client),
    ("List", Role::Operator),
    ("Events", Role::Operator),
    ("Retry", Role::Operator),
    ("Cancel", Role::Operator),
    ("ListParticipants", Role::Operator),
    ("ListCoordinators", Role::Operator),
    ("Purge", Role::Operator),
    ("RegisterParticipant", Role::Participant),
    ("HeartbeatParticipant", Role::Participant),
    ("DeregisterParticipant", Role::Participant),
];

/// The role a gRPC path such as `/baton.v1.Coordinator/Start` needs; `None` for any other path.
pub fn required_role(path: &str) -> Option<Role> {
    let method = path
        .strip_prefix('/')?
        .strip_prefix(SERVICE)?
        .strip_prefix('/')?;
    METHOD_ROLES
        .iter()
        .find(|(name, _)| *name == method)
        .map(|(_, role)| *role)
}

/// The bearer token of a request, or why there is none.
fn bearer(headers: &http::HeaderMap) -> Result<&str, &'static str> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values
        .next()
        .ok_or("authorization: missing; send `authorization: Bearer <token>`")?;
    if values.next().is_some() {
        return Err("authorization: give one bearer token, not several");
    }
    if value.len() > MAX_TOKEN_LEN {
        return Err("authorization: token too long");
    }
    let text = value
        .to_str()
        .map_err(|_| "authorization: expected `Bearer <token>`")?;
    let (scheme, token) = text
        .split_once(' ')
        .ok_or("authorization: expected `Bearer <token>`")?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err("authorization: expected `Bearer <token>`");
    }
    Ok(token)
}

impl AuthConfig {
    /// Authenticates and authorizes one call to `path`.
    pub fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<Principal, Status> {
        let tokens = match self {
            AuthConfig::Disabled => return Ok(Principal::anonymous()),
            AuthConfig::Tokens(tokens) => tokens,
        };
        let token = bearer(headers).map_err(|why| {
            tracing::debug!(method = path, why, "unauthenticated call");
            Status::unauthenticated(why)
        })?;
        let Some(spec) = tokens.find(token) else {
            tracing::debug!(method = path, "unauthenticated call: unknown token");
            return Err(Status::unauthenticated(
                "authorization: token not recognized",
            ));
        };
        let Some(role) = required_role(path) else {
            tracing::info!(token = %spec.name, method = path, "permission denied: unknown method");
            return Err(Status::permission_denied(format!(
                "{path}: not a method any token may call"
            )));
        };
        if !spec.roles.contains(role) {
            tracing::info!(token = %spec.name, method = path, needs = %role, "permission denied");
            return Err(Status::permission_denied(format!(
                "{}: needs the {role} role; token {:?} has {}",
                path.trim_start_matches('/'),
                spec.name,
                spec.roles
            )));
        }
        Ok(Principal::of(spec))
    }
}

/// The caller of a request that went through [`Authenticated`]. A request that did not is
/// refused: handlers never run unauthenticated by accident.
pub fn principal<T>(request: &tonic::Request<T>) -> Result<&Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .ok_or_else(|| Status::unauthenticated("authorization: the call was not authenticated"))
}

/// A gRPC service behind the token check: refused calls are answered here and never reach
/// `inner`; accepted ones carry their [`Principal`] in the request extensions.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    auth: Arc<AuthConfig>,
}

impl<S> Authenticated<S> {
    pub fn new(inner: S, auth: AuthConfig) -> Self {
        Authenticated {
            inner,
            auth: Arc::new(auth),
        }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.auth.check(request.uri().path(), request.headers()) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                Box::pin(self.inner.call(request))
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

/// Longest token `baton auth hash-token` accepts; with `Bearer ` it stays under the wire limit.
pub const MAX_TOKEN_CHARS: usize = 1000;

/// Checks that `token` can travel as a bearer token: 1 to [`MAX_TOKEN_CHARS`] visible ASCII
/// characters, no spaces. The message never repeats the token.
pub fn check_token(token: &str) -> Result<(), AuthConfigError> {
    if token.is_empty() {
        return Err(AuthConfigError("token: must not be empty".into()));
    }
    if token.len() > MAX_TOKEN_CHARS {
        return Err(AuthConfigError(format!(
            "token: longer than {MAX_TOKEN_CHARS} characters"
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AuthConfigError(
            "token: must be visible ASCII without spaces (it travels in an HTTP header)".into(),
        ));
    }
    Ok(())
}

/// A new random token: 32 bytes from the operating system, hex-encoded.
pub fn generate_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests;
