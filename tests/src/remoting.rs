//! The RocketMQ remoting protocol at the byte level, for what the client library does not offer:
//! one request of any code ([`call`]), and a fault in one kind of request in front of a real
//! cluster (TCP proxies on 127.0.0.1 that forward the protocol and lose chosen requests).
//!
//! - [`RemotingProxy::namesrv`] forwards to a real NameServer and rewrites one broker address in
//!   its answers (routes, cluster info) to the address of a broker proxy, so that a client given
//!   this NameServer talks to that broker only through the proxy.
//! - [`RemotingProxy::broker`] forwards to a real broker and never forwards the requests a filter
//!   picks: the client waits for an answer that never comes (its timeout), as with a broker that
//!   lost the request, while every other request of the same connection is answered.
//!
//! A frame is a 4-byte big-endian length, then a 4-byte header length (its high byte the
//! serialization, 0 JSON, 1 ROCKETMQ), the header and the body.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{ensure, Context, Result};

/// A request as the proxy sees it: its code and its header's bytes.
pub struct Request<'a> {
    pub code: i32,
    pub header: &'a [u8],
}

impl Request<'_> {
    /// Whether the header holds `text` (an ext field's value, such as a topic).
    pub fn mentions(&self, text: &str) -> bool {
        self.header
            .windows(text.len())
            .any(|window| window == text.as_bytes())
    }
}

