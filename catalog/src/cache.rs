//! A per-node cache of authorization state (operator and subscriber tokens, connections by
//! credential, active agreements, datasets) that is never stale: every lookup first reads the catalog's generation, which
//! changes in the same transaction as any change to that state; a new generation empties
//! the cache. One tiny query per request replaces several larger ones, on every node.
//!
//! A connection's agreements are the exception to emptying: a million members' agreements
//! take seconds to read, and members approve all day. A new generation keeps the maps it
//! had as bases; the next lookup reads only the agreements changed since a base's generation
//! (`Catalog::agreement_changes`) and applies them.
//!
//! A fill is tagged with the generation the cache was at when its database read began, and
//! is kept only if the cache is still at that generation when the read returns. Otherwise a
//! read that began before a revocation (and saw the agreement active) could land after a
//! request that started later had already emptied the cache, and would then count as
//! current for the new generation. Generations only move forward: a request that read an
//! older generation never winds the cache back.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::{
    AgreementScope, Bearer, Catalog, CatalogError, ConId, Connection, ConnectionId, Dataset, DatasetName,
    MemberVersions, Nid, SecretHash, SubscriberId,
};

type Result<T, E = CatalogError> = std::result::Result<T, E>;

#[derive(Debug, Default)]
struct State {
    generation: i64,
    /// Connections by nid, with the hash of the key that authenticated them.
    connections: HashMap<Nid, (SecretHash, Arc<Connection>)>,
    /// Filled once per generation: at a million members the read takes seconds, and every
    /// request that missed meanwhile waits for it rather than reading again.
    agreements: HashMap<ConnectionId, Arc<tokio::sync::OnceCell<Arc<MemberVersions>>>>,
    /// Agreements read at an earlier generation (the one given), kept across generations:
    /// what the next lookup applies the changes since to.
    bases: HashMap<ConnectionId, (i64, Arc<MemberVersions>)>,
    /// Member-connection credentials checked, with the hash of the key presented.
    scopes: HashMap<(SubscriberId, ConId), (SecretHash, Arc<AgreementScope>)>,
    /// Subscriber tokens by hash, with their expiry (epoch ms).
    tokens: HashMap<String, (SubscriberId, i64)>,
    /// A subscriber's connections (serving terms change only with the generation).
    subscriber_connections: HashMap<SubscriberId, Arc<Vec<Arc<Connection>>>>,
    datasets: HashMap<DatasetName, Arc<Dataset>>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct AuthCache {
    state: Mutex<State>,
    /// Whole reads of a connection's agreements (tests: the others applied changes).
    #[cfg(test)]
    whole_reads: std::sync::atomic::AtomicUsize,
    /// Runs between a fill's database read and its store (tests only: a deterministic
    /// interleaving of a fill with a revocation).
    #[cfg(test)]
    fill_hook: Mutex<Option<FillHook>>,
}

#[cfg(test)]
struct FillHook(Box<dyn FnOnce() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send>);

#[cfg(test)]
impl std::fmt::Debug for FillHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FillHook")
    }
}

impl AuthCache {
    fn state(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Brings the cache to the catalog's current generation. Call once when a request
    /// starts (or call [`AuthCache::caller`]); the lookups after it answer as of that
    /// moment or later.
    pub async fn refresh(&self, catalog: &Catalog) -> Result<()> {
        drop(self.advance(catalog.generation().await?));
        Ok(())
    }

    /// Moves the cache to `generation` if that is newer; the state, at that generation or
    /// a newer one.
    fn advance(&self, generation: i64) -> parking_lot::MutexGuard<'_, State> {
        let mut state = self.state();
        if generation > state.generation {
            let mut bases = std::mem::take(&mut state.bases);
            for (id, cell) in &state.agreements {
                if let Some(agreements) = cell.get() {
                    bases.insert(*id, (state.generation, agreements.clone()));
                }
            }
            *state = State { generation, bases, ..State::default() };
        }
        state
    }

