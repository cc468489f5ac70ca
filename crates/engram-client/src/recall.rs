//! [`RecallStream`]: the batches of one streaming recall.

use std::pin::Pin;
use std::task::{Context, Poll};

use engram_proto::v1::{RecallResponse, RecalledMemory};
use futures::{Stream, StreamExt};

use crate::error::{ClientError, Result};

/// The batches of one recall, from
/// [`StreamingClient::recall_stream`](crate::StreamingClient::recall_stream).
/// Every batch carries the recall's `snapshot_sequence`; the last has
/// `more == false`. Implements [`Stream`].
pub struct RecallStream {
    inner: tonic::Streaming<RecallResponse>,
}

/// A whole recall, gathered by [`RecallStream::collect_all`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Recalled {
    /// Best first, as the server ranked them.
    pub memories: Vec<RecalledMemory>,
    /// The highest `server_sequence` the recall could see.
    pub snapshot_sequence: u64,
    /// How many batches carried them.
    pub batches: usize,
}

impl RecallStream {
    pub(crate) fn new(inner: tonic::Streaming<RecallResponse>) -> Self {
        RecallStream { inner }
    }

    /// Reads every batch and returns the memories in order.
    ///
    /// # Errors
    ///
    /// The server's status if the recall fails midway;
    /// [`ClientError::Protocol`] if batches disagree on the snapshot or
    /// the stream ends before a batch with `more == false`.
    pub async fn collect_all(mut self) -> Result<Recalled> {
        let mut all = Recalled::default();
        while let Some(batch) = self.next().await {
            let batch = batch?;
            if all.batches > 0 && batch.snapshot_sequence != all.snapshot_sequence {
                return Err(ClientError::Protocol(format!(
                    "recall batches disagree on the snapshot: {} then {}",
                    all.snapshot_sequence, batch.snapshot_sequence
                )));
            }
            all.snapshot_sequence = batch.snapshot_sequence;
            all.batches += 1;
            all.memories.extend(batch.memories);
            if !batch.more {
                return Ok(all);
            }
        }
        Err(ClientError::Protocol(format!(
            "the recall stream ended after {} batches without one marked last (more = false)",
            all.batches
        )))
    }
}

impl Stream for RecallStream {
    type Item = Result<RecallResponse>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner)
            .poll_next(cx)
            .map(|item| item.map(|r| r.map_err(ClientError::from)))
    }
}
