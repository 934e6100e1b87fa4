//! Ranks as threads of one process: the data-parallel code's behaviour (splitting, averaging,
//! failures) without an MPI installation, for tests and experiments. Every collective gathers
//! all ranks' contributions and each rank combines them in rank order, so the result is the
//! same, to the bit, on every rank.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{Communicator, DistError, GradientCompression, PendingReduce, Reduced, Result};

#[derive(Clone)]
enum Payload {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<u8>),
    Nothing,
}

struct Round {
    slots: Vec<Option<Payload>>,
    arrived: usize,
    departed: usize,
    /// Every rank has arrived; the round is being read and must not be joined.
    draining: bool,
    /// Ranks whose communicator was dropped.
    gone: Vec<bool>,
}

struct Shared {
    size: usize,
    timeout: Duration,
    round: Mutex<Round>,
    changed: Condvar,
}

/// One rank of a group of threads made by [`LocalGroup::new`]. Dropping it leaves the group: the
/// others' collectives then fail with [`DistError::PeerGone`] instead of waiting.
pub struct LocalGroup {
    rank: usize,
    shared: Arc<Shared>,
}

impl LocalGroup {
    /// `size` communicators, one per rank, to be moved into `size` threads. A collective that
    /// waits longer than `timeout` for the others fails with [`DistError::Timeout`].
    pub fn new(size: usize, timeout: Duration) -> Vec<LocalGroup> {
        let size = size.max(1);
        let shared = Arc::new(Shared {
            size,
            timeout,
            round: Mutex::new(Round {
                slots: vec![None; size],
                arrived: 0,
                departed: 0,
                draining: false,
                gone: vec![false; size],
            }),
            changed: Condvar::new(),
        });
        (0..size)
            .map(|rank| LocalGroup {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Round> {
        self.shared
            .round
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits on the condition until `ready` holds, failing on a departed rank or the timeout.
    fn wait_until<'a>(
        &self,
        op: &'static str,
        start: Instant,
        mut round: MutexGuard<'a, Round>,
        ready: impl Fn(&Round) -> bool,
    ) -> Result<MutexGuard<'a, Round>> {
        while !ready(&round) {
            if let Some(gone) = round.gone.iter().position(|&g| g) {
                return Err(DistError::PeerGone {
                    op,
                    rank: self.rank,
                    size: self.shared.size,
                    gone,
                });
            }
            let left = self.shared.timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(DistError::Timeout {
                    op,
                    rank: self.rank,
                    size: self.shared.size,
                    seconds: start.elapsed().as_secs_f64(),
                });
            }
            round = self
                .shared
                .changed
                .wait_timeout(round, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        Ok(round)
    }

    /// Every rank's contribution, in rank order.
    fn exchange(&self, op: &'static str, payload: Payload) -> Result<Vec<Payload>> {
        let start = Instant::now();
        let round = self.wait_until(op, start, self.lock(), |r| !r.draining)?;
        let mut round = round;
        round.slots[self.rank] = Some(payload);
        round.arrived += 1;
        if round.arrived == self.shared.size {
            round.draining = true;
            self.shared.changed.notify_all();
        }
        let mut round = self.wait_until(op, start, round, |r| r.draining)?;
        let all = round.slots.iter().flatten().cloned().collect();
        round.departed += 1;
        if round.departed == self.shared.size {
            round.slots.iter_mut().for_each(|s| *s = None);
            round.arrived = 0;
            round.departed = 0;
            round.draining = false;
            self.shared.changed.notify_all();
        }
        Ok(all)
    }

    fn layout(op: &str, detail: String) -> DistError {
        DistError::Layout(format!(
            "{op}: the ranks gave buffers of different lengths ({detail})"
        ))
    }
}

impl Drop for LocalGroup {
    fn drop(&mut self) {
        let mut round = self.lock();
        round.gone[self.rank] = true;
        self.shared.changed.notify_all();
    }
}

impl Communicator for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn describe(&self) -> String {
        format!("{} threads of one process", self.shared.size)
    }

    fn start_allreduce(&self, data: Vec<f32>) -> Result<PendingReduce> {
        let start = Instant::now();
        let len = data.len();
        let all = self.exchange("allreduce", Payload::F32(data))?;
        let mut sum = vec![0.0f32; len];
        for part in all {
            match part {
                Payload::F32(v) if v.len() == len => {
                    sum.iter_mut().zip(&v).for_each(|(s, x)| *s += x);
                }
                _ => return Err(Self::layout("allreduce", format!("{len} here"))),
            }
        }
        Ok(PendingReduce::ready(Ok(Reduced {
            data: sum,
            seconds: start.elapsed().as_secs_f64(),
        })))
    }

    fn start_allreduce_compressed(
        &self,
        data: Vec<f32>,
        format: GradientCompression,
    ) -> Result<PendingReduce> {
        let start = Instant::now();
        let len = data.len();
        let all = self.exchange("allreduce", Payload::F32(data))?;
        let mut buffers = Vec::with_capacity(all.len());
        for part in &all {
            match part {
                Payload::F32(v) if v.len() == len => buffers.push(v.as_slice()),
                _ => return Err(Self::layout("allreduce", format!("{len} here"))),
            }
        }
        let data = format.reduce_all(&buffers, self.shared.size);
        Ok(PendingReduce::ready(Ok(Reduced {
            data,
            seconds: start.elapsed().as_secs_f64(),
        })))
    }

    fn allreduce_f64(&self, data: &mut [f64]) -> Result<()> {
        let all = self.exchange("allreduce", Payload::F64(data.to_vec()))?;
        data.fill(0.0);
        for part in all {
            match part {
                Payload::F64(v) if v.len() == data.len() => {
                    data.iter_mut().zip(&v).for_each(|(s, x)| *s += x);
                }
                _ => return Err(Self::layout("allreduce", format!("{} here", data.len()))),
            }
        }
        Ok(())
    }

    fn broadcast(&self, data: &mut [u8], root: usize) -> Result<()> {
        let all = self.exchange("broadcast", Payload::Bytes(data.to_vec()))?;
        match all.get(root) {
            Some(Payload::Bytes(v)) if v.len() == data.len() => data.copy_from_slice(v),
            _ => return Err(Self::layout("broadcast", format!("{} here", data.len()))),
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.exchange("barrier", Payload::Nothing).map(drop)
    }

    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}
