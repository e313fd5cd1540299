//! [`FaultProxy`]: a TCP proxy on 127.0.0.1 between a node and its server that breaks
//! connections by a seeded schedule: it delays, drops, truncates, resets and stalls them.
//!
//! Faults come two ways, both from the [`FaultSchedule`]:
//!
//! * **per connection**: every accepted connection gets one [`Fault`], chosen by the
//!   connection's number alone (connection 0, 1, 2, ... of this proxy);
//! * **per chunk**: an HTTP client keeps its connections alive, so one clean connection may
//!   carry a whole run. A seeded schedule therefore also draws, for every chunk forwarded
//!   (at most 16 KiB, one read of the socket), whether a fault starts inside it: a delay of
//!   that chunk, or a truncate, reset or (optionally) stall at a byte within it.
//!
//! The draws are functions of the seed and of (connection, direction, chunk) numbers, so a
//! seed names the same faults on every run; which request a connection carries, and where
//! the socket's reads cut the chunks, depends on timing, so a seed fixes the faults, not the
//! whole run.
//!
//! Byte offsets count the bytes of one direction of one connection: with keep-alive, they
//! may fall in the first request or in any later one, in its head or in its body.
//! [`FaultProxy::heal`] turns the proxy into a clean pipe, for new connections and for the
//! bytes still to flow on open ones (a stalled connection resumes).
//!
//! ```no_run
//! # async fn demo(server: std::net::SocketAddr) -> std::io::Result<()> {
//! use sync_testkit::proxy::{FaultMix, FaultProxy, FaultSchedule};
//!
//! let proxy = FaultProxy::start(server, FaultSchedule::seeded(7, FaultMix::default())).await?;
//! let url = proxy.url(); // point the node's HTTP client here
//! // ... rounds under faults ...
//! proxy.heal();
//! println!("{:?}", proxy.counts());
//! # Ok(()) }
//! ```

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::{JoinHandle, JoinSet},
    time::Instant,
};

/// How much one read of a socket forwards at most.
const CHUNK: usize = 16 * 1024;

/// Chunks read ahead of the writer in each direction: 1 MiB in flight, so a delayed
/// connection still moves 1 MiB per delay; bounded, so a stalled writer stops the reader
/// and the sender sees TCP backpressure, as behind a real black hole.
const READ_AHEAD: usize = 64;

/// Which way bytes flow through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    /// From the client (the node) to the upstream server: requests.
    ToServer,
    /// From the upstream server to the client: responses.
    ToClient,
}

/// What the proxy does to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// A clean pipe.
    Pass,
    /// Latency: every chunk reaches the other side this much later than it arrived, both
    /// ways (throughput is unchanged).
    Delay(Duration),
    /// Accepted, then closed at once without connecting upstream or forwarding a byte.
    Drop,
    /// Forwards the first `after` bytes of `flow`, then closes both sides (FIN).
    Truncate {
        /// The direction whose bytes are counted.
        flow: Flow,
        /// Bytes forwarded before the cut.
        after: usize,
    },
    /// Forwards the first `after` bytes of `flow`, then resets the client's connection (RST:
    /// `SO_LINGER` zero, then close) and closes the upstream one.
    Reset {
        /// The direction whose bytes are counted.
        flow: Flow,
        /// Bytes forwarded before the reset.
        after: usize,
    },
    /// Forwards the first `after` bytes of `flow`, then nothing more either way, holding
    /// both connections open (a black hole) until the proxy heals or is dropped.
    Stall {
        /// The direction whose bytes are counted.
        flow: Flow,
        /// Bytes forwarded before the stall (0: accepted, never forwarded).
        after: usize,
    },
}

impl Fault {
    /// The byte threshold of a truncate, reset or stall: the direction and offset.
    fn threshold(&self) -> Option<(Flow, usize)> {
        match *self {
            Fault::Truncate { flow, after }
            | Fault::Reset { flow, after }
            | Fault::Stall { flow, after } => Some((flow, after)),
            _ => None,
        }
    }
}

