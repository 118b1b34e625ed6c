//! The bounded HTTP listener both inbound servers (admin and callback) use:
//! a connection cap, header/body read timeouts, a body size limit, an idle
//! timeout and small per-connection buffers, so inbound traffic can never
//! take the descriptors or memory the journeys need. A leaf: imports nothing
//! from the crate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; beyond, the least recently active one not being answered is shed.
    pub max_connections: usize,
    /// The whole request head must arrive within this (also the keep-alive wait for the next request).
    pub header_timeout: Duration,
    /// The whole request body must arrive within this.
    pub body_timeout: Duration,
    pub max_body: usize,
    /// Bodies being read at once; this bounds the memory of a slow-upload flood to `max_body_readers * max_body`.
    pub max_body_readers: usize,
    /// A connection that moves no byte for this long is closed (after its response, at most `idle_timeout` later).
    pub idle_timeout: Duration,
}

impl Limits {
    pub const ADMIN: Limits = Limits {
        max_connections: 128,
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(5),
        max_body: 64 * 1024,
        max_body_readers: 8,
        idle_timeout: Duration::from_secs(30),
    };
    pub const CALLBACK: Limits = Limits {
        max_connections: 256,
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(10),
        max_body: 256 * 1024,
        max_body_readers: 32,
        idle_timeout: Duration::from_secs(30),
    };

    /// These limits with the connection cap kept to at most a sixteenth of the
    /// process's descriptor limit: a listener holds at most four times its cap
    /// (served, shed and closing, in their grace, waiting for room), so both
    /// together stay under half and journeys always have descriptors left.
    pub fn within_descriptors(mut self) -> Limits {
        if let Some((soft, _)) = nofile_limit() {
            self.max_connections = self.max_connections.min((soft / 16).max(4) as usize);
        }
        self
    }
}

/// Per-connection read buffer cap (hyper's minimum is 8 KiB; its default ~400 KiB).
const MAX_BUF: usize = 16 * 1024;

/// Told of every request the listener itself refuses (413, 408, 503, 400), before any handler runs.
pub type OnReject = Arc<dyn Fn(StatusCode) + Send + Sync>;

/// Looks at a request's head before its body is read: `Some(response)` answers
/// it at once (the connection then closes) without reading the body, so a
/// flood of uploads nobody waits for costs no reads.
pub type Admit = Arc<dyn Fn(&Request) -> Option<Response> + Send + Sync>;

/// The listening sockets of one address: several, joined with `SO_REUSEPORT`,
/// so a connection storm is spread over as many kernel queues as there are
/// cores, each drained by its own accept loop.
pub struct Listeners(Vec<TcpListener>);

impl Listeners {
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0[0].local_addr()
    }
}

impl From<TcpListener> for Listeners {
    fn from(l: TcpListener) -> Listeners {
        Listeners(vec![l])
    }
}

/// Sockets per address: one per core, at least 2 (the kernel's queues are
/// per socket), at most 4.
fn sockets_per_address() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 4)
}

/// Seconds a connection may stay in the kernel without sending a byte before
/// the agent sees it (`TCP_DEFER_ACCEPT`): idle connections cost the agent
/// nothing, and a storm of them cannot queue ahead of a real request. The
/// listeners' header timeout is 5 s too, so a silent client is not kept longer.
const DEFER_ACCEPT_SECS: libc::c_int = 5;

/// Binds `addr` for a listener: [`sockets_per_address`] sockets with deep
/// accept queues (the kernel caps each at `net.core.somaxconn`) and deferred
/// accept. During a connection flood a queue must not overflow, or the kernel
/// drops the SYN of a real request and its client waits a whole retransmission
/// second; a deep queue must not fill either, or a health check waits behind it.
///
/// The address is first bound alone, without `SO_REUSEPORT`: if anything else
/// holds it (another agent with the same port included), this fails with
/// "address in use" instead of silently sharing the port.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<Listeners> {
    let new = || if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
    let first = new()?;
    first.set_reuseaddr(true)?;
    first.bind(addr)?;
    let addr = first.local_addr()?;
    drop(first);
    let mut out = Vec::new();
    for _ in 0..sockets_per_address() {
        let sock = new()?;
        sock.set_reuseaddr(true)?;
        sock.set_reuseport(true)?;
        sock.bind(addr)?;
        set_defer_accept(&sock, DEFER_ACCEPT_SECS);
        out.push(sock.listen(4096)?);
    }
    Ok(Listeners(out))
}