    /// Reads `read` from the catalog on a miss and keeps the answer with `keep` only if the
    /// cache's generation did not move while it was read (see the module docs).
    async fn fill<T>(&self, read: impl Future<Output = Result<T>>, keep: impl FnOnce(&mut State, &T)) -> Result<T> {
        let generation = self.state().generation;
        let value = read.await?;
        self.after_read().await;
        let mut state = self.state();
        if state.generation == generation {
            keep(&mut state, &value);
        }
        Ok(value)
    }

    /// Between a fill's read and its store (see `FillHook`).
    async fn after_read(&self) {
        #[cfg(test)]
        {
            let hook = self.fill_hook.lock().take();
            if let Some(FillHook(hook)) = hook {
                hook().await;
            }
        }
    }

    /// Refreshes the cache as [`AuthCache::refresh`] does and says whose bearer token this
    /// is. A subscriber's token is kept until it expires (or the generation moves); any
    /// other token is looked up in the same read as the generation (`Catalog::bearer`), so
    /// a member's call costs one read. Members' secrets are not kept: a member calls
    /// seldom, and a million of them would crowd the cache.
    pub async fn caller(&self, catalog: &Catalog, token: &str) -> Result<Bearer> {
        let hash = SecretHash::of(token);
        let now = catalog.clock().now_ms();
        if self.cached_token(&hash, now).is_some() {
            self.refresh(catalog).await?;
            if let Some((id, expires_at)) = self.cached_token(&hash, now) {
                return Ok(Bearer::Subscriber { id, expires_at });
            }
        }
        let (generation, bearer) = catalog.bearer(token).await?;
        let mut state = self.advance(generation);
        // Kept only as of the generation it was read at (see the module docs).
        if let Some(Bearer::Subscriber { id, expires_at }) = bearer
            && state.generation == generation
        {
            state.tokens.insert(hash.0, (id, expires_at));
        }
        bearer.ok_or(CatalogError::Unauthenticated)
    }

    fn cached_token(&self, hash: &SecretHash, now: i64) -> Option<(SubscriberId, i64)> {
        self.state().tokens.get(&hash.0).copied().filter(|(_, expires)| *expires > now)
    }

    /// The subscriber behind a bearer token, until the token expires.
    pub async fn subscriber_token(&self, catalog: &Catalog, token: &str) -> Result<SubscriberId> {
        let hash = SecretHash::of(token);
        if let Some((subscriber, _)) = self.cached_token(&hash, catalog.clock().now_ms()) {
            return Ok(subscriber);
        }
        let (subscriber, _) = self
            .fill(catalog.subscriber_token(token), |s, found| {
                s.tokens.insert(hash.0, *found);
            })
            .await?;
        Ok(subscriber)
    }

    /// A member-connection credential (`con_id` + key) of `subscriber`'s connection: the
    /// agreement in force, checked in constant time. Approving or revoking an agreement (and
    /// so a new key) changes the generation.
    pub async fn agreement_scope(
        &self,
        catalog: &Catalog,
        subscriber: SubscriberId,
        con_id: ConId,
        key: &str,
    ) -> Result<Arc<AgreementScope>> {
        let presented = SecretHash::of(key);
        if let Some((hash, scope)) = self.state().scopes.get(&(subscriber, con_id))
            && presented.matches(&hash.0)
        {
            return Ok(scope.clone());
        }
        let read = async { Ok(Arc::new(catalog.agreement_scope(subscriber, con_id, key).await?)) };
        self.fill(read, |s, scope| {
            s.scopes.insert((subscriber, con_id), (presented, scope.clone()));
        })
        .await
    }

