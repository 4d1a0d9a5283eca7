//! Opening one bench connection: a TCP socket bound to a chosen source address, the WebSocket
//! upgrade with a small-buffer configuration, and the server's `hello`.

use crate::frame::{self, Inbound};
use futures::StreamExt;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

pub type Ws = WebSocketStream<TcpStream>;

/// Small buffers keep an idle client connection to a few KiB (tungstenite's defaults allocate
/// 128 KiB per socket).
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Why a dial failed; `label()` is the stable key failures are counted under.
#[derive(Debug)]
pub enum DialError {
    Socket(std::io::Error),
    Bind(IpAddr, std::io::Error),
    Connect(std::io::Error),
    /// The upgrade was answered with this HTTP status (401 = bad token).
    Http(u16),
    Handshake(tungstenite::Error),
    /// The connection closed or broke before `hello`.
    NoHello(String),
}

impl DialError {
    pub fn label(&self) -> String {
        match self {
            DialError::Socket(e) => format!("socket: {:?}", e.kind()),
            DialError::Bind(_, e) => format!("bind: {:?}", e.kind()),
            DialError::Connect(e) => match e.raw_os_error() {
                Some(libc::EADDRNOTAVAIL) => {
                    "tcp_connect: AddrNotAvailable (out of source ports? use --source-ips)".into()
                }
                Some(libc::EMFILE) | Some(libc::ENFILE) => {
                    "tcp_connect: too many open files".into()
                }
                _ => format!("tcp_connect: {:?}", e.kind()),
            },
            DialError::Http(s) => format!("http {s}"),
            DialError::Handshake(e) => match e {
                tungstenite::Error::Io(io) => format!("ws_handshake: io {:?}", io.kind()),
                tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                    "ws_handshake: closed".into()
                }
                other => format!("ws_handshake: {}", short(&other.to_string())),
            },
            DialError::NoHello(why) => format!("no_hello: {why}"),
        }
    }
}

fn short(s: &str) -> String {
    s.chars().take(60).collect()
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Bind(ip, e) => write!(f, "bind {ip}: {e}"),
            DialError::Socket(e) | DialError::Connect(e) => write!(f, "{}: {e}", self.label()),
            DialError::Handshake(e) => write!(f, "websocket handshake: {e}"),
            other => f.write_str(&other.label()),
        }
    }
}

/// Time spent in each step of a successful dial.
#[derive(Debug, Clone, Copy)]
pub struct DialTimings {
    pub tcp_connect: Duration,
    /// From the start of the TCP connect until `hello` arrived.
    pub to_hello: Duration,
}

/// A non-blocking TCP socket, bound to `source` (port chosen at connect time, so one address
/// serves many destinations' worth of ports) when given.
fn client_socket(
    dest: SocketAddr,
    source: Option<IpAddr>,
) -> Result<tokio::net::TcpSocket, DialError> {
    let socket = Socket::new(Domain::for_address(dest), Type::STREAM, Some(Protocol::TCP))
        .map_err(DialError::Socket)?;
    socket.set_nonblocking(true).map_err(DialError::Socket)?;
    socket.set_tcp_nodelay(true).map_err(DialError::Socket)?;
    if let Some(ip) = source {
        if ip.is_ipv4() {
            bind_address_no_port(&socket);
        }
        socket
            .bind(&SocketAddr::new(ip, 0).into())
            .map_err(|e| DialError::Bind(ip, e))?;
    }
    let std_stream: std::net::TcpStream = socket.into();
    Ok(tokio::net::TcpSocket::from_std_stream(std_stream))
}

