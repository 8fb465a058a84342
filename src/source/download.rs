//! Resumable, verified HTTP downloads into the cache.
//!
//! A download goes to `partial/<sha256(requested url)>`. When the connection drops, the
//! next attempt asks for the rest with `Range: bytes=N-`; a server that answers `206`
//! with the matching `Content-Range` gets its bytes appended, a server that answers
//! `200` (ranges unsupported) restarts the file from zero. The digest is computed over
//! exactly the bytes in the file (the existing prefix is re-read when a previous run
//! left it) and compared before the file is renamed into the blob store.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use fs4::fs_std::FileExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use sha2::{Digest, Sha256};

use super::{Fetched, Fetcher, SourceError, fetched};
use crate::progress::Task;

const CHUNK: usize = 256 << 10;

/// Outcome of one HTTP attempt.
enum Attempt {
    /// The partial file holds the whole resource.
    Complete,
    /// A transient failure; `total` is the size the server announced, if it answered.
    Retry {
        err: anyhow::Error,
        total: Option<u64>,
    },
    /// The server restarted or refused the range: begin again at once.
    Restart,
}

/// Bytes of the partial file hashed so far, kept in step with the file length.
struct PartialState {
    hasher: Sha256,
    len: u64,
}

impl PartialState {
    fn empty() -> PartialState {
        PartialState {
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Hashes the first `len` bytes of an existing partial file.
    fn from_file(path: &Path, len: u64) -> Result<PartialState> {
        let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut st = PartialState::empty();
        let mut r = io::BufReader::with_capacity(CHUNK, f.take(len));
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = r
                .read(&mut buf)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if n == 0 {
                break;
            }
            st.hasher.update(&buf[..n]);
            st.len += n as u64;
        }
        Ok(st)
    }
}

impl Fetcher {
    /// Downloads `url` (through the mirror, if any) into the cache and verifies it
    /// against `expected` when given. `limit` caps the size (for small text files).
    pub(crate) fn download(
        &self,
        url: &str,
        expected: Option<&str>,
        limit: Option<u64>,
    ) -> Result<Fetched> {
        let eff = self.effective_url(url)?;
        let shown = if eff == url {
            eff.clone()
        } else {
            format!("{eff} (mirror of {url})")
        };
        let lock = self.cache.open_lock(&eff)?;
        if !FileExt::try_lock_exclusive(&lock).unwrap_or(false) {
            self.progress.message(&format!(
                "waiting for another pikube-image process that is downloading {eff}"
            ));
            FileExt::lock_exclusive(&lock)
                .with_context(|| format!("cannot lock {}", self.cache.lock_path(&eff).display()))?;
        }
        // Someone else may have finished the same download while we waited.
        if let Some(e) = expected
            && let Some(p) = self.cached(url, e)?
        {
            self.cache.record_url(url, e)?;
            return fetched(url.to_string(), e.to_string(), p, true);
        }
        let result = self.download_locked(url, &eff, &shown, expected, limit);
        let _ = FileExt::unlock(&lock);
        result
    }

