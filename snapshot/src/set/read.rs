//! Chunk reads with fallback, hedged requests and repair of corrupt copies.

use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use super::{DestinationSet, Failures, SetError};
use crate::chunk::{self, ChunkId};
use crate::destination::DestinationError;

type Answer = (usize, Duration, Result<Vec<u8>, DestinationError>);

/// The requests of one chunk read.
struct Race<F> {
    pending: FuturesUnordered<F>,
    /// Members asked and not answered yet, with when they were asked.
    in_flight: Vec<(usize, Instant)>,
    /// When to hedge if nothing answered: the newest request plus `hedge_after`.
    hedge_at: Instant,
    hedge_after: Duration,
}

impl<F: std::future::Future<Output = Answer>> Race<F> {
    fn start(&mut self, member: usize, request: F) {
        let now = Instant::now();
        self.pending.push(request);
        self.in_flight.push((member, now));
        self.hedge_at = now + self.hedge_after;
    }
}

impl DestinationSet {
    /// Reads block `block`'s chunk `id` (at most `max_len` bytes
    /// uncompressed), verified against `id`.
    ///
    /// Candidates are the block's holders best first (latency average, members
    /// with a recent error last), then the other members: a chunk may be
    /// found elsewhere, e.g. after a copy, and a miss there is expected, not a
    /// destination error. The best candidate is asked first; each time the
    /// newest request has not answered within the hedge deadline
    /// (see [`SetOptions`](super::SetOptions)), the next candidate is asked
    /// too, keeping the earlier requests. An error (unreachable, missing,
    /// failed verification) asks the next candidate at once. The first
    /// verified answer wins and the other requests are dropped.
    ///
    /// A member that returned a corrupt copy is repaired before this returns:
    /// the verified chunk is encoded again and stored there (best effort:
    /// a failed repair is logged, the read still succeeds). Fails naming each
    /// member's failure if none served the chunk.
    pub async fn get_chunk(
        &self,
        block: u64,
        id: &ChunkId,
        max_len: usize,
    ) -> Result<Vec<u8>, SetError> {
        let holders = self.holders(block);
        let others: Vec<usize> = (0..self.members.len())
            .filter(|i| !holders.contains(i))
            .collect();
        let mut order = self.board.order(&holders);
        order.extend(self.board.order(&others));
        let hedge_after = self.board.hedge_deadline(&holders);

        let mut race = Race {
            pending: FuturesUnordered::new(),
            in_flight: Vec::new(),
            hedge_at: Instant::now(),
            hedge_after,
        };
        let mut next = 0;
        let mut failures = Vec::new();
        let mut corrupt = Vec::new();
        let winner = loop {
            if race.pending.is_empty() {
                let Some(&i) = order.get(next) else {
                    break None;
                };
                next += 1;
                race.start(i, self.fetch(i, id, max_len));
            }
            tokio::select! {
                biased;
                Some((i, took, answer)) = race.pending.next() => {
                    race.in_flight.retain(|&(m, _)| m != i);
                    match answer {
                        Ok(data) => break Some((i, took, data)),
                        Err(error) => {
                            let is_holder = holders.contains(&i);
                            self.note_failure(block, id, i, is_holder, &error, &mut corrupt);
                            failures.push(self.failure(i, error));
                            if let Some(&i) = order.get(next) {
                                next += 1;
                                race.start(i, self.fetch(i, id, max_len));
                            }
                        }
                    }
                }
                () = tokio::time::sleep_until(race.hedge_at), if next < order.len() => {
                    let i = order[next];
                    next += 1;
                    self.board.hedged(i);
                    tracing::debug!(destination = self.members[i].name(), chunk = %id, block, "hedged chunk read: the earlier request is slow");
                    race.start(i, self.fetch(i, id, max_len));
                }
            }
        };
        let in_flight = std::mem::take(&mut race.in_flight);
        drop(race);
        let Some((i, took, data)) = winner else {
            return Err(SetError::ChunkUnavailable {
                id: *id,
                block,
                failures: Failures(failures),
            });
        };
        self.board.served(i, took, i != order[0]);
        for (m, started) in in_flight {
            self.board.outrun(m, started.elapsed());
        }
        self.repair(block, id, &data, &corrupt).await;
        Ok(data)
    }

    async fn fetch(&self, i: usize, id: &ChunkId, max_len: usize) -> Answer {
        let started = Instant::now();
        let answer = self.members[i].get_chunk(id, max_len).await;
        (i, started.elapsed(), answer)
    }

    fn note_failure(
        &self,
        block: u64,
        id: &ChunkId,
        i: usize,
        is_holder: bool,
        error: &DestinationError,
        corrupt: &mut Vec<usize>,
    ) {
        let name = self.members[i].name();
        match error {
            // Not a holder: the chunk is only there after a copy, if at all.
            DestinationError::NotFound { .. } if !is_holder => {}
            DestinationError::Chunk { .. } | DestinationError::ObjectTooLarge { .. } => {
                self.board.failed(i, true);
                corrupt.push(i);
                tracing::warn!(destination = name, chunk = %id, block, %error, "corrupt chunk copy; reading another destination");
            }
            _ => {
                self.board.failed(i, false);
                tracing::debug!(destination = name, chunk = %id, block, %error, "chunk read failed; trying the next destination");
            }
        }
    }

    /// Stores the verified `data` of chunk `id` in each member of `corrupt`.
    async fn repair(&self, block: u64, id: &ChunkId, data: &[u8], corrupt: &[usize]) {
        if corrupt.is_empty() {
            return;
        }
        let (encoded_id, stored) = chunk::encode(data);
        if encoded_id != *id {
            // Cannot happen: `data` was verified against `id`.
            tracing::warn!(chunk = %id, block, "not repairing: the verified data hashes to {encoded_id}");
            return;
        }
        let stored = Bytes::from(stored);
        let puts = corrupt.iter().map(|&i| {
            let stored = stored.clone();
            async move { (i, self.members[i].put_chunk_bytes(id, stored).await) }
        });
        for (i, result) in join_all(puts).await {
            let name = self.members[i].name();
            match result {
                Ok(()) => {
                    self.board.repaired(i);
                    tracing::warn!(destination = name, chunk = %id, block, "repaired a corrupt chunk copy with verified data from another destination");
                }
                Err(error) => {
                    tracing::warn!(destination = name, chunk = %id, block, %error, "could not repair a corrupt chunk copy");
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "read_tests.rs"]
mod tests;