fn set_defer_accept(sock: &tokio::net::TcpSocket, secs: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on a socket we own, with a value we own. Best effort:
    // without it, idle connections are accepted and shed as before.
    unsafe {
        libc::setsockopt(sock.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, (&secs as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t);
    }
}

/// Serves `app` on `listener` under `limits` until `shutdown`.
pub fn spawn(listener: impl Into<Listeners>, app: Router, limits: Limits, shutdown: CancellationToken) {
    spawn_with(listener, app, limits, shutdown, None, None)
}

/// [`spawn`], telling `on_reject` of the requests refused for their body, and
/// answering those `admit` refuses before their body is read.
///
/// The accept loop never waits for a slot: it takes every connection off the
/// kernel queue at once. At the cap, a new connection whose whole request head
/// has arrived sheds the least recently active connection that is not being
/// answered (idle, still sending its head, or trickling a body); one without a
/// whole head gets a short grace to complete it, then is closed (when more than
/// the cap wait so, the longest-waiting goes first). A request whose head
/// has arrived is never shed, so a client with a complete request (a health
/// check) is answered however many idle or slow connections arrive.
/// Descriptors stay bounded: served plus shed-but-not-yet-closed connections
/// never exceed twice the cap, plus at most the cap in their grace and the cap
/// waiting for shed ones to close.
pub fn spawn_with(listeners: impl Into<Listeners>, app: Router, limits: Limits, shutdown: CancellationToken, on_reject: Option<OnReject>, admit: Option<Admit>) {
    launch(listeners.into(), app, limits, shutdown, on_reject, admit);
}

fn launch(listeners: Listeners, app: Router, limits: Limits, shutdown: CancellationToken, on_reject: Option<OnReject>, admit: Option<Admit>) -> Arc<Acceptor> {
    let limits = limits.within_descriptors();
    let app = app.layer(axum::middleware::from_fn_with_state(Arc::new(BodyGate::new(limits, on_reject, admit)), read_body));
    let acceptor = Arc::new(Acceptor { app, limits, shutdown: shutdown.clone(), table: Table::new(), waiting: Default::default(), next_id: AtomicU64::new(0), room_waiters: Arc::new(Semaphore::new(limits.max_connections)) });
    for listener in listeners.0 {
        tokio::spawn(accept_loop(listener, acceptor.clone()));
    }
    acceptor
}

/// In-flight answers get this long to finish once an own-thread listener is told to stop.
const OWN_THREAD_DRAIN: Duration = Duration::from_secs(1);

/// [`spawn`] on a thread of its own, with its own single-threaded runtime.
/// For the admin endpoint: its accept loops and connections neither queue
/// behind the journeys' tasks nor share a run queue with the callback
/// listener, so in a connection flood against either listener `/healthz`
/// waits only for its own socket's backlog, and the kernel schedules the
/// thread on its own. Returns once the thread runs; the listener stops at
/// `shutdown`, its open connections given [`OWN_THREAD_DRAIN`] to finish.
pub fn spawn_on_own_thread(name: &str, listeners: impl Into<Listeners>, app: Router, limits: Limits, shutdown: CancellationToken) -> std::io::Result<std::thread::JoinHandle<()>> {
    // The sockets were registered with the caller's runtime; they move to the thread's.
    let sockets = listeners.into().0.into_iter().map(TcpListener::into_std).collect::<std::io::Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let name = name.to_string();
    std::thread::Builder::new().name(name.clone()).spawn(move || {
        runtime.block_on(async move {
            let listeners = match sockets.into_iter().map(TcpListener::from_std).collect::<std::io::Result<Vec<_>>>() {
                Ok(l) => Listeners(l),
                Err(e) => {
                    tracing::error!(listener = %name, "cannot serve: {e}");
                    return;
                }
            };
            let acceptor = launch(listeners, app, limits, shutdown.clone(), None, None);
            shutdown.cancelled().await;
            let drained = async {
                while acceptor.table.open() > 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            let _ = tokio::time::timeout(OWN_THREAD_DRAIN, drained).await;
        });
    })
}

/// Takes connections off one socket's kernel queue for `acceptor`.
async fn accept_loop(listener: TcpListener, acceptor: Arc<Acceptor>) {
    let (limits, shutdown) = (acceptor.limits, acceptor.shutdown.clone());
    loop {
        let stream = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => return,
        };
        let stream = match stream {
            Ok((stream, _)) => stream,
            // Out of descriptors or a connection reset before accept: back off, never spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if acceptor.table.open() < limits.max_connections {
            acceptor.serve(stream);
            continue;
        }
        match request_head(&stream) {
            // Closed before it was accepted: nothing to serve.
            Head::Gone => {}
            Head::Whole => {
                if acceptor.table.open() < 2 * limits.max_connections {
                    if acceptor.shed_and_serve(stream).await {
                        // Let the new connection's task read its head before the next accept
                        // can shed it: a burst must not shed requests it has not looked at
                        // (without this yield, a health check was reset in a storm).
                        tokio::task::yield_now().await;
                    }
                } else if let Ok(permit) = acceptor.room_waiters.clone().try_acquire_owned() {
                    // Shed connections have not closed yet: wait for room off the accept
                    // loop, which must keep draining the kernel's queue meanwhile (a full
                    // queue drops the SYN of the next request, costing it a second).
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        acceptor.shed_and_serve(stream).await;
                        drop(permit);
                    });
                } else {
                    use std::os::fd::AsRawFd;
                    abort_on_close(stream.as_raw_fd());
                }
            }
            Head::Partial => {
                // At the cap without a whole request head (nothing sent yet, or a head
                // still arriving): it waits for the rest without holding up the accept
                // loop, displacing the longest-waiting such connection when too many
                // wait, and is served only once its head is complete. A flood of slow
                // heads thus costs an accept and a peek each, and never sheds a served
                // connection or starts a parser.
                let peer = stream.peer_addr().map(|a| a.ip()).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
                let (id, gone) = acceptor.wait_for_data(peer);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let sent = head_within(&stream, WAITING_GRACE, &gone).await;
                    acceptor.done_waiting(id);
                    if !sent {
                        use std::os::fd::AsRawFd;
                        abort_on_close(stream.as_raw_fd());
                    } else if acceptor.table.open() < acceptor.limits.max_connections {
                        acceptor.serve(stream);
                    } else {
                        acceptor.shed_and_serve(stream).await;
                    }
                });
                // Let the waiting task start (and a displaced one close) before the next accept.
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Connections accepted at the cap without a whole request head wait at most
/// this for it; beyond `max_connections` of them they are closed at once.
const WAITING_GRACE: Duration = Duration::from_millis(250);

/// Whether a connection accepted at the cap without a whole request head has
/// one by the time its grace ends or it is told to go.
async fn head_within(stream: &tokio::net::TcpStream, grace: Duration, gone: &CancellationToken) -> bool {
    use tokio::io::Interest;
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        // Peeking leaves the bytes for the parser; an incomplete head counts as "would
        // block", which clears the readiness, so only new bytes wake this again.
        let peeked = stream.try_io(Interest::READABLE, || match request_head(stream) {
            Head::Partial => Err(std::io::ErrorKind::WouldBlock.into()),
            h => Ok(h),
        });
        match peeked {
            Ok(Head::Whole) => return true,
            Ok(_) => return false,
            Err(_) => {}
        }
        let ready = tokio::select! {
            r = tokio::time::timeout_at(deadline, stream.ready(Interest::READABLE)) => match r {
                Ok(Ok(ready)) => ready,
                _ => break,
            },
            _ = gone.cancelled() => break,
        };
        // A client that left with its head unfinished will never finish it (and its
        // readiness never clears: waiting on would spin and stall the runtime).
        if ready.is_read_closed() || ready.is_error() {
            break;
        }
        tokio::task::consume_budget().await;
    }
    // Told to go, it may have sent its request already (its wake-up queued behind a
    // burst of accepts): a request that has arrived is never dropped for a slow one.
    matches!(request_head(stream), Head::Whole)
}

