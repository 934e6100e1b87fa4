//! The MPI communicator (feature `mpi`): rsmpi over the system's MPI library.
//!
//! MPI is started and used by one thread of its own, which takes collectives from a queue in the
//! order the program issues them (the same order on every rank) and drives each non-blocking
//! collective to its end, polling with short sleeps. So a bucket's allreduce runs while the
//! program's own threads go on with backward, a waiting rank does not spin a core its compute
//! threads need, and a collective that waits past the timeout is reported by name instead of
//! hanging the job.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::mpi::collective::SystemOperation;
use ::mpi::request::{Request, Scope};
use ::mpi::topology::SimpleCommunicator;
use ::mpi::traits::*;
use ::mpi::Threading;

use crate::{segment_width, DistError, GradientCompression, PendingReduce, Reduced, Result};

enum Job {
    Allreduce(Vec<f32>, mpsc::Sender<Result<Reduced>>),
    AllreduceCompressed(Vec<f32>, GradientCompression, mpsc::Sender<Result<Reduced>>),
    AllreduceF64(Vec<f64>, mpsc::Sender<Result<Vec<f64>>>),
    Broadcast(Vec<u8>, usize, mpsc::Sender<Result<Vec<u8>>>),
    Barrier(mpsc::Sender<Result<()>>),
    Abort(i32),
}