    fn download_locked(
        &self,
        url: &str,
        eff: &str,
        shown: &str,
        expected: Option<&str>,
        limit: Option<u64>,
    ) -> Result<Fetched> {
        let client = self.client()?;
        let partial = self.cache.partial_path(eff);
        let name = display_name(url);
        let mut task: Option<Task> = None;
        // A partial file from an earlier run may belong to an older version of the file;
        // if the result does not verify, one clean restart is allowed.
        let mut resumed_old = partial_len(&partial)? > 0;
        let mut state: Option<PartialState> = None;
        let mut restarts = 0u32;
        let mut tries = Tries::new(partial_len(&partial)?);
        loop {
            tries.attempts += 1;
            let outcome = self.attempt(
                client,
                eff,
                shown,
                &partial,
                &mut state,
                &mut task,
                &name,
                limit,
                tries.attempts == 1,
            )?;
            match outcome {
                Attempt::Complete => {}
                Attempt::Restart => {
                    restarts += 1;
                    if restarts > 3 {
                        return Err(anyhow!(
                            "{shown} keeps answering with byte ranges that do not match the \
                             request; the server or the mirror is misbehaving"
                        ));
                    }
                    remove_partial(&partial)?;
                    state = None;
                    continue;
                }
                Attempt::Retry { err, total } => {
                    tries.failed(partial_len(&partial)?, total);
                    if let Some(why) = tries.exhausted(&self.retry) {
                        return Err(err.context(tries.give_up(shown, &why, &partial)?));
                    }
                    let delay = tries.delay(&self.retry);
                    self.progress.message(&format!(
                        "{name}: {err:#}; retrying in {:.1} s (attempt {} of at most {}; {} of \
                         {} allowed in a row without progress)",
                        delay.as_secs_f64(),
                        tries.attempts + 1,
                        self.retry.max_total_attempts,
                        tries.stuck,
                        self.retry.max_attempts
                    ));
                    thread::sleep(delay);
                    continue;
                }
            }
            // Complete: check the digest of exactly what is on disk.
            let len = partial_len(&partial)?;
            let st = match state.take() {
                Some(st) if st.len == len => st,
                _ => PartialState::from_file(&partial, len)?,
            };
            let actual = hex::encode(st.hasher.finalize());
            if let Some(e) = expected
                && actual != e
            {
                remove_partial(&partial)?;
                if resumed_old {
                    resumed_old = false;
                    self.progress.message(&format!(
                        "{name}: the resumed download did not verify; downloading it again \
                             from the start"
                    ));
                    continue;
                }
                return Err(SourceError::ChecksumMismatch {
                    url: shown.to_string(),
                    expected: e.to_string(),
                    actual,
                }
                .into());
            }
            let f = File::open(&partial)
                .with_context(|| format!("cannot open {}", partial.display()))?;
            f.sync_all()
                .with_context(|| format!("cannot sync {}", partial.display()))?;
            drop(f);
            let path = self.cache.adopt(&partial, &actual)?;
            self.remember(&path);
            remove_file_if_exists(&validator_path(&partial))?;
            self.cache.record_url(url, &actual)?;
            if let Some(t) = &task {
                t.finish(&format!("{} verified", crate::progress::human_bytes(len)));
            }
            return fetched(url.to_string(), actual, path, false);
        }
    }