/// The relative weights of the faults a seeded schedule draws, and their ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FaultMix {
    /// Weight of [`Fault::Pass`].
    pub pass: u32,
    /// Weight of [`Fault::Delay`].
    pub delay: u32,
    /// Weight of [`Fault::Drop`].
    pub drop: u32,
    /// Weight of [`Fault::Truncate`].
    pub truncate: u32,
    /// Weight of [`Fault::Reset`].
    pub reset: u32,
    /// Weight of [`Fault::Stall`].
    pub stall: u32,
    /// Longest delay drawn (at least 1 ms).
    pub max_delay: Duration,
    /// Offsets of truncates and resets (and mid-stream stalls) are drawn below this; half
    /// of them below 2 KiB, where request and response heads are.
    pub max_offset: usize,
    /// Whether stalls may start mid-stream (at a drawn offset, or inside any chunk) rather
    /// than only at a connection's first byte. A mid-stream stall can fall inside a blob
    /// body.
    pub mid_stream_stalls: bool,
    /// Per 1000 chunks forwarded, how many start a fault (drawn from the weights above,
    /// without pass and drop; stalls only with [`mid_stream_stalls`](Self::mid_stream_stalls)).
    pub chunk_faults_per_mille: u32,
}

impl Default for FaultMix {
    fn default() -> Self {
        Self {
            pass: 50,
            delay: 15,
            drop: 8,
            truncate: 10,
            reset: 10,
            stall: 7,
            max_delay: Duration::from_millis(200),
            max_offset: 1 << 20,
            mid_stream_stalls: false,
            chunk_faults_per_mille: 15,
        }
    }
}

impl FaultMix {
    /// Sets the weights of pass, delay, drop, truncate, reset and stall, in that order.
    pub fn with_weights(
        mut self,
        pass: u32,
        delay: u32,
        drop: u32,
        truncate: u32,
        reset: u32,
        stall: u32,
    ) -> Self {
        (
            self.pass,
            self.delay,
            self.drop,
            self.truncate,
            self.reset,
            self.stall,
        ) = (pass, delay, drop, truncate, reset, stall);
        self
    }

    /// Sets the longest delay.
    pub fn with_max_delay(mut self, max: Duration) -> Self {
        self.max_delay = max;
        self
    }

    /// Sets the bound of drawn byte offsets (at least 1).
    pub fn with_max_offset(mut self, bytes: usize) -> Self {
        self.max_offset = bytes.max(1);
        self
    }

    /// Lets stalls start mid-stream.
    pub fn with_mid_stream_stalls(mut self, on: bool) -> Self {
        self.mid_stream_stalls = on;
        self
    }

    /// Sets how many chunks per 1000 start a fault (0: faults per connection only).
    pub fn with_chunk_faults_per_mille(mut self, n: u32) -> Self {
        self.chunk_faults_per_mille = n.min(1000);
        self
    }

    /// The fault starting in one chunk, if any: a delay, or a truncate, reset or stall
    /// whose `after` is an offset into the chunk (taken modulo its length).
    fn draw_in_chunk(&self, rng: &mut Rng) -> Option<Fault> {
        if rng.below(1000) >= u64::from(self.chunk_faults_per_mille) {
            return None;
        }
        let stall = if self.mid_stream_stalls {
            self.stall
        } else {
            0
        };
        let mix = FaultMix {
            pass: 0,
            drop: 0,
            stall,
            max_offset: CHUNK,
            ..self.clone()
        };
        match mix.draw(rng) {
            Fault::Pass | Fault::Drop => None,
            f => Some(f),
        }
    }

