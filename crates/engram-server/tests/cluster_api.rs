//! Cluster mode through its real interfaces: one NATS server (replicas 1)
//! and two engram nodes as processes on loopback.
//!
//! - writes on any node are acked with a consistency token; a retried
//!   write (same id) is a duplicate with the first write's sequence, and
//!   is stored once;
//! - bad input is refused with INVALID_ARGUMENT naming the field, and the
//!   node goes on;
//! - recalls, DescribeSpace and ListMemories on the other node are
//!   forwarded to the owner; a recall with a token sees its write;
//! - Forget on either node is answered by the owner (OK, then NOT_FOUND),
//!   over gRPC and REST, and stays forgotten after a handoff;
//! - DeleteSpace on either node (the owner answers), over gRPC and REST;
//!   a space created again starts empty;
//! - streams: `cluster_streams.rs`;
//! - `/v1/cluster`, `engram.v1.Cluster/Status` and the cluster metrics;
//! - a graceful stop hands every partition on at once (no lease TTL
//!   wait), through a last snapshot the new owner loads;
//! - a node that cannot reach NATS exits with the cause;
//! - with TLS, nodes forward to each other over TLS (`cluster.peer_ca`),
//!   and a TLS node without it refuses to start.

mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::{
    cluster_status, eventually, eventually_blocking, free_port, nats_cluster, nodes, served, tails,
    wait_all_served,
};
use engram_proto::v1 as pb;
use engram_proto::v1::cluster_client::ClusterClient;
use engram_proto::v1::memory_client::MemoryClient;
use tonic::transport::Channel;
use tonic::Code;

const PARTITIONS: u32 = 4;
const LEASE_TTL_SECS: u64 = 10;
const SPACE: &str = "api-space";

fn channel(port: u16) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .timeout(Duration::from_secs(20))
        .connect_lazy()
}

fn episode(id: &str, embedding: Vec<f32>) -> pb::Episode {
    pb::Episode {
        id: id.to_owned(),
        what: format!("memory {id}"),
        embedding,
        ..Default::default()
    }
}

fn basis(i: usize) -> Vec<f32> {
    let mut v = vec![0.0; 8];
    v[i % 8] = 1.0;
    v[(i + 3) % 8] = 0.5;
    v
}

async fn remember(
    client: &mut MemoryClient<Channel>,
    space: &str,
    e: pb::Episode,
) -> Result<pb::RememberResponse, tonic::Status> {
    client
        .remember(pb::RememberRequest {
            memory_space_id: space.to_owned(),
            episode: Some(e),
            priority: 0,
        })
        .await
        .map(tonic::Response::into_inner)
}

