//! A small, real HTTP/1.1 server on 127.0.0.1 for integration tests.
//!
//! ```ignore
//! mod support;
//! use support::http::TestServer;
//!
//! let srv = TestServer::start();
//! srv.add("/cdimage.ubuntu.com/releases/x.img.xz", bytes);   // serve bytes at a path
//! let url = srv.url_for("/cdimage.ubuntu.com/releases/x.img.xz"); // http://127.0.0.1:PORT/...
//! // As a --mirror: Fetcher::new(cache, Some(srv.url()), ..) turns
//! // https://cdimage.ubuntu.com/releases/x.img.xz into srv.url() + "/cdimage.ubuntu.com/releases/x.img.xz".
//! srv.set_ranges(false);                // answer Range requests with a full 200
//! srv.set_drop_after("/p", 1 << 20, 2); // first 2 responses for /p break after 1 MiB
//! srv.set_fail("/p", 503, 1);           // first response for /p is a 503
//! srv.add_redirect("/old", "/new");     // 302 to another path (or absolute URL)
//! srv.set_throttle(Some(Duration::from_millis(5))); // pause after every 64 KiB sent
//! srv.set_stall_after("/p", 1000, Duration::from_secs(2), 1); // go silent mid-body once
//! srv.set_false_length("/p", 1 << 40, 3); // next 3: a 200 claiming 1 TiB, then the body, then close
//! srv.set_etags(false);                 // no ETag / If-Range handling (default: on)
//! assert_eq!(srv.hits("/p"), 3);        // requests seen for a path (query ignored)
//! let log = srv.requests();             // every request: method, path, Range header
//! ```
//!
//! `TestServer::serve_dir(dir)` also serves files below a directory (paths map to
//! `dir/<path>`; `..` is refused). Unknown paths get a 404. Each connection carries one
//! request (`Connection: close`). Dropping the server stops it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The status code answered.
    pub status: u16,
    /// All headers, names in lower case.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// path → (what to do, for how many more responses)
type Counted<T> = Mutex<HashMap<String, (T, usize)>>;

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    files: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    dir: Mutex<Option<PathBuf>>,
    ignore_ranges: AtomicBool,
    no_etags: AtomicBool,
    /// body bytes to send before closing
    drops: Counted<usize>,
    /// status
    fails: Counted<u16>,
    redirects: Mutex<HashMap<String, String>>,
    /// (body bytes before the pause, pause)
    stalls: Counted<(usize, Duration)>,
    /// Content-Length announced
    false_lengths: Counted<u64>,
    throttle: Mutex<Option<Duration>>,
    log: Mutex<Vec<Request>>,
}