    fn draw(&self, rng: &mut Rng) -> Fault {
        let weights = [
            self.pass,
            self.delay,
            self.drop,
            self.truncate,
            self.reset,
            self.stall,
        ];
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        if total == 0 {
            return Fault::Pass;
        }
        let mut pick = rng.below(total);
        let mut kind = 0;
        for (i, w) in weights.iter().enumerate() {
            if pick < u64::from(*w) {
                kind = i;
                break;
            }
            pick -= u64::from(*w);
        }
        let flow = if rng.below(2) == 0 {
            Flow::ToServer
        } else {
            Flow::ToClient
        };
        let mut offset = || {
            let bound = if rng.below(2) == 0 {
                2048
            } else {
                self.max_offset
            };
            rng.below(bound.max(1) as u64) as usize
        };
        match kind {
            0 => Fault::Pass,
            1 => {
                let max = self.max_delay.as_millis().max(1) as u64;
                Fault::Delay(Duration::from_millis(1 + rng.below(max)))
            }
            2 => Fault::Drop,
            3 => Fault::Truncate {
                flow,
                after: offset(),
            },
            4 => Fault::Reset {
                flow,
                after: offset(),
            },
            _ => Fault::Stall {
                flow,
                after: if self.mid_stream_stalls { offset() } else { 0 },
            },
        }
    }
}

/// Which fault each connection gets, by its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSchedule(Plan);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    Seeded { seed: u64, mix: FaultMix },
    Always(Fault),
    Script(Vec<Fault>),
}

impl FaultSchedule {
    /// Faults drawn from `mix`; connection `n`'s fault is a function of `(seed, n)` only.
    pub fn seeded(seed: u64, mix: FaultMix) -> Self {
        Self(Plan::Seeded { seed, mix })
    }

    /// The same fault on every connection.
    pub fn always(fault: Fault) -> Self {
        Self(Plan::Always(fault))
    }

    /// `faults[n]` for connection `n`, then clean pipes.
    pub fn script(faults: Vec<Fault>) -> Self {
        Self(Plan::Script(faults))
    }

    /// Clean pipes only.
    pub fn clean() -> Self {
        Self::always(Fault::Pass)
    }

    /// The fault that starts in chunk `chunk` of direction `flow` of connection `n`, if
    /// any (seeded schedules only). A truncate's, reset's or stall's `after` is an offset
    /// into the chunk, taken modulo its length.
    pub fn chunk_fault(&self, n: u64, flow: Flow, chunk: u64) -> Option<Fault> {
        let Plan::Seeded { seed, mix } = &self.0 else {
            return None;
        };
        let way = match flow {
            Flow::ToServer => 1u64,
            Flow::ToClient => 2,
        };
        let mut rng = Rng(splitmix(
            seed ^ n.wrapping_add(1).wrapping_mul(0xA076_1D64_78BD_642F)
                ^ chunk.wrapping_add(1).wrapping_mul(0xE703_7ED1_A0B4_28DB)
                ^ way.wrapping_mul(0x8EBC_6AF0_9C88_C6E3),
        ));
        let mut fault = mix.draw_in_chunk(&mut rng)?;
        // Only the offset matters for a chunk fault; the direction is the chunk's.
        match &mut fault {
            Fault::Truncate { flow: f, .. }
            | Fault::Reset { flow: f, .. }
            | Fault::Stall { flow: f, .. } => *f = flow,
            _ => {}
        }
        Some(fault)
    }

    /// The fault of connection number `n`.
    pub fn fault_for(&self, n: u64) -> Fault {
        match &self.0 {
            Plan::Seeded { seed, mix } => {
                let mut rng = Rng(splitmix(
                    seed ^ n.wrapping_add(1).wrapping_mul(0xA076_1D64_78BD_642F),
                ));
                mix.draw(&mut rng)
            }
            Plan::Always(f) => *f,
            Plan::Script(faults) => usize::try_from(n)
                .ok()
                .and_then(|i| faults.get(i))
                .copied()
                .unwrap_or(Fault::Pass),
        }
    }
}

/// How many connections the proxy took and which faults fired on them, whether a
/// connection's own fault or a chunk fault.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FaultCounts {
    /// Connections accepted.
    pub connections: u64,
    /// Connections that drew [`Fault::Pass`] or were accepted healed (chunk faults may
    /// still hit the former).
    pub passed: u64,
    /// Connections on which at least one chunk was delayed.
    pub delayed: u64,
    /// Connections dropped at once.
    pub dropped: u64,
    /// Connections truncated (at their byte threshold).
    pub truncated: u64,
    /// Connections reset (at their byte threshold).
    pub reset: u64,
    /// Connections that stalled.
    pub stalled: u64,
}

