//! The typed records that the engine writes into the WAL's byte payloads.
//! bincode keeps them compact; the WAL frames each with a length and CRC.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{SpaceId, StoredEpisode, VectorStorage};

/// One logged state change. Replaying these in LSN order over a snapshot
/// rebuilds exactly the state that was acked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WalRecord {
    CreateSpace {
        space: SpaceId,
        dimension: usize,
    },
    /// An accepted observation. The first one in a space created without a
    /// dimension also fixes the space's dimension.
    Observe {
        space: SpaceId,
        episode: StoredEpisode,
    },
    Forget {
        space: SpaceId,
        server_sequence: u64,
    },
    DeleteSpace {
        space: SpaceId,
    },
    /// A space created with options beyond its dimension (written for
    /// compact spaces only: a space in RAM is logged as `CreateSpace`, which
    /// builds before this record existed can read). New variants go at the
    /// end: bincode numbers them in order.
    CreateSpaceWith {
        space: SpaceId,
        dimension: usize,
        vector_storage: VectorStorage,
    },
    /// An accepted observation that expires (its episode's bincode layout
    /// does not hold the expiry). Written only for those, so a log without
    /// expiring memories reads in builds before this record.
    ObserveExpiring {
        space: SpaceId,
        episode: StoredEpisode,
        expires_at_unix_nanos: i64,
    },
    /// Memories purged because they expired (removed like `Forget`).
    Expire {
        space: SpaceId,
        server_sequences: Vec<u64>,
    },
    /// A space with a default time to live for its memories (written only
    /// for spaces with one).
    CreateSpaceWithTtl {
        space: SpaceId,
        dimension: usize,
        vector_storage: VectorStorage,
        default_ttl_nanos: u64,
    },
}

impl WalRecord {
    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("WAL records always serialise")
    }

    /// # Errors
    /// [`Error::Storage`] when the bytes are not a record of this version.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        bincode::deserialize(bytes)
            .map_err(|e| Error::Storage(format!("undecodable WAL record: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn records_round_trip() {
        let r = WalRecord::Observe {
            space: SpaceId::parse("s").unwrap(),
            episode: StoredEpisode {
                id: "e1".into(),
                when_unix_nanos: 5,
                what: "hello".into(),
                embedding: Arc::from(vec![0.6f32, 0.8]),
                encoding_confidence: 0.5,
                tags: vec!["t".into()],
                metadata: [("k".to_string(), "v".to_string())].into(),
                server_sequence: 3,
                committed_at_unix_nanos: 9,
                expires_at_unix_nanos: None,
            },
        };
        assert_eq!(WalRecord::decode(&r.encode()).unwrap(), r);
        // The expiry travels beside the episode, whose layout is unchanged.
        let WalRecord::Observe { space, episode } = r else {
            unreachable!()
        };
        let plain = bincode::serialize(&episode).unwrap();
        let e = WalRecord::ObserveExpiring {
            space,
            episode,
            expires_at_unix_nanos: 77,
        };
        assert_eq!(WalRecord::decode(&e.encode()).unwrap(), e);
        assert_eq!(
            bincode::deserialize::<StoredEpisode>(&plain)
                .unwrap()
                .server_sequence,
            3
        );
        assert!(WalRecord::decode(&[0xff, 0xff, 0xff]).is_err());
    }
}
