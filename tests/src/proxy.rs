//! A TCP fault proxy the tests own, in the manner of toxiproxy but in-process.
//!
//! A [`Proxy`] sits between tend's services and a backing store (PostgreSQL,
//! Redis, RabbitMQ) or in front of HTTP service replicas. A test points a
//! service at [`Proxy::addr`] instead of the real address, then breaks the
//! link on purpose: refuse new connections, stall the bytes in flight, or cut
//! every open connection, and asserts that tend rides it out.
//!
//! Each accepted connection gets a task that pumps bytes both ways with a
//! plain read/write loop rather than `copy_bidirectional`, so that a stall
//! can hold bytes that were already read. Every task watches one
//! [`watch`] channel carrying the mode and a cut generation: bumping the
//! generation is how [`Proxy::cut`] and [`Mode::Refuse`] reach connections
//! that are already open.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways.
    Pass,
    /// The store "is down": open connections are cut, new ones are accepted
    /// and closed at once.
    Refuse,
    /// Keep connections open but forward no bytes either way; new connections
    /// are accepted and held without connecting upstream. Switching back to
    /// `Pass` delivers what was held.
    Stall,
}

/// A TCP proxy on 127.0.0.1 that can refuse, stall or cut on demand.
///
/// Dropping it stops the listener and every connection task.
pub struct Proxy {
    shared: Arc<Shared>,
}

/// What the handle, the accept loop and the connection tasks share.
struct Shared {
    name: String,
    addr: SocketAddr,
    upstreams: Mutex<Vec<SocketAddr>>,
    /// Index in `upstreams` of the next connection's first choice.
    next: AtomicUsize,
    state: watch::Sender<State>,
    open: AtomicUsize,
    accepted: AtomicU64,
    /// Cancelled when the `Proxy` is dropped.
    stop: CancellationToken,
}

#[derive(Debug, Clone, Copy)]
struct State {
    mode: Mode,
    /// Bumped by every cut; a connection ends when it differs from the value
    /// it was accepted under.
    generation: u64,
}

/// Bytes a pump reads before it writes them on: large enough for a
/// PostgreSQL result page or an AMQP frame in one go, small enough that a
/// stall holds little.
const BUFFER_BYTES: usize = 32 * 1024;

/// An upstream that neither accepts nor refuses (a dropped SYN) must not hold
/// a connection forever: give up on it and try the next one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause after a failed `accept` (out of file descriptors, say), so the loop
/// does not spin while the cause persists.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards each accepted connection to
    /// `upstream`.
    ///
    /// Panics if it cannot listen.
    pub async fn start(name: &str, upstream: SocketAddr) -> Proxy {
        Proxy::balance(name, vec![upstream]).await
    }

    /// Like [`start`](Proxy::start), but spreads new connections round-robin
    /// over `upstreams`. When connecting to one fails, the next is tried, as a
    /// Kubernetes Service drops an endpoint that stopped listening; the
    /// rotation then continues after the one that answered, so live upstreams
    /// share the load evenly.
    ///
    /// Panics if it cannot listen.
    pub async fn balance(name: &str, upstreams: Vec<SocketAddr>) -> Proxy {
        Proxy::listen_on(
            name,
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
            upstreams,
        )
        .await
    }

    /// Like [`balance`](Proxy::balance), listening on `listen` (an address
    /// of a test LAN, say, that devices in network namespaces can reach).
    pub async fn listen_on(name: &str, listen: SocketAddr, upstreams: Vec<SocketAddr>) -> Proxy {
        let listener = TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("proxy {name}: cannot listen on {listen}: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy {name}: no local address: {e}"));
        let (state, _) = watch::channel(State {
            mode: Mode::Pass,
            generation: 0,
        });
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            addr,
            upstreams: Mutex::new(upstreams),
            next: AtomicUsize::new(0),
            state,
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            stop: CancellationToken::new(),
        });
        let stop = shared.stop.clone();
        tokio::spawn(stop.run_until_cancelled_owned(accept_loop(listener, shared.clone())));
        Proxy { shared }
    }

    /// Replaces the upstreams of new connections; open ones keep theirs.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        *self
            .shared
            .upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = upstreams;
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    pub fn port(&self) -> u16 {
        self.shared.addr.port()
    }

    /// Switches the mode; see [`Mode`]. Entering `Refuse` cuts every open
    /// connection.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.state.send_modify(|s| {
            s.mode = mode;
            if mode == Mode::Refuse {
                s.generation += 1;
            }
        });
    }

    /// Cuts every open connection now, with a reset on both sides, like
    /// `rabbitmqctl close_all_connections` or a network blip. New connections
    /// still follow the mode.
    pub fn cut(&self) {
        self.shared.state.send_modify(|s| s.generation += 1);
    }

    /// Connections accepted and not yet closed. A cut connection leaves this
    /// count once its task has run, shortly after the cut: poll for it.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Connections accepted since the start, refused ones included.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("name", &self.shared.name)
            .field("addr", &self.shared.addr)
            .field("mode", &self.shared.state.borrow().mode)
            .finish_non_exhaustive()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                // Counted and tagged with the generation here, not in the
                // task, so a cut right after accept reaches this connection.
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                shared.open.fetch_add(1, Ordering::SeqCst);
                let generation = shared.state.borrow().generation;
                tokio::spawn(connection(shared.clone(), client, generation));
            }
            Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
        }
    }
}