    /// One HTTP request, appending to or restarting the partial file.
    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        client: &reqwest::blocking::Client,
        eff: &str,
        shown: &str,
        partial: &Path,
        state: &mut Option<PartialState>,
        task: &mut Option<Task>,
        name: &str,
        limit: Option<u64>,
        first: bool,
    ) -> Result<Attempt> {
        let have = partial_len(partial)?;
        let mut req = client.get(eff);
        if have > 0 {
            req = req.header(RANGE, format!("bytes={have}-"));
            // Only resume if the file did not change since the partial bytes were fetched;
            // otherwise the server answers 200 with the whole new file.
            if let Some(v) = read_validator(partial) {
                req = req.header(IF_RANGE, v);
            }
        }
        let mut resp = match req.send() {
            Ok(r) => r,
            Err(e) if e.is_builder() => {
                return Err(anyhow!(e).context(format!("invalid URL {shown}")));
            }
            // Asking again would follow the same chain: stop now and say where it goes.
            Err(e) if e.is_redirect() => return Err(redirect_error(shown, &e)),
            // No connection at all on the first request (no network, a name that does not
            // resolve, nothing listening): asking again would fail the same way. Later in a
            // download, a server that broke off may be restarting: that is retried.
            Err(e) if e.is_connect() && first => {
                return Err(unreachable(eff, &e).into());
            }
            Err(e) => {
                return Ok(Attempt::Retry {
                    err: anyhow!(e).context(format!("cannot download {shown}")),
                    total: None,
                });
            }
        };
        let status = resp.status();
        let (start, total) = match status {
            StatusCode::OK => (0, resp.content_length()),
            StatusCode::PARTIAL_CONTENT => {
                let cr = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range);
                match cr {
                    Some((s, _, t)) if s == have => (s, t),
                    // Not the range we asked for: start over without a range.
                    _ => return Ok(Attempt::Restart),
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => {
                let total = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().strip_prefix("bytes */"))
                    .and_then(|t| t.trim().parse::<u64>().ok());
                return Ok(if total == Some(have) {
                    Attempt::Complete
                } else {
                    Attempt::Restart
                });
            }
            StatusCode::NOT_FOUND | StatusCode::GONE => {
                return Err(SourceError::NotFound {
                    url: shown.to_string(),
                    status: status.as_u16(),
                }
                .into());
            }
            s if s == StatusCode::REQUEST_TIMEOUT
                || s == StatusCode::TOO_MANY_REQUESTS
                || s.is_server_error() =>
            {
                return Ok(Attempt::Retry {
                    err: anyhow!("HTTP {s} from {shown}"),
                    total: None,
                });
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(anyhow!(
                    "access denied to {shown} (HTTP {status}); the file is not public: check the \
                     URL, or download it yourself and pass a reachable --mirror"
                ));
            }
            s => {
                return Err(anyhow!("unexpected HTTP {s} from {shown}; check the URL"));
            }
        };

        let too_big = |n: u64| {
            anyhow!(
                "{shown} is larger than {} bytes (at least {n}), too large for a checksum \
                 file; check the URL",
                limit.unwrap_or(0)
            )
        };
        if let (Some(l), Some(t)) = (limit, total)
            && t > l
        {
            return Err(too_big(t));
        }
        let mut file = if start == 0 {
            *state = Some(PartialState::empty());
            write_validator(partial, &resp)?;
            File::create(partial).with_context(|| format!("cannot create {}", partial.display()))?
        } else {
            let keep = match state.take() {
                Some(st) if st.len == have => st,
                _ => PartialState::from_file(partial, have)?,
            };
            *state = Some(keep);
            let mut f = OpenOptions::new()
                .write(true)
                .open(partial)
                .with_context(|| format!("cannot open {}", partial.display()))?;
            f.seek(SeekFrom::Start(have))
                .with_context(|| format!("cannot seek in {}", partial.display()))?;
            f
        };
        let st = state.as_mut().expect("state set above");

        let t = task.get_or_insert_with(|| self.progress.task(name, total));
        t.set_position(start);

        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        let read_err = loop {
            match resp.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => {
                    file.write_all(&buf[..n])
                        .with_context(|| format!("cannot write {}", partial.display()))?;
                    st.hasher.update(&buf[..n]);
                    st.len += n as u64;
                    got += n as u64;
                    t.inc(n as u64);
                    if let Some(l) = limit
                        && start + got > l
                    {
                        drop(file);
                        remove_partial(partial)?;
                        return Err(too_big(start + got));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Some(e),
            }
        };
        file.flush()
            .with_context(|| format!("cannot write {}", partial.display()))?;
        drop(file);
        if let Some(e) = read_err {
            return Ok(Attempt::Retry {
                err: anyhow!(e).context(format!(
                    "connection to {shown} broke after {} bytes",
                    start + got
                )),
                total,
            });
        }
        if let Some(total) = total
            && start + got != total
        {
            return Ok(Attempt::Retry {
                err: anyhow!("{shown} ended after {} of {total} bytes", start + got),
                total: Some(total),
            });
        }
        Ok(Attempt::Complete)
    }
}

/// The attempts of one download, and how far they got.
struct Tries {
    started: Instant,
    /// Requests made.
    attempts: u32,
    /// Failed attempts since the download last got further (that one included).
    stuck: u32,
    /// The most bytes the partial file ever held.
    furthest: u64,
    /// The size last announced by the server.
    total: Option<u64>,
}

impl Tries {
    fn new(have: u64) -> Tries {
        Tries {
            started: Instant::now(),
            attempts: 0,
            stuck: 0,
            furthest: have,
            total: None,
        }
    }

    /// Records a failed attempt that left `have` bytes in the partial file. Only bytes
    /// beyond the furthest point reached count as progress: a restart from zero that
    /// breaks again moved nothing forward.
    fn failed(&mut self, have: u64, total: Option<u64>) {
        if have > self.furthest {
            self.furthest = have;
            self.stuck = 1;
        } else {
            self.stuck += 1;
        }
        if total.is_some() {
            self.total = total;
        }
    }