/// IP_BIND_ADDRESS_NO_PORT: let connect() pick the port per destination instead of bind()
/// reserving one per address. Best effort; without it each source address still gives ~28k
/// ports.
fn bind_address_no_port(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid fd and a pointer to a c_int of the size passed.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Connect, upgrade to WebSocket with `?token=` (and `&batch=1` when `batch`), and wait for
/// `hello`. Frames that came in the same message after it are not measured (none of a run's
/// messages is sent before every connection is up).
pub async fn dial(
    dest: SocketAddr,
    ws_url: &str,
    source: Option<IpAddr>,
    token: &str,
    batch: bool,
) -> Result<(Ws, DialTimings), DialError> {
    let start = Instant::now();
    let stream = client_socket(dest, source)?
        .connect(dest)
        .await
        .map_err(DialError::Connect)?;
    let tcp_connect = start.elapsed();
    let url = format!(
        "{ws_url}?token={token}{}",
        if batch { "&batch=1" } else { "" }
    );
    let (mut ws, _response) = client_async_with_config(url.as_str(), stream, Some(ws_config()))
        .await
        .map_err(|e| match e {
            tungstenite::Error::Http(resp) => DialError::Http(resp.status().as_u16()),
            other => DialError::Handshake(other),
        })?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                // hello comes first, alone or as the first line of a batch.
                match t.split('\n').next().and_then(frame::parse) {
                    Some(Inbound::Hello { .. }) => break,
                    Some(Inbound::Error { code, .. }) => {
                        return Err(DialError::NoHello(format!("error {code}")));
                    }
                    _ => continue,
                }
            }
            Some(Ok(Message::Close(_))) | None => return Err(DialError::NoHello("closed".into())),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(DialError::NoHello(short(&e.to_string()))),
        }
    }
    Ok((
        ws,
        DialTimings {
            tcp_connect,
            to_hello: start.elapsed(),
        },
    ))
}

/// Where a peer connection resumes from after a disconnection (the storm scenario).
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// Centrifugo: per chat, the stream epoch and the last offset seen.
    pub cf: Vec<(u64, String, u64)>,
    /// Socket.IO: the session `pid` and the offset of the last packet received.
    pub sio: Option<(String, String)>,
}

/// What a peer dial learned: positions to resume from later, and messages recovered inline
/// (Centrifugo returns them in the subscribe reply; Socket.IO replays them as events).
#[derive(Debug, Default)]
pub struct Joined {
    /// Centrifugo: (chat, epoch, offset) of each subscription, when the channel has history.
    pub cf: Vec<(u64, String, u64)>,
    /// Socket.IO: the session id that recovery needs (only with recovery on).
    pub sio_pid: Option<String>,
    /// Socket.IO: the offset of the last packet replayed before the CONNECT reply.
    pub sio_offset: Option<String>,
    /// Stamps of recovered publications.
    pub recovered: Vec<String>,
    /// Whether the server said it recovered the state (Centrifugo `recovered`; Socket.IO: a
    /// reconnect that kept its `pid`).
    pub recovered_ok: bool,
}

async fn next_text(ws: &mut Ws) -> Result<String, DialError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(_))) | None => return Err(DialError::NoHello("closed".into())),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(DialError::NoHello(short(&e.to_string()))),
        }
    }
}

/// Connect to a peer (Centrifugo, Socket.IO), authenticate with `token`, and listen to
/// `chats` (subscribe / join), resuming from `resume` when given. Returns once the server
/// confirmed every step — the peers' equivalent of Tern's `hello`.
async fn send(ws: &mut Ws, text: String) -> Result<(), DialError> {
    use futures::SinkExt;
    ws.send(Message::text(text))
        .await
        .map_err(|e| DialError::NoHello(format!("send: {}", short(&e.to_string()))))
}