/// The ranks of an MPI job (`MPI_COMM_WORLD`).
pub struct Mpi {
    rank: usize,
    size: usize,
    library: String,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Mpi {
    /// Starts MPI on a thread of its own. A collective that waits longer than `timeout` for the
    /// other ranks fails with [`DistError::Timeout`].
    pub fn init(timeout: Duration) -> Result<Mpi> {
        let (jobs, queue) = mpsc::channel();
        let (ready, started) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("mpi".into())
            .spawn(move || serve(queue, ready, timeout))
            .map_err(|e| DistError::Mpi(format!("could not start its thread: {e}")))?;
        let (rank, size, library) = started
            .recv()
            .map_err(|_| DistError::Mpi("MPI_Init failed".into()))??;
        tracing::info!(rank, size, library = library.trim(), "MPI started");
        Ok(Mpi {
            rank,
            size,
            library,
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn send(&self, job: Job) -> Result<()> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or_else(|| DistError::Mpi("the communication thread has ended".into()))
    }

    fn call<T>(&self, job: impl FnOnce(mpsc::Sender<Result<T>>) -> Job) -> Result<T> {
        let (reply, result) = mpsc::channel();
        self.send(job(reply))?;
        result
            .recv()
            .unwrap_or_else(|_| Err(DistError::Mpi("the communication thread has ended".into())))
    }
}

impl Drop for Mpi {
    /// Ends the queue, so the thread finalises MPI once the collectives already queued are done.
    fn drop(&mut self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl crate::Communicator for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn describe(&self) -> String {
        // "Open MPI v4.1.4, package: ..., ident: ...": the name and version are enough.
        let library = self.library.split(',').next().unwrap_or("").trim();
        format!("MPI ({library}), {} ranks", self.size)
    }

    fn start_allreduce(&self, data: Vec<f32>) -> Result<PendingReduce> {
        let (reply, result) = mpsc::channel();
        self.send(Job::Allreduce(data, reply))?;
        Ok(PendingReduce::from_channel(result))
    }

    fn start_allreduce_compressed(
        &self,
        data: Vec<f32>,
        format: GradientCompression,
    ) -> Result<PendingReduce> {
        let (reply, result) = mpsc::channel();
        self.send(Job::AllreduceCompressed(data, format, reply))?;
        Ok(PendingReduce::from_channel(result))
    }

    fn allreduce_f64(&self, data: &mut [f64]) -> Result<()> {
        let summed = self.call(|reply| Job::AllreduceF64(data.to_vec(), reply))?;
        data.copy_from_slice(&summed);
        Ok(())
    }

    fn broadcast(&self, data: &mut [u8], root: usize) -> Result<()> {
        if root >= self.size {
            return Err(DistError::Layout(format!(
                "broadcast from rank {root} in a job of {} ranks",
                self.size
            )));
        }
        let received = self.call(|reply| Job::Broadcast(data.to_vec(), root, reply))?;
        data.copy_from_slice(&received);
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.call(Job::Barrier)
    }

    fn abort(&self, code: i32) -> ! {
        if self.send(Job::Abort(code)).is_ok() {
            // MPI_Abort ends this process too.
            loop {
                std::thread::park();
            }
        }
        std::process::exit(code)
    }
}

/// How long a collective is polled without sleeping.
const SPIN: Duration = Duration::from_millis(50);

/// Buffers above this many elements are refused: MPI counts are C ints.
const MAX_COUNT: usize = i32::MAX as usize;

struct Service<'q> {
    world: SimpleCommunicator,
    queue: &'q mpsc::Receiver<Job>,
    timeout: Duration,
    /// Sent buffers kept, by length, as the receive buffers of later allreduces of that length
    /// (the same buckets every step): no fresh memory to fault in.
    spares: RefCell<HashMap<usize, Vec<f32>>>,
    /// The compressed allreduce's 16-bit buffers (what is sent, what arrives), kept likewise.
    wire: RefCell<(Vec<u16>, Vec<u16>)>,
}

impl Service<'_> {
    /// Polls `request` to its end (it returns only then). Past the timeout the error goes to
    /// `report`, and this thread
    /// then serves only an abort: the request still owns its buffers, so MPI is never left
    /// writing into freed memory, and nothing else can be done with a broken job.
    fn complete<'a, D: ?Sized, S: Scope<'a>>(
        &self,
        op: &'static str,
        mut request: Request<'a, D, S>,
        report: impl FnOnce(DistError),
    ) {
        let start = Instant::now();
        loop {
            match request.test() {
                Ok(_) => return,
                Err(still) => request = still,
            }
            if start.elapsed() > self.timeout {
                report(DistError::Timeout {
                    op,
                    rank: self.world.rank() as usize,
                    size: self.world.size() as usize,
                    seconds: start.elapsed().as_secs_f64(),
                });
                self.broken(request);
            }
            // Non-blocking collectives advance only inside MPI_Test: poll often while one is
            // under way (yielding the core to runnable compute threads), then, past SPIN, sleep
            // between polls, so a rank waiting long for a slower one leaves the core alone.
            if start.elapsed() < SPIN {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    fn broken<'a, D: ?Sized, S: Scope<'a>>(&self, _request: Request<'a, D, S>) -> ! {
        loop {
            match self.queue.recv() {
                Ok(Job::Abort(code)) => self.world.abort(code),
                Ok(job) => refuse(job),
                // The program ended without aborting: end the job all the same.
                Err(_) => self.world.abort(1),
            }
        }
    }
}

/// Answers a job on a broken job with an error.
fn refuse(job: Job) {
    let broken = || DistError::Mpi("an earlier collective failed; the job is ending".into());
    match job {
        Job::Allreduce(_, r) => drop(r.send(Err(broken()))),
        Job::AllreduceCompressed(_, _, r) => drop(r.send(Err(broken()))),
        Job::AllreduceF64(_, r) => drop(r.send(Err(broken()))),
        Job::Broadcast(_, _, r) => drop(r.send(Err(broken()))),
        Job::Barrier(r) => drop(r.send(Err(broken()))),
        Job::Abort(_) => {}
    }
}

fn too_large(op: &str, len: usize) -> DistError {
    DistError::Layout(format!(
        "{op} of {len} elements: MPI takes at most {MAX_COUNT} in one call"
    ))
}

/// The MPI thread: initialises MPI, serves the queue in order, finalises MPI when the queue ends.
fn serve(
    queue: mpsc::Receiver<Job>,
    ready: mpsc::Sender<Result<(usize, usize, String)>>,
    timeout: Duration,
) {
    // Only this thread ever calls MPI.
    let Some((universe, _)) = ::mpi::initialize_with_threading(Threading::Funneled) else {
        let _ = ready.send(Err(DistError::Mpi(
            "MPI was already initialised in this process".into(),
        )));
        return;
    };
    let world = universe.world();
    let library = ::mpi::environment::library_version().unwrap_or_default();
    let _ = ready.send(Ok((world.rank() as usize, world.size() as usize, library)));
    let service = Service {
        world,
        queue: &queue,
        timeout,
        spares: RefCell::new(HashMap::new()),
        wire: RefCell::new((Vec::new(), Vec::new())),
    };
    while let Ok(job) = queue.recv() {
        service.run(job);
    }
    drop(universe);
}

impl Service<'_> {
    /// `sum` = the element-wise sum of every rank's `data`, once all have given theirs.
    fn sum_into<T: Equivalence>(&self, data: &[T], sum: &mut [T], report: impl FnOnce(DistError)) {
        ::mpi::request::scope(|scope| {
            let request =
                self.world
                    .immediate_all_reduce_into(scope, data, sum, SystemOperation::sum());
            self.complete("allreduce", request, report);
        });
    }

    /// The compressed allreduce (see [`GradientCompression`]) of `data` into `sum`: every rank's
    /// segment in 16 bits to its owner (all-to-all), the owner's sum in 16 bits to every rank
    /// (all-gather).
    fn sum_compressed(
        &self,
        data: &[f32],
        sum: &mut [f32],
        format: GradientCompression,
        report: impl Fn(DistError),
    ) -> Result<()> {
        let world = &self.world;
        let ranks = world.size() as usize;
        let width = segment_width(data.len(), ranks);
        let piece = width + 1;
        if piece * ranks > MAX_COUNT {
            return Err(too_large("allreduce", piece * ranks));
        }
        let segment = |r: usize| (r * width).min(data.len())..((r + 1) * width).min(data.len());
        let mut wire = self.wire.borrow_mut();
        let (pieces, received) = &mut *wire;
        pieces.clear();
        for r in 0..ranks {
            format.encode_piece(&data[segment(r)], width, pieces);
        }
        received.resize(piece * ranks, 0);
        ::mpi::request::scope(|scope| {
            let request = world.immediate_all_to_all_into(scope, &pieces[..], &mut received[..]);
            self.complete("allreduce", request, &report);
        });
        let own = &mut sum[segment(world.rank() as usize)];
        own.fill(0.0);
        for part in received.chunks_exact(piece) {
            format.add_piece(part, own);
        }
        pieces.clear();
        format.encode_piece(own, width, pieces);
        ::mpi::request::scope(|scope| {
            let request = world.immediate_all_gather_into(scope, &pieces[..], &mut received[..]);
            self.complete("allreduce", request, &report);
        });
        sum.fill(0.0);
        for (r, part) in received.chunks_exact(piece).enumerate() {
            format.add_piece(part, &mut sum[segment(r)]);
        }
        Ok(())
    }

    fn run(&self, job: Job) {
        let world = &self.world;
        match job {
            Job::Allreduce(data, reply) => {
                if data.len() > MAX_COUNT {
                    let _ = reply.send(Err(too_large("allreduce", data.len())));
                    return;
                }
                let start = Instant::now();
                let spare = self.spares.borrow_mut().remove(&data.len());
                let mut sum = spare.unwrap_or_else(|| vec![0.0f32; data.len()]);
                self.sum_into(&data, &mut sum, |e| drop(reply.send(Err(e))));
                let seconds = start.elapsed().as_secs_f64();
                let _ = reply.send(Ok(Reduced { data: sum, seconds }));
                self.spares.borrow_mut().insert(data.len(), data);
            }
            Job::AllreduceCompressed(data, format, reply) => {
                let start = Instant::now();
                let spare = self.spares.borrow_mut().remove(&data.len());
                let mut sum = spare.unwrap_or_else(|| vec![0.0f32; data.len()]);
                match self.sum_compressed(&data, &mut sum, format, |e| drop(reply.send(Err(e)))) {
                    Ok(()) => {
                        let seconds = start.elapsed().as_secs_f64();
                        let _ = reply.send(Ok(Reduced { data: sum, seconds }));
                        self.spares.borrow_mut().insert(data.len(), data);
                    }
                    Err(e) => drop(reply.send(Err(e))),
                }
            }
            Job::AllreduceF64(data, reply) => {
                // Counts and loss sums: a few values.
                let mut sum = vec![0.0f64; data.len()];
                self.sum_into(&data, &mut sum, |e| drop(reply.send(Err(e))));
                let _ = reply.send(Ok(sum));
            }
            Job::Broadcast(mut data, root, reply) => {
                if data.len() > MAX_COUNT {
                    let _ = reply.send(Err(too_large("broadcast", data.len())));
                    return;
                }
                ::mpi::request::scope(|scope| {
                    let request = world
                        .process_at_rank(root as i32)
                        .immediate_broadcast_into(scope, &mut data[..]);
                    self.complete("broadcast", request, |e| drop(reply.send(Err(e))));
                });
                let _ = reply.send(Ok(data));
            }
            Job::Barrier(reply) => {
                let request = world.immediate_barrier();
                self.complete("barrier", request, |e| drop(reply.send(Err(e))));
                let _ = reply.send(Ok(()));
            }
            Job::Abort(code) => world.abort(code),
        }
    }
}
