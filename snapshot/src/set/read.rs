//! Reads with fallback and hedged requests: chunks (verified, corrupt copies
//! repaired) and manifests.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use super::{DestinationSet, Failures, MemberFailure, SetError};
use crate::chunk::{self, ChunkId};
use crate::destination::DestinationError;
use crate::manifest::Manifest;

/// What a race reads (for its log lines).
#[derive(Clone, Copy)]
enum Target<'a> {
    Chunk { id: &'a ChunkId, block: u64 },
    Manifest { snapshot_id: u64 },
}

/// How a race ended.
struct Raced<T> {
    /// The first answer: the member, how long it took, what it returned.
    winner: Option<(usize, Duration, T)>,
    /// One per member whose request failed, in the order the errors came.
    failures: Vec<MemberFailure>,
}

/// The requests of one read.
struct Race<'o, G, R> {
    /// The candidates best first; the first `asked` were asked.
    order: &'o [usize],
    asked: usize,
    /// Starts the request to one member.
    request: G,
    pending: FuturesUnordered<R>,
    /// Members asked and not answered yet, with when they were asked.
    in_flight: Vec<(usize, Instant)>,
    /// When to hedge if nothing answered: the newest request plus `hedge_after`.
    hedge_at: Instant,
    hedge_after: Duration,
}

impl<G: Fn(usize) -> R, R: Future> Race<'_, G, R> {
    /// Asks the next candidate, if one is left, and returns it.
    fn ask_next(&mut self) -> Option<usize> {
        let &i = self.order.get(self.asked)?;
        self.asked += 1;
        let now = Instant::now();
        self.pending.push((self.request)(i));
        self.in_flight.push((i, now));
        self.hedge_at = now + self.hedge_after;
        Some(i)
    }
}

/// `request`'s answer with member `i` and how long it took from its first poll.
async fn timed<T>(
    i: usize,
    request: impl Future<Output = Result<T, DestinationError>>,
) -> (usize, Duration, Result<T, DestinationError>) {
    let started = Instant::now();
    let answer = request.await;
    (i, started.elapsed(), answer)
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

        let mut corrupt = Vec::new();
        let raced = self
            .race(
                Target::Chunk { id, block },
                &order,
                hedge_after,
                |i| self.members[i].get_chunk(id, max_len),
                |i, error| {
                    let is_holder = holders.contains(&i);
                    self.note_failure(block, id, i, is_holder, error, &mut corrupt);
                },
            )
            .await;
        let Some((i, took, data)) = raced.winner else {
            return Err(SetError::ChunkUnavailable {
                id: *id,
                block,
                failures: Failures(raced.failures),
            });
        };
        self.board.served(i, took, i != order[0]);
        self.repair(block, id, &data, &corrupt).await;
        Ok(data)
    }

    /// Reads the manifest of snapshot `snapshot_id`, which every member holds.
    ///
    /// Candidates are all the members best first, asked like
    /// [`DestinationSet::get_chunk`] asks a chunk's: the best first, the next
    /// one too each time the newest request has not answered within the hedge
    /// deadline (keeping the earlier requests), the next one at once after an
    /// error. Only a store error (e.g. unreachable) counts against a member's
    /// ranking; a missing or unreadable manifest just moves on. The first
    /// manifest read wins and the other requests are dropped. Fails naming
    /// each member's failure if none returned it.
    pub async fn get_manifest(&self, snapshot_id: u64) -> Result<Manifest, SetError> {
        let all: Vec<usize> = (0..self.members.len()).collect();
        let order = self.board.order(&all);
        let hedge_after = self.board.hedge_deadline(&all);
        let raced = self
            .race(
                Target::Manifest { snapshot_id },
                &order,
                hedge_after,
                |i| self.members[i].get_manifest(snapshot_id),
                |i, error| {
                    if matches!(error, DestinationError::Store { .. }) {
                        self.board.failed(i, false);
                    }
                    tracing::debug!(destination = self.members[i].name(), snapshot_id, %error, "manifest read failed; trying the next destination");
                },
            )
            .await;
        let Some((i, took, manifest)) = raced.winner else {
            return Err(SetError::ManifestUnavailable {
                snapshot_id,
                failures: Failures(raced.failures),
            });
        };
        self.board.answered(i, took);
        Ok(manifest)
    }

    /// Asks the members of `order` (best first) with `fetch` until one
    /// answers: the first at once, the next one too each time the newest
    /// request has not answered within `hedge_after` (a hedge, counted),
    /// the next one at once after an error (passed to `on_error`). The first
    /// answer wins; the requests still running are dropped and recorded as
    /// outrun. The caller records the winner.
    async fn race<T, Fut>(
        &self,
        target: Target<'_>,
        order: &[usize],
        hedge_after: Duration,
        fetch: impl Fn(usize) -> Fut,
        mut on_error: impl FnMut(usize, &DestinationError),
    ) -> Raced<T>
    where
        Fut: Future<Output = Result<T, DestinationError>>,
    {
        let mut race = Race {
            order,
            asked: 0,
            request: |i| timed(i, fetch(i)),
            pending: FuturesUnordered::new(),
            in_flight: Vec::new(),
            hedge_at: Instant::now(),
            hedge_after,
        };
        let mut failures = Vec::new();
        let winner = loop {
            if race.pending.is_empty() && race.ask_next().is_none() {
                break None;
            }
            tokio::select! {
                biased;
                Some((i, took, answer)) = race.pending.next() => {
                    race.in_flight.retain(|&(m, _)| m != i);
                    match answer {
                        Ok(value) => break Some((i, took, value)),
                        Err(error) => {
                            on_error(i, &error);
                            failures.push(self.failure(i, error));
                            race.ask_next();
                        }
                    }
                }
                () = tokio::time::sleep_until(race.hedge_at), if race.asked < order.len() => {
                    if let Some(i) = race.ask_next() {
                        self.hedged(target, i);
                    }
                }
            }
        };
        let in_flight = std::mem::take(&mut race.in_flight);
        drop(race);
        for (m, started) in in_flight {
            self.board.outrun(m, started.elapsed());
        }
        Raced { winner, failures }
    }

    /// Counts and logs a hedged request to `i`.
    fn hedged(&self, target: Target<'_>, i: usize) {
        self.board.hedged(i);
        let destination = self.members[i].name();
        match target {
            Target::Chunk { id, block } => {
                tracing::debug!(destination, chunk = %id, block, "hedged chunk read: the earlier request is slow");
            }
            Target::Manifest { snapshot_id } => {
                tracing::debug!(
                    destination,
                    snapshot_id,
                    "hedged manifest read: the earlier request is slow"
                );
            }
        }
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

#[cfg(test)]
#[path = "read_manifest_tests.rs"]
mod manifest_tests;
