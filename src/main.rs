use std::process::ExitCode;

use clap::Parser;

use pikube_image::progress::{Mode, Progress, human_bytes};
use pikube_image::{boards, build, cache_admin, images, init, inspect};

mod cmdline;

use cmdline::{CacheCommand, Cli, Command, ImagesCommand, NetbootCommand};

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init(a) => {
            let home = dirs::home_dir();
            let report = init::init(&a.dir, a.force, a.allow_outside_paths, home.as_deref())?;
            eprint!(
                "{}",
                report.render(&a.dir.join(pikube_image::config::DEFAULT_CONFIG))
            );
        }
        Command::Boards { json: false } => print!("{}", boards::Catalog::load()?.render_table()?),
        Command::Boards { json: true } => println!(
            "{}",
            serde_json::to_string_pretty(&boards::Catalog::load()?.listing()?)?
        ),
        Command::Images(ImagesCommand::Update { config, mirror }) => {
            let progress = Progress::new(Mode::detect(false));
            let (path, n) = images::update_images(&config, mirror, None, &progress)?;
            eprintln!("pinned {n} image references in {}", path.display());
        }
        Command::Cache(c) => {
            let cache = pikube_image::source::Cache::open_default()?;
            let root = cache.root();
            let now = std::time::SystemTime::now();
            match c {
                CacheCommand::List { json: true } => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&cache_admin::list(root)?)?
                    )
                }
                CacheCommand::List { json: false } => {
                    let secs = now
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    print!(
                        "{}",
                        cache_admin::render_list(root, &cache_admin::list(root)?, secs)
                    );
                }
                CacheCommand::Prune { older_than, all } => {
                    let age = match (all, older_than) {
                        (true, _) => None,
                        (false, Some(a)) => Some(cache_admin::parse_age(&a)?),
                        (false, None) => {
                            anyhow::bail!("say what to prune: --older-than AGE or --all")
                        }
                    };
                    let removed = cache_admin::prune(root, age, now)?;
                    let freed: u64 = removed.iter().map(|e| e.disk_bytes).sum();
                    eprintln!(
                        "removed {} entries, freed {}",
                        removed.len(),
                        human_bytes(freed)
                    );
                }
            }
        }
        Command::Netboot(NetbootCommand::Serve { dir }) => {
            pikube_image::target::netboot::serve::serve(&dir)?
        }
        Command::Inspect(a) => {
            let report = inspect::inspect(&a.image, &Progress::new(Mode::detect(false)))?;
            match a.json {
                true => println!("{}", serde_json::to_string_pretty(&report)?),
                false => print!("{}", report.render()),
            }
        }
        Command::Build(a) => {
            let json = a.json;
            let progress = Progress::new(Mode::detect(json));
            let request = a.request()?;
            let started = std::time::Instant::now();
            let summary = build::build(&request, &progress)?;
            match json {
                true => println!("{}", serde_json::to_string_pretty(&summary)?),
                false => print!("{}", summary.render()),
            }
            if !json && !summary.dry_run && !summary.nodes.is_empty() {
                let seconds = started.elapsed().as_secs_f64();
                eprint!("{}", summary.render_closing(&request.out, seconds));
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // An interrupted build removes its partial outputs before exiting, so nothing
    // half-written is left behind (outputs only get their final names when complete).
    let _ = ctrlc::set_handler(|| {
        pikube_image::emit::remove_temporaries();
        pikube_image::target::netboot::serve::stop_children();
        eprintln!("interrupted: partial outputs removed");
        std::process::exit(130);
    });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
