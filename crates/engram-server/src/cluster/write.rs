//! The write path in cluster mode: where observations are admitted.
//!
//! Any node takes a write: it validates the observation as a single node
//! would (against the space's dimension from the space registry), makes it
//! deterministic (server-made id, receive time and expiry fixed here, so
//! every replay applies the same record), publishes it to the partition's
//! stream with a message id derived from (space, episode id), and acks
//! only after JetStream's PubAck: the write is then stored on a majority
//! of the NATS servers. A retry of the same write (same id) within the
//! stream's duplicate window is answered with the first write's sequence.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use engram_core::model::{now_unix_nanos, ConsistencyToken, Expiry, Remembered, SpaceId};
use engram_proto::v1 as pb;
use prost::Message as _;
use sha2::Digest;
use tokio::sync::OwnedSemaphorePermit;
use tonic::Status;

use super::{subject, Cluster, SpaceEntry};
use crate::grpc::convert;
use crate::grpc::status::status;

/// The retry-after of a write refused because this node has
/// `max_pending_publishes` writes waiting for their PubAck.
const PENDING_RETRY_AFTER: Duration = Duration::from_millis(200);

/// The registry key of a space: hex, since space ids may hold characters
/// that KV keys may not.
pub(crate) fn space_key(space: &str) -> String {
    let mut key = String::with_capacity(space.len() * 2);
    for b in space.as_bytes() {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

pub(crate) fn space_from_key(key: &str) -> Option<String> {
    if !key.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..key.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&key[i..i + 2], 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

impl Cluster {
    /// The registry entry of `space`, if it exists (a deleted space's
    /// tombstone is none).
    pub(crate) async fn space_entry(&self, space: &str) -> Result<Option<SpaceEntry>, Status> {
        Ok(self
            .space_record(space)
            .await?
            .filter(|(e, _)| !e.deleted)
            .map(|(e, _)| e))
    }

    /// The registry's record of `space` with its KV revision (the space's
    /// generation), tombstones included: from this node's cache (kept
    /// current by the registry watch), else read.
    pub(crate) async fn space_record(
        &self,
        space: &str,
    ) -> Result<Option<(SpaceEntry, u64)>, Status> {
        if let Some(e) = self.inner.space_cache.read().get(space) {
            return Ok(Some(e.clone()));
        }
        self.space_record_fresh(space).await
    }

    /// [`Cluster::space_record`] read from the registry, not the cache.
    pub(crate) async fn space_record_fresh(
        &self,
        space: &str,
    ) -> Result<Option<(SpaceEntry, u64)>, Status> {
        let entry = self
            .inner
            .spaces
            .entry(space_key(space))
            .await
            .map_err(|e| unavailable(format!("reading the space registry: {e}")))?;
        let Some(entry) =
            entry.filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put)
        else {
            return Ok(None);
        };
        let parsed: SpaceEntry = serde_json::from_slice(&entry.value)
            .map_err(|e| Status::internal(format!("space registry entry of {space}: {e}")))?;
        Ok(Some(self.cache_space(space, parsed, entry.revision)))
    }

    /// Puts a registry record in this node's cache unless the cache holds
    /// a newer one; answers what the cache holds then.
    pub(crate) fn cache_space(
        &self,
        space: &str,
        e: SpaceEntry,
        revision: u64,
    ) -> (SpaceEntry, u64) {
        let mut cache = self.inner.space_cache.write();
        let held = cache
            .entry(space.to_owned())
            .or_insert_with(|| (e.clone(), revision));
        if held.1 < revision {
            *held = (e, revision);
        }
        held.clone()
    }

    /// Drops `space` from this node's registry cache: the next lookup reads
    /// the registry (after this node passed a deletion on to the owner, so
    /// that its own next call does not see the deleted generation).
    pub fn evict_space(&self, space: &str) {
        self.inner.space_cache.write().remove(space);
    }

    /// Keeps this node's registry cache current (deletions and
    /// re-creations by other nodes), until the node stops. Run
    /// supervised; a failed watch is started again.
    pub(crate) async fn watch_spaces(self) {
        use futures::StreamExt;
        let mut stop = self.inner.stop.clone();
        loop {
            let mut watch = match self.inner.spaces.watch_all().await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "watching the space registry failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    n = watch.next() => n,
                    _ = stop.wait_for(|s| *s) => return,
                };
                let Some(Ok(entry)) = next else {
                    // Ended or failed: watch again, after a pause (never
                    // a busy loop against a failing server).
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    break;
                };
                let Some(space) = space_from_key(&entry.key) else {
                    continue;
                };
                if entry.operation != async_nats::jetstream::kv::Operation::Put {
                    self.inner.space_cache.write().remove(&space);
                    continue;
                }
                if let Ok(parsed) = serde_json::from_slice::<SpaceEntry>(&entry.value) {
                    self.cache_space(&space, parsed, entry.revision);
                }
            }
        }
    }

    /// Creates the space in the registry unless it exists; answers the
    /// entry that holds and whether this call created it. Over a deleted
    /// space's sealed tombstone it creates the space anew (a new
    /// generation); over one still being deleted it answers UNAVAILABLE.
    pub(crate) async fn create_space_entry(
        &self,
        space: &str,
        wanted: SpaceEntry,
    ) -> Result<(SpaceEntry, bool), Status> {
        SpaceId::parse(space).map_err(status)?;
        let tombstone = match self.space_record(space).await? {
            Some((e, _)) if !e.deleted => return Ok((e, false)),
            Some((e, _)) if !e.sealed => {
                return Err(unavailable(format!(
                    "memory space {space:?} is being deleted; retry later (a DeleteSpace that was interrupted finishes when DeleteSpace is retried)"
                )))
            }
            Some((_, revision)) => Some(revision),
            None => None,
        };
        // The cluster-wide space limit is kept here, where spaces are
        // created (partition engines take every space the registry has,
        // so that no acked write is refused at apply).
        let limit = self.inner.engine.max_spaces;
        if self.space_count().await? >= limit {
            return Err(status(engram_core::Error::LimitReached {
                what: "memory spaces",
                limit,
                setting: "engine.max_spaces",
            }));
        }
        let value = serde_json::to_vec(&wanted).expect("a space entry serializes");
        let created = match tombstone {
            None => self
                .inner
                .spaces
                .create(space_key(space), value.into())
                .await
                .map_err(|e| e.to_string()),
            Some(revision) => self
                .inner
                .spaces
                .update(space_key(space), value.into(), revision)
                .await
                .map_err(|e| e.to_string()),
        };
        match created {
            Ok(revision) => {
                self.cache_space(space, wanted.clone(), revision);
                Ok((wanted, true))
            }
            Err(create_error) => {
                // Another node created it first (or NATS failed): read
                // it; a read served by a replica may lag the create a
                // little.
                for _ in 0..20 {
                    if let Some((e, _)) = self.space_record_fresh(space).await? {
                        if !e.deleted {
                            return Ok((e, false));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(unavailable(format!(
                    "creating space {space} in the cluster registry failed ({create_error}); retry"
                )))
            }
        }
    }

    /// Makes sure a partition engine holds `space` (as the registry says)
    /// before it applies a record of it or answers for it.
    pub(crate) async fn ensure_local_space(
        &self,
        engine: &engram_core::Engine,
        space: &str,
    ) -> Result<(), Status> {
        if engine.has_space(space) {
            return Ok(());
        }
        let Some(entry) = self.space_entry(space).await? else {
            return Err(Status::not_found(format!(
                "memory space {space:?} does not exist"
            )));
        };
        let ttl = entry
            .default_ttl_secs
            .map(|s| engram_core::model::default_ttl_from_secs(Some(s)))
            .transpose()
            .map_err(|e| Status::internal(e.to_string()))?
            .flatten();
        engine
            .create_space_with_ttl(space, Some(entry.dimension), entry.vector_storage, ttl)
            .await
            .map_err(status)?;
        Ok(())
    }

    /// CreateSpace in cluster mode: the registry entry is the space (the
    /// owner creates it in its engine from there). An existing space with
    /// other settings is ALREADY_EXISTS, as on a single node.
    pub async fn create_space(
        &self,
        space: &str,
        dimension: Option<usize>,
        vector_storage: Option<engram_core::model::VectorStorage>,
        default_ttl: Option<Option<Duration>>,
    ) -> Result<(pb::SpaceInfo, bool), Status> {
        let dimension = dimension.unwrap_or(engram_core::model::DEFAULT_DIMENSION);
        let max = self
            .inner
            .engine
            .max_dimension
            .clamp(1, engram_core::model::MAX_DIMENSION);
        if !(1..=max).contains(&dimension) {
            return Err(Status::invalid_argument(format!(
                "invalid dimension: is {dimension}; this server takes 1 to {max} dimensions (engine.max_dimension)"
            )));
        }
        let wanted = SpaceEntry {
            dimension,
            vector_storage: Some(vector_storage.unwrap_or(self.inner.engine.vector_storage)),
            default_ttl_secs: default_ttl.flatten().map(|d| d.as_secs_f64()),
            ..SpaceEntry::default()
        };
        let (entry, created) = self.create_space_entry(space, wanted.clone()).await?;
        if !created {
            let storage_differs =
                vector_storage.is_some_and(|v| entry.vector_storage.is_some_and(|e| e != v));
            let ttl_differs =
                default_ttl.is_some_and(|t| t.map(|d| d.as_secs_f64()) != entry.default_ttl_secs);
            if entry.dimension != dimension || storage_differs || ttl_differs {
                return Err(Status::already_exists(format!(
                    "memory space {space:?} exists with dimension {}, vector storage {}, default TTL {:?} s",
                    entry.dimension,
                    entry.vector_storage.map_or("default".to_owned(), |v| v.to_string()),
                    entry.default_ttl_secs
                )));
            }
        }
        Ok((space_info(space, &entry), created))
    }

    /// How many spaces the registry holds.
    async fn space_count(&self) -> Result<usize, Status> {
        use futures::StreamExt;
        let mut keys = self
            .inner
            .spaces
            .keys()
            .await
            .map_err(|e| unavailable(format!("reading the space registry: {e}")))?;
        let mut live = 0;
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| unavailable(format!("reading the space registry: {e}")))?;
            if let Some(space) = space_from_key(&key) {
                // Deleted spaces' tombstones do not count.
                if self.space_entry(&space).await?.is_some() {
                    live += 1;
                }
            }
        }
        Ok(live)
    }

    /// Every space in the registry (their counts come from DescribeSpace,
    /// answered by each space's owner).
    pub async fn list_spaces(&self) -> Result<Vec<pb::SpaceInfo>, Status> {
        use futures::StreamExt;
        let mut keys = self
            .inner
            .spaces
            .keys()
            .await
            .map_err(|e| unavailable(format!("reading the space registry: {e}")))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| unavailable(format!("reading the space registry: {e}")))?;
            let Some(space) = space_from_key(&key) else {
                continue;
            };
            if let Some(entry) = self.space_entry(&space).await? {
                out.push(space_info(&space, &entry));
            }
        }
        out.sort_by(|a, b| a.memory_space_id.cmp(&b.memory_space_id));
        Ok(out)
    }

    /// Remember in cluster mode: validate, publish, ack after the PubAck.
    ///
    /// # Errors
    /// INVALID_ARGUMENT as on a single node; RESOURCE_EXHAUSTED when this
    /// node has `max_pending_publishes` writes in flight or the partition's
    /// owner is more than `max_partition_lag` records behind; UNAVAILABLE
    /// when JetStream did not store the write within `publish_timeout_ms`
    /// (retrying with the same episode id is safe).
    pub async fn remember(
        &self,
        space: &str,
        input: engram_core::EpisodeInput,
    ) -> Result<pb::RememberResponse, Status> {
        let done = self.write(space, input, None, None).await?;
        Ok(pb::RememberResponse {
            memory_id: done.memory_id,
            server_sequence: 0,
            committed_at: Some(convert::timestamp(done.committed_at_unix_nanos)),
            duplicate: done.duplicate,
            token: done.token.map(|t| pb::ConsistencyToken {
                partition: t.partition,
                sequence: t.sequence,
            }),
        })
    }

    /// Admission of a write to partition `p`: refused while the
    /// partition's owner is more than `max_partition_lag` records behind
    /// its stream, or while this node has `max_pending_publishes` writes
    /// waiting for their PubAck. The permit is held until the PubAck.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED with a retry-after, naming the setting.
    pub(crate) fn admit(&self, p: u32) -> Result<OwnedSemaphorePermit, Status> {
        use tonic_types::{ErrorDetails, StatusExt};
        let max_lag = self.inner.cfg.max_partition_lag;
        let lag = self.lag(p);
        if max_lag > 0 && lag > max_lag {
            self.inner.metrics.lag_refusals.inc();
            return Err(Status::with_error_details(
                tonic::Code::ResourceExhausted,
                format!(
                    "partition {p}: its owner is {lag} records behind the log (cluster.max_partition_lag {max_lag}); retry later"
                ),
                ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
            ));
        }
        self.inner
            .publish_permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Status::with_error_details(
                    tonic::Code::ResourceExhausted,
                    format!(
                        "this node has {} writes waiting for the cluster's log (cluster.max_pending_publishes); retry later",
                        self.inner.cfg.max_pending_publishes
                    ),
                    ErrorDetails::with_retry_info(Some(PENDING_RETRY_AFTER)),
                )
            })
    }

    /// Validates, publishes and waits for the PubAck. `derived_id` is the
    /// id an episode sent without one gets (a stream's observation: from
    /// its session and sequence number, so that publishing it twice stores
    /// it once; else a new UUID). `permit`: admission already passed
    /// (else it is asked here, after validation).
    pub(crate) async fn write(
        &self,
        space: &str,
        input: engram_core::EpisodeInput,
        derived_id: Option<String>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Remembered, Status> {
        let received = now_unix_nanos();
        SpaceId::parse(space).map_err(status)?;
        let valid = input.clone().validate().map_err(status)?;
        let dimension = valid.embedding.len();
        let max = self
            .inner
            .engine
            .max_dimension
            .clamp(1, engram_core::model::MAX_DIMENSION);
        if dimension > max {
            return Err(Status::invalid_argument(format!(
                "invalid episode.embedding: has {dimension} values; this server takes 1 to {max} dimensions (engine.max_dimension)"
            )));
        }
        // The space as the registry has it, with its generation (the
        // record carries it: a record of a deleted generation is skipped
        // at apply).
        let live = |r: Option<(SpaceEntry, u64)>| r.filter(|(e, _)| !e.deleted);
        let (entry, generation) = match live(self.space_record(space).await?) {
            Some(e) => e,
            None if self.inner.engine.auto_create_spaces => {
                self.create_space_entry(
                    space,
                    SpaceEntry {
                        dimension,
                        ..SpaceEntry::default()
                    },
                )
                .await?;
                live(self.space_record(space).await?).ok_or_else(|| {
                    unavailable(format!(
                        "memory space {space:?} was deleted while this write created it; retry"
                    ))
                })?
            }
            None => {
                return Err(Status::not_found(format!(
                    "memory space {space:?} does not exist"
                )))
            }
        };
        if entry.dimension != dimension {
            return Err(Status::invalid_argument(format!(
                "dimension mismatch in space {space}: expected {}, got {dimension}",
                entry.dimension
            )));
        }
        // Fix everything a replay must not decide anew: the id, the time,
        // the expiry (a TTL counts from here).
        let expires_at = match valid.expiry {
            Some(Expiry::At(t)) => Some(t),
            Some(Expiry::After(d)) => Some(received.saturating_add(d.as_nanos() as i64)),
            None => entry
                .default_ttl_secs
                .map(|s| received.saturating_add((s * 1e9) as i64)),
        };
        if let Some(t) = expires_at {
            if t <= received {
                return Err(Status::invalid_argument(
                    "invalid episode.expires_at: is not in the future by the server's clock",
                ));
            }
        }
        let episode = pb::Episode {
            id: valid
                .id
                .clone()
                .or(derived_id)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            when: Some(convert::timestamp(
                input.when_unix_nanos.unwrap_or(received),
            )),
            what: input.what,
            // As given: the owner's engine normalizes it, as here.
            embedding: input.embedding,
            encoding_confidence: input.encoding_confidence,
            tags: input.tags,
            metadata: input.metadata.into_iter().collect(),
            expires_at: expires_at.map(convert::timestamp),
            ttl_seconds: 0.0,
        };
        let memory_id = episode.id.clone();
        let payload = pb::PartitionRecord {
            memory_space_id: space.to_owned(),
            episode: Some(episode),
            space_generation: generation,
            ..Default::default()
        }
        .encode_to_vec();
        let p = self.partition(space);
        // Of the space's generation too: once a space is deleted and
        // created again, an id it held before is new (JetStream's
        // duplicate window would otherwise answer it as a duplicate of the
        // deleted generation's write, storing nothing).
        let msg_id = {
            let mut h = sha2::Sha256::new();
            h.update(space.as_bytes());
            h.update([0u8]);
            h.update(generation.to_be_bytes());
            h.update(memory_id.as_bytes());
            let d = h.finalize();
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let _permit = match permit {
            Some(permit) => permit,
            None => self.admit(p)?,
        };
        let started = Instant::now();
        let ack = self.publish(p, &msg_id, payload.into()).await?;
        self.inner.metrics.publish_latency(started.elapsed());
        self.inner.parts[p as usize]
            .stream_last
            .fetch_max(ack.sequence, Ordering::Relaxed);
        Ok(Remembered {
            memory_id,
            server_sequence: 0,
            committed_at_unix_nanos: now_unix_nanos(),
            duplicate: ack.duplicate,
            token: Some(ConsistencyToken {
                partition: p,
                sequence: ack.sequence,
            }),
        })
    }

    /// Forget in cluster mode, on the owner of the space's partition:
    /// publishes a forget record to the partition's log, waits until this
    /// node has applied it (after every earlier record), and answers as a
    /// single node: OK, or NOT_FOUND when the memory did not exist.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a bad id; NOT_FOUND for an unknown space or
    /// memory; UNAVAILABLE when this node does not own the partition (the
    /// caller forwards), or lost it before the forget was applied here
    /// (the forget is in the log and will be applied: a retry answers
    /// NOT_FOUND once it is).
    pub async fn forget(&self, space: &str, memory_id: &str) -> Result<(), engram_core::Error> {
        use engram_core::Error;
        let refused = |s: Status| super::sessions::refused(&s);
        SpaceId::parse(space)?;
        if memory_id.is_empty() || memory_id.len() > engram_core::model::MAX_ID_BYTES {
            return Err(Error::InvalidArgument {
                field: "memory_id",
                message: format!("must be 1 to {} bytes", engram_core::model::MAX_ID_BYTES),
            });
        }
        if self.space_entry(space).await.map_err(refused)?.is_none() {
            return Err(Error::SpaceNotFound(space.to_owned()));
        }
        let p = self.partition(space);
        let owned = self.owned_for(p, "a forget")?;
        let record = pb::PartitionRecord {
            memory_space_id: space.to_owned(),
            forget_memory_id: memory_id.to_owned(),
            ..Default::default()
        };
        match self.publish_and_apply(p, &owned, "forget", record).await? {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::MemoryNotFound {
                space: space.to_owned(),
                memory_id: memory_id.to_owned(),
            }),
            Err(not_applied) => Err(refused(unavailable(format!(
                "partition {p}: the forget {not_applied}; it will be applied: a retry answers NOT_FOUND once it is"
            )))),
        }
    }

    /// This node's ownership of partition `p`, for a call only the owner
    /// answers (`what`: for the message).
    fn owned_for(
        &self,
        p: u32,
        what: &str,
    ) -> Result<Arc<super::owner::Owned>, engram_core::Error> {
        self.inner.parts[p as usize]
            .owned
            .read()
            .clone()
            .ok_or_else(|| {
                super::sessions::refused(&unavailable(format!(
                    "partition {p}: this node does not own it; retry ({what} is answered by the owner)"
                )))
            })
    }

    /// The owner's side of a forget or a deletion (`kind`): publishes
    /// `record` to partition `p`'s log (admitted like a write), waits until
    /// this node, as `owned`, has applied it (after every earlier record),
    /// and answers whether the memory or space existed then; `Err` with the
    /// words for the caller's UNAVAILABLE when it was not applied here in
    /// time (the partition may have changed owner).
    ///
    /// # Errors
    /// Admission and publishing, as for a write.
    async fn publish_and_apply(
        &self,
        p: u32,
        owned: &super::owner::Owned,
        kind: &str,
        record: pb::PartitionRecord,
    ) -> Result<Result<bool, String>, engram_core::Error> {
        let refused = |s: Status| super::sessions::refused(&s);
        // Retries of this call's publish store it once; another call with
        // the same arguments is another record.
        let msg_id = format!("{kind}-{}", uuid::Uuid::new_v4());
        let permit = self.admit(p).map_err(refused)?;
        let ack = self
            .publish(p, &msg_id, record.encode_to_vec().into())
            .await
            .map_err(refused)?;
        // Published: no longer a write waiting for the log.
        drop(permit);
        self.inner.parts[p as usize]
            .stream_last
            .fetch_max(ack.sequence, Ordering::Relaxed);
        let wait = Duration::from_millis(self.inner.cfg.read_wait_ms);
        let applied = owned.wait_ready(ack.sequence, wait).await;
        Ok(owned.outcome(ack.sequence).ok_or_else(|| {
            format!(
                "is stored in the log at sequence {} but was not applied here within {} ms (applied: {applied}; the partition may have changed owner)",
                ack.sequence,
                wait.as_millis()
            )
        }))
    }

    /// DeleteSpace in cluster mode, on the owner of the space's partition:
    /// replaces the registry entry by a tombstone (so that no node takes
    /// writes of this generation any more, and the owner skips any still
    /// in the log), publishes a delete record, waits until it is applied
    /// here (after every earlier record), and seals the tombstone (from
    /// then on the space may be created again, as a new generation).
    ///
    /// # Errors
    /// NOT_FOUND for a space that does not exist (or is deleted);
    /// UNAVAILABLE when this node does not own the partition (the caller
    /// forwards) or lost it meanwhile: the deletion then finishes when the
    /// call is retried.
    pub async fn delete_space(&self, space: &str) -> Result<(), engram_core::Error> {
        use engram_core::Error;
        let refused = |s: Status| super::sessions::refused(&s);
        SpaceId::parse(space)?;
        let p = self.partition(space);
        let owned = self.owned_for(p, "a deletion")?;
        // Tombstone the live generation (compare-and-set on its revision),
        // or finish a deletion that was interrupted before its seal.
        let mut attempts = 0;
        let (tombstone, tombstone_revision) = loop {
            attempts += 1;
            match self.space_record_fresh(space).await.map_err(refused)? {
                None => return Err(Error::SpaceNotFound(space.to_owned())),
                Some((e, _)) if e.deleted && e.sealed => {
                    return Err(Error::SpaceNotFound(space.to_owned()))
                }
                Some((e, revision)) if e.deleted => break (e, revision),
                Some((e, generation)) => {
                    let tombstone = SpaceEntry {
                        deleted: true,
                        sealed: false,
                        deleted_generation: generation,
                        ..e
                    };
                    let value = serde_json::to_vec(&tombstone).expect("a space entry serializes");
                    match self
                        .inner
                        .spaces
                        .update(space_key(space), value.into(), generation)
                        .await
                    {
                        Ok(revision) => {
                            self.cache_space(space, tombstone.clone(), revision);
                            break (tombstone, revision);
                        }
                        // Changed meanwhile (another deletion, a write of
                        // the registry): read it again.
                        Err(e) if attempts < 5 => {
                            tracing::debug!(space, error = %e, "tombstoning a space raced; again");
                        }
                        Err(e) => {
                            return Err(refused(unavailable(format!(
                                "deleting space {space}: the registry kept changing ({e}); retry"
                            ))))
                        }
                    }
                }
            }
        };
        let record = pb::PartitionRecord {
            memory_space_id: space.to_owned(),
            delete_space: true,
            space_generation: tombstone.deleted_generation,
            ..Default::default()
        };
        if let Err(not_applied) = self.publish_and_apply(p, &owned, "delete", record).await? {
            return Err(refused(unavailable(format!(
                "partition {p}: the deletion of {space} {not_applied}; retry to finish it"
            ))));
        }
        let sealed = SpaceEntry {
            sealed: true,
            ..tombstone
        };
        let value = serde_json::to_vec(&sealed).expect("a space entry serializes");
        match self
            .inner
            .spaces
            .update(space_key(space), value.into(), tombstone_revision)
            .await
        {
            Ok(revision) => {
                self.cache_space(space, sealed, revision);
            }
            // Another call finishing the same deletion sealed it first.
            Err(e) => tracing::debug!(space, error = %e, "sealing a tombstone raced"),
        }
        Ok(())
    }

    /// Publishes until JetStream stores the record (or the deadline):
    /// every retry carries the same message id, so the stream stores it
    /// once.
    async fn publish(
        &self,
        p: u32,
        msg_id: &str,
        payload: bytes::Bytes,
    ) -> Result<async_nats::jetstream::publish::PublishAck, Status> {
        let deadline = Instant::now() + Duration::from_millis(self.inner.cfg.publish_timeout_ms);
        let mut backoff = Duration::from_millis(50);
        let mut last_error = String::new();
        while Instant::now() < deadline {
            let sent = self
                .inner
                .publisher
                .send_publish(
                    subject(p),
                    PublishMessage::build()
                        .payload(payload.clone())
                        .message_id(msg_id),
                )
                .await;
            let acked = match sent {
                Ok(future) => future.await,
                Err(e) => Err(e),
            };
            match acked {
                // A duplicate with sequence 0 says nothing about where
                // (or whether) the first copy is stored: not an ack.
                Ok(ack) if ack.duplicate && ack.sequence == 0 => {
                    last_error = "JetStream answered duplicate without a sequence".to_owned();
                }
                Ok(ack) => return Ok(ack),
                Err(e) => {
                    if e.kind() == PublishErrorKind::MaxPayloadExceeded {
                        return Err(Status::invalid_argument(format!(
                            "the observation is larger than the NATS server's max_payload: {e}"
                        )));
                    }
                    last_error = e.to_string();
                }
            }
            self.inner.metrics.publish_retries.inc();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(1000));
        }
        Err(unavailable(format!(
            "partition {p}: the cluster's log did not store the write within {} ms ({last_error}); retrying with the same episode id is safe",
            self.inner.cfg.publish_timeout_ms
        )))
    }
}

/// A space as the registry knows it (no counts: those are the owner's).
fn space_info(space: &str, e: &SpaceEntry) -> pb::SpaceInfo {
    pb::SpaceInfo {
        memory_space_id: space.to_owned(),
        dimension: e.dimension as u32,
        vector_storage: e
            .vector_storage
            .map_or(0, |v| convert::vector_storage(v) as i32),
        default_ttl_seconds: e.default_ttl_secs.unwrap_or(0.0),
        ..Default::default()
    }
}

pub(crate) fn unavailable(message: String) -> Status {
    Status::unavailable(message)
}
