//! The identity directory: an in-memory index of keys, principals (with their effective
//! permissions precomputed) and organizations, loaded from the store at start and kept
//! current by following the store's change feed (`Services::follow`, every
//! [`FOLLOW_EVERY`]; [`Directory::catch_up`] at once after this process's own writes), so
//! a change made by any process on the same store reaches every directory, entry by entry. The hot path never touches the
//! database: a key check is one concurrent-map lookup and one HMAC, and a permission check
//! is a hash-set lookup. Last-use times are written behind, at most once a minute per key.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use pinpoint_core::config::JwtConfig;
use pinpoint_core::identity::{ApiKey, Organization, Principal, Role};
use pinpoint_core::keys;
use pinpoint_policy::identity::{
    id_header, key_trace_label, Claims, KeyEntry, KeyRefusal, OrgLabels, OrgStanding, PrincipalEntry, PrincipalSlot,
    TokenRefusal,
};
use pinpoint_policy::world::Identities;
use pinpoint_store::prelude::*;
use pinpoint_store::{ChangeKind, Store, StoreError, StoredKey};
use tokio::sync::mpsc;

use crate::tokens::TokenService;

/// The directory's maps hash with foldhash (seeded per map), several times faster than
/// SipHash on the short ids looked up per request. Only Pinpoint inserts entries (ids it
/// generated), so callers cannot grow a bucket; a presented id only probes. Reads take no
/// lock and write nothing shared (papaya): with both cores authenticating the same caller,
/// a locking map's lock word alone would bounce between them on every request.
type IdMap<V> = papaya::HashMap<String, V, foldhash::fast::RandomState>;

pub struct Directory {
    hasher: keys::SecretHasher,
    keys: IdMap<Arc<KeyEntry>>,
    principals: IdMap<Arc<PrincipalSlot>>,
    orgs: IdMap<Arc<Organization>>,
    org_labels: IdMap<Arc<OrgLabels>>,
    touches: mpsc::Sender<(String, i64)>,
    /// The last change-feed `seq` applied.
    applied: AtomicI64,
    /// One catch-up at a time (the follower's and a handler's may meet).
    catching_up: tokio::sync::Mutex<()>,
}

/// How often `Services::follow` reads the change feed: a change made elsewhere is
/// enforced here within this much (plus one feed read).
pub const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Changes read per feed query.
const CHANGES_PER_READ: i64 = 1_000;

impl Directory {
    /// The organization's shared labels, made on first use.
    fn org_labels(&self, org_id: &str) -> Arc<OrgLabels> {
        let labels = self.org_labels.pin();
        if let Some(existing) = labels.get(org_id) {
            return existing.clone();
        }
        let standing = || OrgStanding::of(self.orgs.pin().get(org_id).map(|o| o.as_ref()));
        let made = labels
            .get_or_insert_with(org_id.to_owned(), || Arc::new(OrgLabels::new(org_id, standing())))
            .clone();
        // Read the standing again now that the labels are in the map: a `refresh_org`
        // that ran between the first reading and the insert found no labels to update.
        made.set_standing(standing());
        made
    }

    /// Brings an organization's labels (if any exist yet) to its current standing.
    fn update_standing(&self, org_id: &str) {
        if let Some(labels) = self.org_labels.pin().get(org_id) {
            labels.set_standing(OrgStanding::of(self.orgs.pin().get(org_id).map(|o| o.as_ref())));
        }
    }

    /// A principal's slot, made (empty) on first use.
    fn principal_slot(&self, principal_id: &str) -> Arc<PrincipalSlot> {
        self.principals
            .pin()
            .get_or_insert_with(principal_id.to_owned(), || Arc::new(PrincipalSlot::empty()))
            .clone()
    }

    fn key_entry(&self, stored: StoredKey) -> Arc<KeyEntry> {
        let minute = stored.info.last_used_at_ms.unwrap_or(0) / 60_000;
        // A stored hash is always 32 bytes; anything else (a damaged row) never verifies.
        let hash = <[u8; 32]>::try_from(stored.secret_hash.as_slice()).unwrap_or([0; 32]);
        let info = stored.info;
        Arc::new(KeyEntry {
            trace_label: Arc::<str>::from(key_trace_label(&info.id)),
            id: Arc::<str>::from(info.id.as_str()),
            kind: info.kind,
            expires_at_ms: info.expires_at_ms,
            replaced_by: info.replaced_by.map(String::into_boxed_str),
            revoked: info.revoked,
            org: self.org_labels(&info.org_id),
            principal: info.principal_id.as_deref().map(|id| self.principal_slot(id)),
            principal_id: info.principal_id.map(String::into_boxed_str),
            scopes: info.scopes.map(|s| Arc::new(s.into_iter().collect())),
            hash,
            last_used_minute: AtomicI64::new(minute),
        })
    }