/// What waits on a socket that has not been served yet.
enum Head {
    /// A whole request head (or a full parser buffer, for the parser to refuse).
    Whole,
    /// Nothing yet, or part of a head.
    Partial,
    /// The peer closed the connection or it failed.
    Gone,
}

/// A non-blocking peek of up to the parser's buffer.
fn request_head(stream: &tokio::net::TcpStream) -> Head {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; MAX_BUF];
    // SAFETY: a peek into a buffer we own, of its length; MSG_DONTWAIT never blocks.
    let n = unsafe { libc::recv(stream.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    match usize::try_from(n) {
        Ok(0) => Head::Gone,
        Ok(n) if n == buf.len() || head_ends(&buf[..n]) => Head::Whole,
        Ok(_) => Head::Partial,
        Err(_) if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock => Head::Partial,
        Err(_) => Head::Gone,
    }
}

/// Whether `bytes` hold the blank line that ends an HTTP/1 request head (CRLF or bare LF).
fn head_ends(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|w| w == b"\r\n\r\n") || bytes.windows(2).any(|w| w == b"\n\n")
}

/// The address that occurs most often (the first of equals), if any.
fn most_common(ips: impl Iterator<Item = std::net::IpAddr>) -> Option<std::net::IpAddr> {
    let mut counts: Vec<(std::net::IpAddr, usize)> = Vec::new();
    for ip in ips {
        match counts.iter_mut().find(|(x, _)| *x == ip) {
            Some((_, n)) => *n += 1,
            None => counts.push((ip, 1)),
        }
    }
    counts.into_iter().rev().max_by_key(|(_, n)| *n).map(|(ip, _)| ip)
}

