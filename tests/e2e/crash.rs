//! Crash durability: the real binary under sustained ingest, killed with SIGKILL at random
//! moments (while writing, flushing, compacting and moving keys to the catalog), restarted
//! each time. Every acknowledged row must be stored exactly once, nothing never sent may
//! appear, every file the manifest names must be readable, and a restart must be ready
//! within seconds. `TROVE_CRASH_KILLS` sets the kills per object store (default 50;
//! `scripts/crash.sh --long` runs 500).

use std::time::Duration;

use test_helpers::object_stores;

use crate::durability::Run;

#[tokio::test]
async fn acknowledged_rows_survive_sigkill_exactly_once() {
    let kills: u64 = std::env::var("TROVE_CRASH_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(50);
    // Seeded: a failing run replays the same kill times.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0x9e3779b97f4a7c15);
    let mut rand = move |n: u64| rand::Rng::random_range(&mut rng, 0..n);
    for objects in object_stores() {
        let mut run = Run::new(objects);
        for _ in 0..kills {
            let server = run.up(&[]).await;
            let writers = run.writers(&server, 3, 50);
            tokio::time::sleep(Duration::from_millis(100 + rand(900))).await;
            server.kill();
            writers.stop(&mut run).await;
        }
        run.verify(&format!("crash, {kills} kills")).await;
    }
}