    fn principal_entry(&self, principal: Principal, roles: &[Role]) -> Arc<PrincipalEntry> {
        Arc::new(PrincipalEntry {
            label: Arc::<str>::from(format!(
                "{}:{} ({})",
                principal.kind.as_str(),
                principal.name,
                principal.id
            )),
            id_header: id_header(&principal.id),
            id: Arc::<str>::from(principal.id.as_str()),
            org: self.org_labels(&principal.org_id),
            principal,
            roles: roles.iter().map(|r| r.name.clone()).collect(),
            permissions: roles.iter().flat_map(|r| r.permissions.iter().cloned()).collect(),
        })
    }

    /// Loads everything from the store and starts the last-use writer.
    pub async fn load(store: &Store) -> Result<Arc<Directory>, StoreError> {
        let (touches, rx) = mpsc::channel(4096);
        let directory = Directory::empty(&store.pepper(), touches);
        // The feed's head is read before the tables: a change written meanwhile is then
        // applied again by the first catch-up, which is harmless (re-reads are idempotent).
        directory
            .applied
            .store(store.directory_change_head().await?, Ordering::Release);
        directory.load_everything(store).await?;
        tokio::spawn(write_touches(store.clone(), rx));
        Ok(Arc::new(directory))
    }

    fn empty(pepper: &[u8], touches: mpsc::Sender<(String, i64)>) -> Directory {
        Directory {
            hasher: keys::SecretHasher::new(pepper),
            keys: IdMap::default(),
            principals: IdMap::default(),
            orgs: IdMap::default(),
            org_labels: IdMap::default(),
            touches,
            applied: AtomicI64::new(0),
            catching_up: tokio::sync::Mutex::new(()),
        }
    }

    /// Reads every organization, principal and key into the maps (existing entries are
    /// replaced; none are removed).
    async fn load_everything(&self, store: &Store) -> Result<(), StoreError> {
        let directory = self;
        for org in store.orgs().await? {
            directory.orgs.pin().insert(org.id.clone(), Arc::new(org));
        }
        let mut roles_by_principal: std::collections::HashMap<String, Vec<Role>> = Default::default();
        for (holder, role) in store.all_assignments().await? {
            roles_by_principal.entry(holder).or_default().push(role);
        }
        for p in store.all_principals().await? {
            let roles = roles_by_principal.remove(&p.id).unwrap_or_default();
            let entry = directory.principal_entry(p, &roles);
            directory.principal_slot(&entry.principal.id).store(Some(entry));
        }
        for k in store.all_keys().await? {
            directory.keys.pin().insert(k.info.id.clone(), directory.key_entry(k));
        }
        Ok(())
    }

    /// Applies every change the store's feed holds after the last one applied (handlers
    /// call it, through `Services::catch_up`, after their own writes, so the next request
    /// sees them). True when signing keys changed too: the token service reloads them.
    pub async fn catch_up(&self, store: &Store) -> Result<bool, StoreError> {
        let _one_at_a_time = self.catching_up.lock().await;
        let mut signing_keys_changed = false;
        loop {
            let applied = self.applied.load(Ordering::Acquire);
            if applied > 0
                && store
                    .directory_change_tail()
                    .await?
                    .is_some_and(|tail| tail > applied + 1)
            {
                // Behind what the feed still holds (pruned while this process could not
                // read it): read everything again, and drop what no longer exists.
                let head = store.directory_change_head().await?;
                self.reload_everything(store).await?;
                self.applied.store(head, Ordering::Release);
                signing_keys_changed = true;
                continue;
            }
            let changes = store.directory_changes_after(applied, CHANGES_PER_READ).await?;
            let Some(last) = changes.last().map(|c| c.seq) else {
                return Ok(signing_keys_changed);
            };
            for change in &changes {
                match change.kind {
                    ChangeKind::Key => self.refresh_key(store, &change.id).await?,
                    ChangeKind::Principal => self.refresh_principal(store, &change.id).await?,
                    ChangeKind::Org => self.refresh_org(store, &change.id).await?,
                    ChangeKind::Role => {
                        for holder in store.role_holders(&change.id).await? {
                            self.refresh_principal(store, &holder).await?;
                        }
                    }
                    ChangeKind::SigningKey => signing_keys_changed = true,
                }
            }
            self.applied.store(last, Ordering::Release);
            if (changes.len() as i64) < CHANGES_PER_READ {
                return Ok(signing_keys_changed);
            }
        }
    }