    /// A connection credential (`nid` + connection key), checked in constant time.
    pub async fn connection(&self, catalog: &Catalog, nid: Nid, key: &str) -> Result<Arc<Connection>> {
        let presented = SecretHash::of(key);
        if let Some((hash, c)) = self.state().connections.get(&nid)
            && presented.matches(&hash.0)
        {
            return Ok(c.clone());
        }
        let read = async { Ok(Arc::new(catalog.authenticate_connection(nid, key).await?)) };
        self.fill(read, |s, c| {
            s.connections.insert(nid, (presented, c.clone()));
        })
        .await
    }

    /// Members with an active agreement with connection `id`, and the version each approved.
    pub async fn agreements(&self, catalog: &Catalog, id: ConnectionId) -> Result<Arc<MemberVersions>> {
        // A cell of the generation the lookup saw: a newer generation starts with new cells,
        // so a read that began before a revocation answers only the requests that began
        // before it too.
        let (cell, base) = {
            let mut state = self.state();
            (state.agreements.entry(id).or_default().clone(), state.bases.get(&id).cloned())
        };
        let agreements = cell
            .get_or_try_init(|| async {
                let a = match base {
                    // Exact for every change up to its generation; the changes read now
                    // reach at least the generation this cell belongs to.
                    Some((since, base)) => base.with_changes(&catalog.agreement_changes(id, since).await?),
                    None => {
                        #[cfg(test)]
                        self.whole_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        catalog.active_agreements(id).await?.into_iter().collect()
                    }
                };
                let a = Arc::new(a);
                self.after_read().await;
                Ok::<_, CatalogError>(a)
            })
            .await?;
        Ok(agreements.clone())
    }

    /// A subscriber's connections. A new connection cannot read or write before its first
    /// approval, which changes the generation.
    pub async fn subscriber_connections(
        &self,
        catalog: &Catalog,
        subscriber: SubscriberId,
    ) -> Result<Arc<Vec<Arc<Connection>>>> {
        if let Some(c) = self.state().subscriber_connections.get(&subscriber) {
            return Ok(c.clone());
        }
        let read = async {
            Ok(Arc::new(catalog.connections(Some(subscriber)).await?.into_iter().map(Arc::new).collect::<Vec<_>>()))
        };
        self.fill(read, |s, c| {
            s.subscriber_connections.insert(subscriber, c.clone());
        })
        .await
    }