pub async fn dial_peer(
    system: crate::proto::System,
    dest: SocketAddr,
    ws_url: &str,
    source: Option<IpAddr>,
    token: &str,
    chats: &[u64],
    resume: Option<&Resume>,
) -> Result<(Ws, DialTimings, Joined), DialError> {
    use crate::proto::{self, System};
    let start = Instant::now();
    let stream = client_socket(dest, source)?
        .connect(dest)
        .await
        .map_err(DialError::Connect)?;
    let tcp_connect = start.elapsed();
    let (mut ws, _response) = client_async_with_config(ws_url, stream, Some(ws_config()))
        .await
        .map_err(|e| match e {
            tungstenite::Error::Http(resp) => DialError::Http(resp.status().as_u16()),
            other => DialError::Handshake(other),
        })?;
    let mut joined = Joined::default();
    match system {
        System::Centrifugo => {
            send(&mut ws, proto::cf_connect(token)).await?;
            'connect: loop {
                let t = next_text(&mut ws).await?;
                for line in t.split('\n').filter(|l| !l.trim().is_empty()) {
                    match proto::cf_connect_reply(line) {
                        Ok(true) => break 'connect,
                        Ok(false) => {}
                        Err(e) => return Err(DialError::NoHello(e)),
                    }
                }
            }
            for (k, &chat) in chats.iter().enumerate() {
                let id = 2 + k as u32;
                let rec = resume.and_then(|r| r.cf.iter().find(|(c, _, _)| *c == chat));
                send(
                    &mut ws,
                    proto::cf_subscribe(id, chat, rec.map(|(_, e, o)| (e.as_str(), *o))),
                )
                .await?;
                'sub: loop {
                    let t = next_text(&mut ws).await?;
                    for line in t.split('\n').filter(|l| !l.trim().is_empty()) {
                        match proto::cf_subscribe_reply(line, id) {
                            Some(Ok(s)) => {
                                joined.recovered_ok |= s.recovered;
                                let last = s
                                    .publications
                                    .last()
                                    .map_or(s.offset, |p| p.1.max(s.offset));
                                joined
                                    .recovered
                                    .extend(s.publications.into_iter().map(|p| p.0));
                                if let Some(e) = s.epoch.filter(|e| !e.is_empty()) {
                                    joined.cf.push((chat, e, last));
                                }
                                break 'sub;
                            }
                            Some(Err(e)) => return Err(DialError::NoHello(e)),
                            None => {
                                if line.trim() == "{}" {
                                    send(&mut ws, "{}".into()).await?;
                                }
                            }
                        }
                    }
                }
            }
        }
        System::Socketio => {
            let open = next_text(&mut ws).await?;
            if !open.starts_with('0') {
                return Err(DialError::NoHello(format!(
                    "engine.io open expected: {}",
                    short(&open)
                )));
            }
            let rec = resume.and_then(|r| r.sio.as_ref());
            send(
                &mut ws,
                proto::sio_connect(token, rec.map(|(p, o)| (p.as_str(), o.as_str()))),
            )
            .await?;
            loop {
                let t = next_text(&mut ws).await?;
                if t == "2" {
                    send(&mut ws, "3".into()).await?;
                    continue;
                }
                // A recovered session's missed packets come before the CONNECT reply; the
                // official client buffers them, so does the bench.
                if let proto::PeerEvent::Message { stamp, pos, .. } = proto::sio_parse(&t) {
                    joined.recovered.push(stamp.into_owned());
                    if let Some(proto::Pos::Token(o)) = pos {
                        joined.sio_offset = Some(o.into_owned());
                    }
                    continue;
                }
                match proto::sio_connected(&t) {
                    Some(Ok(pid)) => {
                        joined.recovered_ok =
                            rec.is_some() && pid.as_deref() == rec.map(|r| r.0.as_str());
                        joined.sio_pid = pid;
                        break;
                    }
                    Some(Err(e)) => return Err(DialError::NoHello(format!("socketio {e}"))),
                    None => {}
                }
            }
            // A recovered session is back in its rooms; a new one joins them.
            if !joined.recovered_ok {
                for (k, &chat) in chats.iter().enumerate() {
                    let ack_id = k as u64;
                    send(&mut ws, proto::sio_join(ack_id, chat)).await?;
                    let want = format!("43{ack_id}[");
                    loop {
                        let t = next_text(&mut ws).await?;
                        if t == "2" {
                            send(&mut ws, "3".into()).await?;
                        } else if t.starts_with(&want) {
                            break;
                        }
                    }
                }
            }
        }
        System::Tern | System::Matrix => {
            return Err(DialError::NoHello(format!(
                "{system:?} is not a peer WebSocket protocol"
            )));
        }
    }
    Ok((
        ws,
        DialTimings {
            tcp_connect,
            to_hello: start.elapsed(),
        },
        joined,
    ))
}