/// A connection closed for the listener's sake (shed, or silent past its grace)
/// is reset rather than closed: no TIME_WAIT is kept for it, so a flood of them
/// cannot fill the host's table of closing connections (on loopback a new
/// client's port can then collide with one and be refused).
fn abort_on_close(fd: std::os::fd::RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on one of this listener's sockets, with a value we own.
    unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, (&linger as *const libc::linger).cast(), std::mem::size_of::<libc::linger>() as libc::socklen_t);
    }
}

fn fd_has_data(fd: std::os::fd::RawFd) -> bool {
    let mut b = 0u8;
    // SAFETY: a one-byte peek into a byte we own; MSG_DONTWAIT never blocks. The fd is
    // one of this listener's sockets; if it has just closed and its number been reused,
    // the peek reads nothing and at worst misjudges one shedding choice.
    let n = unsafe { libc::recv(fd, (&mut b as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n > 0
}

struct Acceptor {
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
    table: Table,
    /// Connections accepted at the cap that have not sent a byte yet, oldest first.
    waiting: std::sync::Mutex<std::collections::VecDeque<(u64, CancellationToken, std::net::IpAddr)>>,
    next_id: AtomicU64,
    /// Connections with a request that wait for shed ones to close, off the accept loop.
    room_waiters: Arc<Semaphore>,
}

impl Acceptor {
    fn serve(self: &Arc<Self>, stream: tokio::net::TcpStream) {
        let _ = stream.set_nodelay(true);
        use std::os::fd::AsRawFd;
        let peer = stream.peer_addr().map(|a| a.ip()).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        let conn = self.table.add(stream.as_raw_fd(), peer);
        let me = self.clone();
        tokio::spawn(async move {
            serve_connection(stream, me.app.clone(), me.limits, me.shutdown.clone(), conn.clone()).await;
            me.table.remove(&conn);
        });
    }

    /// At the cap: sheds the least recently active connection without a complete
    /// request and serves `stream`; closes `stream` when every one has a request.
    /// Shed connections close within a moment; until fewer than twice the cap
    /// are open, this waits (at most ~50 ms). True if served.
    async fn shed_and_serve(self: &Arc<Self>, stream: tokio::net::TcpStream) -> bool {
        for _ in 0..50 {
            if self.table.open() < 2 * self.limits.max_connections {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if self.table.open() >= 2 * self.limits.max_connections || !self.table.shed_least_active() {
            use std::os::fd::AsRawFd;
            abort_on_close(stream.as_raw_fd());
            return false;
        }
        self.serve(stream);
        true
    }

    /// Registers a connection waiting for its first byte; the longest-waiting one
    /// is told to go when more than `max_connections` wait.
    fn wait_for_data(&self, peer: std::net::IpAddr) -> (u64, CancellationToken) {
        let token = CancellationToken::new();
        let mut w = self.waiting.lock().expect("listener waiting");
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        w.push_back((id, token.clone(), peer));
        while w.len() > self.limits.max_connections {
            // The longest-waiting connection of the address with the most waiting:
            // a flood from one address displaces its own, not another client's.
            let busiest = most_common(w.iter().map(|(_, _, ip)| *ip));
            let i = w.iter().position(|(_, _, ip)| Some(*ip) == busiest).unwrap_or(0);
            if let Some((_, old, _)) = w.remove(i) {
                old.cancel();
            }
        }
        (id, token)
    }

    fn done_waiting(&self, id: u64) {
        let mut w = self.waiting.lock().expect("listener waiting");
        if let Some(i) = w.iter().position(|(x, _, _)| *x == id) {
            w.remove(i);
        }
    }
}

/// A served connection, as the accept loop sees it.
struct Conn {
    /// Requests being answered on it.
    busy: std::sync::atomic::AtomicUsize,
    evict: CancellationToken,
    /// When it was accepted; `last` is in milliseconds since then.
    started: Instant,
    /// Milliseconds after `started` when a byte last moved (read or written).
    last: Arc<AtomicU64>,
    /// Its socket, to see whether a request waits unread before shedding it.
    fd: std::os::fd::RawFd,
    peer: std::net::IpAddr,
}

impl Conn {
    fn last_active(&self) -> Instant {
        self.started + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

/// The connection a request came on, for the middleware.
#[derive(Clone)]
struct ConnHandle(Arc<Conn>);

/// Marks the connection as not being answered while alive.
struct Evictable(ConnHandle);

impl Evictable {
    fn new(h: ConnHandle) -> Evictable {
        h.0.busy.fetch_sub(1, Ordering::Relaxed);
        Evictable(h)
    }
}

impl Drop for Evictable {
    fn drop(&mut self) {
        self.0 .0.busy.fetch_add(1, Ordering::Relaxed);
    }
}

/// Served connections, and how many shed ones have not closed yet.
struct Table {
    live: std::sync::Mutex<Vec<Arc<Conn>>>,
    /// Served plus shed-but-still-open connections (descriptors held).
    open: std::sync::atomic::AtomicUsize,
}

impl Table {
    fn new() -> Table {
        Table { live: std::sync::Mutex::new(Vec::new()), open: std::sync::atomic::AtomicUsize::new(0) }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn add(&self, fd: std::os::fd::RawFd, peer: std::net::IpAddr) -> Arc<Conn> {
        let c = Arc::new(Conn { busy: Default::default(), evict: CancellationToken::new(), started: Instant::now(), last: Arc::new(AtomicU64::new(0)), fd, peer });
        self.open.fetch_add(1, Ordering::Relaxed);
        self.live.lock().expect("listener table").push(c.clone());
        c
    }

    /// When its task ends (served, timed out or shed).
    fn remove(&self, c: &Arc<Conn>) {
        let mut live = self.live.lock().expect("listener table");
        if let Some(i) = live.iter().position(|x| Arc::ptr_eq(x, c)) {
            live.swap_remove(i);
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sheds the least recently active connection not being answered; false if every one is.
    fn shed_least_active(&self) -> bool {
        let mut live = self.live.lock().expect("listener table");
        // Least recently active first; one whose bytes wait unread (a request that
        // came in before its task ran, in a burst) is passed over, a few at most.
        // Taken from the address holding the most such connections, so one flooding
        // address sheds its own connections, not another client's.
        let sheddable = |c: &Arc<Conn>| c.busy.load(Ordering::Relaxed) == 0;
        let busiest = most_common(live.iter().filter(|c| sheddable(c)).map(|c| c.peer));
        let mut passed = Vec::new();
        let victim = loop {
            let next = live
                .iter()
                .enumerate()
                .filter(|(i, c)| sheddable(c) && Some(c.peer) == busiest && !passed.contains(i))
                .min_by_key(|(_, c)| c.last_active())
                .map(|(i, c)| (i, c.fd));
            match next {
                Some((i, fd)) if passed.len() < 8 && fd_has_data(fd) => passed.push(i),
                other => break other.map(|(i, _)| i),
            }
        };
        let Some(i) = victim else { return false };
        let c = live.swap_remove(i);
        c.evict.cancel();
        true
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
    me: Arc<Conn>,
) {
    let started = me.started;
    let activity = me.last.clone();
    let io = TokioIo::new(Tracked {
        inner: stream,
        started,
        last: activity.clone(),
    });
    let busy = me.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let app = app.clone();
        let busy = busy.clone();
        async move {
            busy.busy.fetch_add(1, Ordering::Relaxed);
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnHandle(busy.clone()));
            let r = app.oneshot(req).await;
            busy.busy.fetch_sub(1, Ordering::Relaxed);
            r
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_BUF)
        .max_headers(64)
        .keep_alive(true);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut hard_stop: Option<tokio::time::Instant> = None;
    loop {
        let idle_at =
            started + Duration::from_millis(activity.load(Ordering::Relaxed)) + limits.idle_timeout;
        let wake = hard_stop.unwrap_or_else(|| idle_at.into());
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = me.evict.cancelled() => {
                abort_on_close(me.fd);
                return;
            }
            _ = shutdown.cancelled(), if hard_stop.is_none() => {
                conn.as_mut().graceful_shutdown();
                hard_stop = Some(tokio::time::Instant::now() + Duration::from_secs(2));
            }
            _ = tokio::time::sleep_until(wake) => {
                if hard_stop.is_some() {
                    return; // dropped: the peer did not take its response in time
                }
                if Instant::now() >= idle_at {
                    // Closes at once between requests; lets a response in progress finish, for a while.
                    conn.as_mut().graceful_shutdown();
                    hard_stop = Some(tokio::time::Instant::now() + limits.idle_timeout);
                }
            }
        }
    }
}

/// A socket that notes when bytes last moved, for the idle timeout.
struct Tracked {
    inner: tokio::net::TcpStream,
    started: Instant,
    last: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct BodyGate {
    limits: Limits,
    readers: Semaphore,
    on_reject: Option<OnReject>,
    admit: Option<Admit>,
}

impl BodyGate {
    fn new(limits: Limits, on_reject: Option<OnReject>, admit: Option<Admit>) -> BodyGate {
        BodyGate { limits, readers: Semaphore::new(limits.max_body_readers), on_reject, admit }
    }

    fn refuse(&self, status: StatusCode, msg: &'static str) -> Response {
        if let Some(f) = &self.on_reject {
            f(status);
        }
        (status, [(header::CONNECTION, "close")], msg).into_response()
    }
}

/// Reads the whole body, bounded in size, time and concurrency, before any handler sees the request.
async fn read_body(State(gate): State<Arc<BodyGate>>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    if declared.is_some_and(|n| n > gate.limits.max_body as u64) {
        return gate.refuse(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n");
    }
    if let Some(mut refused) = gate.admit.as_ref().and_then(|admit| admit(&req)) {
        // Its body, if any, is left unread: the connection cannot carry another request.
        refused.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        return refused;
    }
    if !chunked && declared.unwrap_or(0) == 0 {
        return next.run(req).await;
    }
    let Ok(_permit) = gate.readers.try_acquire() else {
        return gate.refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many uploads at once, retry later\n",
        );
    };
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, gate.limits.max_body);
    // While its body trickles in, the connection may be shed like an idle one.
    let conn = parts.extensions.get::<ConnHandle>().cloned();
    let _evictable = conn.map(Evictable::new);
    let bytes = match tokio::time::timeout(gate.limits.body_timeout, limited.collect()).await {
        Err(_) => {
            return gate.refuse(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time\n",
            )
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return gate.refuse(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n")
        }
        Ok(Err(_)) => {
            return gate.refuse(StatusCode::BAD_REQUEST, "request body could not be read\n")
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    drop(_permit);
    drop(_evictable);
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// (soft, hard) `RLIMIT_NOFILE`.
pub fn nofile_limit() -> Option<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0)
        .then_some((r.rlim_cur, r.rlim_max))
}

/// A loopback TCP port that is free now and that this process has not
/// handed out before, for a service started later on a port named in advance
/// (the demo's callback listener, a test's agent).
///
/// Picked below the kernel's ephemeral range, so no `bind(":0")` or outgoing
/// connection takes it in the meantime, and never twice, so callers that pick
/// at once cannot be given the same port.
pub fn free_loopback_port() -> std::io::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Below the ephemeral range, above the well-known and most registered ports.
    let (from, to) = if low > 20000 { (low / 2, low) } else { (49152, 61000) };
    let span = u32::from(to - from);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0) ^ std::process::id().wrapping_mul(2654435761);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..span {
        let port = from + ((seed.wrapping_add(i.wrapping_mul(7919))) % span) as u16;
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, format!("no free loopback port in {from}..{to}")))
}

/// Raises the soft descriptor limit to the hard one (what systemd's default
/// soft limit of 1024 leaves unused); returns the soft limit now in force.
pub fn raise_nofile_limit() -> Option<u64> {
    let (soft, hard) = nofile_limit()?;
    if soft < hard {
        let r = libc::rlimit {
            rlim_cur: hard as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } == 0 {
            return Some(hard);
        }
    }
    Some(soft)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[test]
    fn free_ports_are_never_handed_out_twice_and_are_outside_the_ephemeral_range() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap().split_whitespace().next().unwrap().parse().unwrap();
        let ports: Vec<u16> = (0..200).map(|_| free_loopback_port().unwrap()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice");
        assert!(ports.iter().all(|&p| p < low), "{ports:?} (ephemeral range starts at {low})");
        // Each is bindable when handed out.
        let p = free_loopback_port().unwrap();
        std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
    }

    #[test]
    fn an_own_thread_listener_answers_while_the_callers_runtime_stands_still_and_stops_when_told() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let stop = CancellationToken::new();
        let (addr, thread) = rt.block_on(async {
            let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = l.local_addr().unwrap();
            let app = Router::new().route("/healthz", get(|| async { "ok\n" }));
            (addr, spawn_on_own_thread("test-admin", l, app, Limits::ADMIN, stop.clone()).unwrap())
        });
        // Nothing polls the caller's runtime from here on.
        assert_eq!(thread.thread().name(), Some("test-admin"));
        for _ in 0..3 {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            std::io::Write::write_all(&mut c, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
            let mut got = String::new();
            std::io::Read::read_to_string(&mut c, &mut got).unwrap();
            assert!(got.starts_with("HTTP/1.1 200") && got.ends_with("ok\n"), "{got:?}");
        }
        // An idle kept-alive connection does not hold the thread past its drain time.
        let _idle = std::net::TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let t0 = Instant::now();
        stop.cancel();
        while !thread.is_finished() {
            assert!(t0.elapsed() < OWN_THREAD_DRAIN + Duration::from_secs(2), "the listener thread did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        thread.join().unwrap();
        assert!(std::net::TcpStream::connect(addr).is_err(), "still listening after its thread ended");
        drop(rt);
    }

    async fn start(limits: Limits) -> (std::net::SocketAddr, CancellationToken) {
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/echo",
                post(|b: axum::body::Bytes| async move { format!("{}\n", b.len()) }),
            );
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = CancellationToken::new();
        spawn(l, app, limits, stop.clone());
        (addr, stop)
    }

    const FAST: Limits = Limits {
        max_connections: 4,
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        max_body: 1024,
        max_body_readers: 2,
        idle_timeout: Duration::from_millis(400),
    };

    #[tokio::test]
    async fn an_address_in_use_is_refused_not_shared() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(first.0.len(), sockets_per_address());
        let addr = first.local_addr().unwrap();
        let err = bind(addr).err().expect("a second bind of a held address must fail");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        // Nor may it join a plain listener someone else holds.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(bind(other.local_addr().unwrap()).err().map(|e| e.kind()), Some(std::io::ErrorKind::AddrInUse));
    }

    #[tokio::test]
    async fn a_connection_reaches_the_agent_only_once_it_sends() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let accept_any = || futures_util::future::select_all(l.0.iter().map(|s| Box::pin(s.accept())));
        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), accept_any()).await.is_err(), "an idle connection was handed to the agent");
        idle.write_all(b"G").await.unwrap();
        let (r, _, _) = tokio::time::timeout(Duration::from_secs(2), accept_any()).await.expect("accepted once it sent a byte");
        assert!(r.is_ok());
    }

    async fn closed_within(s: &mut TcpStream, within: Duration) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(within, s.read_to_end(&mut got))
            .await
            .expect("server closed the connection in time")
            .unwrap_or_default();
        got
    }

    #[tokio::test]
    async fn a_slow_header_is_cut_off() {
        let (addr, stop) = start(FAST).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let t = Instant::now();
        closed_within(&mut s, Duration::from_secs(3)).await;
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_slow_body_is_cut_off_with_408() {
        let (addr, stop) = start(FAST).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            .await
            .unwrap();
        let got = closed_within(&mut s, Duration::from_secs(3)).await;
        assert!(
            String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn bodies_over_the_limit_get_413_declared_or_chunked() {
        let (addr, stop) = start(FAST).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
            .await
            .unwrap();
        let got = closed_within(&mut s, Duration::from_secs(3)).await;
        assert!(
            String::from_utf8_lossy(&got).starts_with("HTTP/1.1 413"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        let mut s = TcpStream::connect(addr).await.unwrap();
        let chunk = vec![b'x'; 2000];
        s.write_all(
            format!(
                "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
                chunk.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        s.write_all(&chunk).await.unwrap();
        s.write_all(b"\r\n0\r\n\r\n").await.unwrap();
        let got = closed_within(&mut s, Duration::from_secs(3)).await;
        assert!(
            String::from_utf8_lossy(&got).starts_with("HTTP/1.1 413"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed() {
        let (addr, stop) = start(FAST).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = closed_within(&mut s, Duration::from_secs(3)).await;
        assert!(
            String::from_utf8_lossy(&got).contains("ok"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn at_the_cap_an_idle_connection_makes_room_for_a_request() {
        let limits = Limits { header_timeout: Duration::from_secs(20), idle_timeout: Duration::from_secs(20), ..FAST };
        let (addr, stop) = start(limits).await;
        let mut idle = Vec::new();
        for _ in 0..limits.max_connections * 3 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let t = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let got = closed_within(&mut s, Duration::from_secs(3)).await;
        assert!(String::from_utf8_lossy(&got).contains("ok"), "{}", String::from_utf8_lossy(&got));
        assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
        stop.cancel();
    }

    /// `n` connections, each accepted and still sending its head (fills the cap).
    async fn partial_heads(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
        let mut served = Vec::new();
        for _ in 0..n {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
            served.push(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        served
    }

    #[tokio::test]
    async fn at_the_cap_a_slow_head_waits_without_shedding_and_is_served_once_whole() {
        let limits = Limits { header_timeout: Duration::from_secs(20), idle_timeout: Duration::from_secs(20), ..FAST };
        let (addr, stop) = start(limits).await;
        // The cap's worth of served connections, each still sending its head.
        let mut served = partial_heads(addr, limits.max_connections).await;
        // At the cap: a head that arrives in two parts is answered once whole...
        let mut split = TcpStream::connect(addr).await.unwrap();
        split.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        // ...and one that never completes is closed after its grace.
        let mut stuck = TcpStream::connect(addr).await.unwrap();
        stuck.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: a").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        split.write_all(b"Host: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let got = closed_within(&mut split, Duration::from_secs(3)).await;
        assert!(String::from_utf8_lossy(&got).contains("ok"), "{}", String::from_utf8_lossy(&got));
        let t = Instant::now();
        assert!(closed_within(&mut stuck, Duration::from_secs(3)).await.is_empty());
        assert!(t.elapsed() < Duration::from_millis(1000), "{:?}", t.elapsed());
        // Only the whole request took a served connection's place; the slow one took none.
        let mut closed = 0;
        for s in &mut served {
            let mut b = [0u8; 16];
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await {
                assert!(r.map_or(true, |n| n == 0), "a served connection got bytes");
                closed += 1;
            }
        }
        assert_eq!(closed, 1);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_waiting_connection_whose_client_leaves_does_not_hold_up_the_listener() {
        // On a single-threaded runtime of its own, as the admin endpoint is: a waiting
        // connection that kept waking for a client that left would stall it for good.
        let limits = Limits { header_timeout: Duration::from_secs(20), idle_timeout: Duration::from_secs(20), ..FAST };
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = CancellationToken::new();
        let app = Router::new().route("/healthz", get(|| async { "ok\n" }));
        let thread = spawn_on_own_thread("test-listener", l, app, limits, stop.clone()).unwrap();
        let served = partial_heads(addr, limits.max_connections).await;
        for _ in 0..4 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(c);
        }
        let t = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let got = closed_within(&mut s, Duration::from_secs(3)).await;
        assert!(String::from_utf8_lossy(&got).contains("ok"), "{}", String::from_utf8_lossy(&got));
        assert!(t.elapsed() < Duration::from_millis(200), "{:?}", t.elapsed());
        stop.cancel();
        drop(served);
        tokio::task::spawn_blocking(move || thread.join()).await.unwrap().unwrap();
    }

    #[test]
    fn a_request_head_ends_with_a_blank_line() {
        assert!(head_ends(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(head_ends(b"GET / HTTP/1.1\nHost: x\n\nbody"));
        assert!(!head_ends(b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(!head_ends(b"G"));
        assert!(!head_ends(b""));
    }

    #[tokio::test]
    async fn a_waiting_connection_told_to_go_is_kept_if_its_request_has_arrived() {
        // A burst of idle connects displaces waiting connections before their tasks
        // run; one whose request is already on the socket must still be served.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        for round in 0..20 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let (s, _) = l.accept().await.unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
            let gone = CancellationToken::new();
            gone.cancel();
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(head_within(&s, Duration::from_secs(1), &gone).await, "round {round}: dropped with its request");
            // An idle one told to go is dropped at once.
            let _idle = TcpStream::connect(addr).await.unwrap();
            let (s, _) = l.accept().await.unwrap();
            let t = Instant::now();
            assert!(!head_within(&s, Duration::from_secs(1), &gone).await);
            assert!(t.elapsed() < Duration::from_millis(500));
        }
    }

    #[tokio::test]
    async fn shedding_passes_over_a_connection_whose_request_waits_unread() {
        use std::os::fd::AsRawFd;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut with_request = TcpStream::connect(addr).await.unwrap();
        let (a, _) = l.accept().await.unwrap();
        let _idle = TcpStream::connect(addr).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        let table = Table::new();
        let older = table.add(a.as_raw_fd(), LO);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let newer = table.add(b.as_raw_fd(), LO);
        // Without a request both are idle and the older goes first...
        assert!(table.shed_least_active());
        assert!(older.evict.is_cancelled() && !newer.evict.is_cancelled());
        // ...but a request sitting in its socket keeps it, and the idle one goes.
        let table = Table::new();
        let older = table.add(a.as_raw_fd(), LO);
        let newer = table.add(b.as_raw_fd(), LO);
        with_request.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(table.shed_least_active());
        assert!(!older.evict.is_cancelled() && newer.evict.is_cancelled());
    }

    const LO: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn the_address_with_the_most_connections_sheds_its_own() {
        let other: std::net::IpAddr = [127, 0, 0, 2].into();
        let table = Table::new();
        let health = table.add(-1, other);
        std::thread::sleep(Duration::from_millis(3));
        let flood: Vec<_> = (0..3).map(|_| table.add(-1, LO)).collect();
        assert!(table.shed_least_active());
        assert!(!health.evict.is_cancelled(), "the other client's (older) connection was shed");
        assert_eq!(flood.iter().filter(|c| c.evict.is_cancelled()).count(), 1);
        assert_eq!(most_common([other, LO, LO, other, LO].into_iter()), Some(LO));
        assert_eq!(most_common(std::iter::empty()), None);
    }

    #[test]
    fn the_cap_stays_well_below_the_descriptor_limit() {
        let (soft, _) = nofile_limit().unwrap();
        let l = Limits {
            max_connections: usize::MAX,
            ..Limits::ADMIN
        }
        .within_descriptors();
        assert!(
            l.max_connections as u64 <= soft / 16 || l.max_connections == 4,
            "{} vs {soft}",
            l.max_connections
        );
    }
}