impl FaultCounts {
    /// Faults that fired (everything but `connections` and `passed`).
    pub fn faults(&self) -> u64 {
        self.delayed + self.dropped + self.truncated + self.reset + self.stalled
    }
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    passed: AtomicU64,
    delayed: AtomicU64,
    dropped: AtomicU64,
    truncated: AtomicU64,
    reset: AtomicU64,
    stalled: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Shared {
    upstream: SocketAddr,
    schedule: Mutex<FaultSchedule>,
    healed: watch::Sender<bool>,
    next: AtomicU64,
    counters: Counters,
}

/// A fault-injecting TCP proxy listening on 127.0.0.1 (an ephemeral port) and forwarding to
/// an upstream address on loopback. Dropping it closes the listener and every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("healed", &*self.shared.healed.borrow())
            .field("counts", &self.counts())
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (which must be a loopback address) on the current tokio
    /// runtime.
    pub async fn start(upstream: SocketAddr, schedule: FaultSchedule) -> io::Result<Self> {
        if !upstream.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the fault proxy only forwards to loopback, not {upstream}"),
            ));
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            schedule: Mutex::new(schedule),
            healed: watch::Sender::new(false),
            next: AtomicU64::new(0),
            counters: Counters::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the base URL of the proxied server.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes the proxy a clean pipe: new connections pass, open ones forward the rest of
    /// their bytes without faults, and stalled ones resume.
    pub fn heal(&self) {
        self.shared.healed.send_replace(true);
    }

    /// Whether the proxy is healed.
    pub fn is_healed(&self) -> bool {
        *self.shared.healed.borrow()
    }

    /// Breaks the proxy again with `schedule`, for connections accepted from now on (their
    /// numbering continues).
    pub fn set_schedule(&self, schedule: FaultSchedule) {
        *self
            .shared
            .schedule
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = schedule;
        self.shared.healed.send_replace(false);
    }

    /// Connections taken and faults fired so far.
    pub fn counts(&self) -> FaultCounts {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FaultCounts {
            connections: get(&c.connections),
            passed: get(&c.passed),
            delayed: get(&c.delayed),
            dropped: get(&c.dropped),
            truncated: get(&c.truncated),
            reset: get(&c.reset),
            stalled: get(&c.stalled),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet): aborting it drops them all.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors or the like: the clients see refused or timed-out
            // connections, which is a fault too. Try again.
            tokio::task::yield_now().await;
            continue;
        };
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        bump(&shared.counters.connections);
        let schedule = Arc::new(
            shared
                .schedule
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        );
        let fault = if *shared.healed.borrow() {
            Fault::Pass
        } else {
            schedule.fault_for(n)
        };
        connections.spawn(connection(client, n, fault, schedule, shared.clone()));
    }
}

/// Why a connection ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    /// Close both sides (a truncate fired, or a socket failed).
    Close,
    /// Reset the client's side.
    Reset,
}

async fn connection(
    mut client: TcpStream,
    n: u64,
    fault: Fault,
    schedule: Arc<FaultSchedule>,
    shared: Arc<Shared>,
) {
    let _ = client.set_nodelay(true);
    let counters = &shared.counters;
    match fault {
        Fault::Pass => bump(&counters.passed),
        Fault::Drop => {
            bump(&counters.dropped);
            return;
        }
        _ => {}
    }
    let Ok(mut upstream) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    let conn = Conn {
        n,
        fault,
        schedule,
        shared: shared.clone(),
        kill: watch::channel(None).0,
        stalled: watch::channel(false).0,
        delayed: AtomicBool::new(false),
    };
    let ends = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        tokio::join!(
            conn.pipe(Flow::ToServer, cr, uw),
            conn.pipe(Flow::ToClient, ur, cw)
        );
        *conn.kill.borrow()
    };
    if ends == Some(Kill::Reset) {
        // An abortive close: the client reads ECONNRESET, not an orderly end of stream.
        let _ = client.set_zero_linger();
    }
    drop(client);
    drop(upstream);
}

