//! The chaos run: several client streams write continuously
//! through a TCP proxy that drops their connections at random, while
//! indexing workers are killed, group commits are delayed and overload
//! bursts fill the queue. Afterwards: zero acked observations lost, none
//! stored twice, index integrity holds.
//!
//! `ENGRAM_CHAOS_SECS` sets the length (default 120; 600 for the long run),
//! `ENGRAM_TEST_SEED` replays a run's schedule of faults (the seed is printed).

mod e2e_support;
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e_support::*;
use engram_client::proto::stream_status::State;
use engram_client::{ObserveSender, RejectReason, SessionEvent, SessionState};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const DEFAULT_CHAOS_SECS: u64 = 120;
const WRITERS: u64 = 3;
/// Per writer; with three writers well under what two workers index, so
/// the queue fills only during the bursts.
const RATE: f64 = 100.0;
/// Small vectors keep the final check of every acked observation short.
const CHAOS_DIM: usize = 64;
/// Small enough that a burst reaches SLOW_DOWN (80%) and admission control
/// (90%) within seconds at the writers' rate.
const QUEUE_CAPACITY: &str = "1000";
/// Indexing delay during an overload burst: two workers drain ~40/s.
const BURST_INDEX_DELAY_MS: u64 = 50;

/// A TCP proxy on 127.0.0.1 in front of the server's gRPC port whose
/// connections can be cut, all at once or one of them.
struct Proxy {
    addr: SocketAddr,
    cut: broadcast::Sender<u64>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    cuts: Arc<AtomicU64>,
}

/// A cut aimed at every connection.
const ALL: u64 = u64::MAX;

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = broadcast::channel::<u64>(16);
        let (stop, mut stopped) = watch::channel(false);
        let cuts = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (cut, cuts) = (cut.clone(), cuts.clone());
            async move {
                let mut next_id = 0u64;
                loop {
                    let (mut inbound, _) = tokio::select! {
                        accepted = listener.accept() => accepted.expect("proxy accept"),
                        _ = stopped.wait_for(|s| *s) => return,
                    };
                    let (id, mut cut_rx, mut stop_rx) = (next_id, cut.subscribe(), stopped.clone());
                    next_id += 1;
                    let cuts = cuts.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        let cut_me = async {
                            loop {
                                match cut_rx.recv().await {
                                    Ok(which) if which == ALL || which % 4 == id % 4 => return,
                                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                                    Err(broadcast::error::RecvError::Closed) => {
                                        std::future::pending::<()>().await
                                    }
                                }
                            }
                        };
                        tokio::select! {
                            _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut_me => { cuts.fetch_add(1, Ordering::Relaxed); }
                            _ = stop_rx.wait_for(|s| *s) => {}
                        }
                    });
                }
            }
        });
        Proxy {
            addr,
            cut,
            stop,
            task,
            cuts,
        }
    }

    /// Drops the connections `which` aims at (`ALL`, or those whose id is
    /// `which` modulo 4).
    fn cut(&self, which: u64) {
        let _ = self.cut.send(which);
    }

    async fn stop(self) -> u64 {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
        self.cuts.load(Ordering::Relaxed)
    }
}

/// What one writer saw.
#[derive(Debug)]
struct WriterReport {
    space: String,
    sent: u64,
    log: AckLog,
    state: SessionState,
    slow_downs: u64,
    retries: u64,
}

/// One writer's open session.
struct Writer {
    k: u64,
    space: String,
    sender: ObserveSender,
    reader: JoinHandle<AckLog>,
    watcher: JoinHandle<(u64, u64)>,
}

/// Opens writer `k`'s session through the proxy (its space exists).
async fn open_writer(k: u64, proxy: SocketAddr) -> Writer {
    let client = connect(proxy).await;
    let space = format!("chaos-{k}");
    let (sender, acks) = client.observe_stream(&space).await.unwrap();
    let reader = read_acks(acks, Acked::default());
    let mut events = sender.events();
    let watcher = tokio::spawn(async move {
        let (mut slow_downs, mut retries) = (0, 0);
        while let Some(ev) = events.next().await {
            match ev {
                SessionEvent::Status(s) if s.state == State::Backpressure as i32 => slow_downs += 1,
                SessionEvent::Retrying { .. } => retries += 1,
                _ => {}
            }
        }
        (slow_downs, retries)
    });
    Writer {
        k,
        space,
        sender,
        reader,
        watcher,
    }
}

