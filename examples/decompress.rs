//! Decompresses one base image into a sparse raw image, to time the decompression stage
//! on its own: `cargo run --release --example decompress -- IN OUT [--no-hash] [--threads N]`.

use std::path::PathBuf;
use std::time::Instant;

use pikube_image::decompress::{Options, decompress_with};
use pikube_image::progress::{Mode, Progress};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut paths = Vec::new();
    let mut opts = Options::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--no-hash" => opts.hash = false,
            "--threads" => {
                opts.threads = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("--threads needs a number"))?
            }
            _ => paths.push(PathBuf::from(a)),
        }
    }
    let [src, dst] = <[PathBuf; 2]>::try_from(paths)
        .map_err(|_| anyhow::anyhow!("usage: decompress IN OUT [--no-hash] [--threads N]"))?;
    let t = Instant::now();
    let d = decompress_with(&src, &dst, &Progress::new(Mode::detect(false)), opts)?;
    eprintln!(
        "{} bytes in {:.2} s, sha256 {}",
        d.bytes,
        t.elapsed().as_secs_f64(),
        d.sha256.as_deref().unwrap_or("(not computed)")
    );
    Ok(())
}