/// One proxied connection: its number, its fault, and what its two directions share.
struct Conn {
    n: u64,
    fault: Fault,
    schedule: Arc<FaultSchedule>,
    shared: Arc<Shared>,
    /// Set once: both directions end, and how.
    kill: watch::Sender<Option<Kill>>,
    /// Set once a stall fired: both directions hold their bytes until healed.
    stalled: watch::Sender<bool>,
    /// Whether the `delayed` counter has counted this connection.
    delayed: AtomicBool,
}

impl Conn {
    fn healed(&self) -> bool {
        *self.shared.healed.borrow()
    }

    fn end(&self, how: Kill) {
        self.kill.send_if_modified(|k| {
            if k.is_none() {
                *k = Some(how);
                true
            } else {
                false
            }
        });
    }

    fn count_delay(&self) {
        if !self.delayed.swap(true, Ordering::Relaxed) {
            bump(&self.shared.counters.delayed);
        }
    }

    /// Waits while the connection is stalled and the proxy not healed.
    async fn hold_while_stalled(&self) {
        if !*self.stalled.borrow() {
            return;
        }
        let mut healed = self.shared.healed.subscribe();
        let _ = healed.wait_for(|h| *h).await;
    }

    /// Forwards one direction, `from` to `to`, until end of stream, applying the
    /// connection's fault and the chunk faults of the schedule, or until the connection is
    /// killed.
    async fn pipe(
        &self,
        flow: Flow,
        mut from: impl AsyncRead + Unpin,
        mut to: impl AsyncWrite + Unpin,
    ) {
        let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(READ_AHEAD);
        // `tx` moves in, so the writer sees the end of the stream when the reader stops.
        let read = async move {
            loop {
                let mut buf = vec![0; CHUNK];
                match from.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send((Instant::now(), buf)).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => {
                        self.end(Kill::Close);
                        return;
                    }
                }
            }
        };
        let write = async move {
            // The pending byte-threshold fault of this direction and the offset at which it
            // fires: exactly that many bytes pass, and it fires on the first byte beyond.
            let mut armed = match self.fault.threshold() {
                Some((f, after)) if f == flow => Some((self.fault, after)),
                _ => None,
            };
            let mut forwarded = 0usize;
            let mut chunk_no = 0u64;
            while let Some((arrived, mut chunk)) = rx.recv().await {
                let clean = self.healed() || *self.stalled.borrow();
                let mut delay = match self.fault {
                    Fault::Delay(d) if !clean => Some(d),
                    _ => None,
                };
                if !clean && armed.is_none() {
                    match self.schedule.chunk_fault(self.n, flow, chunk_no) {
                        Some(Fault::Delay(d)) => delay = delay.max(Some(d)),
                        Some(f) => {
                            if let Some((_, at)) = f.threshold() {
                                armed = Some((f, forwarded + at % chunk.len()));
                            }
                        }
                        None => {}
                    }
                }
                chunk_no += 1;
                if let Some(d) = delay {
                    self.count_delay();
                    tokio::time::sleep_until(arrived + d).await;
                }
                let mut fire = None;
                if let Some((fault, at)) = armed {
                    let left = at.saturating_sub(forwarded);
                    if !self.healed() && chunk.len() > left {
                        fire = Some((fault, chunk.split_off(left)));
                        armed = None;
                    }
                }
                self.hold_while_stalled().await;
                if !chunk.is_empty() && to.write_all(&chunk).await.is_err() {
                    self.end(Kill::Close);
                    return;
                }
                forwarded += chunk.len();
                let Some((fault, rest)) = fire else { continue };
                match fault {
                    Fault::Truncate { .. } => {
                        bump(&self.shared.counters.truncated);
                        self.end(Kill::Close);
                        return;
                    }
                    Fault::Reset { .. } => {
                        bump(&self.shared.counters.reset);
                        self.end(Kill::Reset);
                        return;
                    }
                    _ => {
                        bump(&self.shared.counters.stalled);
                        self.stalled.send_replace(true);
                        self.hold_while_stalled().await;
                        if to.write_all(&rest).await.is_err() {
                            self.end(Kill::Close);
                            return;
                        }
                        forwarded += rest.len();
                    }
                }
            }
            // End of stream from the sender: pass it on (half-close) and let the other
            // direction finish.
            let _ = to.shutdown().await;
        };
        let mut killed = self.kill.subscribe();
        tokio::select! {
            _ = killed.wait_for(Option::is_some) => {}
            _ = async { tokio::join!(read, write) } => {}
        }
    }
}