/// A running test server; stops when dropped.
pub struct TestServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server on 127.0.0.1 with an ephemeral port, serving nothing yet.
    pub fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let accept = thread::spawn(move || {
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let sh = sh.clone();
                thread::spawn(move || {
                    let _ = handle(&sh, stream);
                });
            }
        });
        TestServer {
            shared,
            addr,
            accept: Some(accept),
        }
    }

    /// Starts a server that also serves the files below `dir`.
    pub fn serve_dir(dir: &Path) -> TestServer {
        let s = TestServer::start();
        *s.shared.dir.lock().unwrap() = Some(dir.to_path_buf());
        s
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url_for(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Serves `bytes` at `path` (which starts with `/`), replacing any earlier content.
    pub fn add(&self, path: &str, bytes: impl Into<Vec<u8>>) {
        self.shared
            .files
            .lock()
            .unwrap()
            .insert(path.to_string(), Arc::new(bytes.into()));
    }

    /// Stops serving `path` (404 from now on).
    pub fn remove(&self, path: &str) {
        self.shared.files.lock().unwrap().remove(path);
    }

    /// Honour `Range` requests with 206 (default `true`) or ignore them and send 200.
    pub fn set_ranges(&self, honour: bool) {
        self.shared.ignore_ranges.store(!honour, Ordering::SeqCst);
    }

    /// Send a strong `ETag` (derived from the content) and honour `If-Range`
    /// (default `true`). Without ETags, `If-Range` is ignored.
    pub fn set_etags(&self, on: bool) {
        self.shared.no_etags.store(!on, Ordering::SeqCst);
    }

    /// The next `times` responses for `path` send their headers and only `bytes` bytes
    /// of the body, then close the connection.
    pub fn set_drop_after(&self, path: &str, bytes: usize, times: usize) {
        self.shared
            .drops
            .lock()
            .unwrap()
            .insert(path.to_string(), (bytes, times));
    }

    /// The next `times` responses for `path` send `bytes` bytes of the body, then go
    /// silent for `pause` (keeping the connection open), then send the rest.
    pub fn set_stall_after(&self, path: &str, bytes: usize, pause: Duration, times: usize) {
        self.shared
            .stalls
            .lock()
            .unwrap()
            .insert(path.to_string(), ((bytes, pause), times));
    }

    /// The next `times` responses for `path` are a `200` that ignores any `Range` and
    /// announces `Content-Length: length`, then send the real body and close the connection
    /// (a server whose length is wrong, or that stops long before the end).
    pub fn set_false_length(&self, path: &str, length: u64, times: usize) {
        self.shared
            .false_lengths
            .lock()
            .unwrap()
            .insert(path.to_string(), (length, times));
    }

    /// The next `times` requests for `path` are answered with `status` and no body.
    pub fn set_fail(&self, path: &str, status: u16, times: usize) {
        self.shared
            .fails
            .lock()
            .unwrap()
            .insert(path.to_string(), (status, times));
    }

    /// Answers `from` with a 302 to `to` (a path on this server or an absolute URL).
    pub fn add_redirect(&self, from: &str, to: &str) {
        self.shared
            .redirects
            .lock()
            .unwrap()
            .insert(from.to_string(), to.to_string());
    }

    /// Sleeps this long after every 64 KiB of body sent (None: full speed).
    pub fn set_throttle(&self, pause: Option<Duration>) {
        *self.shared.throttle.lock().unwrap() = pause;
    }

    /// Requests seen for `path` (query ignored).
    pub fn hits(&self, path: &str) -> usize {
        self.shared
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// Requests seen for any path.
    pub fn total_hits(&self) -> usize {
        self.shared.log.lock().unwrap().len()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Forgets the request log.
    pub fn clear_log(&self) {
        self.shared.log.lock().unwrap().clear();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn handle(sh: &Shared, mut stream: TcpStream) -> std::io::Result<()> {
    if sh.stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(());
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let path = target.split('?').next().unwrap_or("/").to_string();
    let range = headers
        .iter()
        .find(|(k, _)| k == "range")
        .map(|(_, v)| v.clone());
    let mut req = Request {
        method: method.clone(),
        path: path.clone(),
        target,
        range: range.clone(),
        status: 0,
        headers,
    };

    // Forced failures.
    if let Some(status) = take_one(&sh.fails, &path) {
        req.status = status;
        sh.log.lock().unwrap().push(req);
        return respond_empty(&mut stream, status, &[]);
    }

    if let Some(to) = sh.redirects.lock().unwrap().get(&path).cloned() {
        req.status = 302;
        sh.log.lock().unwrap().push(req);
        return respond_empty(&mut stream, 302, &[("Location", to.as_str())]);
    }

    let body = lookup(sh, &path);
    let Some(body) = body else {
        req.status = 404;
        sh.log.lock().unwrap().push(req);
        let msg = b"not found\n";
        write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
            msg.len()
        )?;
        if method != "HEAD" {
            stream.write_all(msg)?;
        }
        stream.flush()?;
        let _ = stream.shutdown(Shutdown::Both);
        return Ok(());
    };

    let len = body.len();
    let etag = if sh.no_etags.load(Ordering::SeqCst) {
        None
    } else {
        Some(format!("\"{}\"", &super::sha256_hex(&body)[..16]))
    };
    // RFC 9110: a Range with a non-matching If-Range gets the whole representation.
    let stale = match (&etag, req.header("if-range")) {
        (Some(e), Some(v)) => e != v,
        _ => false,
    };
    let false_length = take_one(&sh.false_lengths, &path);
    let (status, start, end) = match range.as_deref().and_then(|r| parse_range(r, len)) {
        _ if false_length.is_some() => (200, 0, len),
        Some(_) if sh.ignore_ranges.load(Ordering::SeqCst) || stale => (200, 0, len),
        Some(Ok((s, e))) => (206, s, e),
        Some(Err(())) => (416, 0, 0),
        None => (200, 0, len),
    };
    req.status = status;
    sh.log.lock().unwrap().push(req);
    if status == 416 {
        let cr = format!("bytes */{len}");
        return respond_empty(&mut stream, 416, &[("Content-Range", cr.as_str())]);
    }
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nAccept-Ranges: {}\r\nConnection: close\r\n",
        status,
        reason(status),
        false_length.unwrap_or((end - start) as u64),
        if sh.ignore_ranges.load(Ordering::SeqCst) {
            "none"
        } else {
            "bytes"
        }
    );
    if let Some(e) = &etag {
        head.push_str(&format!("ETag: {e}\r\n"));
    }
    if status == 206 {
        head.push_str(&format!(
            "Content-Range: bytes {}-{}/{}\r\n",
            start,
            end - 1,
            len
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if method == "HEAD" {
        stream.flush()?;
        let _ = stream.shutdown(Shutdown::Both);
        return Ok(());
    }

    let cut = take_one(&sh.drops, &path);
    let slice = &body[start..end];
    let send = match cut {
        Some(n) => &slice[..n.min(slice.len())],
        None => slice,
    };
    let stall = take_one(&sh.stalls, &path);
    let send = match stall {
        Some((bytes, pause)) => {
            let n = bytes.min(send.len());
            stream.write_all(&send[..n])?;
            stream.flush()?;
            thread::sleep(pause);
            &send[n..]
        }
        None => send,
    };
    let throttle = *sh.throttle.lock().unwrap();
    for chunk in send.chunks(64 << 10) {
        stream.write_all(chunk)?;
        if let Some(p) = throttle {
            stream.flush()?;
            thread::sleep(p);
        }
    }
    stream.flush()?;
    let _ = stream.shutdown(Shutdown::Both);
    Ok(())
}

/// The behaviour set for `path` for a number of responses, counting this one off.
fn take_one<T: Copy>(set: &Counted<T>, path: &str) -> Option<T> {
    match set.lock().unwrap().get_mut(path) {
        Some((what, left)) if *left > 0 => {
            *left -= 1;
            Some(*what)
        }
        _ => None,
    }
}

fn lookup(sh: &Shared, path: &str) -> Option<Arc<Vec<u8>>> {
    if let Some(b) = sh.files.lock().unwrap().get(path) {
        return Some(b.clone());
    }
    let dir = sh.dir.lock().unwrap().clone()?;
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let p = dir.join(rel);
    if !p.is_file() {
        return None;
    }
    let mut v = Vec::new();
    std::fs::File::open(p).ok()?.read_to_end(&mut v).ok()?;
    Some(Arc::new(v))
}

/// `bytes=S-` or `bytes=S-E` → Ok(half-open range), Err for unsatisfiable, None if not a
/// single byte range (served as a full 200).
fn parse_range(v: &str, len: usize) -> Option<Result<(usize, usize), ()>> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (s, e) = spec.split_once('-')?;
    let s: usize = s.trim().parse().ok()?;
    if s >= len {
        return Some(Err(()));
    }
    let e = match e.trim() {
        "" => len,
        e => (e.parse::<usize>().ok()? + 1).min(len),
    };
    if e <= s {
        return Some(Err(()));
    }
    Some(Ok((s, e)))
}

fn respond_empty(
    stream: &mut TcpStream,
    status: u16,
    extra: &[(&str, &str)],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: 0\r\nConnection: close\r\n",
        status,
        reason(status)
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.flush()?;
    let _ = stream.shutdown(Shutdown::Both);
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