    /// Everything again, and entries the store no longer has removed.
    async fn reload_everything(&self, store: &Store) -> Result<(), StoreError> {
        self.load_everything(store).await?;
        let keys: Vec<String> = self.keys.pin().keys().cloned().collect();
        for id in keys {
            self.refresh_key(store, &id).await?;
        }
        let principals: Vec<String> = self.principals.pin().keys().cloned().collect();
        for id in principals {
            self.refresh_principal(store, &id).await?;
        }
        let orgs: Vec<String> = self.orgs.pin().keys().cloned().collect();
        for id in orgs {
            self.refresh_org(store, &id).await?;
        }
        Ok(())
    }

    /// An empty directory with no store behind it (benchmarks, tests); last-use times are
    /// not recorded.
    pub fn in_memory(pepper: Arc<[u8]>) -> Directory {
        let (touches, _) = mpsc::channel(1);
        Directory::empty(&pepper, touches)
    }

    /// Checks a presented key: shape, id, secret (constant time), revocation, expiry.
    pub fn verify_key(&self, presented: &str, now_ms: i64) -> Result<Arc<KeyEntry>, KeyRefusal> {
        let parts = keys::parse(presented).ok_or(KeyRefusal::Malformed)?;
        let Some(entry) = self.keys.pin().get(parts.id).cloned() else {
            // Spend the same time as a real comparison so ids cannot be probed by timing.
            let _ = self.hasher.verify(parts.secret, &[0u8; 32]);
            return Err(KeyRefusal::Unknown);
        };
        if !self.hasher.verify(parts.secret, &entry.hash) {
            return Err(KeyRefusal::Unknown);
        }
        if entry.revoked {
            return Err(KeyRefusal::Revoked);
        }
        if entry.expires_at_ms.is_some_and(|exp| exp <= now_ms) {
            return Err(KeyRefusal::Expired);
        }
        Ok(entry)
    }

    /// Records that `entry` authenticated a request: its last-use time is written behind,
    /// at most once a minute.
    pub fn touch(&self, entry: &KeyEntry, now_ms: i64) {
        let minute = now_ms / 60_000;
        // Read first: a write on every request would bounce the entry's cache line between
        // the cores serving the same key; this writes once a minute.
        if entry.last_used_minute.load(Ordering::Relaxed) != minute
            && entry.last_used_minute.swap(minute, Ordering::Relaxed) != minute
        {
            let _ = self.touches.try_send((entry.id().to_owned(), now_ms));
        }
    }

    /// A key's entry by id, whatever its state (for naming the owner of a refused key).
    pub fn key_by_id(&self, id: &str) -> Option<Arc<KeyEntry>> {
        self.keys.pin().get(id).cloned()
    }

    pub fn principal(&self, id: &str) -> Option<Arc<PrincipalEntry>> {
        self.principals.pin().get(id).and_then(|slot| slot.load_full())
    }

    /// How people read a recorded caller (`kind:name (id)`, or `org-key (org)`), from the
    /// directory as it is now: decisions store ids only. A principal no longer in the
    /// directory is named by its id.
    pub fn caller_label(&self, caller: &pinpoint_core::CallerRecord) -> Arc<str> {
        match &caller.principal_id {
            Some(id) => match self.principal(id) {
                Some(entry) => entry.label.clone(),
                None => Arc::from(format!("{id} (no longer in the directory)")),
            },
            None => Arc::from(format!("org-key ({})", caller.org_id)),
        }
    }

