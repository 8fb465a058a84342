use std::process::ExitCode;

use clap::Parser;

use pikube_image::progress::{Mode, Progress, human_bytes};
use pikube_image::{boards, build, cache_admin, flash, images, init, inspect};

mod cmdline;

use cmdline::{CacheCommand, Cli, Command, FlashJob, ImagesCommand, NetbootCommand};

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
        Command::Netboot(NetbootCommand::Serve { dir, interface }) => {
            pikube_image::target::netboot::serve::serve(
                &dir,
                &pikube_image::target::netboot::serve::Options { interface },
            )?
        }
        Command::Inspect(a) => {
            let report = inspect::inspect(&a.image, &Progress::new(Mode::detect(false)))?;
            match a.json {
                true => println!("{}", serde_json::to_string_pretty(&report)?),
                false => print!("{}", report.render()),
            }
        }
        Command::Flash(a) => {
            let host = a.host();
            let opts = a.options();
            let progress = Progress::new(Mode::detect(a.json));
            match a.job()? {
                FlashJob::List => {
                    let disks = flash::list(&host)?;
                    match a.json {
                        true => println!("{}", serde_json::to_string_pretty(&disks)?),
                        false => print!("{}", flash::render_list(&disks)),
                    }
                }
                FlashJob::One {
                    image,
                    node,
                    device,
                } => {
                    let r =
                        flash::flash(&host, &image, node.as_deref(), &device, &opts, &progress)?;
                    match a.json {
                        true => println!("{}", serde_json::to_string_pretty(&r)?),
                        false => eprint!("{}", r.render()),
                    }
                }
                FlashJob::All => {
                    let cluster = pikube_image::config::Cluster::load(&a.config)?;
                    let nodes: Vec<String> =
                        cluster.nodes.iter().map(|n| n.name.to_string()).collect();
                    let done =
                        flash::flash_all(&host, &nodes, &a.out, &opts, flash::POLL, &progress)?;
                    if a.json {
                        println!("{}", serde_json::to_string_pretty(&done)?);
                    }
                    if done.len() < nodes.len() {
                        anyhow::bail!(
                            "stopped after {} of {} nodes; flash the rest with --node NAME",
                            done.len(),
                            nodes.len()
                        );
                    }
                }
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

/// An error as `--json` prints it: one object on stdout, in place of the summary.
#[derive(serde::Serialize)]
struct JsonError {
    error: JsonErrorBody,
}

#[derive(serde::Serialize)]
struct JsonErrorBody {
    /// The whole message, as the plain-text error line shows it.
    message: String,
    /// Each layer of the error, outermost first (what was being done, then why it failed).
    causes: Vec<String>,
    exit_code: u8,
}

fn print_json_error(message: String, causes: Vec<String>, exit_code: u8) {
    let e = JsonError {
        error: JsonErrorBody {
            message,
            causes,
            exit_code,
        },
    };
    match serde_json::to_string(&e) {
        Ok(text) => println!("{text}"),
        Err(_) => eprintln!("error: {}", e.error.message),
    }
}

/// Whether `--json` was given to the command, before the arguments could be parsed.
fn json_requested() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = e.exit_code();
            let informational = matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            if informational || !json_requested() {
                e.exit();
            }
            let text = e.render().to_string();
            let text = text.trim();
            let message = text.strip_prefix("error: ").unwrap_or(text).to_string();
            print_json_error(message.clone(), vec![message], code as u8);
            return ExitCode::from(code as u8);
        }
    };
    let json = cli.json();
    // An interrupted build removes its partial outputs before exiting, so nothing
    // half-written is left behind (outputs only get their final names when complete).
    // A flash in progress says what it leaves behind; `flash --all` finishes its card first.
    let _ = ctrlc::set_handler(|| match flash::interrupt() {
        flash::Interrupt::Deferred(msg) => eprintln!("{msg}"),
        flash::Interrupt::Exit(msg) => {
            pikube_image::emit::remove_temporaries();
            let servers = pikube_image::target::netboot::serve::stop_children();
            let stopped = (!servers.is_empty())
                .then(|| format!("interrupted: stopped {}", servers.join(" and ")));
            eprintln!(
                "{}",
                msg.or(stopped)
                    .as_deref()
                    .unwrap_or("interrupted: partial outputs removed")
            );
            std::process::exit(130);
        }
    });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if json => {
            let causes = e.chain().map(|c| c.to_string()).collect();
            print_json_error(format!("{e:#}"), causes, 1);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