    /// Why no further attempt should be made, if one of the limits is reached.
    fn exhausted(&self, p: &super::RetryPolicy) -> Option<String> {
        if self.stuck >= p.max_attempts {
            Some(format!(
                "{} failed in a row without getting further",
                self.stuck
            ))
        } else if self.attempts >= p.max_total_attempts {
            Some(format!("the limit is {} attempts", p.max_total_attempts))
        } else if self.started.elapsed() >= p.max_total_time {
            Some(format!(
                "retrying stops {} s after the first request",
                p.max_total_time.as_secs()
            ))
        } else {
            None
        }
    }

    fn delay(&self, p: &super::RetryPolicy) -> Duration {
        p.base_delay
            .saturating_mul(1 << self.stuck.saturating_sub(1).min(5))
            .min(Duration::from_secs(30))
    }

    /// The final error: the URL, the attempts, how far they got, what to do.
    fn give_up(&self, shown: &str, why: &str, partial: &Path) -> Result<String> {
        let reached = match self.total {
            Some(t) => format!("{} bytes of {t}", self.furthest),
            None => format!("{} bytes (total size unknown)", self.furthest),
        };
        let kept = match partial_len(partial)? {
            0 => String::new(),
            n => format!(
                " The {n} bytes received are kept in {}; the next run resumes from them if the \
                 server allows it.",
                partial.display()
            ),
        };
        Ok(format!(
            "giving up on {shown} after {} attempts ({why}); the download reached {reached}.\
             {kept} Check the network or the mirror and try again later, or use --mirror to \
             download from a reachable copy",
            self.attempts,
        ))
    }
}

/// Redirects followed for one request before giving up.
const MAX_REDIRECTS: usize = 10;

/// Why a chain of redirects was not followed to its end.
#[derive(Debug)]
struct BadRedirects {
    /// Every URL requested, then the one the last answer pointed to.
    chain: Vec<url::Url>,
    is_loop: bool,
}

impl std::fmt::Display for BadRedirects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let chain: Vec<&str> = self.chain.iter().map(url::Url::as_str).collect();
        if self.is_loop {
            write!(f, "redirect loop: {}", chain.join(" -> "))
        } else {
            write!(
                f,
                "more than {MAX_REDIRECTS} redirects: {}",
                chain.join(" -> ")
            )
        }
    }
}

impl std::error::Error for BadRedirects {}

/// Follows redirects, but stops at the first URL that comes round again (a loop) and after
/// [`MAX_REDIRECTS`], keeping the chain for the error.
pub(super) fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let is_loop = attempt.previous().contains(attempt.url());
        if is_loop || attempt.previous().len() > MAX_REDIRECTS {
            let mut chain = attempt.previous().to_vec();
            chain.push(attempt.url().clone());
            attempt.error(BadRedirects { chain, is_loop })
        } else {
            attempt.follow()
        }
    })
}

/// The error for a redirect chain that was not followed: not a network failure, so it is
/// not retried.
fn redirect_error(shown: &str, e: &reqwest::Error) -> anyhow::Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(b) = c.downcast_ref::<BadRedirects>() {
            return anyhow!(
                "cannot download {shown}: {b}; the server (or the mirror) is misconfigured. Check \
                 the URL or --mirror"
            );
        }
        cause = c.source();
    }
    anyhow!("cannot download {shown}: {e}; check the URL or --mirror")
}

/// The error for a request that found no server: which host, and why in plain words (no
/// network or a name that does not resolve, nothing listening, no answer).
fn unreachable(eff: &str, e: &reqwest::Error) -> SourceError {
    let host = url::Url::parse(eff)
        .ok()
        .and_then(|u| {
            u.host_str()
                .map(|h| u.port().map_or(h.to_string(), |p| format!("{h}:{p}")))
        })
        .unwrap_or_else(|| eff.to_string());
    let cause = why_unreachable(e, &host).unwrap_or_else(|| {
        let mut text = String::new();
        let mut c: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(x) = c {
            text.push_str(&format!(" {x}"));
            c = x.source();
        }
        format!("no connection could be made ({})", text.trim())
    });
    SourceError::Unreachable {
        url: eff.to_string(),
        host,
        cause,
    }
}