/// Streams at `RATE` until `until`, then closes with drain.
async fn write(w: Writer, until: Instant) -> WriterReport {
    let k = w.k;
    let make = |i: u64| {
        episode(
            &format!("c{k}-{i}"),
            format!("chaos writer {k} observation {i}"),
            vector(100 + k, i, CHAOS_DIM),
        )
    };
    let sent = send_paced(&w.sender, u64::MAX, RATE, make, || Instant::now() >= until).await;
    let state = w.sender.state();
    let space = w.space;
    let closed = tokio::time::timeout(Duration::from_secs(120), w.sender.close(true))
        .await
        .unwrap_or_else(|_| panic!("{space}: closing with drain took over 2 minutes"));
    let log = w.reader.await.unwrap();
    let (slow_downs, retries) = w.watcher.await.unwrap();
    closed.unwrap_or_else(|e| panic!("{space}: close failed: {e}; {:?}", log.error));
    WriterReport {
        space,
        sent,
        log,
        state,
        slow_downs,
        retries,
    }
}

/// What the fault schedule did.
#[derive(Debug, Default)]
struct Chaos {
    kills: u64,
    accept_delays: u64,
    cuts: u64,
    bursts: u64,
}

/// Injects faults at random times until `until`.
async fn inject(
    server: &support::ServerProcess,
    proxy: &Proxy,
    rng: &mut StdRng,
    until: Instant,
) -> Chaos {
    let mut chaos = Chaos::default();
    let mut burst_end: Option<Instant> = None;
    // Every kind of fault early, in random order; then at random.
    let mut first = vec![0, 1, 2, 3];
    for i in (1..first.len()).rev() {
        first.swap(i, rng.gen_range(0..=i));
    }
    let mut next = Instant::now() + Duration::from_millis(rng.gen_range(500..1500));
    loop {
        let wake = burst_end.map_or(next, |b| b.min(next)).min(until);
        tokio::time::sleep_until(wake).await;
        let now = Instant::now();
        // A burst ends at its time, and at the latest with the chaos.
        if burst_end.is_some_and(|b| b <= now || now >= until) {
            burst_end = None;
            faults(server, json!({"index_delay_ms": 0})).await;
        }
        if now >= until {
            return chaos;
        }
        if now < next {
            continue;
        }
        next = now + Duration::from_millis(rng.gen_range(1000..3000));
        match first.pop().unwrap_or_else(|| rng.gen_range(0..4)) {
            0 => {
                let kill = if rng.gen_bool(0.5) {
                    json!({"kill_worker": rng.gen_range(0..2)})
                } else {
                    json!({"kill_any": 1})
                };
                faults(server, kill).await;
                chaos.kills += 1;
            }
            1 => {
                faults(server, json!({"accept_delay_ms": rng.gen_range(0..=50)})).await;
                chaos.accept_delays += 1;
            }
            2 => {
                proxy.cut(if rng.gen_bool(0.5) { ALL } else { rng.gen() });
                chaos.cuts += 1;
            }
            _ if burst_end.is_none() => {
                faults(server, json!({"index_delay_ms": BURST_INDEX_DELAY_MS})).await;
                burst_end = Some(now + Duration::from_millis(rng.gen_range(4000..8000)));
                chaos.bursts += 1;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_random_faults_zero_loss() {
    let secs = std::env::var("ENGRAM_CHAOS_SECS")
        .ok()
        .map(|s| {
            s.parse::<u64>()
                .expect("ENGRAM_CHAOS_SECS: a number of seconds")
        })
        .unwrap_or(DEFAULT_CHAOS_SECS);
    let seed = std::env::var("ENGRAM_TEST_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("ENGRAM_TEST_SEED: a u64"))
        .unwrap_or_else(rand::random);
    eprintln!("chaos for {secs} s, seed {seed} (replay with ENGRAM_TEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let server = start_server(
        dir.path(),
        None,
        &[
            "--fault-injection",
            "--workers",
            "2",
            "--queue-capacity",
            QUEUE_CAPACITY,
        ],
    )
    .await;
    // Spaces are made directly, sessions opened through the proxy before
    // the first fault, so that only the streams live through the chaos.
    let client = connect(server.grpc).await;
    for k in 0..WRITERS {
        client
            .create_space(&format!("chaos-{k}"), CHAOS_DIM as u32)
            .await
            .unwrap();
    }
    let proxy = Proxy::start(server.grpc).await;
    let mut opened = Vec::new();
    for k in 0..WRITERS {
        opened.push(open_writer(k, proxy.addr).await);
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let writers: Vec<_> = opened
        .into_iter()
        .map(|w| tokio::spawn(write(w, until)))
        .collect();
    let chaos = inject(&server, &proxy, &mut rng, until).await;

    let mut reports = Vec::new();
    for w in writers {
        reports.push(w.await.unwrap());
    }
    let cut_connections = proxy.stop().await;
    let after_faults = faults(&server, json!({"accept_delay_ms": 0, "index_delay_ms": 0})).await;
    eprintln!(
        "after {:?}: {chaos:?}; {cut_connections} connections cut; faults {after_faults}",
        started.elapsed()
    );

    // The final state, read directly (not through the proxy).
    for r in &reports {
        let rejected_overloaded = r
            .log
            .rejected
            .iter()
            .filter(|x| x.reason == RejectReason::Overloaded)
            .count();
        eprintln!(
            "{}: sent {}, accepted {}, rejected {} ({} overloaded after retries), {} retries, {} slow-downs, {} reconnects, {} sessions replaced",
            r.space,
            r.sent,
            r.log.accepted.len(),
            r.log.rejected.len(),
            rejected_overloaded,
            r.retries,
            r.slow_downs,
            r.state.reconnects,
            r.state.sessions_replaced
        );
        assert_eq!(r.log.error, None, "{}: the session failed", r.space);
        assert_eq!(
            (r.log.accepted.len() + r.log.rejected.len()) as u64,
            r.sent,
            "{}: one answer per observation",
            r.space
        );
        for x in &r.log.rejected {
            assert_eq!(
                x.reason,
                RejectReason::Overloaded,
                "{}: only overload may reject a valid observation: {x:?}",
                r.space
            );
        }
        let mut ids: Vec<&str> = r
            .log
            .accepted
            .iter()
            .map(|a| a.memory_id.as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            ids.len(),
            r.log.accepted.len(),
            "{}: one memory acked for two observations",
            r.space
        );
        let info = wait_indexed(&client, &r.space, Duration::from_secs(120)).await;
        assert_eq!(
            info.count,
            ids.len() as u64,
            "{}: the space holds {} memories for {} acked observations (duplicates or unacked writes): {info:?}",
            r.space,
            info.count,
            ids.len()
        );
        let k: u64 = r.space["chaos-".len()..].parse().unwrap();
        let items = r
            .log
            .accepted
            .iter()
            .map(|a| {
                let i: u64 = a.memory_id[format!("c{k}-").len()..].parse().unwrap();
                (a.memory_id.clone(), vector(100 + k, i, CHAOS_DIM))
            })
            .collect();
        let missing = not_top1(&client, &r.space, items, 4).await;
        assert!(
            missing.is_empty(),
            "{}: {} acked observations lost (seed {seed}), e.g. {:?}",
            r.space,
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        assert_integrity(&server, &r.space).await;
    }

    let restarts = after_faults["worker_restarts"].as_u64().unwrap();
    let armed = after_faults["kills_armed"].as_u64().unwrap();
    assert!(
        restarts <= armed,
        "{restarts} worker restarts for {armed} armed kills: a worker died by itself"
    );
    if secs >= 30 {
        // Each kind of fault was injected (the schedule starts with one of
        // each) and took effect.
        assert!(
            chaos.kills > 0 && restarts > 0,
            "no worker was killed: {chaos:?}"
        );
        assert!(chaos.bursts > 0, "{chaos:?}");
        assert!(cut_connections > 0, "the proxy cut nothing: {chaos:?}");
        assert!(
            reports.iter().any(|r| r.state.reconnects > 0),
            "no client reconnected after {cut_connections} cuts"
        );
    }
    eprintln!("checked in {:?}", started.elapsed());
}