    pub fn org(&self, id: &str) -> Option<Arc<Organization>> {
        self.orgs.pin().get(id).cloned()
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Re-reads one key.
    async fn refresh_key(&self, store: &Store, id: &str) -> Result<(), StoreError> {
        match store.stored_key(id).await? {
            Some(k) => {
                self.keys.pin().insert(id.to_owned(), self.key_entry(k));
            }
            None => {
                self.keys.pin().remove(id);
            }
        }
        Ok(())
    }

    /// Re-reads one principal and recomputes its permissions.
    async fn refresh_principal(&self, store: &Store, id: &str) -> Result<(), StoreError> {
        match store.principal(id).await? {
            Some(p) => {
                let roles = store.roles_of(id).await?;
                self.principal_slot(id).store(Some(self.principal_entry(p, &roles)));
            }
            None => {
                // Keys still holding the slot see it empty: their principal is gone.
                if let Some(slot) = self.principals.pin().remove(id) {
                    slot.store(None);
                }
            }
        }
        Ok(())
    }

    /// Re-reads one organization.
    async fn refresh_org(&self, store: &Store, id: &str) -> Result<(), StoreError> {
        match store.org(id).await? {
            Some(o) => {
                self.orgs.pin().insert(id.to_owned(), Arc::new(o));
            }
            None => {
                self.orgs.pin().remove(id);
            }
        }
        self.update_standing(id);
        Ok(())
    }

    /// Adds a key without a store round trip (used by bulk loaders and benchmarks).
    pub fn insert_key(&self, info: ApiKey, secret_hash: Vec<u8>) {
        self.keys
            .pin()
            .insert(info.id.clone(), self.key_entry(StoredKey { info, secret_hash }));
    }
}

/// The live identity source of the engine: this process's directory for keys and
/// principals, its token service for tokens.
pub struct LiveIdentities {
    pub directory: Arc<Directory>,
    pub tokens: Arc<TokenService>,
}

impl Identities for LiveIdentities {
    fn verify_key(&self, presented: &str, now_ms: i64) -> Result<Arc<KeyEntry>, KeyRefusal> {
        self.directory.verify_key(presented, now_ms)
    }

    fn key_by_id(&self, id: &str) -> Option<Arc<KeyEntry>> {
        self.directory.key_by_id(id)
    }

    fn principal(&self, id: &str) -> Option<Arc<PrincipalEntry>> {
        self.directory.principal(id)
    }

    fn verify_token(&self, jwt: &JwtConfig, token: &str) -> Result<Claims, TokenRefusal> {
        self.tokens.verify(jwt, token)
    }

    fn token_kid_known(&self, kid: &str) -> bool {
        self.tokens.is_our_kid(kid)
    }

    fn key_used(&self, key: &KeyEntry, now_ms: i64) {
        self.directory.touch(key, now_ms);
    }
}

async fn write_touches(store: Store, mut rx: mpsc::Receiver<(String, i64)>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 512).await > 0 {
        if let Err(e) = store.touch_keys(&batch).await {
            tracing::warn!(error = %e, "could not record key last-use times");
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinpoint_core::identity::KeyKind;

    const ID: &str = "0123456789abcdef";
    const SECRET: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ";
    const ORG: &str = "00000000-0000-0000-0000-000000000001";

    fn key(id: &str, expires_at_ms: Option<i64>, revoked: bool) -> ApiKey {
        ApiKey {
            id: id.into(),
            name: "k".into(),
            kind: KeyKind::Application,
            org_id: ORG.into(),
            principal_id: Some("p1".into()),
            scopes: Some(vec!["orders:read".into()]),
            expires_at_ms,
            revoked,
            created_at_ms: 0,
            last_used_at_ms: None,
            replaced_by: None,
        }
    }

    #[test]
    fn an_entry_keeps_what_requests_need_of_the_stored_key() {
        let pepper: Arc<[u8]> = Arc::from(&b"pepper"[..]);
        let directory = Directory::in_memory(pepper.clone());
        let hash = keys::hash_secret(&pepper, SECRET).to_vec();
        directory.insert_key(key(ID, None, false), hash.clone());
        let entry = match directory.verify_key(&keys::format(ID, SECRET), 1_000) {
            Ok(entry) => entry,
            Err(refusal) => panic!("refused: {refusal:?}"),
        };
        assert_eq!(entry.id(), ID);
        assert_eq!(&*entry.trace_label, "key 0123456789abcdef");
        assert_eq!(entry.org_id(), ORG);
        assert_eq!(entry.principal_id.as_deref(), Some("p1"));
        assert!(!entry.is_org_key());
        assert!(entry
            .scopes
            .as_ref()
            .is_some_and(|s| s.contains("orders:read") && s.len() == 1));

        let other = "fedcba9876543210";
        let verify = |id: &str, secret: &str| directory.verify_key(&keys::format(id, secret), 1_000).err();
        assert_eq!(verify(ID, &SECRET.replace('a', "b")), Some(KeyRefusal::Unknown));
        directory.insert_key(key(other, Some(1_000), false), hash.clone());
        assert_eq!(verify(other, SECRET), Some(KeyRefusal::Expired));
        directory.insert_key(key(other, None, true), hash);
        assert_eq!(verify(other, SECRET), Some(KeyRefusal::Revoked));
        assert_eq!(
            directory.verify_key("pp_nonsense", 1_000).err(),
            Some(KeyRefusal::Malformed)
        );
    }
}