fn recall_request(
    space: &str,
    cue: Vec<f32>,
    after: Option<pb::ConsistencyToken>,
) -> pb::RecallRequest {
    pb::RecallRequest {
        memory_space_id: space.to_owned(),
        cue: Some(pb::Cue {
            embedding: cue,
            max_results: 5,
            ..Default::default()
        }),
        after,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_calls_through_both_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (nats, urls) = nats_cluster(root, 1);
    let mut nodes = nodes(
        root,
        &urls,
        2,
        &format!(
            "partitions = {PARTITIONS}\nreplicas = 1\nlease_ttl_secs = {LEASE_TTL_SECS}\nsnapshot_interval_secs = 3600\n"
        ),
    );
    let all: Vec<(String, u16)> = nodes.iter().map(|n| (n.id.clone(), n.http)).collect();
    let logs: Vec<std::path::PathBuf> = nodes
        .iter()
        .map(|n| n.log.clone())
        .chain([nats[0].log.clone()])
        .collect();
    let tail = || {
        let files: Vec<&std::path::Path> = logs.iter().map(|p| p.as_path()).collect();
        tails(&files, 30)
    };
    assert!(
        wait_all_served(&all, PARTITIONS as usize, Duration::from_secs(60)).await,
        "not every partition served:\n{}",
        tail()
    );
    let mut m1 = MemoryClient::new(channel(nodes[0].grpc));
    let mut m2 = MemoryClient::new(channel(nodes[1].grpc));

    // Spaces: created once; again with the same settings is not created;
    // with another dimension is ALREADY_EXISTS.
    let create = |dimension: u32| pb::CreateSpaceRequest {
        memory_space_id: SPACE.to_owned(),
        dimension,
        ..Default::default()
    };
    let first = m1.create_space(create(8)).await.unwrap().into_inner();
    assert!(first.created);
    assert_eq!(first.space.unwrap().dimension, 8);
    let again = m2.create_space(create(8)).await.unwrap().into_inner();
    assert!(
        !again.created,
        "the registry holds the space for every node"
    );
    let other = m2.create_space(create(16)).await.unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists, "{other:?}");

    // Writes: a token on every ack; a retry of the same id is a duplicate
    // at the first write's sequence.
    let a = remember(&mut m1, SPACE, episode("a", basis(0)))
        .await
        .unwrap();
    let token_a = a.token.expect("cluster acks carry a token");
    assert_eq!(a.memory_id, "a");
    assert!(!a.duplicate);
    let retry = remember(&mut m2, SPACE, episode("a", basis(0)))
        .await
        .unwrap();
    assert!(retry.duplicate, "a retried write is a duplicate: {retry:?}");
    assert_eq!(retry.token, Some(token_a), "the first write's place");
    let b = remember(&mut m2, SPACE, episode("", basis(1)))
        .await
        .unwrap();
    assert!(!b.memory_id.is_empty(), "the node makes an id");
    let token_b = b.token.unwrap();
    assert_eq!(token_b.partition, token_a.partition);
    assert!(token_b.sequence > token_a.sequence);

    // Bad input: refused, naming the field; the node goes on.
    let bad = [
        (episode("d1", vec![1.0; 16]), "dimension"),
        (episode("d2", vec![]), "embedding"),
        (episode("d3", vec![f32::NAN; 8]), "embedding"),
        (
            pb::Episode {
                expires_at: Some(prost_types::Timestamp {
                    seconds: 1_000,
                    nanos: 0,
                }),
                ..episode("d4", basis(2))
            },
            "expires_at",
        ),
        (
            pb::Episode {
                ttl_seconds: 5.0,
                expires_at: Some(prost_types::Timestamp {
                    seconds: 4_000_000_000,
                    nanos: 0,
                }),
                ..episode("d5", basis(2))
            },
            "ttl_seconds",
        ),
    ];
    for (e, field) in bad {
        let err = remember(&mut m1, SPACE, e).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let err = remember(&mut m1, "bad space/id\u{1}", episode("x", basis(0)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Read-after-ack on both nodes (one of them forwards to the owner).
    for (name, client) in [("node1", &mut m1), ("node2", &mut m2)] {
        let r = client
            .recall(recall_request(SPACE, basis(1), Some(token_b)))
            .await
            .unwrap_or_else(|e| panic!("recall on {name}: {e:?}"))
            .into_inner();
        assert_eq!(
            r.memories[0].episode.as_ref().unwrap().id,
            b.memory_id,
            "{name} sees the write its token names"
        );
        let info = client
            .describe_space(pb::DescribeSpaceRequest {
                memory_space_id: SPACE.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .space
            .unwrap();
        assert_eq!(info.count, 2, "{name}: stored once despite the retry");
        let listed = client
            .list_memories(pb::ListMemoriesRequest {
                memory_space_id: SPACE.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.memories.len(), 2, "{name}");
    }
    let wrong = pb::ConsistencyToken {
        partition: (token_b.partition + 1) % PARTITIONS,
        sequence: 1,
    };
    let err = m2
        .recall(recall_request(SPACE, basis(1), Some(wrong)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("partition"), "{}", err.message());
    // A token far ahead: the owner waits read_wait_ms, then UNAVAILABLE.
    let ahead = pb::ConsistencyToken {
        partition: token_b.partition,
        sequence: token_b.sequence + 1_000_000,
    };
    let err = m1
        .recall(recall_request(SPACE, basis(1), Some(ahead)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let spaces = m2
        .list_spaces(pb::ListSpacesRequest {})
        .await
        .unwrap()
        .into_inner()
        .spaces;
    assert!(spaces
        .iter()
        .any(|s| s.memory_space_id == SPACE && s.dimension == 8));

    // DeleteSpace on either node (the owner answers): the space and its
    // memories are gone everywhere; created again (another dimension) it
    // starts empty, whatever of the old one is still in the log.
    const DOOMED: &str = "doomed";
    m1.create_space(pb::CreateSpaceRequest {
        memory_space_id: DOOMED.to_owned(),
        dimension: 8,
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..3 {
        remember(&mut m2, DOOMED, episode(&format!("old-{i}"), basis(i)))
            .await
            .unwrap();
    }
    m2.delete_space(pb::DeleteSpaceRequest {
        memory_space_id: DOOMED.to_owned(),
    })
    .await
    .unwrap();
    for client in [&mut m1, &mut m2] {
        let err = client
            .describe_space(pb::DescribeSpaceRequest {
                memory_space_id: DOOMED.to_owned(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        let err = client
            .delete_space(pb::DeleteSpaceRequest {
                memory_space_id: DOOMED.to_owned(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "deleted twice: {err:?}");
        let listed = client
            .list_spaces(pb::ListSpacesRequest {})
            .await
            .unwrap()
            .into_inner()
            .spaces;
        assert!(
            listed.iter().all(|s| s.memory_space_id != DOOMED),
            "{listed:?}"
        );
    }
    let again = m1
        .create_space(pb::CreateSpaceRequest {
            memory_space_id: DOOMED.to_owned(),
            dimension: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.created, "created anew after the deletion");
    let new = remember(&mut m1, DOOMED, episode("new-0", vec![1.0, 0.0, 0.0, 0.0]))
        .await
        .unwrap();
    let r = m2
        .recall(pb::RecallRequest {
            memory_space_id: DOOMED.to_owned(),
            cue: Some(pb::Cue {
                embedding: vec![1.0, 0.0, 0.0, 0.0],
                max_results: 10,
                ..Default::default()
            }),
            after: new.token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = r
        .memories
        .iter()
        .map(|m| m.episode.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(ids, ["new-0"], "only the new generation's memory");
    let http = reqwest::Client::new();
    // Deleted and created again through one node, then written with the
    // same ids as before, on each node in turn (so once through the node
    // that does not own it): stored again each time, nothing taken for a
    // duplicate of the deleted generation's writes.
    for (round, client) in [&mut m1, &mut m2].into_iter().enumerate() {
        client
            .delete_space(pb::DeleteSpaceRequest {
                memory_space_id: DOOMED.to_owned(),
            })
            .await
            .unwrap();
        let made = client
            .create_space(pb::CreateSpaceRequest {
                memory_space_id: DOOMED.to_owned(),
                dimension: 4,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(made.created, "round {round}: created anew");
        let mut last = None;
        for i in 0..3 {
            let mut v = vec![0.0; 4];
            v[i] = 1.0;
            let w = remember(client, DOOMED, episode(&format!("same-{i}"), v))
                .await
                .unwrap();
            assert!(
                !w.duplicate,
                "round {round}: same-{i} is new in the new generation"
            );
            last = w.token;
        }
        let r = client
            .recall(pb::RecallRequest {
                memory_space_id: DOOMED.to_owned(),
                cue: Some(pb::Cue {
                    embedding: vec![1.0, 0.0, 0.0, 0.0],
                    max_results: 10,
                    ..Default::default()
                }),
                after: last,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.memories.len(), 3, "round {round}: {:?}", r.memories);
    }
    // Back to one memory, for the handoff check below.
    m1.delete_space(pb::DeleteSpaceRequest {
        memory_space_id: DOOMED.to_owned(),
    })
    .await
    .unwrap();
    m1.create_space(pb::CreateSpaceRequest {
        memory_space_id: DOOMED.to_owned(),
        dimension: 4,
        ..Default::default()
    })
    .await
    .unwrap();
    remember(&mut m1, DOOMED, episode("new-0", vec![1.0, 0.0, 0.0, 0.0]))
        .await
        .unwrap();
    // REST: deleted through either node (passed to the owner).
    m1.create_space(pb::CreateSpaceRequest {
        memory_space_id: "doomed-rest".to_owned(),
        dimension: 8,
        ..Default::default()
    })
    .await
    .unwrap();
    for (node, expected) in [(&nodes[0], 200), (&nodes[1], 404)] {
        let r = http
            .delete(format!(
                "http://127.0.0.1:{}/v1/spaces/doomed-rest",
                node.http
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), expected, "{}", node.id);
    }

    // REST: a write on one node with its token; the read on every node
    // (the non-owner passes it to the owner).
    let r = http
        .post(format!(
            "http://127.0.0.1:{}/v1/spaces/{SPACE}/memories",
            nodes[0].http
        ))
        .json(&serde_json::json!({"id": "rest-1", "what": "over REST", "embedding": basis(5)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let ack: serde_json::Value = r.json().await.unwrap();
    let after = format!("{}.{}", ack["token"]["partition"], ack["token"]["sequence"]);
    assert_eq!(ack["token"]["partition"], token_b.partition, "{ack}");
    for node in &nodes {
        let r = http
            .post(format!(
                "http://127.0.0.1:{}/v1/spaces/{SPACE}/recall?after={after}",
                node.http
            ))
            .json(&serde_json::json!({"embedding": basis(5), "max_results": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", node.id);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body["memories"][0]["episode"]["id"], "rest-1",
            "{}: {body}",
            node.id
        );
        let d: serde_json::Value = http
            .get(format!("http://127.0.0.1:{}/v1/spaces/{SPACE}", node.http))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(d["count"], 3, "{}: {d}", node.id);
    }
    // Forget, on either node (the owner answers: it publishes the forget
    // to the partition's log and applies it after every earlier record):
    // OK, then NOT_FOUND; REST the same; the count follows.
    for (i, client) in [&mut m1, &mut m2].into_iter().enumerate() {
        let forget = |id: &str| pb::ForgetRequest {
            memory_space_id: SPACE.to_owned(),
            memory_id: id.to_owned(),
        };
        if i == 0 {
            client.forget(forget("rest-1")).await.unwrap();
        }
        let err = client.forget(forget("rest-1")).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "node{}: {err:?}", i + 1);
        let err = client.forget(forget("")).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let err = client
            .forget(pb::ForgetRequest {
                memory_space_id: "no-such-space".to_owned(),
                memory_id: "x".to_owned(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    let r = http
        .post(format!(
            "http://127.0.0.1:{}/v1/spaces/{SPACE}/memories",
            nodes[1].http
        ))
        .json(&serde_json::json!({"id": "gone", "what": "to forget", "embedding": basis(6)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    for (node, expected) in [(&nodes[0], 200), (&nodes[1], 404)] {
        let r = http
            .delete(format!(
                "http://127.0.0.1:{}/v1/spaces/{SPACE}/memories/gone",
                node.http
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), expected, "{}", node.id);
        if expected == 404 {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["code"], "memory_not_found", "{body}");
        }
    }
    for node in &nodes {
        let d: serde_json::Value = http
            .get(format!("http://127.0.0.1:{}/v1/spaces/{SPACE}", node.http))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(d["count"], 2, "{}: forgotten twice: {d}", node.id);
    }
    // A read passed on to the owner is read whole first, but never more
    // than the body limit (4 MiB by default) a handler would take.
    let status_now = ClusterClient::new(channel(nodes[0].grpc))
        .status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let owner = &status_now.partitions[token_b.partition as usize].owner;
    let other = nodes.iter().find(|n| &n.id != owner).unwrap();
    // A client of its own: the server answers 413 without reading the
    // body and closes that connection, which a pooled client could pick
    // up again for the next request (IncompleteMessage).
    let r = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/v1/spaces/{SPACE}/recall",
            other.http
        ))
        .header("content-type", "application/json")
        .body(vec![b' '; 5 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413, "{}", other.id);
    let r = http
        .post(format!(
            "http://127.0.0.1:{}/v1/spaces/{SPACE}/recall?after=nonsense",
            nodes[1].http
        ))
        .json(&serde_json::json!({"embedding": basis(5)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // The cluster map, over HTTP and gRPC, and the metrics.
    let status = ClusterClient::new(channel(nodes[1].grpc))
        .status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.node_id, "node2");
    assert_eq!(status.partition_count, PARTITIONS);
    assert_eq!(status.nodes.len(), 2);
    assert!(status
        .partitions
        .iter()
        .all(|p| !p.owner.is_empty() && p.epoch > 0));
    let owned: usize = status.nodes.iter().map(|n| n.partitions.len()).sum();
    assert_eq!(owned, PARTITIONS as usize);
    let metrics = http
        .get(format!("http://127.0.0.1:{}/metrics", nodes[0].http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "engram_cluster_partition_has_owner{partition=\"0\"} 1",
        "engram_cluster_publish_seconds_count",
        "engram_cluster_takeover_seconds_count",
        "engram_cluster_ownership_changes_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    // A graceful stop hands its partitions on now, not after a lease TTL,
    // through a last snapshot: the survivor loads it and still answers.
    let owner_of_space = status.partitions[token_b.partition as usize].owner.clone();
    let leaving = nodes.iter().position(|n| n.id == owner_of_space).unwrap();
    let staying = 1 - leaving;
    let pid = nodes[leaving].child.as_ref().unwrap().id();
    let stopped = Instant::now();
    // SAFETY: signalling a child process this test started.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let survivor = vec![(nodes[staying].id.clone(), nodes[staying].http)];
    let handed = wait_all_served(
        &survivor,
        PARTITIONS as usize,
        Duration::from_secs(LEASE_TTL_SECS).saturating_sub(stopped.elapsed()),
    )
    .await;
    assert!(
        handed,
        "the survivor did not serve every partition within the lease TTL after a graceful stop:\n{}",
        tail()
    );
    let took = stopped.elapsed();
    let exit = nodes[leaving].child.as_mut().unwrap().wait().unwrap();
    assert!(exit.success(), "graceful stop exits 0: {exit:?}");
    nodes[leaving].child = None;
    let survivor_log = std::fs::read_to_string(&nodes[staying].log).unwrap();
    let takeover = survivor_log
        .lines()
        .rev()
        .find(|l| {
            l.contains("partition served")
                && l.contains(&format!(" partition={} ", token_b.partition))
        })
        .expect("the survivor logged its takeover");
    assert!(
        !takeover.contains("snapshot_sequence=0 "),
        "the new owner loaded the leaving owner's last snapshot: {takeover}"
    );
    println!("graceful handoff served everything after {took:?}: {takeover}");
    let mut left = if staying == 0 { m1 } else { m2 };
    let r = left
        .recall(recall_request(SPACE, basis(0), Some(token_a)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.memories[0].episode.as_ref().unwrap().id, "a");
    // What was forgotten stays forgotten on the new owner.
    let r = left
        .recall(recall_request(SPACE, basis(5), None))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = r
        .memories
        .iter()
        .map(|m| m.episode.as_ref().unwrap().id.as_str())
        .collect();
    assert!(
        !ids.contains(&"rest-1") && !ids.contains(&"gone"),
        "{ids:?}"
    );
    let c = remember(&mut left, SPACE, episode("c", basis(4)))
        .await
        .unwrap();
    let r = left
        .recall(recall_request(SPACE, basis(4), c.token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.memories[0].episode.as_ref().unwrap().id, "c");

    // A node configured with another partition count is refused.
    let conf = root.join("odd.toml");
    std::fs::write(
        &conf,
        format!(
            "[http]\naddr = \"127.0.0.1:0\"\n[grpc]\naddr = \"127.0.0.1:0\"\n\
             [cluster]\nnats = [\"{}\"]\nnode_id = \"odd\"\npartitions = 5\nreplicas = 1\n",
            urls[0]
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["serve", "--config"])
        .arg(&conf)
        .arg("--data-dir")
        .arg(root.join("odd-data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cluster.partitions = 5, the cluster has 4"),
        "{stderr}"
    );
    drop(nats);
}

#[test]
fn a_node_that_cannot_reach_nats_exits_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let dead = free_port();
    let conf = dir.path().join("node.toml");
    std::fs::write(
        &conf,
        format!(
            "[http]\naddr = \"127.0.0.1:0\"\n[grpc]\naddr = \"127.0.0.1:0\"\n\
             [cluster]\nnats = [\"nats://127.0.0.1:{dead}\"]\nnode_id = \"lonely\"\njoin_timeout_secs = 2\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["serve", "--config"])
        .arg(&conf)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("connecting to NATS") && stderr.contains(&dead.to_string()),
        "{stderr}"
    );

    // Told to stop while it is still trying to join: it stops now (exit
    // 0), not after join_timeout_secs.
    std::fs::write(
        &conf,
        format!(
            "[http]\naddr = \"127.0.0.1:0\"\n[grpc]\naddr = \"127.0.0.1:0\"\n\
             [cluster]\nnats = [\"nats://127.0.0.1:{dead}\"]\nnode_id = \"lonely\"\njoin_timeout_secs = 600\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("joining.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["serve", "--config"])
        .arg(&conf)
        .arg("--data-dir")
        .arg(dir.path().join("data2"))
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let joining = eventually_blocking(Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("joining the cluster")
            .then_some(())
    });
    assert!(joining.is_some(), "never started joining");
    let asked = Instant::now();
    // SAFETY: a plain signal to a child process this test started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let Some(exit) = eventually_blocking(Duration::from_secs(10), || child.try_wait().unwrap())
    else {
        let _ = child.kill();
        panic!(
            "still joining {:?} after SIGTERM:\n{}",
            asked.elapsed(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn cluster_flags_are_checked() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["serve", "--node-id", "n1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--node-id needs cluster mode"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
        .args([
            "serve",
            "--cluster",
            "nats://127.0.0.1:1",
            "--node-id",
            "bad id!",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cluster.node_id"), "{stderr}");
}

/// An owner that falls behind its partition's log slows the writers of
/// that partition (RESOURCE_EXHAUSTED with a retry-after), as a full
/// indexing queue does on one node; once it catches up, writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_owner_slows_its_partition_writers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (nats, urls) = nats_cluster(root, 1);
    let mut nodes = nodes(
        root,
        &urls,
        2,
        "partitions = 1\nreplicas = 1\nmax_partition_lag = 20\n",
    );
    let all: Vec<(String, u16)> = nodes.iter().map(|n| (n.id.clone(), n.http)).collect();
    assert!(wait_all_served(&all, 1, Duration::from_secs(60)).await);
    let owner = served(&all).await[&0].clone();
    let (oi, wi) = if owner == nodes[0].id { (0, 1) } else { (1, 0) };
    let mut writer = MemoryClient::new(channel(nodes[wi].grpc));
    let first = remember(&mut writer, "lag", episode("first", basis(0)))
        .await
        .unwrap();
    // The writer learns the owner's progress within a second.
    let target = first.token.unwrap().sequence;
    let writer_http = nodes[wi].http;
    let reached = eventually(Duration::from_secs(10), || async move {
        let s = cluster_status(writer_http).await?;
        (s["partitions"][0]["applied_sequence"].as_u64() >= Some(target)).then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "the owner's progress never reached the writer: {:?}",
        cluster_status(writer_http).await
    );
    let pid = nodes[oi].child.as_ref().unwrap().id() as i32;
    // SAFETY: signalling a child process this test started.
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    let mut refused = None;
    for i in 0..200 {
        match remember(&mut writer, "lag", episode(&format!("m{i}"), basis(i))).await {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGCONT);
    }
    let (at, err) = refused.expect("writes to a stalled owner's partition were never refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max_partition_lag"),
        "{}",
        err.message()
    );
    assert!(
        (20..=40).contains(&at),
        "refused after {at} writes (limit 20)"
    );
    // Caught up: accepted again.
    let accepted = eventually(Duration::from_secs(20), || {
        let mut writer = writer.clone();
        async move {
            match remember(&mut writer, "lag", episode("after", basis(3))).await {
                Ok(_) => Some(()),
                Err(e) => {
                    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                    None
                }
            }
        }
    })
    .await;
    assert!(accepted.is_some(), "writes never accepted again");
    nodes.clear();
    drop(nats);
}

/// TLS between nodes: with `security.tls_cert` every node serves only TLS,
/// and the nodes forward to each other over TLS, verifying the peer
/// against `cluster.peer_ca`: a recall on the node that does not own the
/// space (gRPC, forwarded) and a REST recall there (passed to the owner)
/// both answer. A TLS node without `peer_ca` refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_forward_to_each_other_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let certs = root.join("certs");
    engram_server::tls::generate(&certs, &["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap();
    let (ca, pem, key) = (
        certs.join("ca.pem"),
        certs.join("server.pem"),
        certs.join("server.key"),
    );
    let (nats, urls) = nats_cluster(root, 1);
    let nodes = nodes(
        root,
        &urls,
        2,
        &format!(
            "partitions = 2\nreplicas = 1\npeer_ca = \"{}\"\n[security]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            ca.display(),
            pem.display(),
            key.display()
        ),
    );
    let ca_pem = std::fs::read(&ca).unwrap();
    let https = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).unwrap())
        .build()
        .unwrap();
    let logs: Vec<std::path::PathBuf> = nodes
        .iter()
        .map(|n| n.log.clone())
        .chain([nats[0].log.clone()])
        .collect();
    let tail = || {
        let files: Vec<&std::path::Path> = logs.iter().map(|p| p.as_path()).collect();
        tails(&files, 30)
    };
    // Both partitions served, as the nodes say over HTTPS.
    let (https_ref, nodes_ref) = (&https, &nodes);
    let owners = eventually(Duration::from_secs(60), || async move {
        let mut owners = std::collections::BTreeMap::new();
        for n in nodes_ref {
            let url = format!("https://127.0.0.1:{}/v1/cluster", n.http);
            let Ok(r) = https_ref.get(url).send().await else {
                continue;
            };
            let s: serde_json::Value = r.json().await.ok()?;
            for p in s["partitions"].as_array().into_iter().flatten() {
                if p["state"] == "serving" && p["owner"] == n.id.as_str() {
                    owners.insert(p["partition"].as_u64().unwrap() as u32, n.id.clone());
                }
            }
        }
        (owners.len() == 2).then_some(owners)
    })
    .await
    .unwrap_or_else(|| panic!("not served over TLS:\n{}", tail()));
    let space = "tls-space";
    let p = engram_server::cluster::partition_of(space, 2);
    let other = nodes.iter().find(|n| n.id != owners[&p]).unwrap();
    let tls_channel = |port: u16| {
        tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem)),
            )
            .unwrap()
            .timeout(Duration::from_secs(20))
            .connect_lazy()
    };
    let mut m = MemoryClient::new(tls_channel(other.grpc));
    m.create_space(pb::CreateSpaceRequest {
        memory_space_id: space.to_owned(),
        dimension: 8,
        ..Default::default()
    })
    .await
    .unwrap();
    let written = remember(&mut m, space, episode("t1", basis(2)))
        .await
        .unwrap();
    // gRPC recall on the node that does not own the space: forwarded to
    // the owner over TLS.
    let r = m
        .recall(recall_request(space, basis(2), written.token))
        .await
        .unwrap_or_else(|e| panic!("forwarded recall over TLS: {e:?}\n{}", tail()))
        .into_inner();
    assert_eq!(r.memories[0].episode.as_ref().unwrap().id, "t1");
    // REST on the same node: passed to the owner over HTTPS.
    let t = written.token.unwrap();
    let r = https
        .post(format!(
            "https://127.0.0.1:{}/v1/spaces/{space}/recall?after={}.{}",
            other.http, t.partition, t.sequence
        ))
        .json(&serde_json::json!({"embedding": basis(2), "max_results": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", tail());
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["memories"][0]["episode"]["id"], "t1", "{body}");

    // TLS without the peers' CA: refused at start, naming the setting.
    let conf = root.join("no-ca.toml");
    std::fs::write(
        &conf,
        format!(
            "[cluster]\nnats = [\"{}\"]\nnode_id = \"no-ca\"\nreplicas = 1\n[security]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            urls[0],
            pem.display(),
            key.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["serve", "--config"])
        .arg(&conf)
        .arg("--data-dir")
        .arg(root.join("no-ca-data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cluster.peer_ca is required"), "{stderr}");
    drop(nats);
}

/// A new owner that replays a partition's log from the start (no snapshot:
/// its owner was killed) ends where the old owner was: a deleted space's
/// old generation stays deleted, the space created again (same dimension,
/// so an old record would apply) holds only its own memories, and a
/// forgotten memory stays forgotten. (Records of a deleted generation that
/// land after its delete record are skipped by their generation: the unit
/// test `records_of_a_deleted_generation_are_skipped` in `owner.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_keeps_deletions_and_forgets() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (nats, urls) = nats_cluster(root, 1);
    let mut nodes = nodes(
        root,
        &urls,
        2,
        "partitions = 1\nreplicas = 1\nlease_ttl_secs = 4\nsnapshot_interval_secs = 3600\n",
    );
    let all: Vec<(String, u16)> = nodes.iter().map(|n| (n.id.clone(), n.http)).collect();
    assert!(wait_all_served(&all, 1, Duration::from_secs(60)).await);
    let owner = served(&all).await[&0].clone();
    let (oi, si) = if owner == nodes[0].id { (0, 1) } else { (1, 0) };
    let mut m = MemoryClient::new(channel(nodes[si].grpc));
    let create = |dimension: u32| pb::CreateSpaceRequest {
        memory_space_id: "replayed".to_owned(),
        dimension,
        ..Default::default()
    };
    m.create_space(create(8)).await.unwrap();
    for i in 0..3 {
        remember(&mut m, "replayed", episode(&format!("old-{i}"), basis(i)))
            .await
            .unwrap();
    }
    m.delete_space(pb::DeleteSpaceRequest {
        memory_space_id: "replayed".to_owned(),
    })
    .await
    .unwrap();
    // The same dimension: a record of the old generation would apply.
    m.create_space(create(8)).await.unwrap();
    let unit = |i: usize| {
        let mut v = vec![0.0; 8];
        v[i] = 1.0;
        v
    };
    remember(&mut m, "replayed", episode("new-0", unit(0)))
        .await
        .unwrap();
    remember(&mut m, "replayed", episode("gone", unit(1)))
        .await
        .unwrap();
    m.forget(pb::ForgetRequest {
        memory_space_id: "replayed".to_owned(),
        memory_id: "gone".to_owned(),
    })
    .await
    .unwrap();
    let last = remember(&mut m, "replayed", episode("new-1", unit(2)))
        .await
        .unwrap();

    // The owner dies without a snapshot: the survivor replays everything.
    nodes[oi].kill();
    let survivor = vec![all[si].clone()];
    assert!(
        wait_all_served(&survivor, 1, Duration::from_secs(30)).await,
        "the survivor never served the partition"
    );
    let r = m
        .recall(pb::RecallRequest {
            memory_space_id: "replayed".to_owned(),
            cue: Some(pb::Cue {
                embedding: unit(0),
                max_results: 10,
                ..Default::default()
            }),
            after: last.token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<&str> = r
        .memories
        .iter()
        .map(|m| m.episode.as_ref().unwrap().id.as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["new-0", "new-1"], "after the replay");
    let log = std::fs::read_to_string(&nodes[si].log).unwrap();
    let takeover = log
        .lines()
        .rev()
        .find(|l| l.contains("partition served"))
        .unwrap();
    assert!(
        takeover.contains("snapshot_sequence=0 "),
        "a replay from the start: {takeover}"
    );
    drop(nats);
}
