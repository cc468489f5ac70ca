//! SCRATCH (not to keep): client resilience against the real server binary.
//! Run with ENGRAM_BIN=/work/main/target/ci/engram.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engram_client::{episode, Answer, ClientOptions, SessionEvent, StreamingClient};
use futures::StreamExt;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

fn bin() -> Option<String> {
    std::env::var("ENGRAM_BIN").ok()
}

fn start(port: u16, dir: &str, extra: &[&str]) -> Child {
    Command::new(bin().unwrap())
        .args(["serve", "--grpc-addr", &format!("127.0.0.1:{port}"), "--http-addr", "127.0.0.1:0", "--data-dir", dir])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(format!("{dir}.log.{}", rand::random::<u32>())).unwrap()))
        .spawn()
        .unwrap()
}

async fn wait_up(port: u16) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server not up");
}

fn emb(i: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..16).map(|j| ((i * 31 + j * 7) % 97) as f32 / 97.0 + 0.01).collect();
    v[i % 16] += 1.0;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_server_restart() {
    if bin().is_none() {
        return;
    }
    let port = 50611;
    let dir = format!("/tmp/engc/restart-{}", rand::random::<u32>());
    let mut server = start(port, &dir, &[]);
    wait_up(port).await;
    let client = StreamingClient::connect(format!("http://127.0.0.1:{port}")).await.unwrap();
    client.create_space("r", 16).await.unwrap();
    let (sender, mut acks) = client.observe_stream("r").await.unwrap();
    let mut events = sender.events();
    let ev_task = tokio::spawn(async move {
        let mut v = vec![];
        while let Some(e) = events.next().await {
            if !matches!(e, SessionEvent::Status(_)) {
                println!("event: {e:?}");
            }
            v.push(e);
        }
        v
    });
    const N: usize = 3000;
    let s2 = sender.clone();
    let send_task = tokio::spawn(async move {
        for i in 0..N {
            s2.send(episode(format!("o{i}"), emb(i))).await.unwrap();
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let mut seen = 0u64;
    let mut dup = 0;
    let mut ids = std::collections::HashSet::new();
    while seen < N as u64 {
        let a = acks.recv().await.unwrap().unwrap();
        seen += 1;
        assert_eq!(a.sequence_number(), seen);
        let Answer::Accepted(ack) = a else { panic!("{a:?}") };
        if ack.duplicate {
            dup += 1;
        }
        assert!(ids.insert(ack.memory_id.clone()));
        if seen == 1000 {
            println!("killing server");
            server.kill().unwrap();
            server.wait().unwrap();
            tokio::time::sleep(Duration::from_millis(800)).await;
            server = start(port, &dir, &[]);
        }
    }
    send_task.await.unwrap();
    let closed = sender.close(true).await.unwrap();
    assert!(acks.recv().await.is_none());
    let info = client.describe_space("r").await.unwrap();
    println!("closed {closed:?}; duplicates {dup}; space count {}", info.count);
    assert_eq!(info.count, N as u64);
    let evs = ev_task.await.unwrap();
    assert!(evs.iter().any(|e| matches!(e, SessionEvent::Reconnected { resumed: false, .. })));
    server.kill().unwrap();
}

/// A TCP proxy whose connections can be cut.
async fn proxy(to: u16) -> (u16, broadcast::Sender<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (cut, _) = broadcast::channel::<()>(4);
    let cut2 = cut.clone();
    tokio::spawn(async move {
        loop {
            let (mut a, _) = l.accept().await.unwrap();
            let mut rx = cut2.subscribe();
            tokio::spawn(async move {
                let Ok(mut b) = TcpStream::connect(("127.0.0.1", to)).await else { return };
                tokio::select! {
                    _ = copy_bidirectional(&mut a, &mut b) => {}
                    _ = rx.recv() => {}
                }
            });
        }
    });
    (port, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_a_cut_connection() {
    if bin().is_none() {
        return;
    }
    let port = 50612;
    let dir = format!("/tmp/engc/cut-{}", rand::random::<u32>());
    let mut server = start(port, &dir, &[]);
    wait_up(port).await;
    let (pport, cut) = proxy(port).await;
    let client = StreamingClient::connect(format!("http://127.0.0.1:{pport}")).await.unwrap();
    client.create_space("c", 16).await.unwrap();
    let (sender, mut acks) = client.observe_stream("c").await.unwrap();
    let sid = sender.session_id();
    let mut events = sender.events();
    let ev_task = tokio::spawn(async move {
        let mut v = vec![];
        while let Some(e) = events.next().await {
            if !matches!(e, SessionEvent::Status(_)) {
                println!("event: {e:?}");
            }
            v.push(e);
        }
        v
    });
    const N: usize = 5000;
    let s2 = sender.clone();
    let send_task = tokio::spawn(async move {
        for i in 0..N {
            s2.send(episode(format!("o{i}"), emb(i))).await.unwrap();
        }
    });
    let mut seen = 0u64;
    let mut replayed = 0;
    let cuts = Arc::new(AtomicBool::new(false));
    while seen < N as u64 {
        let a = acks.recv().await.unwrap().unwrap();
        seen += 1;
        assert_eq!(a.sequence_number(), seen);
        let Answer::Accepted(ack) = a else { panic!("{a:?}") };
        assert!(!ack.duplicate);
        if ack.replayed {
            replayed += 1;
        }
        if seen % 1500 == 0 {
            println!("cutting at {seen}, in flight {}", sender.in_flight());
            let _ = cut.send(());
            cuts.store(true, Ordering::Relaxed);
        }
    }
    send_task.await.unwrap();
    let closed = sender.close(true).await.unwrap();
    let info = client.describe_space("c").await.unwrap();
    println!("closed {closed:?}; replayed {replayed}; count {}", info.count);
    assert_eq!(info.count, N as u64);
    assert_eq!(closed.final_sequence, N as u64);
    assert_eq!(closed.accepted, N as u64);
    let evs = ev_task.await.unwrap();
    assert!(evs.iter().any(|e| matches!(e, SessionEvent::Reconnected { resumed: true, session_id, .. } if *session_id == sid)));
    server.kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_retried_and_slow_down_paces() {
    if bin().is_none() {
        return;
    }
    let port = 50613;
    let dir = format!("/tmp/engc/ovl-{}", rand::random::<u32>());
    let mut server = start(port, &dir, &["--queue-capacity", "200", "--workers", "1"]);
    wait_up(port).await;
    let client = StreamingClient::connect_with(
        format!("http://127.0.0.1:{port}"),
        ClientOptions { max_in_flight: 512, ..Default::default() },
    )
    .await
    .unwrap();
    client.create_space("o", 384).await.unwrap();
    let (sender, mut acks) = client.observe_stream("o").await.unwrap();
    let mut events = sender.events();
    let ev_task = tokio::spawn(async move {
        let (mut st, mut retr) = (std::collections::BTreeMap::new(), 0);
        while let Some(e) = events.next().await {
            match e {
                SessionEvent::Status(s) => {
                    *st.entry(format!("{}@{:.0}", s.state, s.suggested_rate)).or_insert(0) += 1;
                }
                SessionEvent::Retrying { .. } => retr += 1,
                e => println!("event {e:?}"),
            }
        }
        (st, retr)
    });
    const N: usize = 20000;
    let s2 = sender.clone();
    let t0 = std::time::Instant::now();
    let send_task = tokio::spawn(async move {
        for i in 0..N {
            let mut v: Vec<f32> = (0..384).map(|j| ((i * 13 + j * 7) % 101) as f32 / 101.0 + 0.001).collect();
            v[i % 384] += 1.0;
            s2.send(episode(format!("o{i}"), v)).await.unwrap();
        }
    });
    let mut seen = 0u64;
    let (mut acc, mut rej, mut retried) = (0, 0, 0);
    while seen < N as u64 {
        let a = acks.recv().await.unwrap().unwrap();
        seen += 1;
        assert_eq!(a.sequence_number(), seen);
        match a {
            Answer::Accepted(a) => {
                acc += 1;
                if a.retries > 0 {
                    retried += 1;
                }
            }
            Answer::Rejected(r) => {
                rej += 1;
                if rej < 5 {
                    println!("rejected {r:?}");
                }
            }
        }
    }
    send_task.await.unwrap();
    println!("state {:?}", sender.state());
    let closed = sender.close(true).await.unwrap();
    let (st, retr) = ev_task.await.unwrap();
    println!(
        "{:.1}s accepted {acc} rejected {rej} accepted-after-retry {retried}; retry events {retr}; statuses {st:?}; closed {closed:?}",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(acc, N);
    server.kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_cases() {
    if bin().is_none() {
        return;
    }
    let port = 50614;
    let dir = format!("/tmp/engc/edge-{}", rand::random::<u32>());
    let mut server = start(port, &dir, &[]);
    wait_up(port).await;
    let client = StreamingClient::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap()
        .with_options(ClientOptions { heartbeat_interval: Duration::from_millis(200), ..Default::default() });
    client.create_space("e", 16).await.unwrap();
    // bad space id
    let err = client.observe_stream("Bad Space!").await.err().unwrap();
    println!("bad space: {err:?}");
    // invalid in place
    let (sender, mut acks) = client.observe_stream("e").await.unwrap();
    sender.send(episode("ok1", emb(1))).await.unwrap();
    sender.send(episode("bad", vec![1.0; 3])).await.unwrap();
    sender.send(episode("nan", vec![f32::NAN; 16])).await.unwrap();
    sender.send(episode("ok2", emb(2))).await.unwrap();
    for _ in 0..4 {
        println!("{:?}", acks.recv().await.unwrap().unwrap().rejected().map(|r| (r.sequence_number, r.reason, r.message.clone())));
    }
    // heartbeat → status events
    let mut ev = sender.events();
    let e = tokio::time::timeout(Duration::from_secs(2), ev.next()).await.unwrap();
    println!("heartbeat answer: {e:?}");
    // drop sender: drains and ends
    sender.send(episode("last", emb(3))).await.unwrap();
    drop(sender);
    let a = acks.recv().await.unwrap().unwrap();
    assert!(a.is_accepted());
    assert!(acks.recv().await.is_none());
    // close without drain
    let (sender, mut acks) = client.observe_stream("e").await.unwrap();
    for i in 0..200 {
        sender.send(episode(format!("x{i}"), emb(i))).await.unwrap();
    }
    let s2 = sender.clone();
    let closed = sender.close(false).await.unwrap();
    let mut n = (0, 0);
    while let Some(a) = acks.recv().await {
        if a.unwrap().is_accepted() { n.0 += 1 } else { n.1 += 1 }
    }
    println!("close(false): {closed:?}, client saw {n:?}");
    assert_eq!(n.0 + n.1, 200);
    println!("send after close: {:?}", s2.send(episode("z", emb(1))).await);
    println!("close again: {:?}", s2.close(true).await);
    // unary
    let r = client.remember("e", episode("u", emb(5))).await.unwrap();
    println!("remember {r:?}");
    println!("recall {}", client.recall("e", engram_client::cue(emb(5), 3)).await.unwrap().memories.len());
    println!("forget {:?}", client.forget("e", &r.memory_id).await);
    println!("forget again {:?}", client.forget("e", &r.memory_id).await);
    println!("describe missing {:?}", client.describe_space("nope").await);
    println!("list {:?}", client.list_spaces().await.unwrap().len());
    println!("recall_stream missing space {:?}", client.recall_stream("nope", engram_client::cue(emb(5), 3)).await.map(|_| ()));
    println!("recall_stream wrong dim {:?}", match client.recall_stream("e", engram_client::cue(vec![1.0; 3], 3)).await { Ok(s) => s.collect_all().await.map(|_| ()), Err(e) => Err(e) });
    println!("delete {:?}", client.delete_space("e").await);
    server.kill().unwrap();
}
