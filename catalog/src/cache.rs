//! A per-node cache of authorization state (operator and subscriber tokens, connections by
//! credential, active agreements, datasets) that is never stale: every lookup first reads the catalog's generation, which
//! changes in the same transaction as any change to that state; a new generation empties
//! the cache. One tiny query per request replaces several larger ones, on every node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::{
    AgreementScope, Catalog, CatalogError, ConId, Connection, ConnectionId, Dataset, DatasetName, MemberId, Nid, SecretHash, SubscriberId,
};

type Result<T, E = CatalogError> = std::result::Result<T, E>;

#[derive(Debug, Default)]
struct State {
    generation: i64,
    /// Connections by nid, with the hash of the key that authenticated them.
    connections: HashMap<Nid, (SecretHash, Arc<Connection>)>,
    agreements: HashMap<ConnectionId, Arc<HashMap<MemberId, i64>>>,
    /// Member-connection credentials checked, with the hash of the key presented.
    scopes: HashMap<(SubscriberId, ConId), (SecretHash, Arc<AgreementScope>)>,
    /// Subscriber tokens by hash, with their expiry (epoch ms).
    tokens: HashMap<String, (SubscriberId, i64)>,
    /// The operator token's hash, once read.
    admin_hash: Option<Option<String>>,
    /// A subscriber's connections (serving terms change only with the generation).
    subscriber_connections: HashMap<SubscriberId, Arc<Vec<Arc<Connection>>>>,
    datasets: HashMap<DatasetName, Arc<Dataset>>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct AuthCache {
    state: Mutex<State>,
}

impl AuthCache {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the cache to the catalog's current generation. Call once when a request
    /// starts; the lookups after it answer as of that moment or later.
    pub async fn refresh(&self, catalog: &Catalog) -> Result<()> {
        let generation = catalog.generation().await?;
        let mut state = self.state();
        if state.generation != generation {
            *state = State { generation, ..State::default() };
        }
        Ok(())
    }

    /// Whether `token` is the operator's.
    pub async fn is_admin(&self, catalog: &Catalog, token: &str) -> Result<bool> {
        let cached = self.state().admin_hash.clone();
        let hash = match cached {
            Some(h) => h,
            None => {
                let h = catalog.admin_token_hash().await?;
                self.state().admin_hash = Some(h.clone());
                h
            }
        };
        Ok(hash.is_some_and(|h| SecretHash::of(token).matches(&h)))
    }

    /// The subscriber behind a bearer token, until the token expires.
    pub async fn subscriber_token(&self, catalog: &Catalog, token: &str) -> Result<SubscriberId> {
        let hash = SecretHash::of(token);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        if let Some((subscriber, expires)) = self.state().tokens.get(&hash.0)
            && *expires > now
        {
            return Ok(*subscriber);
        }
        let (subscriber, expires) = catalog.subscriber_token(token).await?;
        self.state().tokens.insert(hash.0, (subscriber, expires));
        Ok(subscriber)
    }

    /// A member-connection credential (`con_id` + key) of `subscriber`'s connection: the
    /// agreement in force, checked in constant time. Approving or revoking an agreement (and
    /// so a new key) changes the generation.
    pub async fn agreement_scope(&self, catalog: &Catalog, subscriber: SubscriberId, con_id: ConId, key: &str) -> Result<Arc<AgreementScope>> {
        let presented = SecretHash::of(key);
        if let Some((hash, scope)) = self.state().scopes.get(&(subscriber, con_id))
            && presented.matches(&hash.0)
        {
            return Ok(scope.clone());
        }
        let scope = Arc::new(catalog.agreement_scope(subscriber, con_id, key).await?);
        self.state().scopes.insert((subscriber, con_id), (presented, scope.clone()));
        Ok(scope)
    }

    /// A connection credential (`nid` + connection key), checked in constant time.
    pub async fn connection(&self, catalog: &Catalog, nid: Nid, key: &str) -> Result<Arc<Connection>> {
        let presented = SecretHash::of(key);
        if let Some((hash, c)) = self.state().connections.get(&nid)
            && presented.matches(&hash.0) {
                return Ok(c.clone());
            }
        let c = Arc::new(catalog.authenticate_connection(nid, key).await?);
        self.state().connections.insert(nid, (presented, c.clone()));
        Ok(c)
    }

    /// Members with an active agreement with connection `id`, and the version each approved.
    pub async fn agreements(&self, catalog: &Catalog, id: ConnectionId) -> Result<Arc<HashMap<MemberId, i64>>> {
        if let Some(a) = self.state().agreements.get(&id) {
            return Ok(a.clone());
        }
        let a: Arc<HashMap<MemberId, i64>> = Arc::new(catalog.active_agreements(id).await?.into_iter().collect());
        self.state().agreements.insert(id, a.clone());
        Ok(a)
    }

    /// A subscriber's connections. A new connection cannot read or write before its first
    /// approval, which changes the generation.
    pub async fn subscriber_connections(&self, catalog: &Catalog, subscriber: SubscriberId) -> Result<Arc<Vec<Arc<Connection>>>> {
        if let Some(c) = self.state().subscriber_connections.get(&subscriber) {
            return Ok(c.clone());
        }
        let c: Arc<Vec<Arc<Connection>>> = Arc::new(catalog.connections(Some(subscriber)).await?.into_iter().map(Arc::new).collect());
        self.state().subscriber_connections.insert(subscriber, c.clone());
        Ok(c)
    }

    pub async fn dataset(&self, catalog: &Catalog, name: &DatasetName) -> Result<Arc<Dataset>> {
        if let Some(d) = self.state().datasets.get(name) {
            return Ok(d.clone());
        }
        let d = Arc::new(catalog.dataset(name).await?);
        self.state().datasets.insert(name.clone(), d.clone());
        Ok(d)
    }
}