/// A small seeded generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes every connection back.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn proxy(fault: Fault) -> FaultProxy {
        FaultProxy::start(echo().await, FaultSchedule::always(fault))
            .await
            .unwrap()
    }

    /// Writes `len` bytes and reads until the end of stream (or an error), within 10 s.
    async fn exchange(proxy: &FaultProxy, len: usize) -> (Vec<u8>, io::Result<()>) {
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let (mut r, mut w) = s.split();
        let mut got = Vec::new();
        let io = async {
            let writer = async {
                let _ = w.write_all(&data).await;
            };
            let reader = async {
                let mut buf = vec![0; 4096];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) => return Ok(()),
                        Ok(n) => {
                            got.extend_from_slice(&buf[..n]);
                            if got.len() == len {
                                return Ok(());
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            tokio::join!(writer, reader).1
        };
        let res = tokio::time::timeout(Duration::from_secs(10), io)
            .await
            .expect("the exchange through the proxy ended in time");
        (got, res)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_clean_pipe_forwards_everything_both_ways() {
        let p = proxy(Fault::Pass).await;
        let (got, res) = exchange(&p, 300_000).await;
        res.unwrap();
        assert_eq!(got, pattern(300_000));
        let (got, _) = exchange(&p, 10).await;
        assert_eq!(got.len(), 10);
        let c = p.counts();
        assert_eq!((c.connections, c.passed, c.faults()), (2, 2, 0));
    }

    #[tokio::test]
    async fn a_dropped_connection_forwards_nothing() {
        let p = proxy(Fault::Drop).await;
        let (got, _) = exchange(&p, 1000).await;
        assert!(got.is_empty());
        assert_eq!(p.counts().dropped, 1);
    }

    #[tokio::test]
    async fn a_truncated_response_stops_after_exactly_its_offset() {
        let p = proxy(Fault::Truncate {
            flow: Flow::ToClient,
            after: 70_000,
        })
        .await;
        let (got, res) = exchange(&p, 200_000).await;
        assert!(res.is_ok(), "an orderly end of stream: {res:?}");
        assert_eq!(got, pattern(70_000));
        assert_eq!(p.counts().truncated, 1);

        // A truncated request: the server sees at most the offset, so the echo is shorter.
        let p = proxy(Fault::Truncate {
            flow: Flow::ToServer,
            after: 5000,
        })
        .await;
        let (got, _) = exchange(&p, 200_000).await;
        assert!(got.len() <= 5000, "{}", got.len());
        assert_eq!(got, pattern(got.len()));
    }

    #[tokio::test]
    async fn a_reset_is_an_error_at_the_client_not_an_end_of_stream() {
        let p = proxy(Fault::Reset {
            flow: Flow::ToClient,
            after: 1000,
        })
        .await;
        let (got, res) = exchange(&p, 100_000).await;
        assert!(got.len() <= 1000);
        let err = res.expect_err("a reset is an error");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        assert_eq!(p.counts().reset, 1);
    }

    #[tokio::test]
    async fn a_stalled_connection_holds_its_bytes_until_healed() {
        let p = proxy(Fault::Stall {
            flow: Flow::ToServer,
            after: 0,
        })
        .await;
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        let early = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
        assert!(early.is_err(), "nothing may come back while stalled");
        assert_eq!(p.counts().stalled, 1);
        p.heal();
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
            .await
            .expect("healed: the held bytes flow")
            .unwrap();
        assert_eq!(&buf, b"ping");
        // New connections are clean pipes now.
        let (got, _) = exchange(&p, 1000).await;
        assert_eq!(got.len(), 1000);
    }

    #[tokio::test]
    async fn a_delay_adds_latency_once_per_chunk_not_per_byte() {
        let p = proxy(Fault::Delay(Duration::from_millis(100))).await;
        let started = std::time::Instant::now();
        let (got, res) = exchange(&p, 1 << 20).await;
        res.unwrap();
        assert_eq!(got.len(), 1 << 20);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "both ways: {took:?}");
        assert!(
            took < Duration::from_secs(2),
            "latency, not a throttle: {took:?}"
        );
        assert_eq!(p.counts().delayed, 1);
    }

    #[test]
    fn a_seed_names_one_sequence_of_faults() {
        let mix = FaultMix::default().with_mid_stream_stalls(true);
        let a = FaultSchedule::seeded(42, mix.clone());
        let b = FaultSchedule::seeded(43, mix);
        let seq = |s: &FaultSchedule| (0..500).map(|n| s.fault_for(n)).collect::<Vec<_>>();
        assert_eq!(seq(&a), seq(&a));
        assert_ne!(seq(&a), seq(&b));
        let faults = seq(&a);
        let kinds = |f: &Fault| std::mem::discriminant(f);
        let distinct: std::collections::HashSet<_> = faults.iter().map(kinds).collect();
        assert_eq!(distinct.len(), 6, "every kind is drawn: {faults:?}");
        assert!(faults
            .iter()
            .any(|f| matches!(f, Fault::Stall { after, .. } if *after > 0)));
        let start_only = FaultSchedule::seeded(42, FaultMix::default());
        assert!((0..500).all(|n| !matches!(
            start_only.fault_for(n),
            Fault::Stall { after, .. } if after > 0
        )));
        let script = FaultSchedule::script(vec![Fault::Drop]);
        assert_eq!(
            (script.fault_for(0), script.fault_for(1)),
            (Fault::Drop, Fault::Pass)
        );
    }

    #[tokio::test]
    async fn chunk_faults_break_a_connection_that_started_clean() {
        // Pass per connection; every chunk starts a truncate inside it.
        let mix = FaultMix::default()
            .with_weights(1, 0, 0, 1, 0, 0)
            .with_chunk_faults_per_mille(1000);
        let schedule = FaultSchedule::seeded(3, mix);
        let n = (0..100)
            .find(|n| schedule.fault_for(*n) == Fault::Pass)
            .expect("a clean connection");
        let p = FaultProxy::start(echo().await, schedule).await.unwrap();
        for _ in 0..n {
            let _ = exchange(&p, 1).await;
        }
        let (got, _) = exchange(&p, 200_000).await;
        assert!(got.len() < 200_000, "cut short: {}", got.len());
        assert_eq!(got, pattern(got.len()));
        assert!(p.counts().truncated >= 1, "{:?}", p.counts());

        // The rate: about 15 per 1000 chunks by default, never in scripted schedules.
        let seeded = FaultSchedule::seeded(9, FaultMix::default());
        let hits = (0..20_000)
            .filter(|c| seeded.chunk_fault(1, Flow::ToClient, *c).is_some())
            .count();
        assert!((200..400).contains(&hits), "{hits}");
        assert!((0..1000).all(|c| seeded
            .chunk_fault(1, Flow::ToServer, c)
            .is_none_or(|f| !matches!(f, Fault::Stall { .. }))));
        assert_eq!(
            FaultSchedule::always(Fault::Pass).chunk_fault(0, Flow::ToServer, 0),
            None
        );
    }

    #[tokio::test]
    async fn only_loopback_upstreams() {
        let err = FaultProxy::start("192.0.2.1:80".parse().unwrap(), FaultSchedule::clean())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