/// How a connection ended.
enum End {
    /// Both directions reached end of file: close normally.
    Done,
    /// Cut, refused, failed or stopped: reset both sides.
    Reset,
}

async fn connection(shared: Arc<Shared>, mut client: TcpStream, generation: u64) {
    let mut upstream = None;
    let mut cut = shared.state.subscribe();
    let end = tokio::select! {
        biased;
        _ = shared.stop.cancelled() => End::Reset,
        _ = cut.wait_for(|s| s.generation != generation) => End::Reset,
        end = relay(&shared, &mut client, &mut upstream, generation) => end,
    };
    if let End::Reset = end {
        // SO_LINGER 0: closing sends a reset, as a dropped link or a killed
        // store does, instead of an orderly end of file.
        let _ = client.set_zero_linger();
        if let Some(upstream) = &upstream {
            let _ = upstream.set_zero_linger();
        }
    }
    drop(client);
    drop(upstream);
    shared.open.fetch_sub(1, Ordering::SeqCst);
}

/// Waits out a stall, connects upstream and pumps both ways. The upstream
/// stream is left in `upstream` so the caller can reset it after a cut.
async fn relay(
    shared: &Shared,
    client: &mut TcpStream,
    upstream: &mut Option<TcpStream>,
    generation: u64,
) -> End {
    let mut state = shared.state.subscribe();
    if !wait_for_pass(&mut state, generation).await {
        return End::Reset;
    }
    let Some(connected) = connect(shared).await else {
        return End::Reset;
    };
    let up = upstream.insert(connected);
    // Without it, Nagle's algorithm on the proxy's sockets would add delays
    // the real link does not have.
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (mut client_read, mut client_write) = client.split();
    let (mut up_read, mut up_write) = up.split();
    let pumped = tokio::try_join!(
        pump(&mut client_read, &mut up_write, state.clone(), generation),
        pump(&mut up_read, &mut client_write, state, generation),
    );
    match pumped {
        Ok(_) => End::Done,
        Err(_) => End::Reset,
    }
}

/// Tries each upstream once, starting at the rotation's next one.
async fn connect(shared: &Shared) -> Option<TcpStream> {
    let upstreams = shared
        .upstreams
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let first = shared.next.load(Ordering::SeqCst);
    for i in 0..upstreams.len() {
        let index = (first + i) % upstreams.len();
        if let Ok(Ok(stream)) =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstreams[index])).await
        {
            shared.next.store(index + 1, Ordering::SeqCst);
            return Some(stream);
        }
    }
    None
}