    pub async fn dataset(&self, catalog: &Catalog, name: &DatasetName) -> Result<Arc<Dataset>> {
        if let Some(d) = self.state().datasets.get(name) {
            return Ok(d.clone());
        }
        let read = async { Ok(Arc::new(catalog.dataset(name).await?)) };
        self.fill(read, |s, d| {
            s.datasets.insert(name.clone(), d.clone());
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemberId;
    use crate::conformance::terms;

    /// A member with an approved agreement on a subscriber's approved connection.
    struct Fixture {
        catalog: Catalog,
        member: MemberId,
        subscriber: SubscriberId,
        connection: ConnectionId,
        con_id: ConId,
        key: String,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::connect(&Catalog::sqlite_url(&dir.path().join("catalog.db"))).await.unwrap();
        let (member, _) = catalog.create_member("race").await.unwrap();
        let (subscriber, _) = catalog.create_subscriber("Racer").await.unwrap();
        let c = catalog.create_connection(subscriber.id, terms("Race", &["ds_energy_consumption"])).await.unwrap();
        catalog.submit_connection(c.id).await.unwrap();
        catalog.approve_connection(c.id, None).await.unwrap();
        let (agreement, key) = catalog.approve_agreement(member.uid, c.id).await.unwrap();
        Fixture {
            catalog,
            member: member.uid,
            subscriber: subscriber.id,
            connection: c.id,
            con_id: agreement.con_id,
            key: key.expose().to_owned(),
            _dir: dir,
        }
    }

    /// The fill of the next miss pauses after its database read: `reached` fires, then it
    /// waits for `go`.
    fn pause_next_fill(cache: &AuthCache) -> (tokio::sync::oneshot::Receiver<()>, tokio::sync::oneshot::Sender<()>) {
        let (reached_tx, reached) = tokio::sync::oneshot::channel();
        let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
        let hook = FillHook(Box::new(move || {
            Box::pin(async move {
                let _ = reached_tx.send(());
                let _ = go_rx.await;
            })
        }));
        *cache.fill_hook.lock() = Some(hook);
        (reached, go)
    }

    /// R1 misses and reads the agreement as active; the member's revocation commits; R2
    /// refreshes (emptying the cache) and is refused; only then does R1 store what it read.
    /// A request R3 that starts after the revocation must still be refused, on the
    /// Mydex door's credential check and on the connection-wide agreements alike.
    #[tokio::test]
    async fn a_fill_that_read_before_a_revocation_is_dropped() {
        let f = fixture().await;
        let cache = Arc::new(AuthCache::default());
        cache.refresh(&f.catalog).await.unwrap();
        let (reached, go) = pause_next_fill(&cache);
        let r1 = {
            let (cache, catalog, key) = (cache.clone(), f.catalog.clone(), f.key.clone());
            let (subscriber, con_id) = (f.subscriber, f.con_id);
            tokio::spawn(async move { cache.agreement_scope(&catalog, subscriber, con_id, &key).await })
        };
        reached.await.unwrap();
        f.catalog.revoke_agreement(f.member, f.connection).await.unwrap();
        cache.refresh(&f.catalog).await.unwrap();
        assert!(cache.agreement_scope(&f.catalog, f.subscriber, f.con_id, &f.key).await.is_err(), "R2 is refused");
        go.send(()).unwrap();
        assert!(r1.await.unwrap().is_ok(), "R1 began before the revocation");
        cache.refresh(&f.catalog).await.unwrap();
        assert!(
            cache.agreement_scope(&f.catalog, f.subscriber, f.con_id, &f.key).await.is_err(),
            "R3 must not be served R1's stale scope"
        );

        // The same interleaving on the connection-wide list of members (SQL door, ingest).
        let f = fixture().await;
        let cache = Arc::new(AuthCache::default());
        cache.refresh(&f.catalog).await.unwrap();
        let (reached, go) = pause_next_fill(&cache);
        let r1 = {
            let (cache, catalog, connection) = (cache.clone(), f.catalog.clone(), f.connection);
            tokio::spawn(async move { cache.agreements(&catalog, connection).await })
        };
        reached.await.unwrap();
        f.catalog.revoke_agreement(f.member, f.connection).await.unwrap();
        cache.refresh(&f.catalog).await.unwrap();
        assert!(
            !cache.agreements(&f.catalog, f.connection).await.unwrap().contains(f.member),
            "R2 sees the revocation"
        );
        go.send(()).unwrap();
        assert!(r1.await.unwrap().unwrap().contains(f.member), "R1 read before it");
        cache.refresh(&f.catalog).await.unwrap();
        assert!(
            !cache.agreements(&f.catalog, f.connection).await.unwrap().contains(f.member),
            "R3 sees the revocation"
        );
    }

    /// After the first read, approvals and revocations reach a connection's agreements as
    /// the rows they changed, across generations in which nobody looked them up too.
    #[tokio::test]
    async fn agreements_follow_changes_without_reading_them_all_again() {
        let f = fixture().await;
        let cache = AuthCache::default();
        let members = |a: &MemberVersions| a.members().collect::<Vec<_>>();
        cache.refresh(&f.catalog).await.unwrap();
        assert_eq!(members(&cache.agreements(&f.catalog, f.connection).await.unwrap()), [f.member]);
        let (b, _) = f.catalog.create_member("b").await.unwrap();
        let (c, _) = f.catalog.create_member("c").await.unwrap();
        f.catalog.approve_agreement(b.uid, f.connection).await.unwrap();
        f.catalog.revoke_agreement(f.member, f.connection).await.unwrap();
        cache.refresh(&f.catalog).await.unwrap();
        assert_eq!(members(&cache.agreements(&f.catalog, f.connection).await.unwrap()), [b.uid]);
        // Two generations pass unseen by this connection's lookups.
        f.catalog.approve_agreement(c.uid, f.connection).await.unwrap();
        cache.refresh(&f.catalog).await.unwrap();
        f.catalog.revoke_agreement(b.uid, f.connection).await.unwrap();
        f.catalog.approve_agreement(f.member, f.connection).await.unwrap();
        cache.refresh(&f.catalog).await.unwrap();
        let agreements = cache.agreements(&f.catalog, f.connection).await.unwrap();
        let whole: MemberVersions = f.catalog.active_agreements(f.connection).await.unwrap().into_iter().collect();
        assert_eq!(*agreements, whole);
        assert_eq!(members(&agreements), [f.member, c.uid]);
        assert_eq!(cache.whole_reads.load(std::sync::atomic::Ordering::Relaxed), 1, "read whole once, then changes");
    }

    /// The operator, a subscriber and a member are each told apart by one read; only the
    /// subscriber's token is kept, and only until the generation moves.
    #[tokio::test]
    async fn callers_are_told_apart_and_only_subscriber_tokens_are_kept() {
        let f = fixture().await;
        let admin = f.catalog.ensure_admin_token(None).await.unwrap().expect("a fresh catalog");
        let (subscriber, creds) = f.catalog.create_subscriber("Caller").await.unwrap();
        let hour = std::time::Duration::from_secs(3600);
        let token = f.catalog.issue_access_token(&creds.client_id, creds.client_secret.expose(), hour).await.unwrap();
        let (member, secret) = f.catalog.create_member("caller").await.unwrap();
        let cache = AuthCache::default();
        let kept = |cache: &AuthCache| cache.state().tokens.len();

        assert_eq!(cache.caller(&f.catalog, admin.expose()).await.unwrap(), Bearer::Operator);
        assert_eq!(cache.caller(&f.catalog, secret.expose()).await.unwrap(), Bearer::Member(member.uid));
        assert_eq!(kept(&cache), 0, "neither the operator's token nor a member's secret is kept");
        let Bearer::Subscriber { id, .. } = cache.caller(&f.catalog, token.expose()).await.unwrap() else {
            panic!("a subscriber's token");
        };
        assert_eq!(id, subscriber.id);
        assert_eq!(kept(&cache), 1);
        for wrong in ["wrong", creds.client_secret.expose(), f.key.as_str()] {
            assert!(cache.caller(&f.catalog, wrong).await.is_err(), "{wrong} is nobody's bearer token");
        }

        let before = cache.state().generation;
        f.catalog.revoke_agreement(f.member, f.connection).await.unwrap();
        assert_eq!(cache.caller(&f.catalog, secret.expose()).await.unwrap(), Bearer::Member(member.uid));
        assert!(cache.state().generation > before, "a member's call refreshes the cache too");
        assert_eq!(kept(&cache), 0, "the new generation starts empty");
        assert!(matches!(cache.caller(&f.catalog, token.expose()).await.unwrap(), Bearer::Subscriber { .. }));
        assert_eq!(kept(&cache), 1);
    }

    /// A request that read an older generation does not wind the cache back to it.
    #[tokio::test]
    async fn the_cache_generation_only_moves_forward() {
        let f = fixture().await;
        let cache = AuthCache::default();
        cache.refresh(&f.catalog).await.unwrap();
        let before = cache.state().generation;
        f.catalog.revoke_agreement(f.member, f.connection).await.unwrap();
        cache.refresh(&f.catalog).await.unwrap();
        assert!(cache.state().generation > before);
        {
            let mut state = cache.state();
            let newer = state.generation;
            state.generation = newer + 5;
        }
        cache.refresh(&f.catalog).await.unwrap();
        assert!(cache.state().generation > before + 1, "an older generation read later is ignored");
    }
}