type Filter = dyn Fn(&Request<'_>) -> bool + Send + Sync;

/// A proxy on a port of 127.0.0.1; stops (and closes its connections) when dropped.
pub struct RemotingProxy {
    pub addr: String,
    lost: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

enum Mode {
    /// Answers: `from` is replaced by `to` (same length) in every frame.
    Rewrite { from: Vec<u8>, to: Vec<u8> },
    /// Requests the filter picks are never forwarded.
    Lose(Arc<Filter>),
}

impl RemotingProxy {
    /// A NameServer proxy for `namesrv` whose answers name `broker` as `instead` (two addresses
    /// of the same length: `127.0.0.1:` and a five-digit port each).
    pub fn namesrv(namesrv: &str, broker: &str, instead: &str) -> Result<RemotingProxy> {
        ensure!(
            broker.len() == instead.len(),
            "{broker} and {instead} differ in length: a rewrite would change the frames' lengths"
        );
        RemotingProxy::start(
            namesrv,
            Mode::Rewrite {
                from: broker.as_bytes().to_vec(),
                to: instead.as_bytes().to_vec(),
            },
        )
    }

    /// A broker proxy for `broker` that loses the requests `lose` picks.
    pub fn broker(
        broker: &str,
        lose: impl Fn(&Request<'_>) -> bool + Send + Sync + 'static,
    ) -> Result<RemotingProxy> {
        RemotingProxy::start(broker, Mode::Lose(Arc::new(lose)))
    }

    /// How many requests were lost so far.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }

    fn start(upstream: &str, mode: Mode) -> Result<RemotingProxy> {
        let listener = crate::listen_on_free_port()
            .with_context(|| format!("binding a proxy for {upstream}"))?;
        let port = listener.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let lost = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let upstream = upstream.to_owned();
        let (counted, stop, open_streams) = (lost.clone(), stopping.clone(), streams.clone());
        let mode = Arc::new(mode);
        let acceptor = std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (Ok(client_out), Ok(server_out)) = (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                if let Ok(mut open) = open_streams.lock() {
                    open.extend(client.try_clone());
                    open.extend(server.try_clone());
                }
                let (mode_up, mode_down, lost) = (mode.clone(), mode.clone(), counted.clone());
                std::thread::spawn(move || requests(client, server_out, &mode_up, &lost));
                std::thread::spawn(move || answers(server, client_out, &mode_down));
            }
        });
        Ok(RemotingProxy {
            addr,
            lost,
            stopping,
            streams,
            acceptor: Some(acceptor),
        })
    }
}

impl Drop for RemotingProxy {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then sees `stopping`.
        let _ = TcpStream::connect(&self.addr);
        if let Ok(open) = self.streams.lock() {
            for stream in open.iter() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Sends one request (`code`, a JSON header with `ext_fields`, `body`) to `addr` over a
/// connection of its own; returns the answer's code, remark and body.
pub fn call(
    addr: &str,
    code: i32,
    ext_fields: serde_json::Value,
    body: &[u8],
) -> Result<(i32, String, Vec<u8>)> {
    let header = serde_json::to_vec(&serde_json::json!({
        "code": code,
        "language": "RUST",
        "version": 0,
        "opaque": 1,
        "flag": 0,
        "extFields": ext_fields,
        "serializeTypeCurrentRPC": "JSON",
    }))?;
    let mut request = (header.len() as u32).to_be_bytes().to_vec();
    request.extend_from_slice(&header);
    request.extend_from_slice(body);
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    ensure!(
        send(&mut stream, &request),
        "sending request {code} to {addr}"
    );
    let answer =
        frame(&mut stream).with_context(|| format!("{addr} did not answer request {code}"))?;
    let mark = u32::from_be_bytes(answer.get(..4).context("a short answer")?.try_into()?);
    ensure!(
        mark >> 24 == 0,
        "{addr} answered request {code} in a serialization other than JSON"
    );
    let length = (mark & 0x00ff_ffff) as usize;
    let header: serde_json::Value = serde_json::from_slice(
        answer
            .get(4..4 + length)
            .context("an answer shorter than its header")?,
    )?;
    Ok((
        header["code"].as_i64().unwrap_or(-1) as i32,
        header["remark"].as_str().unwrap_or_default().to_owned(),
        answer[4 + length..].to_vec(),
    ))
}

/// One frame (without its length prefix), or `None` at the end of the stream.
fn frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).ok()?;
    let length = u32::from_be_bytes(length) as usize;
    // A frame over 64 MiB is not the protocol: the connection ends.
    if length > 64 << 20 {
        return None;
    }
    let mut frame = vec![0u8; length];
    stream.read_exact(&mut frame).ok()?;
    Some(frame)
}

fn send(stream: &mut TcpStream, frame: &[u8]) -> bool {
    stream
        .write_all(&(frame.len() as u32).to_be_bytes())
        .and_then(|()| stream.write_all(frame))
        .is_ok()
}

/// The code and header of a frame; `None` when it is too short to hold them.
fn request(frame: &[u8]) -> Option<Request<'_>> {
    let mark = u32::from_be_bytes(frame.get(..4)?.try_into().ok()?);
    let (serialization, length) = (mark >> 24, (mark & 0x00ff_ffff) as usize);
    let header = frame.get(4..4 + length)?;
    let code = if serialization == 1 {
        i32::from(i16::from_be_bytes(header.get(..2)?.try_into().ok()?))
    } else {
        serde_json::from_slice::<serde_json::Value>(header)
            .ok()?
            .get("code")?
            .as_i64()? as i32
    };
    Some(Request { code, header })
}

/// Client → server.
fn requests(mut client: TcpStream, mut server: TcpStream, mode: &Mode, lost: &AtomicUsize) {
    while let Some(frame) = frame(&mut client) {
        if let Mode::Lose(filter) = mode {
            if request(&frame).is_some_and(|request| filter(&request)) {
                lost.fetch_add(1, Ordering::SeqCst);
                continue;
            }
        }
        if !send(&mut server, &frame) {
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Both);
}

/// Server → client.
fn answers(mut server: TcpStream, mut client: TcpStream, mode: &Mode) {
    while let Some(mut frame) = frame(&mut server) {
        if let Mode::Rewrite { from, to } = mode {
            let mut at = 0;
            while let Some(found) = frame[at..]
                .windows(from.len())
                .position(|window| window == from.as_slice())
            {
                let start = at + found;
                frame[start..start + to.len()].copy_from_slice(to);
                at = start + to.len();
            }
        }
        if !send(&mut client, &frame) {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}