/// Forwards bytes from `from` to `to` until end of file, holding each read
/// while the proxy stalls. An end of file is forwarded as a half close.
async fn pump(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    mut state: watch::Receiver<State>,
    generation: u64,
) -> std::io::Result<()> {
    let mut buf = vec![0; BUFFER_BYTES];
    loop {
        let n = from.read(&mut buf).await?;
        if !wait_for_pass(&mut state, generation).await {
            return Err(std::io::ErrorKind::ConnectionAborted.into());
        }
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Waits while the mode is `Stall`; true once it is `Pass` and this
/// connection has not been cut.
async fn wait_for_pass(state: &mut watch::Receiver<State>, generation: u64) -> bool {
    match state
        .wait_for(|s| s.mode != Mode::Stall || s.generation != generation)
        .await
    {
        Ok(s) => s.mode == Mode::Pass && s.generation == generation,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every test finishes within this, or fails.
    const BOUND: Duration = Duration::from_secs(10);

    async fn within<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(BOUND, f)
            .await
            .expect("test timed out")
    }

    /// A server that echoes every byte back, on 127.0.0.1:0.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// A server that writes `tag` to each connection and closes it.
    async fn tag_server(tag: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(tag.as_bytes()).await;
            }
        });
        addr
    }

    /// An address nothing listens on: connecting is refused.
    async fn dead_address() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) {
        stream.write_all(message).await.unwrap();
        let mut back = vec![0; message.len()];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(back, message);
    }

    /// Reads until the connection ends; true if it ended (end of file or
    /// error) within `wait`.
    async fn closes_within(stream: &mut TcpStream, wait: Duration) -> bool {
        let mut buf = [0; 64];
        tokio::time::timeout(wait, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    async fn no_open_connections(proxy: &Proxy) {
        while proxy.open_connections() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn bytes_pass_through_both_ways() {
        within(async {
            let proxy = Proxy::start("echo", echo_server().await).await;
            let mut client = TcpStream::connect(proxy.addr()).await.unwrap();

            round_trip(&mut client, b"hello").await;
            round_trip(&mut client, &vec![7; 200 * 1024]).await;

            assert_eq!(proxy.accepted(), 1);
            assert_eq!(proxy.open_connections(), 1);
            drop(client);
            no_open_connections(&proxy).await;
        })
        .await;
    }

    #[tokio::test]
    async fn a_cut_closes_open_connections_and_new_ones_still_work() {
        within(async {
            let proxy = Proxy::start("echo", echo_server().await).await;
            let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
            round_trip(&mut client, b"before").await;

            proxy.cut();

            assert!(closes_within(&mut client, Duration::from_secs(2)).await);
            no_open_connections(&proxy).await;
            let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
            round_trip(&mut again, b"after").await;
            assert_eq!(proxy.accepted(), 2);
        })
        .await;
    }

    #[tokio::test]
    async fn refuse_closes_connections_until_pass_restores_them() {
        within(async {
            let proxy = Proxy::start("echo", echo_server().await).await;
            let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
            round_trip(&mut open, b"before").await;

            proxy.set_mode(Mode::Refuse);

            assert!(closes_within(&mut open, Duration::from_secs(2)).await);
            let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
            let _ = refused.write_all(b"anyone?").await;
            assert!(closes_within(&mut refused, Duration::from_secs(2)).await);

            proxy.set_mode(Mode::Pass);

            let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
            round_trip(&mut again, b"after").await;
        })
        .await;
    }

    #[tokio::test]
    async fn stall_holds_bytes_until_pass_delivers_them() {
        within(async {
            let echo = echo_server().await;
            let proxy = Proxy::start("echo", echo).await;
            let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
            round_trip(&mut open, b"before").await;

            proxy.set_mode(Mode::Stall);
            open.write_all(b"held").await.unwrap();
            let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
            new.write_all(b"new").await.unwrap();

            let mut buf = [0; 16];
            let wait = Duration::from_millis(300);
            assert!(
                tokio::time::timeout(wait, open.read(&mut buf))
                    .await
                    .is_err()
            );
            assert!(
                tokio::time::timeout(wait, new.read(&mut buf))
                    .await
                    .is_err()
            );
            assert_eq!(proxy.open_connections(), 2);

            proxy.set_mode(Mode::Pass);

            let mut held = [0; 4];
            open.read_exact(&mut held).await.unwrap();
            assert_eq!(&held, b"held");
            let mut answered = [0; 3];
            new.read_exact(&mut answered).await.unwrap();
            assert_eq!(&answered, b"new");
            round_trip(&mut open, b"after").await;
        })
        .await;
    }

    #[tokio::test]
    async fn balance_skips_a_refusing_upstream_and_alternates_over_live_ones() {
        within(async {
            let (a, b) = (tag_server("a").await, tag_server("b").await);
            let proxy = Proxy::balance("replicas", vec![dead_address().await, a, b]).await;

            let mut served = String::new();
            for _ in 0..4 {
                let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
                client.read_to_string(&mut served).await.unwrap();
            }
            assert_eq!(served, "abab");

            proxy.set_upstreams(vec![b]);
            let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
            let mut tag = String::new();
            client.read_to_string(&mut tag).await.unwrap();
            assert_eq!(tag, "b");
        })
        .await;
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_connections_and_listener() {
        within(async {
            let proxy = Proxy::start("echo", echo_server().await).await;
            let addr = proxy.addr();
            let mut client = TcpStream::connect(addr).await.unwrap();
            round_trip(&mut client, b"hello").await;

            drop(proxy);

            assert!(closes_within(&mut client, Duration::from_secs(2)).await);
            // The listener goes with the accept task, shortly after the drop.
            crate::eventually(Duration::from_secs(2), "the listener to close", || async {
                TcpStream::connect(addr).await.is_err().then_some(())
            })
            .await;
        })
        .await;
    }
}