/// Why a request to `host` found no server, in plain words, when that is what `e` says: a
/// name that does not resolve (no network, no DNS), a refused connection (nothing
/// listening), no answer at all. `None` for other failures (TLS, a broken answer).
pub(crate) fn why_unreachable(e: &reqwest::Error, host: &str) -> Option<String> {
    if !e.is_connect() {
        return None;
    }
    let mut text = String::new();
    let mut refused = false;
    let mut timed_out = e.is_timeout();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            refused |= io.kind() == io::ErrorKind::ConnectionRefused;
            timed_out |= io.kind() == io::ErrorKind::TimedOut;
        }
        text.push_str(&format!(" {c}"));
        cause = c.source();
    }
    let lower = text.to_ascii_lowercase();
    // reqwest names a proxy it could not reach as a tunnel or proxy error.
    let proxy = (lower.contains("tunnel") || lower.contains("proxy")).then(|| {
        [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ]
        .iter()
        .find_map(|k| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| format!("the proxy {v} (${k})"))
        })
        .unwrap_or_else(|| "the proxy".to_string())
    });
    let at = proxy.unwrap_or_else(|| host.to_string());
    let why = if lower.contains("dns") || lower.contains("failed to lookup") {
        format!("the name {host} does not resolve (no network, or no DNS server answers for it)")
    } else if refused {
        format!("the connection to {at} was refused (nothing listens there)")
    } else if timed_out {
        format!(
            "{at} did not answer before the connect timeout (no route to it, or a firewall drops it)"
        )
    } else {
        return None;
    };
    Some(why)
}

fn partial_len(p: &Path) -> Result<u64> {
    match fs::metadata(p) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("cannot stat {}", p.display())),
    }
}

fn validator_path(partial: &Path) -> std::path::PathBuf {
    partial.with_extension("validator")
}

/// The strong ETag or Last-Modified date the partial bytes were served with.
fn read_validator(partial: &Path) -> Option<String> {
    let v = fs::read_to_string(validator_path(partial)).ok()?;
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_string())
}

fn write_validator(partial: &Path, resp: &reqwest::blocking::Response) -> Result<()> {
    let h = resp.headers();
    let etag = h
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.starts_with("W/"));
    let v = etag.or_else(|| h.get(LAST_MODIFIED).and_then(|v| v.to_str().ok()));
    let p = validator_path(partial);
    match v {
        Some(v) => fs::write(&p, v).with_context(|| format!("cannot write {}", p.display())),
        None => remove_file_if_exists(&p),
    }
}

fn remove_partial(p: &Path) -> Result<()> {
    remove_file_if_exists(&validator_path(p))?;
    remove_file_if_exists(p)
}

fn remove_file_if_exists(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot delete {}", p.display())),
    }
}

/// `bytes START-END/TOTAL` → (start, end, total); the total may be `*` (unknown).
fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (s, e) = range.trim().split_once('-')?;
    let s: u64 = s.trim().parse().ok()?;
    let e: u64 = e.trim().parse().ok()?;
    if e < s {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => {
            let t: u64 = t.parse().ok()?;
            if e >= t {
                return None;
            }
            Some(t)
        }
    };
    Some((s, e, total))
}

/// The last path segment of a URL, for progress lines.
pub(super) fn display_name(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    no_query
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(url)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, 199, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, 9, None)));
        assert_eq!(parse_content_range("bytes 5-4/10"), None);
        assert_eq!(parse_content_range("bytes 5-10/10"), None);
        assert_eq!(parse_content_range("bytes */10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn names_for_progress() {
        assert_eq!(display_name("https://h/a/b.img.xz?x=1"), "b.img.xz");
        assert_eq!(display_name("https://h/a/"), "a");
    }

    #[test]
    fn partial_state_hashes_prefix() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("f");
        fs::write(&p, b"abcdef").unwrap();
        let st = PartialState::from_file(&p, 3).unwrap();
        assert_eq!(st.len, 3);
        assert_eq!(
            hex::encode(st.hasher.finalize()),
            crate::io::sha256_bytes(b"abc")
        );
    }
}
